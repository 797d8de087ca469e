//! The interface a store engine implements. The engine, the providers and
//! the listeners see only [`super::Store`], which speaks to a `Backend`;
//! sled is the one engine today, and another (PostgreSQL) plugs in by
//! implementing this trait and nothing else.
//!
//! What every engine must keep:
//! - A write's future resolves only once the write is durable, and a
//!   write is atomic: a callback's inbox entry, its observation, the
//!   payment's new state and the notice of the change land together or
//!   not at all.
//! - Reports are applied with [`super::apply::apply`]: the state machine
//!   is judged the same way everywhere, and a state never goes backwards.
//! - An idempotency key, a lookup key or a callback's de-duplication key
//!   is taken once: a second writer sees the first.
//! - Reads may run beside writes and see any committed state.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64};

use crate::action::Action;
use crate::model::{Observation, Payment, PollWindow, ProviderId, Report};
use crate::store::SweepMark;

use super::{
    CallbackRecord, Change, Enqueued, Filter, Ingested, Lease, NewPayment, Notice, Observed, Probe,
    StoreError, Tracked, WindowChange,
};

/// A boxed future of a store answer: what keeps the trait usable as `dyn`.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Settings the daemon changes while it runs, read by the engine on every
/// write.
#[derive(Debug)]
pub struct Policy {
    /// Whether state changes queue notifications (a URL is configured).
    pub notify: AtomicBool,
    /// Orphan callbacks kept at most per lookup key, and in all.
    pub orphans_per_key: AtomicU64,
    pub orphans_total: AtomicU64,
}

/// Repeats of a payment's last observation counted in memory, to add to
/// what is stored: the observation's repeat count and last time, and the
/// window's polls and next deadline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Repeats {
    pub payment_id: String,
    /// The observation repeated (none: polls without an answer only).
    pub seq: Option<u32>,
    pub repeats: u32,
    pub last_ms: u64,
    pub polls: u32,
    pub next_ms: Option<u64>,
}

