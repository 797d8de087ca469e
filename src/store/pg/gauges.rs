//! The gauges `Backend` answers without waiting (payments, notices, inbox,
//! size): counted by the database every few seconds and kept in memory,
//! moved in between by this instance's own writes. With several instances
//! writing, no one instance's counter could be exact anyway.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;

use super::cached;
use super::ops::R;
use crate::store::StoreError;

/// How often the gauges are counted.
const GAUGE_EVERY: Duration = Duration::from_secs(5);

#[derive(Default)]
pub(super) struct Gauges {
    pub payments: AtomicU64,
    pub notices: AtomicU64,
    pub dead: AtomicU64,
    pub inbox: AtomicU64,
    pub bytes: AtomicU64,
    pub healthy: AtomicBool,
    pub commits: AtomicU64,
}

impl Gauges {
    /// Counts once, then every [`GAUGE_EVERY`] on the runtime while the
    /// store lives.
    pub async fn start(pool: &Pool) -> Result<Arc<Gauges>, StoreError> {
        let gauges = Arc::new(Gauges::default());
        count(pool, &gauges)
            .await
            .map_err(super::ops::E::into_store)?;
        let (p, g) = (pool.clone(), Arc::downgrade(&gauges));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(GAUGE_EVERY).await;
                let Some(g) = g.upgrade() else { break };
                if count(&p, &g).await.is_err() {
                    g.healthy.store(false, Ordering::Relaxed);
                }
            }
        });
        Ok(gauges)
    }

    pub fn get(v: &AtomicU64) -> u64 {
        v.load(Ordering::Relaxed)
    }

    pub fn add(v: &AtomicU64, n: u64) {
        v.fetch_add(n, Ordering::Relaxed);
    }

    /// One fewer, never below zero (the count may be older than the
    /// notice it loses).
    pub fn take_one(v: &AtomicU64) {
        Gauges::take(v, 1);
    }

    /// `k` fewer, never below zero.
    pub fn take(v: &AtomicU64, k: u64) {
        let _ = v.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            Some(n.saturating_sub(k))
        });
    }
}

async fn count(pool: &Pool, g: &Gauges) -> R<()> {
    let c = super::connect(pool).await?;
    let row = cached::row(
        &c,
        "SELECT (SELECT count(*) FROM payments), \
                    (SELECT count(*) FROM notices WHERE NOT dead), \
                    (SELECT count(*) FROM notices WHERE dead), \
                    (SELECT count(*) FROM inbox), \
                    pg_database_size(current_database())",
        &[],
    )
    .await?;
    let n = |k: usize| row.get::<_, i64>(k).max(0) as u64;
    g.payments.store(n(0), Ordering::Relaxed);
    g.notices.store(n(1), Ordering::Relaxed);
    g.dead.store(n(2), Ordering::Relaxed);
    g.inbox.store(n(3), Ordering::Relaxed);
    g.bytes.store(n(4), Ordering::Relaxed);
    g.healthy.store(true, Ordering::Relaxed);
    Ok(())
}
