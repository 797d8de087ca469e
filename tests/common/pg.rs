//! A schema of its own on the PostgreSQL test server, for the tests that
//! run the daemon on PostgreSQL.

use payrecon::store::pg::{pool, PgSettings};

/// A schema of its own on the test database, and the `[store]` lines
/// that point a daemon at it.
pub struct Schema {
    pub url: String,
    pub name: String,
}

impl Schema {
    pub async fn new() -> Option<Schema> {
        let Ok(url) = std::env::var("PAYRECON_TEST_DATABASE_URL") else {
            eprintln!("PAYRECON_TEST_DATABASE_URL is not set: PostgreSQL tests skipped");
            return None;
        };
        let name = format!("payrecon_it_{:016x}", fastrand::u64(..));
        Self::admin(&url)
            .get()
            .await
            .expect("the test database answers")
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .unwrap();
        Some(Schema { url, name })
    }

    pub fn admin(url: &str) -> deadpool_postgres::Pool {
        pool(&PgSettings {
            url: url.to_string(),
            password: None,
            pool_size: 1,
            schema: None,
        })
        .unwrap()
    }

    /// `[store]` lines: the schema through the URL's `options`, as an
    /// operator would give a schema other than `public`.
    pub fn store_lines(&self) -> String {
        self.store_lines_on(&self.url)
    }

    /// `[store]` lines reaching the server through `via` (host:port: a
    /// proxy a test cuts).
    pub fn store_lines_via(&self, via: &str) -> String {
        let (at, end) = self.host_port();
        self.store_lines_on(&format!("{}{via}{}", &self.url[..at], &self.url[end..]))
    }

    /// The server's host:port, as the URL gives it.
    pub fn server(&self) -> &str {
        let (at, end) = self.host_port();
        &self.url[at..end]
    }

    fn host_port(&self) -> (usize, usize) {
        let u = &self.url;
        let at = u
            .find('@')
            .map(|i| i + 1)
            .unwrap_or_else(|| u.find("://").map_or(0, |i| i + 3));
        let end = u[at..].find(['/', '?']).map_or(u.len(), |i| at + i);
        (at, end)
    }

    fn store_lines_on(&self, url: &str) -> String {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!(
            "backend = \"postgres\"\nurl = \"{url}{sep}options=-csearch_path%3D{}\"\npool_size = 4",
            self.name
        )
    }

    /// Runs `sql`, with `{schema}` standing for this schema's name.
    pub async fn rows(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        Self::admin(&self.url)
            .get()
            .await
            .unwrap()
            .query(&sql.replace("{schema}", &self.name), &[])
            .await
            .unwrap()
    }

    pub async fn drop(self) {
        Self::admin(&self.url)
            .get()
            .await
            .unwrap()
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name))
            .await
            .unwrap();
    }
}
