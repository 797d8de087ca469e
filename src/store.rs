//! The sled store: payments, their histories, the key index, the callback
//! inbox and orphan callbacks, and the group commit that makes them durable.
//!
//! Every change is one sled transaction over the trees it touches, so a
//! state change, its history entry and (for callbacks) the inbox entry that
//! de-duplicates it land together or not at all. [`Store::sync`] then waits
//! for a flush that covers the commit; concurrent callers share one flush.
//!
//! Trees and their keys:
//! - `payments`: payment id → Payment (JSON)
//! - `history`: payment id, 0x00, seq (u32 BE) → Observation (JSON)
//! - `keys`: provider lookup key (`connpay|inv|…`) → payment id
//! - `inbox`: callback de-duplication key → InboxEntry (JSON)
//! - `orphans`: callbacks that came before their payment, one record
//!   each: `o|` + id (u64 BE) → CallbackRecord (JSON); `i|` + lookup key →
//!   the ids waiting under it (u64 BE each, at most `max_per_key`); `n` →
//!   how many there are (u64 BE), checked against `max_total`
//! - `windows`: payment id → next poll, unix ms (u64 BE), and the
//!   provider's one-byte code; open windows only
//! - `actions`: action id → Action (JSON)
//! - `outbox`: action id → () while the action is not final

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};
use tokio::sync::{watch, Notify};

use crate::action::{Action, ActionState};
use crate::model::{Keys, Observation, Payment, PollWindow, ProviderId, Report, Source};
use crate::state::{decide, Decision, State};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("store record `{key}` is unreadable: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
    #[error("no payment `{0}`")]
    NotFound(String),
    #[error("store is shutting down")]
    Closed,
    /// Too many orphan callbacks wait, under this key or in all; nothing
    /// was stored and the provider is asked to send it again later.
    #[error("{0}")]
    OrphanLimit(String),
    /// A lookup key of a payment to track already names another payment.
    #[error("the provider's {key} is already tracked as payment `{existing}`")]
    AlreadyTracked { key: String, existing: String },
}

/// sled's page cache. Its own default (1 GiB) would let a daemon's RSS grow
/// with the whole book; recent payments are what polls and callbacks touch.
pub const DEFAULT_CACHE_MB: u64 = 64;

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

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
    /// sign: recorded as [`Decision::Unconfirmed`], applied only when a
    /// status inquiry confirms it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unsigned_claim: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct InboxEntry {
    payment_id: Option<String>,
    received_ms: u64,
}

/// What to do with a payment's poll window in the same commit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WindowChange {
    Keep,
    /// Count a poll and schedule the next at this unix ms.
    Next(u64),
    /// Count a poll and close the window.
    Close,
}

/// Shares flushes between concurrent committers. A committer takes a
/// ticket after its transaction; the flusher reads the newest ticket
/// *before* it flushes, so a flush that finishes covers every ticket it read.
struct GroupCommit {
    tickets: AtomicU64,
    wake: Notify,
    flushed: watch::Sender<u64>,
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    payments: sled::Tree,
    history: sled::Tree,
    keys: sled::Tree,
    inbox: sled::Tree,
    orphans: sled::Tree,
    windows: sled::Tree,
    actions: sled::Tree,
    outbox: sled::Tree,
    sweeps: sled::Tree,
    /// Notifications to the platform not yet delivered, by sequence.
    notices: sled::Tree,
    /// Notifications given up on (past the retry horizon), kept for export.
    dead_notices: sled::Tree,
    meta: sled::Tree,
    /// Whether state changes queue notifications (a URL is configured).
    notify: Arc<std::sync::atomic::AtomicBool>,
    /// Orphan callbacks kept at most per lookup key, and in all.
    orphan_limits: Arc<[AtomicU64; 2]>,
    gc: Arc<GroupCommit>,
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
    /// The Standard Webhooks `webhook-id`: the same on every retry.
    pub fn webhook_id(&self) -> String {
        format!("msg_{:016x}", self.seq)
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

impl Store {
    /// Opens (or creates) the store in `path` and starts its flusher on the
    /// current tokio runtime. The flusher ends when the last `Store` clone
    /// is dropped, after a final flush.
    pub fn open(path: &std::path::Path) -> Result<Store, StoreError> {
        Store::open_with(path, DEFAULT_CACHE_MB, false)
    }

    /// Opens the store with sled's page cache bounded to `cache_mb` MiB,
    /// with or without zstd compression of records.
    pub fn open_with(
        path: &std::path::Path,
        cache_mb: u64,
        compression: bool,
    ) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_mb * 1024 * 1024)
            // zstd at a low level halves the bytes kept, at a cost in
            // throughput and recovery time (BENCHMARKS.md); opt-in.
            .use_compression(compression)
            .compression_factor(3)
            // sled also flushes on its own; acknowledgements never rely on it.
            .flush_every_ms(Some(1000))
            .open()?;
        let gc = Arc::new(GroupCommit {
            tickets: AtomicU64::new(0),
            wake: Notify::new(),
            flushed: watch::channel(0).0,
        });
        let store = Store {
            payments: db.open_tree("payments")?,
            history: db.open_tree("history")?,
            keys: db.open_tree("keys")?,
            inbox: db.open_tree("inbox")?,
            orphans: db.open_tree("orphans")?,
            windows: db.open_tree("windows")?,
            actions: db.open_tree("actions")?,
            outbox: db.open_tree("outbox")?,
            sweeps: db.open_tree("sweeps")?,
            notices: db.open_tree("notices")?,
            dead_notices: db.open_tree("dead_notices")?,
            meta: db.open_tree("meta")?,
            notify: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            orphan_limits: Arc::new([
                AtomicU64::new(DEFAULT_ORPHANS_PER_KEY),
                AtomicU64::new(DEFAULT_ORPHANS_TOTAL),
            ]),
            db,
            gc,
        };
        migrate_orphans(&store.orphans)?;
        let weak = Arc::downgrade(&store.gc);
        let db = store.db.clone();
        tokio::spawn(flusher(weak, db));
        Ok(store)
    }