pub trait Backend: Send + Sync + 'static {
    // Writes: each resolves once durable.
    fn track(&self, new: NewPayment) -> BoxFut<'_, Tracked>;
    fn observe(
        &self,
        id: &str,
        report: Report,
        window: WindowChange,
        now_ms: u64,
        carry: Option<Repeats>,
    ) -> BoxFut<'_, Observed>;
    fn advance_window(
        &self,
        id: &str,
        window: WindowChange,
        carry: Option<Repeats>,
    ) -> BoxFut<'_, Option<PollWindow>>;
    fn ingest_callback(&self, cb: CallbackRecord) -> BoxFut<'_, Ingested>;
    fn enqueue_action(&self, action: Action, exclusive_key: Option<String>)
        -> BoxFut<'_, Enqueued>;
    fn update_action(&self, action: Action, reports: Vec<Report>) -> BoxFut<'_, Vec<Change>>;
    fn update_notice(&self, n: Notice) -> BoxFut<'_, ()>;
    fn remove_notice(&self, n: Notice, dead: bool) -> BoxFut<'_, ()>;
    /// Moves the dead letters numbered `seqs` back to the queue, their
    /// attempts reset (same seq: the same `webhook-id`). Returns those
    /// that were dead; others are left as they are.
    fn replay_dead(&self, seqs: Vec<u64>) -> BoxFut<'_, Vec<Notice>>;
    fn set_meta(&self, key: String, value: Option<String>) -> BoxFut<'_, ()>;
    fn set_sweep_mark(&self, id: String, mark: SweepMark) -> BoxFut<'_, ()>;
    fn expire_orphans(&self, before_ms: u64) -> BoxFut<'_, usize>;
    fn record_repeats(&self, counts: Vec<Repeats>) -> BoxFut<'_, ()>;
    /// Resolves once every write answered before it is durable.
    fn sync(&self) -> BoxFut<'_, ()>;

    /// Takes or renews the lease on a payment's window: true when
    /// `lease.owner` may poll it now (no other instance holds an unexpired
    /// lease). An engine one instance owns (sled) always says yes.
    fn claim_window<'a>(&'a self, _id: &'a str, _lease: Lease<'a>) -> BoxFut<'a, bool> {
        Box::pin(std::future::ready(Ok(true)))
    }

    /// Takes or renews the lease called `name` (work one instance does at
    /// a time: a provider's sweep): true when `lease.owner` holds it now.
    /// An engine one instance owns always says yes.
    fn take_lease<'a>(&'a self, _name: &'a str, _lease: Lease<'a>) -> BoxFut<'a, bool> {
        Box::pin(std::future::ready(Ok(true)))
    }

    /// Gives up `owner`'s lease called `name`, if it holds it.
    fn release_lease<'a>(&'a self, _name: &'a str, _owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Claims up to `limit` windows that no instance holds (never
    /// claimed, or their lease ran out: an instance died): what the
    /// owner should start polling. None where one instance owns the
    /// store (it schedules every window at start).
    fn claim_free_windows<'a>(
        &'a self,
        _lease: Lease<'a>,
        _limit: usize,
    ) -> BoxFut<'a, Vec<(String, ProviderId)>> {
        Box::pin(std::future::ready(Ok(vec![])))
    }

    /// Takes or renews the lease on an action that is not final, and
    /// reads it in the same step: the action as stored now, or None when
    /// it is final or another instance holds it. The sender calls this
    /// before every `sending` mark and every inquiry, so it never acts on
    /// a stale copy or beside another instance. An engine one instance
    /// owns reads the action.
    fn claim_action<'a>(&'a self, id: &'a str, _lease: Lease<'a>) -> BoxFut<'a, Option<Action>> {
        Box::pin(async move {
            let a = self.get_action(id).await?;
            Ok(a.filter(|a| !a.state.is_final()))
        })
    }

    /// Gives up `owner`'s lease on an action (at shutdown, so another
    /// instance takes it over at once).
    fn release_action<'a>(&'a self, _id: &'a str, _owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Takes the lease on a queued notice for one delivery: true when it
    /// is still queued, still its payment's oldest, and no other instance
    /// holds it. One sender per payment at a time, in order. Recording
    /// the attempt (`update_notice`) gives the lease up. An engine one
    /// instance owns always says yes.
    fn claim_notice<'a>(&'a self, _seq: u64, _lease: Lease<'a>) -> BoxFut<'a, bool> {
        Box::pin(std::future::ready(Ok(true)))
    }

    /// Writes without checks, for imports and benchmarks (see
    /// [`super::Store::bulk_load`]).
    fn bulk_load(
        &self,
        items: &mut dyn Iterator<Item = (Payment, Vec<Observation>, Vec<String>)>,
    ) -> Result<usize, StoreError>;

    // Reads.
    fn get<'a>(&'a self, id: &'a str) -> BoxFut<'a, Option<Payment>>;
    fn find<'a>(&'a self, lookup_key: &'a str) -> BoxFut<'a, Option<String>>;
    fn history<'a>(&'a self, id: &'a str) -> BoxFut<'a, Vec<Observation>>;
    fn last_observation<'a>(&'a self, id: &'a str) -> BoxFut<'a, Option<Observation>>;
    fn list<'a>(
        &'a self,
        filter: &'a Filter,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFut<'a, Vec<Payment>>;
    fn open_windows(&self) -> BoxFut<'_, Vec<(String, ProviderId, u64)>>;
    fn get_action<'a>(&'a self, id: &'a str) -> BoxFut<'a, Option<Action>>;
    fn outbox(&self) -> BoxFut<'_, Vec<Action>>;
    fn action_counts(&self) -> BoxFut<'_, BTreeMap<String, u64>>;
    fn actions_of<'a>(&'a self, payment_id: &'a str) -> BoxFut<'a, Vec<Action>>;
    fn notices(&self, limit: usize) -> BoxFut<'_, Vec<Notice>>;
    /// Dead letters in order, after `after` (a seq), at most `limit`.
    fn dead_letters(&self, after: Option<u64>, limit: usize) -> BoxFut<'_, Vec<Notice>>;
    fn meta<'a>(&'a self, key: &'a str) -> BoxFut<'a, Option<String>>;
    fn sweep_mark<'a>(&'a self, id: &'a str) -> BoxFut<'a, SweepMark>;
    fn orphan_count(&self) -> BoxFut<'_, usize>;

    // Gauges, cheap enough for every metrics scrape.
    fn payment_count(&self) -> usize;
    fn notice_backlog(&self) -> usize;
    fn dead_notices(&self) -> usize;
    fn inbox_len(&self) -> usize;
    fn size_on_disk(&self) -> u64;
    fn healthy(&self) -> bool;
    /// Checks the store now, for `/readyz` (a query's round trip where
    /// there is a database).
    fn probe(&self) -> BoxFut<'_, Probe>;
    fn flushes(&self) -> u64;
    fn next_id(&self) -> Result<String, StoreError>;
}
