//! The values the store takes and gives back, whatever its engine.

use serde::{Deserialize, Serialize};

use crate::action::Action;
use crate::model::{Keys, Observation, Payment, PollWindow, ProviderId, Report, Source};
use crate::state::State;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sled(#[from] ::sled::Error),
    #[error("store record `{key}` is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    /// The store's files are of a format this release does not read.
    #[error("{0}")]
    Format(String),
    /// A flush failed: the write may or may not be on disk.
    #[error("store flush failed: {0}")]
    Flush(String),
    #[error("no payment `{0}`")]
    NotFound(String),
    #[error("store is shutting down")]
    Closed,
    /// The database (PostgreSQL) refused or could not be reached.
    #[error("database: {0}")]
    Database(String),
    /// Too many orphan callbacks wait, under this key or in all; nothing
    /// was stored and the provider is asked to send it again later.
    #[error("{0}")]
    OrphanLimit(String),
    /// A lookup key of a payment to track already names another payment.
    #[error("the provider's {key} is already tracked as payment `{existing}`")]
    AlreadyTracked { key: String, existing: String },
}

/// A payment to start tracking.
#[derive(Debug, Clone)]
pub struct NewPayment {
    pub provider: ProviderId,
    pub keys: Keys,
    /// Same value for the same payment: tracking it twice finds the first.
    pub idempotency_key: String,
    /// Keys that callbacks are matched by; orphans under them are applied.
    pub lookup_keys: Vec<String>,
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
    pub window: Option<PollWindow>,
    pub now_ms: u64,
}

impl NewPayment {
    /// The payment as tracking creates it: pending, nothing observed.
    pub fn into_payment(self, id: String) -> Payment {
        Payment {
            id,
            provider: self.provider,
            keys: self.keys,
            amount_minor: self.amount_minor,
            currency: self.currency,
            state: crate::state::State::Pending,
            raw_status: None,
            created_ms: self.now_ms,
            updated_ms: self.now_ms,
            final_ms: None,
            final_source: None,
            window: self.window,
            observations: 0,
            mismatch: None,
        }
    }
}

/// Which payments a listing keeps; every field left empty keeps all.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub state: Option<State>,
    pub provider: Option<ProviderId>,
    /// Only payments whose provider reported other money than tracked.
    pub mismatch: bool,
}

impl Filter {
    pub fn keeps(&self, p: &Payment) -> bool {
        self.state.is_none_or(|s| s == p.state)
            && self.provider.is_none_or(|pr| pr == p.provider)
            && (!self.mismatch || p.mismatch.is_some())
    }
}

/// A state change that a commit made.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub payment_id: String,
    pub provider: ProviderId,
    pub from: State,
    pub to: State,
    pub source: Source,
    /// From tracking to this change.
    pub latency_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Tracked {
    pub payment: Payment,
    /// False when the payment was already tracked.
    pub created: bool,
    /// Changes made by orphan callbacks applied on tracking.
    pub changes: Vec<Change>,
    /// States claimed by orphan callbacks that were held unconfirmed.
    pub claims: Vec<State>,
}

#[derive(Debug, Clone)]
pub struct Observed {
    pub payment: Payment,
    pub observation: Observation,
    pub change: Option<Change>,
    /// The answer repeated the payment's last observation: counted on it,
    /// not recorded again (`observation` shows what was repeated).
    pub repeat: bool,
}

/// What became of a verified callback.
#[derive(Debug, Clone)]
pub enum Ingested {
    /// Seen before; nothing written.
    Duplicate,
    /// Applied to its payment.
    Applied(Box<Observed>),
    /// No payment matches yet; kept until one is tracked.
    Orphaned,
}

/// A verified callback, ready to commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallbackRecord {
    pub dedupe_key: String,
    /// The lookup key the callback is matched by.
    pub match_key: String,
    pub report: Report,
    pub received_ms: u64,
    /// The state the report claims rests on fields the provider did not
    /// sign: recorded as [`Decision::Unconfirmed`](crate::state::Decision::Unconfirmed), applied only when a
    /// status inquiry confirms it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unsigned_claim: bool,
}

