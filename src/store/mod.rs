//! The store: payments, their histories, the key index, the callback
//! inbox, orphan callbacks, the action outbox and the notification outbox.
//!
//! [`Store`] is what the rest of payrecon uses. It speaks to a [`Backend`]
//! (sled, in `sled/`; see backend.rs for what another engine must do) and
//! keeps, above it, the repeats of poll answers that need no write
//! (echo.rs). A write's future resolves once the write is durable: every
//! 200 and 202 payrecon sends comes after that.
//!
//! - backend.rs: the interface an engine implements
//! - apply.rs: what a report does to a payment (shared by every engine)
//! - codec.rs: how records are encoded on disk
//! - echo.rs: repeats of poll answers, counted in memory
//! - sled/: the sled engine (one writer, one keyspace, batched commits)
//! - pg/: the PostgreSQL engine for several instances (its pool and
//!   schema so far; docs/postgres.md)

pub mod apply;
mod backend;
pub mod codec;
mod echo;
pub mod flusher;
pub mod pg;
mod sled;
mod types;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub use backend::{Backend, BoxFut, Policy, Repeats};
pub use types::*;

use crate::action::Action;
use crate::model::{Observation, Payment, PollWindow, ProviderId, Report};
use echo::Echoes;

/// sled's page cache. Its own default (1 GiB) would let a daemon's RSS grow
/// with the whole book; recent payments are what polls and callbacks touch.
pub const DEFAULT_CACHE_MB: u64 = 64;

/// How often repeat counts held in memory are written (they are also
/// written with the payment's next change, and at shutdown).
/// How often repeat counts held in memory are written. Each write rewrites
/// the payment and the repeated observation, so at 50 000 windows a 10 s
/// checkpoint cost 5 000 record rewrites a second, about as much as the
/// polls themselves; a crash loses only counts (docs/states.md).
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

fn default_policy() -> Arc<Policy> {
    Arc::new(Policy {
        notify: AtomicBool::new(false),
        orphans_per_key: AtomicU64::new(DEFAULT_ORPHANS_PER_KEY),
        orphans_total: AtomicU64::new(DEFAULT_ORPHANS_TOTAL),
    })
}

#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    policy: Arc<Policy>,
    echoes: Arc<Echoes>,
}

impl Store {
    /// Opens (or creates) the sled store in `path`. Needs a tokio runtime
    /// (the repeat checkpoint runs on it).
    pub fn open(path: &std::path::Path) -> Result<Store, StoreError> {
        Store::open_with(path, DEFAULT_CACHE_MB, false)
    }

    /// Opens the sled store with its page cache bounded to `cache_mb` MiB,
    /// with or without zstd compression. A store written by an earlier
    /// release is migrated first (docs/states.md).
    pub fn open_with(
        path: &std::path::Path,
        cache_mb: u64,
        compression: bool,
    ) -> Result<Store, StoreError> {
        let policy = default_policy();
        let backend = sled::SledStore::open(path, cache_mb, compression, policy.clone())?;
        Ok(Store::with_backend(Arc::new(backend), policy))
    }

    /// Opens the PostgreSQL store (docs/postgres.md): connects, brings the
    /// schema up to date, and counts the gauges once.
    pub async fn open_postgres(settings: &pg::PgSettings) -> Result<Store, StoreError> {
        let pool = pg::pool(settings)?;
        pg::migrate(&pool).await?;
        let policy = default_policy();
        let backend = pg::PgStore::open(pool, policy.clone()).await?;
        Ok(Store::with_backend(Arc::new(backend), policy))
    }