    /// Waits until everything committed before this call is on disk.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let ticket = self.gc.tickets.fetch_add(1, Ordering::SeqCst) + 1;
        let mut rx = self.gc.flushed.subscribe();
        self.gc.wake.notify_one();
        rx.wait_for(|&f| f >= ticket)
            .await
            .map(|_| ())
            .map_err(|_| StoreError::Closed)
    }

    /// How many flush tickets are on disk: grows with every group flush.
    /// Tests use it to see that an answer waited for one.
    pub fn flushed_tickets(&self) -> u64 {
        *self.gc.flushed.borrow()
    }

    /// Flushes now, on the calling thread. For shutdown.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Whether the store answers reads and writes.
    pub fn healthy(&self) -> bool {
        self.db.get(b"__probe").is_ok()
    }

    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    fn new_id(&self) -> Result<String, StoreError> {
        // Creation-ordered (for paging) with a random tail so ids from two
        // stores do not collide.
        let n = self.db.generate_id()?;
        Ok(format!("pay_{:012x}{:04x}", n, fastrand::u16(..)))
    }

    /// Starts tracking a payment, or finds it if it is already tracked.
    /// Orphan callbacks waiting under its lookup keys are applied in the
    /// same transaction.
    pub fn track(&self, new: NewPayment) -> Result<Tracked, StoreError> {
        let fresh_id = self.new_id()?;
        let res = (
            &self.payments,
            &self.history,
            &self.keys,
            &self.orphans,
            &self.windows,
            &self.notices,
        )
            .transaction(|(payments, history, keys, orphans, windows, notices)| {
                if let Some(id) = keys.get(new.idempotency_key.as_bytes())? {
                    let id = String::from_utf8_lossy(&id).into_owned();
                    let payment = load(payments, &id)?;
                    return Ok(Tracked {
                        payment,
                        created: false,
                        changes: vec![],
                        claims: vec![],
                    });
                }
                let mut payment = Payment {
                    id: fresh_id.clone(),
                    provider: new.provider,
                    keys: new.keys.clone(),
                    amount_minor: new.amount_minor,
                    currency: new.currency.clone(),
                    state: State::Pending,
                    raw_status: None,
                    created_ms: new.now_ms,
                    updated_ms: new.now_ms,
                    final_ms: None,
                    final_source: None,
                    window: new.window,
                    observations: 0,
                    mismatch: None,
                };
                // One provider payment, one payrecon payment: tracking it
                // again under other keys must not take its callbacks over.
                for k in &new.lookup_keys {
                    if let Some(id) = keys.get(k.as_bytes())? {
                        return Err(ConflictableTransactionError::Abort(
                            StoreError::AlreadyTracked {
                                key: k.clone(),
                                existing: String::from_utf8_lossy(&id).into_owned(),
                            },
                        ));
                    }
                }
                keys.insert(new.idempotency_key.as_bytes(), fresh_id.as_bytes())?;
                let (mut changes, mut claims) = (vec![], vec![]);
                for k in &new.lookup_keys {
                    keys.insert(k.as_bytes(), fresh_id.as_bytes())?;
                    for cb in take_orphans(orphans, k)? {
                        let (obs, change) = apply(
                            &mut payment,
                            cb.report.clone(),
                            cb.received_ms,
                            cb.unsigned_claim,
                        );
                        if obs.decision == Some(Decision::Unconfirmed) {
                            claims.extend(obs.state);
                        }
                        put_history(history, &payment.id, &obs)?;
                        if let Some(c) = &change {
                            self.put_notice(notices, &payment, c, cb.received_ms)?;
                        }
                        changes.extend(change);
                    }
                }
                if let Some(w) = payment
                    .window
                    .filter(|w| w.open && !payment.state.is_final())
                {
                    windows.insert(payment.id.as_bytes(), window_value(&payment, w.next_ms))?;
                } else if let Some(w) = payment.window.as_mut() {
                    w.open = false;
                }
                put_payment(payments, &payment)?;
                Ok(Tracked {
                    payment,
                    created: true,
                    changes,
                    claims,
                })
            });
        unwrap_tx(res)
    }

    /// Records an observation of a payment (poll, reconcile, action) and
    /// moves its window.
    pub fn observe(
        &self,
        id: &str,
        report: Report,
        window: WindowChange,
        now_ms: u64,
    ) -> Result<Observed, StoreError> {
        let res = (
            &self.payments,
            &self.history,
            &self.keys,
            &self.windows,
            &self.notices,
        )
            .transaction(|(payments, history, keys, windows, notices)| {
                let mut payment = load(payments, id)?;
                let learned = report.learned_keys.clone();
                let (observation, change) = apply(&mut payment, report.clone(), now_ms, false);
                if let Some(c) = &change {
                    self.put_notice(notices, &payment, c, now_ms)?;
                }
                for k in &learned {
                    // Learned once, seen on every poll: write only when new.
                    if keys.get(k.as_bytes())?.is_none() {
                        keys.insert(k.as_bytes(), id.as_bytes())?;
                    }
                }
                put_history(history, id, &observation)?;
                move_window(windows, &mut payment, window)?;
                put_payment(payments, &payment)?;
                Ok(Observed {
                    payment,
                    observation,
                    change,
                })
            });
        unwrap_tx(res)
    }

    /// Moves a payment's poll window without an observation (the inquiry
    /// gave no answer to record).
    pub fn advance_window(
        &self,
        id: &str,
        window: WindowChange,
    ) -> Result<Option<PollWindow>, StoreError> {
        let res = (&self.payments, &self.windows).transaction(|(payments, windows)| {
            let mut payment = load(payments, id)?;
            move_window(windows, &mut payment, window)?;
            put_payment(payments, &payment)?;
            Ok(payment.window)
        });
        unwrap_tx(res)
    }

    /// Commits a verified callback: de-duplicates it, applies it to its
    /// payment or keeps it as an orphan. Call [`Store::sync`] before
    /// acknowledging it.
    pub fn ingest_callback(&self, cb: &CallbackRecord) -> Result<Ingested, StoreError> {
        let res = (
            &self.payments,
            &self.history,
            &self.keys,
            &self.inbox,
            &self.orphans,
            &self.windows,
            &self.notices,
        )
            .transaction(
                |(payments, history, keys, inbox, orphans, windows, notices)| {
                    if inbox.get(cb.dedupe_key.as_bytes())?.is_some() {
                        return Ok(Ingested::Duplicate);
                    }
                    let Some(id) = keys.get(cb.match_key.as_bytes())? else {
                        put_orphan(orphans, cb, self.orphan_limits())?;
                        let entry = InboxEntry {
                            payment_id: None,
                            received_ms: cb.received_ms,
                        };
                        inbox.insert(cb.dedupe_key.as_bytes(), encode(&entry))?;
                        return Ok(Ingested::Orphaned);
                    };
                    let id = String::from_utf8_lossy(&id).into_owned();
                    let mut payment = load(payments, &id)?;
                    let (observation, change) = apply(
                        &mut payment,
                        cb.report.clone(),
                        cb.received_ms,
                        cb.unsigned_claim,
                    );
                    if let Some(c) = &change {
                        self.put_notice(notices, &payment, c, cb.received_ms)?;
                    }
                    put_history(history, &id, &observation)?;
                    move_window(windows, &mut payment, WindowChange::Keep)?;
                    put_payment(payments, &payment)?;
                    let entry = InboxEntry {
                        payment_id: Some(id),
                        received_ms: cb.received_ms,
                    };
                    inbox.insert(cb.dedupe_key.as_bytes(), encode(&entry))?;
                    Ok(Ingested::Applied(Box::new(Observed {
                        payment,
                        observation,
                        change,
                    })))
                },
            );
        unwrap_tx(res)
    }

    pub fn get(&self, id: &str) -> Result<Option<Payment>, StoreError> {
        match self.payments.get(id.as_bytes())? {
            Some(raw) => Ok(Some(decode(id, &raw)?)),
            None => Ok(None),
        }
    }

    /// The payment id a lookup key points at.
    pub fn find(&self, lookup_key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .keys
            .get(lookup_key.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn history(&self, id: &str) -> Result<Vec<Observation>, StoreError> {
        let mut prefix = id.as_bytes().to_vec();
        prefix.push(0);
        self.history
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv?;
                decode(&String::from_utf8_lossy(&k), &v)
            })
            .collect()
    }

    /// Payments in id (creation) order after `after`, filtered.
    pub fn list(
        &self,
        state: Option<State>,
        provider: Option<ProviderId>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Payment>, StoreError> {
        let filter = Filter {
            state,
            provider,
            mismatch: false,
        };
        self.list_filtered(&filter, after, limit)
    }

    /// Payments in id (creation) order after `after` that `filter` keeps.
    pub fn list_filtered(
        &self,
        filter: &Filter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Payment>, StoreError> {
        let range = match after {
            Some(a) => self.payments.range::<&[u8], _>((
                std::ops::Bound::Excluded(a.as_bytes()),
                std::ops::Bound::Unbounded,
            )),
            None => self.payments.iter(),
        };
        let mut out = Vec::new();
        for kv in range {
            let (k, v) = kv?;
            let p: Payment = decode(&String::from_utf8_lossy(&k), &v)?;
            if !filter.keeps(&p) {
                continue;
            }
            out.push(p);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Writes payments with their histories and lookup keys without
    /// transactions or checks, in batches. For imports and benchmarks that
    /// build large stores; never used while the daemon runs.
    pub fn bulk_load<I>(&self, items: I) -> Result<usize, StoreError>
    where
        I: IntoIterator<Item = (Payment, Vec<Observation>, Vec<String>)>,
    {
        const BATCH: usize = 10_000;
        let mut n = 0;
        let (mut p, mut h, mut k, mut w): (sled::Batch, sled::Batch, sled::Batch, sled::Batch) =
            Default::default();
        let flush = |p: &mut sled::Batch,
                     h: &mut sled::Batch,
                     k: &mut sled::Batch,
                     w: &mut sled::Batch|
         -> Result<(), StoreError> {
            self.payments.apply_batch(std::mem::take(p))?;
            self.history.apply_batch(std::mem::take(h))?;
            self.keys.apply_batch(std::mem::take(k))?;
            self.windows.apply_batch(std::mem::take(w))?;
            Ok(())
        };
        for (payment, history, keys) in items {
            for obs in &history {
                let mut key = payment.id.as_bytes().to_vec();
                key.push(0);
                key.extend_from_slice(&obs.seq.to_be_bytes());
                h.insert(key, encode(obs));
            }
            for key in keys {
                k.insert(key.as_bytes(), payment.id.as_bytes());
            }
            if let Some(win) = payment
                .window
                .filter(|w| w.open && !payment.state.is_final())
            {
                w.insert(payment.id.as_bytes(), window_value(&payment, win.next_ms));
            }
            p.insert(payment.id.as_bytes(), encode(&payment));
            n += 1;
            if n % BATCH == 0 {
                flush(&mut p, &mut h, &mut k, &mut w)?;
            }
        }
        flush(&mut p, &mut h, &mut k, &mut w)?;
        self.db.flush()?;
        Ok(n)
    }

    /// A fresh payment id, for callers that build payments themselves
    /// (bulk loads).
    pub fn next_id(&self) -> Result<String, StoreError> {
        self.new_id()
    }

    /// Every open poll window: payment id, provider and next poll (unix ms).
    pub fn open_windows(&self) -> Result<Vec<(String, ProviderId, u64)>, StoreError> {
        let mut out = vec![];
        for kv in self.windows.iter() {
            let (k, v) = kv?;
            let id = String::from_utf8_lossy(&k).into_owned();
            let parsed = (v.len() == 9)
                .then(|| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&v[..8]);
                    ProviderId::from_code(v[8]).map(|p| (p, u64::from_be_bytes(b)))
                })
                .flatten();
            let Some((p, next)) = parsed else {
                return Err(StoreError::Corrupt {
                    key: id,
                    source: serde::de::Error::custom(
                        "window record is not 9 bytes with a known provider",
                    ),
                });
            };
            out.push((id, p, next));
        }
        Ok(out)
    }

    /// Queues an action in the outbox, unless its idempotency key was used
    /// before or another live action holds its exclusive key.
    pub fn enqueue_action(
        &self,
        mut action: Action,
        exclusive_key: Option<&str>,
    ) -> Result<Enqueued, StoreError> {
        action.id = format!("act_{}", &self.new_id()?[4..]);
        let idem = action
            .idempotency_key
            .as_ref()
            .map(|k| format!("action|idem|{}|{k}", action.payment_id));
        let res = (&self.actions, &self.outbox, &self.keys, &self.payments).transaction(
            |(actions, outbox, keys, payments)| {
                load(payments, &action.payment_id)?;
                if let Some(k) = &idem {
                    if let Some(id) = keys.get(k.as_bytes())? {
                        let id = String::from_utf8_lossy(&id).into_owned();
                        return Ok(Enqueued::Existing(load_action(actions, &id)?));
                    }
                }
                if let Some(k) = exclusive_key {
                    if let Some(id) = keys.get(k.as_bytes())? {
                        let id = String::from_utf8_lossy(&id).into_owned();
                        let holder = load_action(actions, &id)?;
                        if holder.state != ActionState::Failed {
                            return Ok(Enqueued::Refused(holder));
                        }
                    }
                    keys.insert(k.as_bytes(), action.id.as_bytes())?;
                }
                if let Some(k) = &idem {
                    keys.insert(k.as_bytes(), action.id.as_bytes())?;
                }
                let of = format!("action|of|{}|{}", action.payment_id, action.id);
                keys.insert(of.as_bytes(), action.id.as_bytes())?;
                actions.insert(action.id.as_bytes(), encode(&action))?;
                outbox.insert(action.id.as_bytes(), &[])?;
                Ok(Enqueued::Created(action.clone()))
            },
        );
        unwrap_tx(res)
    }

    /// Writes an action's new state. A final action leaves the outbox; a
    /// succeeded one records `reports` as observations of its payment in
    /// the same transaction.
    pub fn update_action(
        &self,
        action: &Action,
        reports: Vec<Report>,
    ) -> Result<Vec<Change>, StoreError> {
        let res = (
            &self.actions,
            &self.outbox,
            &self.payments,
            &self.history,
            &self.windows,
            &self.notices,
        )
            .transaction(|(actions, outbox, payments, history, windows, notices)| {
                actions.insert(action.id.as_bytes(), encode(action))?;
                if action.state.is_final() {
                    outbox.remove(action.id.as_bytes())?;
                } else {
                    outbox.insert(action.id.as_bytes(), &[])?;
                }
                let mut changes = vec![];
                if !reports.is_empty() {
                    let mut payment = load(payments, &action.payment_id)?;
                    for r in &reports {
                        let (obs, c) = apply(&mut payment, r.clone(), action.updated_ms, false);
                        if let Some(c) = &c {
                            self.put_notice(notices, &payment, c, action.updated_ms)?;
                        }
                        put_history(history, &payment.id, &obs)?;
                        changes.extend(c);
                    }
                    move_window(windows, &mut payment, WindowChange::Keep)?;
                    put_payment(payments, &payment)?;
                }
                Ok(changes)
            });
        unwrap_tx(res)
    }

    /// The action holding an exclusive key, unless it failed (a failed
    /// action lets go). [`Store::enqueue_action`] checks the same inside
    /// its transaction; this answers before a request is judged.
    pub fn live_holder(&self, exclusive_key: &str) -> Result<Option<Action>, StoreError> {
        let Some(id) = self.find(exclusive_key)? else {
            return Ok(None);
        };
        Ok(self
            .get_action(&id)?
            .filter(|a| a.state != ActionState::Failed))
    }

    pub fn get_action(&self, id: &str) -> Result<Option<Action>, StoreError> {
        match self.actions.get(id.as_bytes())? {
            Some(raw) => Ok(Some(decode(id, &raw)?)),
            None => Ok(None),
        }
    }

    /// Actions still in the outbox (queued, sending or unknown).
    pub fn outbox(&self) -> Result<Vec<Action>, StoreError> {
        let mut out = vec![];
        for kv in self.outbox.iter() {
            let (k, _) = kv?;
            let id = String::from_utf8_lossy(&k).into_owned();
            if let Some(a) = self.get_action(&id)? {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Number of actions in each state, over every action ever queued.
    pub fn action_counts(&self) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        let mut out = std::collections::BTreeMap::new();
        for kv in self.actions.iter() {
            let (k, v) = kv?;
            let a: Action = decode(&String::from_utf8_lossy(&k), &v)?;
            *out.entry(a.state.as_str().to_string()).or_insert(0) += 1;
        }
        Ok(out)
    }

    pub fn payment_count(&self) -> usize {
        self.payments.len()
    }

    /// A payment's actions, oldest first.
    pub fn actions_of(&self, payment_id: &str) -> Result<Vec<Action>, StoreError> {
        let mut out = vec![];
        for kv in self
            .keys
            .scan_prefix(format!("action|of|{payment_id}|").as_bytes())
        {
            let (_, id) = kv?;
            if let Some(a) = self.get_action(&String::from_utf8_lossy(&id))? {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Turns the notification outbox on: from now on every state change
    /// queues a notice in the same transaction.
    pub fn enable_notices(&self, on: bool) {
        self.notify.store(on, Ordering::SeqCst);
    }

    /// Queues a notice for a change, inside the change's transaction.
    fn put_notice(
        &self,
        notices: &TransactionalTree,
        payment: &Payment,
        c: &Change,
        at_ms: u64,
    ) -> TxResult<()> {
        if !self.notify.load(Ordering::SeqCst) {
            return Ok(());
        }
        let seq = notices.generate_id()?;
        let n = Notice {
            seq,
            payment_id: payment.id.clone(),
            provider: payment.provider,
            from: c.from,
            to: c.to,
            source: c.source,
            at_ms,
            amount_minor: payment.amount_minor,
            currency: payment.currency.clone(),
            attempts: 0,
            next_ms: 0,
            last_error: None,
        };
        notices.insert(&seq.to_be_bytes(), encode(&n))?;
        Ok(())
    }

    /// The oldest `limit` notices waiting for delivery, oldest first.
    pub fn notices(&self, limit: usize) -> Result<Vec<Notice>, StoreError> {
        self.notices
            .iter()
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                decode(&format!("notice {k:?}"), &v)
            })
            .collect()
    }

    pub fn notice_backlog(&self) -> usize {
        self.notices.len()
    }

    /// Records a failed attempt (new attempt count, next due time).
    pub fn update_notice(&self, n: &Notice) -> Result<(), StoreError> {
        // Only if still queued: never resurrect a delivered notice.
        let key = n.seq.to_be_bytes();
        if self.notices.get(key)?.is_some() {
            self.notices.insert(key, encode(n))?;
        }
        Ok(())
    }

    /// A delivered notice leaves the outbox; one past the retry horizon
    /// moves to the dead-letter tree.
    pub fn remove_notice(&self, n: &Notice, dead: bool) -> Result<(), StoreError> {
        let key = n.seq.to_be_bytes();
        if dead {
            self.dead_notices.insert(key, encode(n))?;
        }
        self.notices.remove(key)?;
        Ok(())
    }

    pub fn dead_notices(&self) -> usize {
        self.dead_notices.len()
    }

    /// A small key-value for the daemon's own facts (the disabled
    /// notification URL).
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .meta
            .get(key.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn set_meta(&self, key: &str, value: Option<&str>) -> Result<(), StoreError> {
        match value {
            Some(v) => self.meta.insert(key.as_bytes(), v.as_bytes())?,
            None => self.meta.remove(key.as_bytes())?,
        };
        Ok(())
    }

    /// What the reconciliation sweep remembers of a payment (default:
    /// never asked). Not synced: a lost mark only means one more inquiry.
    pub fn sweep_mark(&self, id: &str) -> Result<crate::engine::SweepMark, StoreError> {
        match self.sweeps.get(id.as_bytes())? {
            Some(v) => decode(id, &v),
            None => Ok(Default::default()),
        }
    }

    pub fn set_sweep_mark(&self, id: &str, m: &crate::engine::SweepMark) -> Result<(), StoreError> {
        self.sweeps.insert(id.as_bytes(), encode(m))?;
        Ok(())
    }

    /// Orphan callbacks still waiting for their payment.
    pub fn orphan_count(&self) -> Result<usize, StoreError> {
        Ok(read_u64(self.orphans.get(ORPHAN_COUNT)?.as_deref()) as usize)
    }

    /// Sets how many orphan callbacks are kept per lookup key and in all.
    pub fn set_orphan_limits(&self, per_key: u64, total: u64) {
        self.orphan_limits[0].store(per_key, Ordering::Relaxed);
        self.orphan_limits[1].store(total, Ordering::Relaxed);
    }

    fn orphan_limits(&self) -> (u64, u64) {
        (
            self.orphan_limits[0].load(Ordering::Relaxed),
            self.orphan_limits[1].load(Ordering::Relaxed),
        )
    }

    /// Forgets orphan callbacks received before `before_ms`: the record,
    /// its place under its key, and its inbox entry (so a provider that
    /// sends it again is heard). Returns how many were forgotten.
    pub fn expire_orphans(&self, before_ms: u64) -> Result<usize, StoreError> {
        let mut expired = vec![];
        for kv in self.orphans.scan_prefix(b"o|") {
            let (k, v) = kv?;
            let cb: CallbackRecord = decode("orphan", &v)?;
            let id = k[2..].try_into().map(u64::from_be_bytes).unwrap_or(0);
            if cb.received_ms < before_ms {
                expired.push((id, cb));
            }
        }
        let mut n = 0;
        for (id, cb) in expired {
            let res = (&self.orphans, &self.inbox).transaction(|(orphans, inbox)| {
                if orphans.remove(orphan_record_key(id))?.is_none() {
                    return Ok(false);
                }
                let idx = orphan_index_key(&cb.match_key);
                let mut ids = read_ids(orphans.get(&idx)?.as_deref());
                ids.retain(|i| *i != id);
                if ids.is_empty() {
                    orphans.remove(idx)?;
                } else {
                    orphans.insert(idx, write_ids(&ids))?;
                }
                forget_orphans(orphans, 1)?;
                inbox.remove(cb.dedupe_key.as_bytes())?;
                Ok(true)
            });
            n += unwrap_tx(res)? as usize;
        }
        Ok(n)
    }

    /// Callbacks recorded in the inbox (each counted once).
    pub fn inbox_len(&self) -> usize {
        self.inbox.len()
    }
}

/// Orphan callbacks kept per lookup key by default: a provider re-sends
/// one callback at most a few dozen times (Paynet: 30), each with its own
/// status, so a key with more is being replayed at.
pub const DEFAULT_ORPHANS_PER_KEY: u64 = 32;
/// Orphan callbacks kept in all by default: about 100 MB of records at the
/// most, far above what a healthy platform leaves unmatched.
pub const DEFAULT_ORPHANS_TOTAL: u64 = 100_000;
const ORPHAN_COUNT: &[u8] = b"n";

fn orphan_index_key(match_key: &str) -> Vec<u8> {
    [b"i|", match_key.as_bytes()].concat()
}

fn orphan_record_key(id: u64) -> Vec<u8> {
    [b"o|".as_slice(), &id.to_be_bytes()].concat()
}

/// Lowers the orphan count by `n` (inside the caller's transaction).
fn forget_orphans(orphans: &TransactionalTree, n: u64) -> TxResult<()> {
    let count = read_u64(orphans.get(ORPHAN_COUNT)?.as_deref());
    orphans.insert(ORPHAN_COUNT, &count.saturating_sub(n).to_be_bytes())?;
    Ok(())
}

fn read_u64(v: Option<&[u8]>) -> u64 {
    v.and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

fn read_ids(v: Option<&[u8]>) -> Vec<u64> {
    v.unwrap_or_default()
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
        .collect()
}

fn write_ids(ids: &[u64]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.to_be_bytes()).collect()
}

/// Keeps one orphan callback as its own record, within the limits.
fn put_orphan(
    orphans: &TransactionalTree,
    cb: &CallbackRecord,
    limits: (u64, u64),
) -> TxResult<()> {
    let (per_key, total) = limits;
    let idx = orphan_index_key(&cb.match_key);
    let mut ids = read_ids(orphans.get(&idx)?.as_deref());
    if ids.len() as u64 >= per_key {
        return Err(StoreError::OrphanLimit(format!(
            "{per_key} callbacks already wait for an unknown payment under this key"
        ))
        .into());
    }
    let count = read_u64(orphans.get(ORPHAN_COUNT)?.as_deref());
    if count >= total {
        return Err(StoreError::OrphanLimit(format!(
            "{total} callbacks already wait for unknown payments"
        ))
        .into());
    }
    let id = orphans.generate_id()?;
    orphans.insert(orphan_record_key(id), encode(cb))?;
    ids.push(id);
    orphans.insert(idx, write_ids(&ids))?;
    orphans.insert(ORPHAN_COUNT, &(count + 1).to_be_bytes())?;
    Ok(())
}

/// Removes and returns the orphan callbacks waiting under a lookup key, in
/// the order they came.
fn take_orphans(orphans: &TransactionalTree, match_key: &str) -> TxResult<Vec<CallbackRecord>> {
    let Some(raw) = orphans.remove(orphan_index_key(match_key))? else {
        return Ok(vec![]);
    };
    let ids = read_ids(Some(&raw));
    let mut out = Vec::with_capacity(ids.len());
    for id in &ids {
        if let Some(v) = orphans.remove(orphan_record_key(*id))? {
            out.push(decode(match_key, &v)?);
        }
    }
    forget_orphans(orphans, out.len() as u64)?;
    Ok(out)
}

/// Rewrites orphans kept by releases before one record each (a JSON list
/// per lookup key) into today's layout, once, at open.
fn migrate_orphans(orphans: &sled::Tree) -> Result<(), StoreError> {
    let mut old = vec![];
    for kv in orphans.iter() {
        let (k, v) = kv?;
        if !(k.starts_with(b"o|") || k.starts_with(b"i|") || &*k == ORPHAN_COUNT) {
            let list: Vec<CallbackRecord> = decode(&String::from_utf8_lossy(&k), &v)?;
            old.push((k, list));
        }
    }
    for (k, list) in old {
        let res = orphans.transaction(|t| {
            for cb in &list {
                put_orphan(t, cb, (u64::MAX, u64::MAX))?;
            }
            t.remove(&k)?;
            Ok(())
        });
        unwrap_tx(res)?;
    }
    Ok(())
}

/// Applies a report to a payment in memory: numbers it, judges it with the
/// state machine, and moves the payment if it advances. A move claimed on
/// unsigned fields is held as [`Decision::Unconfirmed`].
fn apply(
    payment: &mut Payment,
    report: Report,
    at_ms: u64,
    unsigned_claim: bool,
) -> (Observation, Option<Change>) {
    let mut decision = report.state.map(|to| decide(payment.state, to));
    // An action's answer names the money the platform asked to move (a
    // partial capture), so only what providers report of themselves is
    // compared with the tracked amount.
    let mismatch = (report.source != Source::Action)
        .then(|| crate::money::mismatch(payment, &report, at_ms))
        .flatten();
    if decision == Some(Decision::Advance) {
        if unsigned_claim {
            decision = Some(Decision::Unconfirmed);
        } else if mismatch.is_some() && report.state.is_some_and(crate::money::takes_money) {
            decision = Some(Decision::AmountMismatch);
        }
    }
    // A poll that repeats the same mismatch keeps the first one's time, so
    // the engine alerts once per distinct mismatch.
    if let Some(m) = mismatch {
        if payment.mismatch.as_ref().map(|old| &old.reported) != Some(&m.reported) {
            payment.mismatch = Some(m);
        }
    }
    let mut change = None;
    if let (Some(Decision::Advance), Some(to)) = (decision, report.state) {
        change = Some(Change {
            payment_id: payment.id.clone(),
            provider: payment.provider,
            from: payment.state,
            to,
            source: report.source,
            latency_ms: at_ms.saturating_sub(payment.created_ms),
        });
        if to.is_final() && payment.final_ms.is_none() {
            payment.final_ms = Some(at_ms);
            payment.final_source = Some(report.source);
        }
        payment.state = to;
        payment.raw_status = Some(report.raw_status.clone());
    }
    if payment.amount_minor.is_none() {
        payment.amount_minor = report
            .fields
            .get("amount_minor")
            .and_then(|a| a.parse().ok());
    }
    payment.updated_ms = payment.updated_ms.max(at_ms);
    let observation = Observation {
        seq: payment.observations,
        source: report.source,
        at_ms,
        raw_status: report.raw_status,
        state: report.state,
        decision,
        fields: report.fields,
    };
    payment.observations += 1;
    (observation, change)
}

/// The `windows` tree's value: next poll (u64 BE) and the provider's code.
fn window_value(payment: &Payment, next_ms: u64) -> Vec<u8> {
    let mut v = next_ms.to_be_bytes().to_vec();
    v.push(payment.provider.code());
    v
}

/// Applies a window change to a payment and mirrors the result in the
/// `windows` tree. A final payment's window is closed whatever the change.
fn move_window(
    windows: &TransactionalTree,
    payment: &mut Payment,
    change: WindowChange,
) -> TxResult<()> {
    let Some(w) = payment.window.as_mut() else {
        return Ok(());
    };
    match change {
        WindowChange::Keep => {}
        WindowChange::Next(at) => {
            w.polls += 1;
            w.next_ms = at;
        }
        WindowChange::Close => {
            w.polls += 1;
            w.open = false;
        }
    }
    if payment.state.is_final() {
        w.open = false;
    }
    let (open, next_ms) = (w.open, w.next_ms);
    if open {
        windows.insert(payment.id.as_bytes(), window_value(payment, next_ms))?;
    } else {
        windows.remove(payment.id.as_bytes())?;
    }
    Ok(())
}

fn load_action(actions: &TransactionalTree, id: &str) -> TxResult<Action> {
    match actions.get(id.as_bytes())? {
        Some(raw) => Ok(decode(id, &raw)?),
        None => Err(ConflictableTransactionError::Abort(StoreError::NotFound(
            id.to_string(),
        ))),
    }
}

fn load(payments: &TransactionalTree, id: &str) -> TxResult<Payment> {
    match payments.get(id.as_bytes())? {
        Some(raw) => Ok(decode(id, &raw)?),
        None => Err(ConflictableTransactionError::Abort(StoreError::NotFound(
            id.to_string(),
        ))),
    }
}

fn put_payment(payments: &TransactionalTree, p: &Payment) -> TxResult<()> {
    payments.insert(p.id.as_bytes(), encode(p))?;
    Ok(())
}

fn put_history(history: &TransactionalTree, id: &str, obs: &Observation) -> TxResult<()> {
    let mut key = id.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&obs.seq.to_be_bytes());
    history.insert(key, encode(obs))?;
    Ok(())
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, raw: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(raw).map_err(|source| StoreError::Corrupt {
        key: key.to_string(),
        source,
    })
}

impl From<StoreError> for ConflictableTransactionError<StoreError> {
    fn from(e: StoreError) -> Self {
        ConflictableTransactionError::Abort(e)
    }
}

fn unwrap_tx<T>(res: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    res.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    })
}

/// The group-commit loop: one flush serves every ticket taken before it
/// started. Ends when the store is dropped.
async fn flusher(gc: std::sync::Weak<GroupCommit>, db: sled::Db) {
    loop {
        let Some(g) = gc.upgrade() else { break };
        let target = g.tickets.load(Ordering::SeqCst);
        if target <= *g.flushed.borrow() {
            // Nothing to do: wait for a ticket. The timeout lets the loop
            // notice, within a second, that the store was dropped.
            tokio::select! {
                _ = g.wake.notified() => {}
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
            continue;
        }
        let db2 = db.clone();
        match tokio::task::spawn_blocking(move || db2.flush()).await {
            Ok(Ok(_)) => {
                g.flushed.send_replace(target);
            }
            Ok(Err(e)) => {
                tracing::error!(alert = "store_flush_failed", error = %e, "store flush failed; acknowledgements wait");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => {
                tracing::error!(alert = "store_flush_failed", error = %e, "store flush task failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    let _ = db.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn report(source: Source, raw: &str, state: Option<State>) -> Report {
        Report {
            source,
            raw_status: raw.into(),
            state,
            fields: BTreeMap::new(),
            learned_keys: vec![],
        }
    }

    fn new_payment(inv: &str) -> NewPayment {
        NewPayment {
            provider: ProviderId::Connpay,
            keys: Keys::from([("invoice_id".to_string(), inv.to_string())]),
            idempotency_key: format!("connpay|idem|{inv}"),
            lookup_keys: vec![format!("connpay|inv|{inv}")],
            amount_minor: Some(100),
            currency: Some("EUR".into()),
            window: Some(PollWindow {
                ends_ms: 10_000,
                next_ms: 1_000,
                polls: 0,
                open: true,
            }),
            now_ms: 0,
        }
    }

    fn callback(inv: &str, status: &str, state: State) -> CallbackRecord {
        CallbackRecord {
            dedupe_key: format!("connpay|{status}|sale|o-{inv}|{inv}"),
            match_key: format!("connpay|inv|{inv}"),
            report: report(Source::Callback, status, Some(state)),
            received_ms: 5,
            unsigned_claim: false,
        }
    }

    #[tokio::test]
    async fn track_is_idempotent_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let store = Store::open(dir.path()).unwrap();
            let a = store.track(new_payment("inv-1")).unwrap();
            let b = store.track(new_payment("inv-1")).unwrap();
            assert!(a.created && !b.created);
            assert_eq!(a.payment.id, b.payment.id);
            store.sync().await.unwrap();
            a.payment.id
        };
        // sled holds a file lock until every handle is gone.
        tokio::task::yield_now().await;
        let store = reopen(dir.path()).await;
        let p = store.get(&id).unwrap().unwrap();
        assert_eq!(p.state, State::Pending);
        assert_eq!(store.find("connpay|inv|inv-1").unwrap(), Some(id.clone()));
        assert_eq!(
            store.open_windows().unwrap(),
            vec![(id, ProviderId::Connpay, 1_000)]
        );
    }

    async fn reopen(path: &std::path::Path) -> Store {
        for _ in 0..100 {
            if let Ok(s) = Store::open(path) {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("store did not reopen");
    }

    #[tokio::test]
    async fn duplicate_callbacks_leave_one_entry_and_late_news_does_not_regress() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = store.track(new_payment("inv-2")).unwrap().payment.id;
        let cb = callback("inv-2", "approved", State::Succeeded);
        let Ingested::Applied(o) = store.ingest_callback(&cb).unwrap() else {
            panic!("not applied")
        };
        assert_eq!(o.change.unwrap().to, State::Succeeded);
        assert!(matches!(
            store.ingest_callback(&cb).unwrap(),
            Ingested::Duplicate
        ));
        let late = store
            .observe(
                &id,
                report(Source::Poll, "PROCESSING", Some(State::Pending)),
                WindowChange::Keep,
                9,
            )
            .unwrap();
        assert!(late.change.is_none());
        assert_eq!(late.observation.decision, Some(Decision::Backwards));
        let p = store.get(&id).unwrap().unwrap();
        assert_eq!(p.state, State::Succeeded);
        assert_eq!(p.final_source, Some(Source::Callback));
        assert!(!p.window.unwrap().open, "final closes the window");
        assert!(store.open_windows().unwrap().is_empty());
        assert_eq!(store.history(&id).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn orphans_are_applied_when_their_payment_is_tracked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let cb = callback("inv-3", "declined", State::Failed);
        assert!(matches!(
            store.ingest_callback(&cb).unwrap(),
            Ingested::Orphaned
        ));
        assert!(matches!(
            store.ingest_callback(&cb).unwrap(),
            Ingested::Duplicate
        ));
        assert_eq!(store.orphan_count().unwrap(), 1);
        let t = store.track(new_payment("inv-3")).unwrap();
        assert_eq!(t.payment.state, State::Failed);
        assert_eq!(t.changes.len(), 1);
        assert_eq!(store.orphan_count().unwrap(), 0);
        assert!(store.open_windows().unwrap().is_empty());
        // A retry after the match is still a duplicate.
        assert!(matches!(
            store.ingest_callback(&cb).unwrap(),
            Ingested::Duplicate
        ));
    }

    fn orphan(inv: &str, kind: &str) -> CallbackRecord {
        let mut cb = callback(inv, "approved", State::Succeeded);
        cb.dedupe_key = format!("connpay|cb|approved|{kind}|o-{inv}|{inv}");
        cb
    }

    #[tokio::test]
    async fn orphans_are_one_record_each_within_their_limits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.set_orphan_limits(3, 5);
        for kind in ["a", "b", "c"] {
            assert!(matches!(
                store.ingest_callback(&orphan("inv-o1", kind)).unwrap(),
                Ingested::Orphaned
            ));
        }
        // A fourth under the same key is refused, and nothing of it stored.
        let inbox = store.inbox_len();
        assert!(matches!(
            store.ingest_callback(&orphan("inv-o1", "d")),
            Err(StoreError::OrphanLimit(_))
        ));
        assert_eq!(store.inbox_len(), inbox);
        for inv in ["inv-o2", "inv-o3"] {
            store.ingest_callback(&orphan(inv, "a")).unwrap();
        }
        assert!(matches!(
            store.ingest_callback(&orphan("inv-o4", "a")),
            Err(StoreError::OrphanLimit(_))
        ));
        assert_eq!(store.orphan_count().unwrap(), 5);
        // Each is its own record; the key's index holds three ids.
        assert_eq!(store.orphans.scan_prefix(b"o|").count(), 5);
        let idx = store
            .orphans
            .get(orphan_index_key("connpay|inv|inv-o1"))
            .unwrap();
        assert_eq!(idx.unwrap().len(), 3 * 8);
        // Tracking applies and removes them, in the order they came.
        let t = store.track(new_payment("inv-o1")).unwrap();
        assert_eq!(t.payment.observations, 3);
        assert_eq!(store.orphan_count().unwrap(), 2);
        assert_eq!(store.orphans.scan_prefix(b"o|").count(), 2);
    }

    #[tokio::test]
    async fn replayed_orphans_grow_the_store_linearly() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.set_orphan_limits(2_000, 10_000);
        for i in 0..2_000 {
            store
                .ingest_callback(&orphan("inv-flood", &format!("t{i}")))
                .unwrap();
        }
        store.flush_blocking().unwrap();
        // One list rewritten per orphan reached 590 MB for this.
        let size = store.size_on_disk();
        assert!(size < 64 << 20, "{size} bytes for 2,000 orphans");
        assert_eq!(store.orphan_count().unwrap(), 2_000);
    }

    #[tokio::test]
    async fn expired_orphans_are_forgotten_with_their_inbox_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut old = orphan("inv-e1", "a");
        old.received_ms = 1_000;
        let mut young = orphan("inv-e1", "b");
        young.received_ms = 9_000;
        store.ingest_callback(&old).unwrap();
        store.ingest_callback(&young).unwrap();
        assert_eq!(store.expire_orphans(5_000).unwrap(), 1);
        assert_eq!(store.orphan_count().unwrap(), 1);
        // The provider sending it again is heard, not taken as a repeat.
        assert!(matches!(
            store.ingest_callback(&old).unwrap(),
            Ingested::Orphaned
        ));
        assert_eq!(store.expire_orphans(5_000).unwrap(), 1);
        assert_eq!(store.expire_orphans(5_000).unwrap(), 0);
        let t = store.track(new_payment("inv-e1")).unwrap();
        assert_eq!(t.payment.observations, 1, "only the young one is left");
    }

    #[tokio::test]
    async fn orphan_lists_of_the_previous_release_are_migrated_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let list = vec![orphan("inv-m1", "a"), orphan("inv-m1", "b")];
            store
                .orphans
                .insert("connpay|inv|inv-m1", encode(&list))
                .unwrap();
            store.flush_blocking().unwrap();
        }
        tokio::task::yield_now().await;
        let store = reopen(dir.path()).await;
        assert_eq!(store.orphan_count().unwrap(), 2);
        assert!(store.orphans.get("connpay|inv|inv-m1").unwrap().is_none());
        let t = store.track(new_payment("inv-m1")).unwrap();
        assert_eq!(t.payment.observations, 2);
        assert_eq!(store.orphan_count().unwrap(), 0);
    }

    #[tokio::test]
    async fn concurrent_syncs_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut tasks = vec![];
        for i in 0..50 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.track(new_payment(&format!("inv-c{i}"))).unwrap();
                s.sync().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(store.list(None, None, None, 100).unwrap().len(), 50);
        let page = store.list(None, None, None, 20).unwrap();
        let next = store.list(None, None, Some(&page[19].id), 100).unwrap();
        assert_eq!(next.len(), 30);
    }
}
