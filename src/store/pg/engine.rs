//! [`PgStore`]: the [`Backend`] on PostgreSQL. Every write is one
//! transaction (ops.rs), run again when another instance got to a key or
//! a lock first; it resolves after the commit, so a 200 follows a durable
//! write whichever instance gave it. Reads are plain queries.
//!
//! The gauges the trait asks for without waiting (payments, notices,
//! inbox) are counted by the database every few seconds and read from
//! memory in between: with several instances writing, no one instance's
//! counter could be exact anyway.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;

use super::ops::{self, from_json, i, E, R};
use crate::action::Action;
use crate::model::{Observation, Payment, PollWindow, ProviderId, Report};
use crate::store::{
    Backend, BoxFut, CallbackRecord, Change, Enqueued, Filter, Ingested, NewPayment, Notice,
    Observed, Policy, Repeats, StoreError, SweepMark, Tracked, WindowChange,
};

/// Times a transaction is run when other instances keep winning its keys.
const ATTEMPTS: u32 = 5;
/// How often the gauges are counted.
const GAUGE_EVERY: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Gauges {
    payments: AtomicU64,
    notices: AtomicU64,
    dead: AtomicU64,
    inbox: AtomicU64,
    bytes: AtomicU64,
    healthy: AtomicBool,
    commits: AtomicU64,
}

pub struct PgStore {
    pool: Pool,
    policy: Arc<Policy>,
    gauges: Arc<Gauges>,
}

/// Runs `$body` (an expression using the transaction `$t`) in a
/// transaction, again while it fails in a way another attempt can fix.
macro_rules! in_tx {
    ($self:expr, |$t:ident| $body:expr) => {{
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut client = $self.client().await?;
            let $t = client
                .transaction()
                .await
                .map_err(E::from)
                .map_err(E::into_store)?;
            match $body.await {
                Ok(v) => {
                    $t.commit().await.map_err(E::from).map_err(E::into_store)?;
                    $self.gauges.commits.fetch_add(1, Ordering::Relaxed);
                    break Ok(v);
                }
                Err(e) if attempt < ATTEMPTS && e.retryable() => continue,
                Err(e) => break Err(e.into_store()),
            }
        }
    }};
}

impl PgStore {
    /// A store over a pool whose schema is migrated (`super::migrate`).
    /// Needs a tokio runtime: the gauges are counted on it.
    pub async fn open(pool: Pool, policy: Arc<Policy>) -> Result<PgStore, StoreError> {
        let gauges = Arc::new(Gauges::default());
        count(&pool, &gauges).await.map_err(E::into_store)?;
        let (p, g) = (pool.clone(), Arc::downgrade(&gauges));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(GAUGE_EVERY).await;
                let Some(g) = g.upgrade() else { break };
                let ok = count(&p, &g).await.is_ok();
                g.healthy.store(ok, Ordering::Relaxed);
            }
        });
        Ok(PgStore {
            pool,
            policy,
            gauges,
        })
    }

    /// Counts notices that changes just queued (when notices are on).
    fn queued(&self, changes: usize) {
        if self.policy.notify.load(Ordering::SeqCst) {
            self.gauges
                .notices
                .fetch_add(changes as u64, Ordering::Relaxed);
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Database(format!("no connection: {e}")))
    }

    fn new_id(prefix: &str) -> String {
        // Creation order across instances (paging follows it), and a
        // random tail so two instances in the same millisecond differ.
        format!(
            "{prefix}{:012x}{:08x}",
            crate::model::now_ms(),
            fastrand::u32(..)
        )
    }

    async fn one<T: serde::de::DeserializeOwned>(
        &self,
        sql: &str,
        arg: &str,
    ) -> Result<Option<T>, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_opt(sql, &[&arg])
            .await
            .map_err(|e| E::from(e).into_store())?;
        row.map(|r| from_json(arg, r.get(0))).transpose()
    }

    /// One statement outside a transaction; the rows it touched.
    async fn exec(
        &self,
        sql: &str,
        args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let c = self.client().await?;
        c.execute(sql, args)
            .await
            .map_err(|e| E::from(e).into_store())
    }

    async fn many<T: serde::de::DeserializeOwned>(
        &self,
        sql: &str,
        args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<T>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(sql, args)
            .await
            .map_err(|e| E::from(e).into_store())?;
        rows.iter().map(|r| from_json(sql, r.get(0))).collect()
    }
}

/// A `windows` row's payment id and provider (its first two columns).
fn window_of(r: &tokio_postgres::Row) -> Result<(String, ProviderId), StoreError> {
    let id: String = r.get(0);
    let provider: String = r.get(1);
    let p = provider
        .parse::<ProviderId>()
        .map_err(|_| StoreError::Corrupt {
            key: format!("windows/{id}"),
            reason: format!("unknown provider `{provider}`"),
        })?;
    Ok((id, p))
}

