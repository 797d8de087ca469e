//! [`PgStore`]: the [`Backend`] on PostgreSQL. Every write is one
//! transaction (ops.rs), run again when another instance got to a key or
//! a lock first; it resolves after the commit, so a 200 follows a durable
//! write whichever instance gave it. Reads are plain queries.
//! Actions' writes are in actions.rs, leases in leases.rs, the gauges in
//! gauges.rs.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use deadpool_postgres::Pool;

use super::cached;
use super::gauges::Gauges;
use super::ops::{self, from_json, i, E};
use crate::action::Action;
use crate::model::{Observation, Payment, PollWindow, ProviderId, Report};
use crate::store::{
    Backend, BoxFut, CallbackRecord, Change, Enqueued, Filter, Ingested, Lease, NewPayment, Notice,
    Observed, Policy, PoolProbe, Probe, Repeats, StoreError, SweepMark, Tracked, WindowChange,
};

/// How long `/readyz` waits for the database.
const PROBE_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Times a transaction is run when other instances keep winning its keys.
const ATTEMPTS: u32 = 5;

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
            let $t = client.transaction().await?;
            match $body.await {
                Ok(v) => {
                    $t.commit().await?;
                    Gauges::add(&$self.gauges.commits, 1);
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
        let gauges = Gauges::start(&pool).await?;
        Ok(PgStore {
            pool,
            policy,
            gauges,
        })
    }

    /// Counts notices that changes just queued (when notices are on).
    fn queued(&self, changes: usize) {
        if self.policy.notify.load(Ordering::SeqCst) {
            Gauges::add(&self.gauges.notices, changes as u64);
        }
    }

    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        super::connect(&self.pool).await
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
        let row = cached::row_opt(&c, sql, &[&arg]).await?;
        row.map(|r| from_json(arg, r.get(0))).transpose()
    }

    /// One statement outside a transaction; the rows it touched.
    pub(super) async fn exec(
        &self,
        sql: &str,
        args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let c = self.client().await?;
        Ok(cached::exec(&c, sql, args).await?)
    }

    async fn many<T: serde::de::DeserializeOwned>(
        &self,
        sql: &str,
        args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<T>, StoreError> {
        let c = self.client().await?;
        let rows = cached::rows(&c, sql, args).await?;
        rows.iter().map(|r| from_json(sql, r.get(0))).collect()
    }
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
                Gauges::add(&self.gauges.payments, 1);
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
                Gauges::add(&self.gauges.inbox, 1);
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
            in_tx!(self, |t| super::actions::enqueue(
                &t,
                a.clone(),
                exclusive_key.clone(),
                id.clone()
            ))
        })
    }

    fn update_action(&self, a: Action, reports: Vec<Report>) -> BoxFut<'_, Vec<Change>> {
        Box::pin(async move {
            let changes = in_tx!(self, |t| super::actions::update_action(
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
                "UPDATE notices SET next_ms = $2, record = $3::text::jsonb, lease_owner = NULL, lease_until_ms = NULL \
                 WHERE seq = $1 AND NOT dead",
                &[&i(n.seq), &i(n.next_ms), &ops::json(&n)],
            )
            .await?;
            Ok(())
        })
    }

    fn remove_notice(&self, n: Notice, dead: bool) -> BoxFut<'_, ()> {
        Box::pin(async move {
            let done = if dead {
                self.exec(
                    "UPDATE notices SET dead = true, record = $2::text::jsonb WHERE seq = $1 AND NOT dead",
                    &[&i(n.seq), &ops::json(&n)],
                )
                .await?
            } else {
                self.exec(
                    "DELETE FROM notices WHERE seq = $1 AND NOT dead",
                    &[&i(n.seq)],
                )
                .await?
            };
            if done > 0 {
                Gauges::take_one(&self.gauges.notices);
                if dead {
                    Gauges::add(&self.gauges.dead, 1);
                }
            }
            Ok(())
        })
    }

    fn replay_dead(&self, seqs: Vec<u64>) -> BoxFut<'_, Vec<Notice>> {
        Box::pin(async move {
            let seqs: Vec<i64> = seqs.into_iter().map(i).collect();
            let back: Vec<Notice> = self
                .many(
                    "UPDATE notices SET dead = false, next_ms = 0, lease_owner = NULL, lease_until_ms = NULL, \
                     record = record || '{\"attempts\": 0, \"next_ms\": 0}'::jsonb \
                     WHERE seq = ANY($1) AND dead RETURNING record::text",
                    &[&seqs],
                )
                .await?;
            Gauges::add(&self.gauges.notices, back.len() as u64);
            Gauges::take(&self.gauges.dead, back.len() as u64);
            Ok(back)
        })
    }

    fn set_meta(&self, key: String, value: Option<String>) -> BoxFut<'_, ()> {
        Box::pin(async move {
            match value {
                Some(v) => {
                    self.exec(
                        "INSERT INTO meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = $2",
                        &[&key, &v],
                    )
                    .await?
                }
                None => self.exec("DELETE FROM meta WHERE name = $1", &[&key]).await?,
            };
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

    fn claim_window<'a>(&'a self, id: &'a str, lease: Lease<'a>) -> BoxFut<'a, bool> {
        Box::pin(self.lease_window(id, lease))
    }

    fn take_lease<'a>(&'a self, name: &'a str, lease: Lease<'a>) -> BoxFut<'a, bool> {
        Box::pin(self.lease_named(name, lease))
    }

    fn release_lease<'a>(&'a self, name: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(self.unlease_named(name, owner))
    }

    fn claim_free_windows<'a>(
        &'a self,
        lease: Lease<'a>,
        limit: usize,
    ) -> BoxFut<'a, Vec<(String, ProviderId)>> {
        Box::pin(self.lease_free_windows(lease, limit))
    }

    fn claim_action<'a>(&'a self, id: &'a str, lease: Lease<'a>) -> BoxFut<'a, Option<Action>> {
        Box::pin(self.lease_action(id, lease))
    }

    fn release_action<'a>(&'a self, id: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(self.unlease_action(id, owner))
    }

    fn claim_notice<'a>(&'a self, seq: u64, lease: Lease<'a>) -> BoxFut<'a, bool> {
        Box::pin(self.lease_notice(seq, lease))
    }

    fn sync(&self) -> BoxFut<'_, ()> {
        // Every write resolved after its commit.
        Box::pin(std::future::ready(Ok(())))
    }

    fn bulk_load(
        &self,
        items: &mut dyn Iterator<Item = (Payment, Vec<Observation>, Vec<String>)>,
    ) -> Result<usize, StoreError> {
        let n = super::bulk::load_blocking(&self.pool, items.collect())?;
        Gauges::add(&self.gauges.payments, n as u64);
        Ok(n)
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFut<'a, Option<Payment>> {
        Box::pin(self.one("SELECT record::text FROM payments WHERE id = $1", id))
    }

    fn find<'a>(&'a self, lookup_key: &'a str) -> BoxFut<'a, Option<String>> {
        Box::pin(async move {
            let c = self.client().await?;
            ops::find(&c, lookup_key).await.map_err(E::into_store)
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
                        &i(limit as u64),
                    ],
                )
                .await?;
            Ok(rows.into_iter().filter(|p| filter.keeps(p)).collect())
        })
    }

    fn open_windows(&self) -> BoxFut<'_, Vec<(String, ProviderId, u64)>> {
        Box::pin(async move {
            let c = self.client().await?;
            let rows =
                cached::rows(&c, "SELECT payment_id, provider, next_ms FROM windows", &[]).await?;
            rows.iter()
                .map(|r| {
                    let (id, p) = super::leases::window_of(r)?;
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
            let rows = cached::rows(
                &c,
                "SELECT state, count(*) FROM actions GROUP BY state",
                &[],
            )
            .await?;
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

    fn dead_letters(&self, after: Option<u64>, limit: usize) -> BoxFut<'_, Vec<Notice>> {
        Box::pin(async move {
            let after = after.map_or(-1, i);
            self.many(
                "SELECT record::text FROM notices WHERE dead AND seq > $1 ORDER BY seq LIMIT $2",
                &[&after, &i(limit as u64)],
            )
            .await
        })
    }

    fn notices(&self, limit: usize) -> BoxFut<'_, Vec<Notice>> {
        Box::pin(async move {
            self.many(
                "SELECT record::text FROM notices WHERE NOT dead ORDER BY seq LIMIT $1",
                &[&i(limit as u64)],
            )
            .await
        })
    }

    fn meta<'a>(&'a self, key: &'a str) -> BoxFut<'a, Option<String>> {
        Box::pin(async move {
            let c = self.client().await?;
            let row =
                cached::row_opt(&c, "SELECT value FROM meta WHERE name = $1", &[&key]).await?;
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
            let n: i64 = cached::row(&c, "SELECT count(*) FROM orphans", &[])
                .await?
                .get(0);
            Ok(n.max(0) as usize)
        })
    }

    fn payment_count(&self) -> usize {
        Gauges::get(&self.gauges.payments) as usize
    }

    fn notice_backlog(&self) -> usize {
        Gauges::get(&self.gauges.notices) as usize
    }

    fn dead_notices(&self) -> usize {
        Gauges::get(&self.gauges.dead) as usize
    }

    fn inbox_len(&self) -> usize {
        Gauges::get(&self.gauges.inbox) as usize
    }

    fn size_on_disk(&self) -> u64 {
        Gauges::get(&self.gauges.bytes)
    }

    fn healthy(&self) -> bool {
        self.gauges.healthy.load(Ordering::Relaxed)
    }

    fn probe(&self) -> BoxFut<'_, Probe> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let asked = tokio::time::timeout(PROBE_LIMIT, async {
                let c = self.client().await?;
                c.simple_query("SELECT 1").await?;
                Ok::<_, StoreError>(())
            })
            .await;
            let error = match asked {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!(
                    "database: no answer within {} s",
                    PROBE_LIMIT.as_secs()
                )),
            };
            let s = self.pool.status();
            Ok(Probe {
                engine: "postgres",
                ok: error.is_none(),
                round_trip_ms: error
                    .is_none()
                    .then(|| started.elapsed().as_secs_f64() * 1e3),
                pool: Some(PoolProbe {
                    open: s.size,
                    idle: s.available,
                    max: s.max_size,
                    waiting: s.waiting,
                }),
                error,
            })
        })
    }

    fn flushes(&self) -> u64 {
        Gauges::get(&self.gauges.commits)
    }

    fn next_id(&self) -> Result<String, StoreError> {
        Ok(Self::new_id("pay_"))
    }
}