/// What to do with a payment's poll window in the same commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowChange {
    Keep,
    /// Count a poll and schedule the next at this unix ms.
    Next(u64),
    /// Count a poll and close the window.
    Close,
}

/// A notification to the platform about one state change, waiting in the
/// outbox. Its `seq` is its `webhook-id` and fixes the delivery order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    pub seq: u64,
    pub payment_id: String,
    pub provider: ProviderId,
    pub from: State,
    pub to: State,
    pub source: Source,
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_minor: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Delivery attempts so far, and when the next one is due.
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub next_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Notice {
    /// The notice of a change to `p`, queued as `seq`.
    pub fn of_change(seq: u64, p: &Payment, c: &Change, at_ms: u64) -> Notice {
        Notice {
            seq,
            payment_id: p.id.clone(),
            provider: p.provider,
            from: c.from,
            to: c.to,
            source: c.source,
            at_ms,
            amount_minor: p.amount_minor,
            currency: p.currency.clone(),
            attempts: 0,
            next_ms: 0,
            last_error: None,
        }
    }

    /// The Standard Webhooks `webhook-id`: the same on every retry.
    pub fn webhook_id(&self) -> String {
        format!("msg_{:016x}", self.seq)
    }

    /// The seq a `webhook-id` names (`msg_` and 16 hex digits).
    pub fn seq_of(webhook_id: &str) -> Option<u64> {
        let hex = webhook_id.strip_prefix("msg_")?;
        (hex.len() == 16)
            .then(|| u64::from_str_radix(hex, 16).ok())
            .flatten()
    }

    /// Back to a first delivery, due now (a replay).
    pub fn reset_attempts(&mut self) {
        self.attempts = 0;
        self.next_ms = 0;
    }
}

/// What became of a request to queue an action.
#[derive(Debug, Clone)]
pub enum Enqueued {
    Created(Action),
    /// The same idempotency key was used before: that action.
    Existing(Action),
    /// Another live action holds the exclusive key (MyFatoorah: one capture
    /// or release per invoice).
    Refused(Action),
}

/// Orphan callbacks kept per lookup key by default: a provider re-sends
/// one callback at most a few dozen times (Paynet: 30), each with its own
/// status, so a key with more is being replayed at.
pub const DEFAULT_ORPHANS_PER_KEY: u64 = 32;
/// Orphan callbacks kept in all by default: about 100 MB of records at the
/// most, far above what a healthy platform leaves unmatched.
pub const DEFAULT_ORPHANS_TOTAL: u64 = 100_000;

/// Per payment: when the sweep last asked, and which alerts it raised.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SweepMark {
    pub last_ms: u64,
    #[serde(default)]
    pub stale_alerted: bool,
    #[serde(default)]
    pub abandoned: bool,
}

/// A lease asked for (docs/postgres.md): who takes it, the time now and
/// until when it holds, in unix ms. Work that instances sharing a
/// database must not do twice (a window's polls, an action's sends, a
/// payment's notifications, a sweep) is done by the lease's holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease<'a> {
    pub owner: &'a str,
    pub now_ms: u64,
    pub until_ms: u64,
}

impl<'a> Lease<'a> {
    pub fn at(owner: &'a str, now_ms: u64, until_ms: u64) -> Lease<'a> {
        Lease {
            owner,
            now_ms,
            until_ms,
        }
    }

    /// A lease from now, held for `ttl_ms`.
    pub fn from_now(owner: &'a str, ttl_ms: u64) -> Lease<'a> {
        let now = crate::model::now_ms();
        Lease::at(owner, now, now + ttl_ms)
    }
}

/// What `/readyz` reports of the store: whether it takes writes now, and
/// for a database, the round trip of a query and the pool's connections.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Probe {
    pub engine: &'static str,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub round_trip_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolProbe>,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A connection pool's state: connections open, idle, its limit, and
/// callers waiting for one.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolProbe {
    pub open: usize,
    pub idle: usize,
    pub max: usize,
    pub waiting: usize,
}