async fn count(pool: &Pool, g: &Gauges) -> R<()> {
    let c = pool
        .get()
        .await
        .map_err(|e| StoreError::Database(format!("no connection: {e}")))?;
    let row = c
        .query_one(
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

impl Backend for PgStore {
    fn track(&self, new: NewPayment) -> BoxFut<'_, Tracked> {
        Box::pin(async move {
            let id = Self::new_id("pay_");
            let t = in_tx!(self, |t| ops::track(
                &t,
                &self.policy,
                new.clone(),
                id.clone()
            ))?;
            if t.created {
                self.gauges.payments.fetch_add(1, Ordering::Relaxed);
            }
            self.queued(t.changes.len());
            Ok(t)
        })
    }

    fn observe(
        &self,
        id: &str,
        report: Report,
        window: WindowChange,
        now_ms: u64,
        carry: Option<Repeats>,
    ) -> BoxFut<'_, Observed> {
        let id = id.to_string();
        Box::pin(async move {
            let o = in_tx!(self, |t| ops::observe(
                &t,
                &self.policy,
                &id,
                report.clone(),
                window,
                now_ms,
                carry.clone()
            ))?;
            self.queued(o.change.iter().count());
            Ok(o)
        })
    }

    fn advance_window(
        &self,
        id: &str,
        window: WindowChange,
        carry: Option<Repeats>,
    ) -> BoxFut<'_, Option<PollWindow>> {
        let id = id.to_string();
        Box::pin(async move { in_tx!(self, |t| ops::advance(&t, &id, window, carry.clone())) })
    }

    fn ingest_callback(&self, cb: CallbackRecord) -> BoxFut<'_, Ingested> {
        Box::pin(async move {
            let r = in_tx!(self, |t| ops::ingest(&t, &self.policy, &cb))?;
            if !matches!(r, Ingested::Duplicate) {
                self.gauges.inbox.fetch_add(1, Ordering::Relaxed);
            }
            if let Ingested::Applied(o) = &r {
                self.queued(o.change.iter().count());
            }
            Ok(r)
        })
    }

    fn enqueue_action(&self, a: Action, exclusive_key: Option<String>) -> BoxFut<'_, Enqueued> {
        Box::pin(async move {
            let id = Self::new_id("act_");
            in_tx!(self, |t| ops::enqueue(
                &t,
                a.clone(),
                exclusive_key.clone(),
                id.clone()
            ))
        })
    }

    fn update_action(&self, a: Action, reports: Vec<Report>) -> BoxFut<'_, Vec<Change>> {
        Box::pin(async move {
            let changes = in_tx!(self, |t| ops::update_action(
                &t,
                &self.policy,
                &a,
                reports.clone()
            ))?;
            self.queued(changes.len());
            Ok(changes)
        })
    }

    fn update_notice(&self, n: Notice) -> BoxFut<'_, ()> {
        Box::pin(async move {
            self.exec(
                "UPDATE notices SET next_ms = $2, record = $3::text::jsonb WHERE seq = $1 AND NOT dead",
                &[&i(n.seq), &i(n.next_ms), &ops::json(&n)],
            )
            .await?;
            Ok(())
        })
    }

    fn remove_notice(&self, n: Notice, dead: bool) -> BoxFut<'_, ()> {
        Box::pin(async move {
            let c = self.client().await?;
            let done = if dead {
                c.execute(
                    "UPDATE notices SET dead = true, record = $2::text::jsonb WHERE seq = $1 AND NOT dead",
                    &[&i(n.seq), &ops::json(&n)],
                )
                .await
            } else {
                c.execute(
                    "DELETE FROM notices WHERE seq = $1 AND NOT dead",
                    &[&i(n.seq)],
                )
                .await
            };
            if done.map_err(|e| E::from(e).into_store())? > 0 {
                let _ =
                    self.gauges
                        .notices
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                            Some(n.saturating_sub(1))
                        });
                if dead {
                    self.gauges.dead.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        })
    }

    fn set_meta(&self, key: String, value: Option<String>) -> BoxFut<'_, ()> {
        Box::pin(async move {
            let c = self.client().await?;
            let r = match value {
                Some(v) => {
                    c.execute(
                        "INSERT INTO meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = $2",
                        &[&key, &v],
                    )
                    .await
                }
                None => c.execute("DELETE FROM meta WHERE name = $1", &[&key]).await,
            };
            r.map_err(|e| E::from(e).into_store())?;
            Ok(())
        })
    }

    fn set_sweep_mark(&self, id: String, mark: SweepMark) -> BoxFut<'_, ()> {
        Box::pin(async move {
            self.exec(
                "INSERT INTO sweep_marks (payment_id, mark) VALUES ($1, $2::text::jsonb) \
                 ON CONFLICT (payment_id) DO UPDATE SET mark = EXCLUDED.mark",
                &[&id, &ops::json(&mark)],
            )
            .await?;
            Ok(())
        })
    }

    fn expire_orphans(&self, before_ms: u64) -> BoxFut<'_, usize> {
        Box::pin(async move { in_tx!(self, |t| ops::expire_orphans(&t, before_ms)) })
    }

    fn record_repeats(&self, counts: Vec<Repeats>) -> BoxFut<'_, ()> {
        Box::pin(async move {
            for chunk in counts.chunks(256) {
                in_tx!(self, |t| ops::record_repeats(&t, chunk))?;
            }
            Ok(())
        })
    }

    fn claim_window<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        now_ms: u64,
        until_ms: u64,
    ) -> BoxFut<'a, bool> {
        Box::pin(async move {
            let n = self
                .exec(
                    "UPDATE windows SET lease_owner = $2, lease_until_ms = $3 \
                     WHERE payment_id = $1 \
                       AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until_ms < $4)",
                    &[&id, &owner, &i(until_ms), &i(now_ms)],
                )
                .await?;
            Ok(n == 1)
        })
    }

    fn take_lease<'a>(
        &'a self,
        name: &'a str,
        owner: &'a str,
        now_ms: u64,
        until_ms: u64,
    ) -> BoxFut<'a, bool> {
        Box::pin(async move {
            let n = self
                .exec(
                    "INSERT INTO leases (name, owner, until_ms) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, until_ms = EXCLUDED.until_ms \
                     WHERE leases.owner = EXCLUDED.owner OR leases.until_ms < $4",
                    &[&name, &owner, &i(until_ms), &i(now_ms)],
                )
                .await?;
            Ok(n == 1)
        })
    }

    fn release_lease<'a>(&'a self, name: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            self.exec(
                "DELETE FROM leases WHERE name = $1 AND owner = $2",
                &[&name, &owner],
            )
            .await?;
            Ok(())
        })
    }

    fn claim_free_windows<'a>(
        &'a self,
        owner: &'a str,
        now_ms: u64,
        until_ms: u64,
        limit: usize,
    ) -> BoxFut<'a, Vec<(String, ProviderId)>> {
        Box::pin(async move {
            let c = self.client().await?;
            let rows = c
                .query(
                    "UPDATE windows SET lease_owner = $1, lease_until_ms = $2 \
                     WHERE payment_id IN ( \
                         SELECT payment_id FROM windows \
                         WHERE lease_owner IS NULL OR lease_until_ms < $3 \
                         ORDER BY next_ms LIMIT $4 FOR UPDATE SKIP LOCKED) \
                     RETURNING payment_id, provider",
                    &[
                        &owner,
                        &i(until_ms),
                        &i(now_ms),
                        &(limit.min(i64::MAX as usize) as i64),
                    ],
                )
                .await
                .map_err(|e| E::from(e).into_store())?;
            rows.iter().map(window_of).collect()
        })
    }

    fn sync(&self) -> BoxFut<'_, ()> {
        // Every write resolved after its commit.
        Box::pin(std::future::ready(Ok(())))
    }

    fn bulk_load(
        &self,
        items: &mut dyn Iterator<Item = (Payment, Vec<Observation>, Vec<String>)>,
    ) -> Result<usize, StoreError> {
        // Called from synchronous code (imports, benchmarks): the copy
        // runs on a runtime of its own, on a thread of its own.
        let items: Vec<_> = items.collect();
        let pool = self.pool.clone();
        let n = std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| StoreError::Database(e.to_string()))?;
                rt.block_on(super::bulk::load(&pool, items))
            })
            .join()
            .unwrap_or_else(|_| Err(StoreError::Database("bulk load panicked".into())))
        })?;
        self.gauges.payments.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFut<'a, Option<Payment>> {
        Box::pin(self.one("SELECT record::text FROM payments WHERE id = $1", id))
    }

    fn find<'a>(&'a self, lookup_key: &'a str) -> BoxFut<'a, Option<String>> {
        Box::pin(async move {
            let c = self.client().await?;
            ops::find(&**c, lookup_key).await.map_err(E::into_store)
        })
    }

    fn history<'a>(&'a self, id: &'a str) -> BoxFut<'a, Vec<Observation>> {
        Box::pin(async move {
            self.many(
                "SELECT record::text FROM observations WHERE payment_id = $1 ORDER BY seq",
                &[&id],
            )
            .await
        })
    }

    fn last_observation<'a>(&'a self, id: &'a str) -> BoxFut<'a, Option<Observation>> {
        Box::pin(self.one(
            "SELECT record::text FROM observations WHERE payment_id = $1 ORDER BY seq DESC LIMIT 1",
            id,
        ))
    }

    fn list<'a>(
        &'a self,
        filter: &'a Filter,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFut<'a, Vec<Payment>> {
        Box::pin(async move {
            let state = filter.state.map(|s| s.as_str().to_string());
            let provider = filter.provider.map(|p| p.to_string());
            let rows: Vec<Payment> = self
                .many(
                    "SELECT record::text FROM payments \
                     WHERE id > $1 AND ($2::text IS NULL OR state = $2) \
                       AND ($3::text IS NULL OR provider = $3) \
                       AND (NOT $4 OR record->'mismatch' IS NOT NULL AND record->'mismatch' <> 'null'::jsonb) \
                     ORDER BY id LIMIT $5",
                    &[
                        &after.unwrap_or(""),
                        &state,
                        &provider,
                        &filter.mismatch,
                        &(limit.min(i64::MAX as usize) as i64),
                    ],
                )
                .await?;
            Ok(rows.into_iter().filter(|p| filter.keeps(p)).collect())
        })
    }

    fn open_windows(&self) -> BoxFut<'_, Vec<(String, ProviderId, u64)>> {
        Box::pin(async move {
            let c = self.client().await?;
            let rows = c
                .query("SELECT payment_id, provider, next_ms FROM windows", &[])
                .await
                .map_err(|e| E::from(e).into_store())?;
            rows.iter()
                .map(|r| {
                    let (id, p) = window_of(r)?;
                    Ok((id, p, r.get::<_, i64>(2).max(0) as u64))
                })
                .collect()
        })
    }

    fn get_action<'a>(&'a self, id: &'a str) -> BoxFut<'a, Option<Action>> {
        Box::pin(self.one("SELECT record::text FROM actions WHERE id = $1", id))
    }

    fn outbox(&self) -> BoxFut<'_, Vec<Action>> {
        Box::pin(async move {
            self.many(
                "SELECT record::text FROM actions WHERE NOT final ORDER BY id",
                &[],
            )
            .await
        })
    }

    fn action_counts(&self) -> BoxFut<'_, BTreeMap<String, u64>> {
        Box::pin(async move {
            let c = self.client().await?;
            let rows = c
                .query("SELECT state, count(*) FROM actions GROUP BY state", &[])
                .await
                .map_err(|e| E::from(e).into_store())?;
            Ok(rows
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1).max(0) as u64))
                .collect())
        })
    }

    fn actions_of<'a>(&'a self, payment_id: &'a str) -> BoxFut<'a, Vec<Action>> {
        Box::pin(async move {
            self.many(
                "SELECT record::text FROM actions WHERE payment_id = $1 ORDER BY id",
                &[&payment_id],
            )
            .await
        })
    }

    fn notices(&self, limit: usize) -> BoxFut<'_, Vec<Notice>> {
        Box::pin(async move {
            self.many(
                "SELECT record::text FROM notices WHERE NOT dead ORDER BY seq LIMIT $1",
                &[&(limit.min(i64::MAX as usize) as i64)],
            )
            .await
        })
    }

    fn meta<'a>(&'a self, key: &'a str) -> BoxFut<'a, Option<String>> {
        Box::pin(async move {
            let c = self.client().await?;
            let row = c
                .query_opt("SELECT value FROM meta WHERE name = $1", &[&key])
                .await
                .map_err(|e| E::from(e).into_store())?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn sweep_mark<'a>(&'a self, id: &'a str) -> BoxFut<'a, SweepMark> {
        Box::pin(async move {
            Ok(self
                .one(
                    "SELECT mark::text FROM sweep_marks WHERE payment_id = $1",
                    id,
                )
                .await?
                .unwrap_or_default())
        })
    }

    fn orphan_count(&self) -> BoxFut<'_, usize> {
        Box::pin(async move {
            let c = self.client().await?;
            let n: i64 = c
                .query_one("SELECT count(*) FROM orphans", &[])
                .await
                .map_err(|e| E::from(e).into_store())?
                .get(0);
            Ok(n.max(0) as usize)
        })
    }

    fn payment_count(&self) -> usize {
        self.gauges.payments.load(Ordering::Relaxed) as usize
    }

    fn notice_backlog(&self) -> usize {
        self.gauges.notices.load(Ordering::Relaxed) as usize
    }

    fn dead_notices(&self) -> usize {
        self.gauges.dead.load(Ordering::Relaxed) as usize
    }

    fn inbox_len(&self) -> usize {
        self.gauges.inbox.load(Ordering::Relaxed) as usize
    }

    fn size_on_disk(&self) -> u64 {
        self.gauges.bytes.load(Ordering::Relaxed)
    }

    fn healthy(&self) -> bool {
        self.gauges.healthy.load(Ordering::Relaxed)
    }

    fn flushes(&self) -> u64 {
        self.gauges.commits.load(Ordering::Relaxed)
    }

    fn next_id(&self) -> Result<String, StoreError> {
        Ok(Self::new_id("pay_"))
    }
}