    /// A store over any engine.
    pub fn with_backend(backend: Arc<dyn Backend>, policy: Arc<Policy>) -> Store {
        let store = Store {
            backend,
            policy,
            echoes: Arc::new(Echoes::default()),
        };
        let (weak_b, weak_e) = (
            Arc::downgrade(&store.backend),
            Arc::downgrade(&store.echoes),
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(CHECKPOINT_EVERY).await;
                let (Some(b), Some(e)) = (weak_b.upgrade(), weak_e.upgrade()) else {
                    break;
                };
                if let Err(err) = checkpoint(&*b, &e).await {
                    tracing::warn!(error = %err, "repeat counts not written; trying again");
                }
            }
        });
        store
    }

    /// Takes or renews a lease on a payment's window: true when its owner
    /// may poll it now (Backend::claim_window).
    pub async fn claim_window(&self, id: &str, lease: Lease<'_>) -> Result<bool, StoreError> {
        self.backend.claim_window(id, lease).await
    }

    /// Takes or renews a named lease (Backend::take_lease).
    pub async fn take_lease(&self, name: &str, lease: Lease<'_>) -> Result<bool, StoreError> {
        self.backend.take_lease(name, lease).await
    }

    /// Gives up a named lease (Backend::release_lease).
    pub async fn release_lease(&self, name: &str, owner: &str) -> Result<(), StoreError> {
        self.backend.release_lease(name, owner).await
    }

    /// Claims windows no instance holds (Backend::claim_free_windows).
    pub async fn claim_free_windows(
        &self,
        lease: Lease<'_>,
        limit: usize,
    ) -> Result<Vec<(String, ProviderId)>, StoreError> {
        self.backend.claim_free_windows(lease, limit).await
    }

    /// Takes or renews the lease on an action not final and reads it
    /// (Backend::claim_action): None when it is final or held elsewhere.
    pub async fn claim_action(
        &self,
        id: &str,
        lease: Lease<'_>,
    ) -> Result<Option<Action>, StoreError> {
        self.backend.claim_action(id, lease).await
    }

    /// Gives up a lease on an action (Backend::release_action).
    pub async fn release_action(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        self.backend.release_action(id, owner).await
    }

    /// Takes the lease on a queued notice for one delivery
    /// (Backend::claim_notice).
    pub async fn claim_notice(&self, seq: u64, lease: Lease<'_>) -> Result<bool, StoreError> {
        self.backend.claim_notice(seq, lease).await
    }

    /// Waits until every write answered so far is on disk. Writes are
    /// durable when they resolve; this is for callers that must be sure
    /// after a read (a duplicate's acknowledgement).
    pub async fn sync(&self) -> Result<(), StoreError> {
        self.backend.sync().await
    }

    /// Writes the repeat counts held in memory and flushes. For shutdown.
    pub async fn close(&self) -> Result<(), StoreError> {
        checkpoint(&*self.backend, &self.echoes).await?;
        self.backend.sync().await
    }

    /// How many group flushes finished: tests use it to see that an answer
    /// waited for one.
    pub fn flushed_tickets(&self) -> u64 {
        self.backend.flushes()
    }

    /// Checks the store now (Backend::probe).
    pub async fn probe(&self) -> Result<Probe, StoreError> {
        self.backend.probe().await
    }

    pub fn healthy(&self) -> bool {
        self.backend.healthy()
    }

    pub fn size_on_disk(&self) -> u64 {
        self.backend.size_on_disk()
    }

    /// A fresh payment id: creation-ordered, for paging.
    pub fn next_id(&self) -> Result<String, StoreError> {
        self.backend.next_id()
    }

    /// Turns the notification outbox on: from now on every state change
    /// queues a notice in the same commit.
    pub fn enable_notices(&self, on: bool) {
        self.policy.notify.store(on, Ordering::SeqCst);
    }

    /// Sets how many orphan callbacks are kept per lookup key and in all.
    pub fn set_orphan_limits(&self, per_key: u64, total: u64) {
        self.policy
            .orphans_per_key
            .store(per_key, Ordering::Relaxed);
        self.policy.orphans_total.store(total, Ordering::Relaxed);
    }

    /// Starts tracking a payment, or finds it if it is already tracked.
    /// Orphan callbacks waiting under its lookup keys are applied in the
    /// same commit.
    pub async fn track(&self, new: NewPayment) -> Result<Tracked, StoreError> {
        self.backend.track(new).await
    }

    /// Records an observation of a payment (poll, reconcile, action) and
    /// moves its window. An answer that repeats the payment's last one is
    /// counted in memory and written later (echo.rs); anything else is
    /// written, with the counts held for the payment, before this returns.
    pub async fn observe(
        &self,
        id: &str,
        report: Report,
        window: WindowChange,
        now_ms: u64,
    ) -> Result<Observed, StoreError> {
        if window != WindowChange::Close {
            if !self.echoes.knows(id) {
                if let Some(last) = self.backend.last_observation(id).await? {
                    self.echoes.remember(id, &last);
                }
            }
            if let Some(seq) = self.echoes.repeat(id, &report, window, now_ms) {
                return self.echo(id, report, seq, now_ms).await;
            }
        }
        let carry = self.echoes.take(id);
        let res = self
            .backend
            .observe(id, report, window, now_ms, carry.clone())
            .await;
        match &res {
            Ok(o) if o.payment.window.is_some_and(|w| w.open) => {
                self.echoes.remember(id, &o.observation)
            }
            Ok(_) => self.echoes.forget(id),
            Err(_) => self.echoes.restore(carry),
        }
        res
    }

    /// A repeat: the payment as stored with the counts held in memory, and
    /// the observation it repeats.
    async fn echo(
        &self,
        id: &str,
        report: Report,
        seq: u32,
        now_ms: u64,
    ) -> Result<Observed, StoreError> {
        let payment = self.get(id).await?.ok_or(StoreError::NotFound(id.into()))?;
        let observation = Observation {
            seq,
            source: report.source,
            at_ms: now_ms,
            raw_status: report.raw_status,
            state: report.state,
            decision: report.state.map(|_| crate::state::Decision::Same),
            fields: report.fields,
            repeats: 1,
            last_ms: Some(now_ms),
        };
        Ok(Observed {
            payment,
            observation,
            change: None,
            repeat: true,
        })
    }

    /// Moves a payment's poll window without an observation (the inquiry
    /// gave no answer to record). Only a closing window is written.
    pub async fn advance_window(
        &self,
        id: &str,
        window: WindowChange,
    ) -> Result<Option<PollWindow>, StoreError> {
        if let WindowChange::Next(at) = window {
            self.echoes.count_poll(id, at);
            return Ok(self.get(id).await?.and_then(|p| p.window));
        }
        let carry = self.echoes.take(id);
        let res = self.backend.advance_window(id, window, carry.clone()).await;
        match &res {
            Ok(Some(w)) if w.open => {}
            Ok(_) => self.echoes.forget(id),
            Err(_) => self.echoes.restore(carry),
        }
        res
    }

    /// Commits a verified callback: de-duplicates it, applies it to its
    /// payment or keeps it as an orphan. Durable when it returns, a
    /// duplicate included (its first copy may have been in flight).
    pub async fn ingest_callback(&self, cb: CallbackRecord) -> Result<Ingested, StoreError> {
        let res = self.backend.ingest_callback(cb).await;
        if let Ok(Ingested::Applied(o)) = &res {
            self.echoes.forget_last(&o.payment.id);
        }
        res
    }

    /// Queues an action in the outbox, unless its idempotency key was used
    /// before or another live action holds its exclusive key.
    pub async fn enqueue_action(
        &self,
        action: Action,
        exclusive_key: Option<&str>,
    ) -> Result<Enqueued, StoreError> {
        self.backend
            .enqueue_action(action, exclusive_key.map(str::to_string))
            .await
    }

    /// Writes an action's new state. A final action leaves the outbox; a
    /// succeeded one records `reports` as observations of its payment in
    /// the same commit.
    pub async fn update_action(
        &self,
        action: &Action,
        reports: Vec<Report>,
    ) -> Result<Vec<Change>, StoreError> {
        let wrote = !reports.is_empty();
        let res = self.backend.update_action(action.clone(), reports).await;
        if wrote {
            self.echoes.forget_last(&action.payment_id);
        }
        res
    }

    /// The action holding an exclusive key, unless it failed (a failed
    /// action lets go). [`Store::enqueue_action`] checks the same in its
    /// commit; this answers before a request is judged.
    pub async fn live_holder(&self, exclusive_key: &str) -> Result<Option<Action>, StoreError> {
        let Some(id) = self.find(exclusive_key).await? else {
            return Ok(None);
        };
        Ok(self
            .get_action(&id)
            .await?
            .filter(|a| a.state != crate::action::ActionState::Failed))
    }

    pub async fn get(&self, id: &str) -> Result<Option<Payment>, StoreError> {
        let mut p = self.backend.get(id).await?;
        if let Some(p) = p.as_mut() {
            self.echoes.overlay(p);
        }
        Ok(p)
    }

    /// The payment id a lookup key points at.
    pub async fn find(&self, lookup_key: &str) -> Result<Option<String>, StoreError> {
        self.backend.find(lookup_key).await
    }

    /// A payment's history, oldest first, with repeats counted so far.
    pub async fn history(&self, id: &str) -> Result<Vec<Observation>, StoreError> {
        let mut h = self.backend.history(id).await?;
        self.echoes.overlay_history(id, &mut h);
        Ok(h)
    }

    /// Payments in id (creation) order after `after`, filtered.
    pub async fn list(
        &self,
        state: Option<crate::state::State>,
        provider: Option<ProviderId>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Payment>, StoreError> {
        let filter = Filter {
            state,
            provider,
            mismatch: false,
        };
        self.list_filtered(&filter, after, limit).await
    }

    /// Payments in id (creation) order after `after` that `filter` keeps.
    pub async fn list_filtered(
        &self,
        filter: &Filter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Payment>, StoreError> {
        let mut page = self.backend.list(filter, after, limit).await?;
        page.iter_mut().for_each(|p| self.echoes.overlay(p));
        Ok(page)
    }

    /// Writes payments with their histories and lookup keys in large
    /// batches, without checks. For imports and benchmarks that build
    /// large stores; never used while the daemon runs.
    pub fn bulk_load<I>(&self, items: I) -> Result<usize, StoreError>
    where
        I: IntoIterator<Item = (Payment, Vec<Observation>, Vec<String>)>,
    {
        self.backend.bulk_load(&mut items.into_iter())
    }

    /// Every open poll window: payment id, provider and the next poll as
    /// last written (unix ms; polls since may have moved it on).
    pub async fn open_windows(&self) -> Result<Vec<(String, ProviderId, u64)>, StoreError> {
        self.backend.open_windows().await
    }

    pub async fn get_action(&self, id: &str) -> Result<Option<Action>, StoreError> {
        self.backend.get_action(id).await
    }

    /// Actions still in the outbox (queued, sending or unknown).
    pub async fn outbox(&self) -> Result<Vec<Action>, StoreError> {
        self.backend.outbox().await
    }

    /// Number of actions in each state, over every action ever queued.
    pub async fn action_counts(
        &self,
    ) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        self.backend.action_counts().await
    }

    /// A payment's actions, oldest first.
    pub async fn actions_of(&self, payment_id: &str) -> Result<Vec<Action>, StoreError> {
        self.backend.actions_of(payment_id).await
    }

    pub fn payment_count(&self) -> usize {
        self.backend.payment_count()
    }

    /// The oldest `limit` notices waiting for delivery, oldest first.
    pub async fn notices(&self, limit: usize) -> Result<Vec<Notice>, StoreError> {
        self.backend.notices(limit).await
    }

    pub fn notice_backlog(&self) -> usize {
        self.backend.notice_backlog()
    }

    pub fn dead_notices(&self) -> usize {
        self.backend.dead_notices()
    }

    /// Records a failed attempt (new attempt count, next due time), only
    /// if the notice is still queued.
    pub async fn update_notice(&self, n: &Notice) -> Result<(), StoreError> {
        self.backend.update_notice(n.clone()).await
    }

    /// Dead letters (notices given up after the horizon), in order, after
    /// the seq `after`, at most `limit`.
    pub async fn dead_letters(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Notice>, StoreError> {
        self.backend.dead_letters(after, limit).await
    }

    /// Puts dead letters back in the queue (Backend::replay_dead): those
    /// that were dead, now queued under their own `webhook-id`.
    pub async fn replay_dead(&self, seqs: Vec<u64>) -> Result<Vec<Notice>, StoreError> {
        self.backend.replay_dead(seqs).await
    }

    /// Puts back every dead letter of a change at or after `since_ms`;
    /// returns how many.
    pub async fn replay_dead_since(&self, since_ms: u64) -> Result<usize, StoreError> {
        let mut after = None;
        let mut replayed = 0;
        loop {
            let page = self.dead_letters(after, 1_000).await?;
            let Some(last) = page.last() else {
                return Ok(replayed);
            };
            after = Some(last.seq);
            let due: Vec<u64> = page
                .iter()
                .filter(|n| n.at_ms >= since_ms)
                .map(|n| n.seq)
                .collect();
            replayed += self.replay_dead(due).await?.len();
        }
    }

    /// A delivered notice leaves the outbox; one past the retry horizon
    /// moves to the dead letters.
    pub async fn remove_notice(&self, n: &Notice, dead: bool) -> Result<(), StoreError> {
        self.backend.remove_notice(n.clone(), dead).await
    }

    /// A small key-value for the daemon's own facts (the disabled
    /// notification URL).
    pub async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.backend.meta(key).await
    }

    pub async fn set_meta(&self, key: &str, value: Option<&str>) -> Result<(), StoreError> {
        self.backend
            .set_meta(key.to_string(), value.map(str::to_string))
            .await
    }

    /// What the reconciliation sweep remembers of a payment (default:
    /// never asked).
    pub async fn sweep_mark(&self, id: &str) -> Result<crate::store::SweepMark, StoreError> {
        self.backend.sweep_mark(id).await
    }

    pub async fn set_sweep_mark(
        &self,
        id: &str,
        m: &crate::store::SweepMark,
    ) -> Result<(), StoreError> {
        self.backend.set_sweep_mark(id.to_string(), m.clone()).await
    }

    /// Orphan callbacks still waiting for their payment.
    pub async fn orphan_count(&self) -> Result<usize, StoreError> {
        self.backend.orphan_count().await
    }

    /// Forgets orphan callbacks received before `before_ms`, with their
    /// inbox entries (so a provider that sends one again is heard).
    pub async fn expire_orphans(&self, before_ms: u64) -> Result<usize, StoreError> {
        self.backend.expire_orphans(before_ms).await
    }

    /// Callbacks recorded in the inbox (each counted once).
    pub fn inbox_len(&self) -> usize {
        self.backend.inbox_len()
    }
}

/// Writes the repeat counts held in memory.
async fn checkpoint(backend: &dyn Backend, echoes: &Echoes) -> Result<(), StoreError> {
    let counts = echoes.drain();
    if counts.is_empty() {
        return Ok(());
    }
    let res = backend.record_repeats(counts.clone()).await;
    if res.is_err() {
        counts.into_iter().for_each(|c| echoes.restore(Some(c)));
    }
    res
}

#[cfg(test)]
mod tests;
