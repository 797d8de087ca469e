//! Against a real PostgreSQL, when `PAYRECON_TEST_DATABASE_URL` names one
//! (`.ci/run` sets it to the machine's server); each test in a schema of
//! its own, dropped at the end. Without the variable they say so and pass:
//! sled needs no server, PostgreSQL does.

use super::*;

pub const URL_ENV: &str = "PAYRECON_TEST_DATABASE_URL";

/// A schema of its own on the test database, dropped when it goes.
pub struct Scratch {
    pub settings: PgSettings,
    admin: Pool,
}

impl Scratch {
    pub async fn new() -> Option<Scratch> {
        let Ok(url) = std::env::var(URL_ENV) else {
            eprintln!("{URL_ENV} is not set: PostgreSQL tests skipped");
            return None;
        };
        let schema = format!("payrecon_test_{:016x}", fastrand::u64(..));
        let base = PgSettings {
            url,
            password: None,
            pool_size: 4,
            schema: None,
        };
        let admin = pool(&base).unwrap();
        admin
            .get()
            .await
            .expect("the test database answers")
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .unwrap();
        Some(Scratch {
            settings: PgSettings {
                schema: Some(schema),
                ..base
            },
            admin,
        })
    }

    pub async fn drop(self) {
        let schema = self.settings.schema.unwrap_or_default();
        let c = self.admin.get().await.unwrap();
        c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn migrations_run_once_even_when_instances_start_together() {
    let Some(s) = Scratch::new().await else {
        return;
    };
    let pools: Vec<Pool> = (0..3).map(|_| pool(&s.settings).unwrap()).collect();
    let runs: Vec<_> = pools
        .iter()
        .map(|p| {
            let p = p.clone();
            tokio::spawn(async move { migrate(&p).await })
        })
        .collect();
    let mut applied = vec![];
    for r in runs {
        applied.push(r.await.unwrap().unwrap());
    }
    assert_eq!(
        applied.iter().sum::<usize>(),
        schema_version() as usize,
        "each migration applied by exactly one instance: {applied:?}"
    );
    // A later start finds nothing to do.
    assert_eq!(migrate(&pools[0]).await.unwrap(), 0);
    let c = pools[0].get().await.unwrap();
    let tables: Vec<String> = c
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for t in [
        "actions",
        "inbox",
        "leases",
        "lookup_keys",
        "meta",
        "notices",
        "observations",
        "orphans",
        "payments",
        "payrecon_migrations",
        "sweep_marks",
        "windows",
    ] {
        assert!(tables.iter().any(|x| x == t), "{t} missing from {tables:?}");
    }
    // The unique constraint that de-duplicates callbacks across instances.
    c.execute(
        "INSERT INTO inbox (dedupe_key, received_ms) VALUES ('connpay|cb|x', 1)",
        &[],
    )
    .await
    .unwrap();
    let again = c
        .execute(
            "INSERT INTO inbox (dedupe_key, received_ms) VALUES ('connpay|cb|x', 2)",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(
        again.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    );
    drop(c);
    s.drop().await;
}

#[tokio::test]
async fn a_password_in_the_url_is_refused_and_never_shown() {
    let s = PgSettings {
        url: "postgres://payrecon:hunter2@127.0.0.1/payrecon".into(),
        password: Some("from-the-env".into()),
        pool_size: 1,
        schema: None,
    };
    let err = pool(&s).unwrap_err().to_string();
    assert!(err.contains("store.password_env"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    assert!(!format!("{s:?}").contains("from-the-env"));
}

#[tokio::test]
async fn an_unreachable_database_is_a_clear_error() {
    // A closed port on loopback: refused at once, no waiting.
    let s = PgSettings {
        url: "postgres://payrecon@127.0.0.1:9/payrecon".into(),
        password: None,
        pool_size: 1,
        schema: None,
    };
    let err = migrate(&pool(&s).unwrap()).await.unwrap_err().to_string();
    assert!(err.contains("cannot connect to the database"), "{err}");
}
