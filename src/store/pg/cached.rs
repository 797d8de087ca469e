//! Statements run by name: each SQL text is prepared once per connection
//! (deadpool's statement cache) and then bound and executed in one round
//! trip. A statement given as text costs two (parse, then execute); a
//! callback's transaction is about ten statements.

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, Row};

type Args<'a> = &'a [&'a (dyn ToSql + Sync)];

pub async fn exec(c: &impl GenericClient, sql: &str, args: Args<'_>) -> Result<u64, Error> {
    let st = c.prepare_cached(sql).await?;
    c.execute(&st, args).await
}

pub async fn rows(c: &impl GenericClient, sql: &str, args: Args<'_>) -> Result<Vec<Row>, Error> {
    let st = c.prepare_cached(sql).await?;
    c.query(&st, args).await
}

pub async fn row(c: &impl GenericClient, sql: &str, args: Args<'_>) -> Result<Row, Error> {
    let st = c.prepare_cached(sql).await?;
    c.query_one(&st, args).await
}

pub async fn row_opt(
    c: &impl GenericClient,
    sql: &str,
    args: Args<'_>,
) -> Result<Option<Row>, Error> {
    let st = c.prepare_cached(sql).await?;
    c.query_opt(&st, args).await
}
