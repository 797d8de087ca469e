//! The PostgreSQL engine, for several payrecon instances on one database
//! (docs/postgres.md): the connection pool and the schema here (versioned
//! migrations in `migrations/`, embedded in the binary and run at start,
//! one instance at a time); the [`crate::store::Backend`] in engine.rs,
//! each write one transaction (ops.rs, actions.rs); leases in leases.rs;
//! the gauges in gauges.rs; bulk loads in bulk.rs.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use super::StoreError;

mod actions;
mod bulk;
mod cached;
mod engine;
mod gauges;
mod leases;
mod ops;

pub use engine::PgStore;

mod embedded {
    refinery::embed_migrations!("src/store/pg/migrations");
}

/// Connections each instance keeps at most.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// The advisory lock that makes instances starting together run the
/// migrations one after another (its number spells "payrecon").
const MIGRATION_LOCK: i64 = 0x7061_7972_6563_6f6e;

/// Where the database is and how to log in. The password is kept apart
/// from the URL: it comes from the environment or a credential, never from
/// the config file or a log line.
#[derive(Clone)]
pub struct PgSettings {
    pub url: String,
    pub password: Option<String>,
    pub pool_size: usize,
    /// The schema payrecon's tables live in (`search_path`); the tests
    /// give each run its own.
    pub schema: Option<String>,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("pool_size", &self.pool_size)
            .field("schema", &self.schema)
            .finish()
    }
}

fn db_error(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(format!("{what}: {e}"))
}

/// A pool of connections to the database. Connecting is lazy: the first
/// use (the migrations, at start) tells whether the database answers.
pub fn pool(s: &PgSettings) -> Result<Pool, StoreError> {
    let mut config: tokio_postgres::Config = s
        .url
        .parse()
        .map_err(|e| db_error("store.url is not a PostgreSQL URL", e))?;
    if config.get_password().is_some() {
        return Err(StoreError::Database(
            "store.url carries a password; give it through store.password_env or a credential instead".into(),
        ));
    }
    if let Some(p) = &s.password {
        config.password(p);
    }
    if let Some(schema) = &s.schema {
        config.options(format!("-c search_path={schema}"));
    }
    config.application_name("payrecon");
    config.connect_timeout(Duration::from_secs(10));
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(s.pool_size.max(1))
        .build()
        .map_err(|e| db_error("cannot build the connection pool", e))
}

/// A connection from the pool; the error names what failed.
pub(super) async fn connect(pool: &Pool) -> Result<deadpool_postgres::Object, StoreError> {
    pool.get()
        .await
        .map_err(|e| db_error("cannot connect to the database", e))
}

/// Brings the schema up to this release's version; returns how many
/// migrations it applied. Instances starting together take turns (an
/// advisory lock held on the migrating connection).
pub async fn migrate(pool: &Pool) -> Result<usize, StoreError> {
    let mut client = connect(pool).await?;
    cached::exec(&client, "SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| db_error("cannot take the migration lock", e))?;
    let report = embedded::migrations::runner()
        .set_migration_table_name("payrecon_migrations")
        .run_async(&mut **client)
        .await;
    let unlocked = cached::exec(&client, "SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await;
    let report = report.map_err(|e| db_error("schema migration failed", e))?;
    unlocked.map_err(|e| db_error("cannot release the migration lock", e))?;
    let applied = report.applied_migrations();
    for m in applied {
        tracing::info!(
            version = m.version(),
            name = m.name(),
            "database schema migrated"
        );
    }
    Ok(applied.len())
}

/// The schema version this release brings the database to.
pub fn schema_version() -> u32 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.version())
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests;
