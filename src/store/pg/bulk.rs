//! Writes without the engine's checks, for imports and benchmarks
//! (`Store::bulk_load`): a thousand payments per transaction.

use deadpool_postgres::Pool;

use super::cached;
use super::ops::{i, json};
use crate::model::{Observation, Payment};
use crate::store::StoreError;

const BATCH: usize = 1_000;

/// [`load`] for synchronous callers (imports, benchmarks): on a runtime of
/// its own, on a thread of its own.
pub fn load_blocking(
    pool: &Pool,
    items: Vec<(Payment, Vec<Observation>, Vec<String>)>,
) -> Result<usize, StoreError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| StoreError::Database(e.to_string()))?;
            rt.block_on(load(pool, items))
        })
        .join()
        .unwrap_or_else(|_| Err(StoreError::Database("bulk load panicked".into())))
    })
}

pub async fn load(
    pool: &Pool,
    items: Vec<(Payment, Vec<Observation>, Vec<String>)>,
) -> Result<usize, StoreError> {
    let mut c = super::connect(pool).await?;
    let n = items.len();
    for chunk in items.chunks(BATCH) {
        let t = c.transaction().await?;
        for (p, history, keys) in chunk {
            let run = async {
                cached::exec(
                    &t,
                    "INSERT INTO payments (id, provider, state, created_ms, updated_ms, record) \
                     VALUES ($1, $2, $3, $4, $5, $6::text::jsonb)",
                    &[
                        &p.id,
                        &p.provider.to_string(),
                        &p.state.as_str(),
                        &i(p.created_ms),
                        &i(p.updated_ms),
                        &json(p),
                    ],
                )
                .await?;
                for o in history {
                    cached::exec(&t,
                        "INSERT INTO observations (payment_id, seq, record) VALUES ($1, $2, $3::text::jsonb)",
                        &[&p.id, &(o.seq as i32), &json(o)],
                    )
                    .await?;
                }
                for k in keys {
                    cached::exec(
                        &t,
                        "INSERT INTO lookup_keys (key, target_id) VALUES ($1, $2)",
                        &[k, &p.id],
                    )
                    .await?;
                }
                if let Some(w) = p.window.filter(|w| w.open && !p.state.is_final()) {
                    cached::exec(
                        &t,
                        "INSERT INTO windows (payment_id, provider, next_ms) VALUES ($1, $2, $3)",
                        &[&p.id, &p.provider.to_string(), &i(w.next_ms)],
                    )
                    .await?;
                }
                Ok::<(), tokio_postgres::Error>(())
            };
            run.await?;
        }
        t.commit().await?;
    }
    Ok(n)
}
