//! What each write does, inside one PostgreSQL transaction. The state
//! machine is the shared one (`store/apply.rs`); a payment is read `FOR
//! UPDATE`, so two instances applying reports to it take turns, and every
//! key (lookup, idempotency, de-duplication) is taken by a unique
//! constraint, so two instances never both take it.

use std::sync::atomic::Ordering;

use deadpool_postgres::Transaction;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::cached;
use crate::model::{Observation, Payment, Report};
use crate::state::Decision;
use crate::store::apply::{add_polls, add_repeats, apply, move_window};
use crate::store::{
    CallbackRecord, Change, Ingested, NewPayment, Notice, Observed, Policy, Repeats, StoreError,
    Tracked, WindowChange,
};

/// An error inside a transaction: the database's (which may call for the
/// transaction to run again) or the store's own.
#[derive(Debug)]
pub enum E {
    Pg(tokio_postgres::Error),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for E {
    fn from(e: tokio_postgres::Error) -> E {
        E::Pg(e)
    }
}

impl From<StoreError> for E {
    fn from(e: StoreError) -> E {
        E::Store(e)
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> StoreError {
        StoreError::Database(e.to_string())
    }
}

impl E {
    /// Another instance got there first (a key taken, a lock order
    /// crossed): run the transaction again and it will see what won.
    pub fn retryable(&self) -> bool {
        use tokio_postgres::error::SqlState;
        matches!(self, E::Pg(e) if e.code().is_some_and(|c| [
            SqlState::UNIQUE_VIOLATION,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
        ].contains(c)))
    }

    pub fn into_store(self) -> StoreError {
        match self {
            E::Pg(e) => e.into(),
            E::Store(e) => e,
        }
    }
}

pub type R<T> = Result<T, E>;

pub fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("records serialize")
}

pub fn from_json<T: DeserializeOwned>(what: &str, raw: &str) -> Result<T, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError::Corrupt {
        key: what.to_string(),
        reason: e.to_string(),
    })
}

pub fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) async fn load(t: &Transaction<'_>, id: &str) -> R<Payment> {
    let row = cached::row_opt(
        t,
        "SELECT record::text FROM payments WHERE id = $1 FOR UPDATE",
        &[&id],
    )
    .await?
    .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
    Ok(from_json(id, row.get(0))?)
}

pub(super) async fn put_payment(t: &Transaction<'_>, p: &Payment) -> R<()> {
    cached::exec(
        t,
        "UPDATE payments SET state = $2, updated_ms = $3, record = $4::text::jsonb WHERE id = $1",
        &[&p.id, &p.state.as_str(), &i(p.updated_ms), &json(p)],
    )
    .await?;
    Ok(())
}

pub async fn find(t: &impl deadpool_postgres::GenericClient, key: &str) -> R<Option<String>> {
    Ok(cached::row_opt(
        t,
        "SELECT target_id FROM lookup_keys WHERE key = $1",
        &[&key],
    )
    .await?
    .map(|r| r.get(0)))
}

pub(super) async fn put_key(t: &Transaction<'_>, key: &str, id: &str) -> R<()> {
    cached::exec(
        t,
        "INSERT INTO lookup_keys (key, target_id) VALUES ($1, $2)",
        &[&key, &id],
    )
    .await?;
    Ok(())
}

/// Applies a window change and removes the payment's `windows` row when
/// it closes the window.
pub(super) async fn move_window_row(
    t: &Transaction<'_>,
    p: &mut Payment,
    change: WindowChange,
) -> R<()> {
    let was_open = p.window.is_some_and(|w| w.open);
    if was_open && !move_window(p, change) {
        cached::exec(t, "DELETE FROM windows WHERE payment_id = $1", &[&p.id]).await?;
    }
    Ok(())
}

async fn put_notice(
    t: &Transaction<'_>,
    policy: &Policy,
    p: &Payment,
    c: &Change,
    at_ms: u64,
) -> R<()> {
    if !policy.notify.load(Ordering::SeqCst) {
        return Ok(());
    }
    let seq: i64 = cached::row(
        t,
        "SELECT nextval(pg_get_serial_sequence('notices', 'seq'))",
        &[],
    )
    .await?
    .get(0);
    let n = Notice::of_change(seq as u64, p, c, at_ms);
    cached::exec(
        t,
        "INSERT INTO notices (seq, payment_id, record) VALUES ($1, $2, $3::text::jsonb)",
        &[&seq, &p.id, &json(&n)],
    )
    .await?;
    Ok(())
}

/// Applies a report, records its observation and queues its notice.
pub(super) async fn record(
    t: &Transaction<'_>,
    policy: &Policy,
    p: &mut Payment,
    report: Report,
    at_ms: u64,
    unsigned_claim: bool,
) -> R<(Observation, Option<Change>)> {
    let (obs, change) = apply(p, report, at_ms, unsigned_claim);
    if let Some(c) = &change {
        put_notice(t, policy, p, c, at_ms).await?;
    }
    cached::exec(
        t,
        "INSERT INTO observations (payment_id, seq, record) VALUES ($1, $2, $3::text::jsonb)",
        &[&p.id, &(obs.seq as i32), &json(&obs)],
    )
    .await?;
    Ok((obs, change))
}

/// Adds repeat counts held in memory to the payment and the observation
/// they repeat.
async fn fold(t: &Transaction<'_>, p: &mut Payment, carry: Option<Repeats>) -> R<()> {
    let Some(c) = carry else { return Ok(()) };
    if let Some(w) = p.window.as_mut() {
        add_polls(w, c.polls, c.next_ms);
    }
    let Some(seq) = c.seq else { return Ok(()) };
    let row = cached::row_opt(
        t,
        "SELECT record::text FROM observations WHERE payment_id = $1 AND seq = $2 FOR UPDATE",
        &[&p.id, &(seq as i32)],
    )
    .await?;
    if let Some(row) = row {
        let mut o: Observation = from_json(&p.id, row.get(0))?;
        add_repeats(&mut o, c.repeats, c.last_ms);
        cached::exec(
            t,
            "UPDATE observations SET record = $3::text::jsonb WHERE payment_id = $1 AND seq = $2",
            &[&p.id, &(seq as i32), &json(&o)],
        )
        .await?;
    }
    Ok(())
}

pub async fn track(
    t: &Transaction<'_>,
    policy: &Policy,
    mut new: NewPayment,
    id: String,
) -> R<Tracked> {
    if let Some(existing) = find(t, &new.idempotency_key).await? {
        return Ok(Tracked {
            payment: load(t, &existing).await?,
            created: false,
            changes: vec![],
            claims: vec![],
        });
    }
    for k in &new.lookup_keys {
        if let Some(existing) = find(t, k).await? {
            return Err(StoreError::AlreadyTracked {
                key: k.clone(),
                existing,
            }
            .into());
        }
    }
    let idempotency_key = std::mem::take(&mut new.idempotency_key);
    let lookup_keys = std::mem::take(&mut new.lookup_keys);
    let mut p = new.into_payment(id.clone());
    cached::exec(t,
        "INSERT INTO payments (id, provider, state, created_ms, updated_ms, record) VALUES ($1, $2, $3, $4, $4, $5::text::jsonb)",
        &[&p.id, &p.provider.to_string(), &p.state.as_str(), &i(p.created_ms), &json(&p)],
    )
    .await?;
    put_key(t, &idempotency_key, &id).await?;
    let (mut changes, mut claims) = (vec![], vec![]);
    // Each key's lock before the key (in one order: two tracks sharing
    // keys never wait on each other crosswise); see `orphan_or_found`.
    let mut locked: Vec<&String> = lookup_keys.iter().collect();
    locked.sort();
    for k in locked {
        lock_key(t, k).await?;
    }
    for k in &lookup_keys {
        put_key(t, k, &id).await?;
        let orphans = cached::rows(
            t,
            "DELETE FROM orphans WHERE match_key = $1 RETURNING id, record::text",
            &[k],
        )
        .await?;
        let mut orphans: Vec<(i64, String)> =
            orphans.iter().map(|r| (r.get(0), r.get(1))).collect();
        orphans.sort_by_key(|o| o.0);
        for (_, raw) in orphans {
            let cb: CallbackRecord = from_json(k, &raw)?;
            cached::exec(
                t,
                "UPDATE inbox SET payment_id = $2 WHERE dedupe_key = $1",
                &[&cb.dedupe_key, &id],
            )
            .await?;
            let (obs, change) = record(
                t,
                policy,
                &mut p,
                cb.report,
                cb.received_ms,
                cb.unsigned_claim,
            )
            .await?;
            if obs.decision == Some(Decision::Unconfirmed) {
                claims.extend(obs.state);
            }
            changes.extend(change);
        }
    }
    match p.window.as_mut() {
        Some(w) if w.open && !p.state.is_final() => {
            cached::exec(
                t,
                "INSERT INTO windows (payment_id, provider, next_ms) VALUES ($1, $2, $3)",
                &[&id, &p.provider.to_string(), &i(w.next_ms)],
            )
            .await?;
        }
        Some(w) => w.open = false,
        None => {}
    }
    put_payment(t, &p).await?;
    Ok(Tracked {
        payment: p,
        created: true,
        changes,
        claims,
    })
}

pub async fn observe(
    t: &Transaction<'_>,
    policy: &Policy,
    id: &str,
    report: Report,
    window: WindowChange,
    now_ms: u64,
    carry: Option<Repeats>,
) -> R<Observed> {
    let mut p = load(t, id).await?;
    fold(t, &mut p, carry).await?;
    for k in &report.learned_keys {
        cached::exec(
            t,
            "INSERT INTO lookup_keys (key, target_id) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            &[k, &id],
        )
        .await?;
    }
    let (observation, change) = record(t, policy, &mut p, report, now_ms, false).await?;
    move_window_row(t, &mut p, window).await?;
    put_payment(t, &p).await?;
    Ok(Observed {
        payment: p,
        observation,
        change,
        repeat: false,
    })
}

pub async fn advance(
    t: &Transaction<'_>,
    id: &str,
    window: WindowChange,
    carry: Option<Repeats>,
) -> R<Option<crate::model::PollWindow>> {
    let mut p = load(t, id).await?;
    fold(t, &mut p, carry).await?;
    move_window_row(t, &mut p, window).await?;
    put_payment(t, &p).await?;
    Ok(p.window)
}

pub async fn record_repeats(t: &Transaction<'_>, counts: &[Repeats]) -> R<()> {
    for c in counts {
        let Ok(mut p) = load(t, &c.payment_id).await else {
            continue;
        };
        fold(t, &mut p, Some(c.clone())).await?;
        put_payment(t, &p).await?;
    }
    Ok(())
}

pub async fn ingest(t: &Transaction<'_>, policy: &Policy, cb: &CallbackRecord) -> R<Ingested> {
    // The de-duplication: whichever instance inserts the key applies it.
    // The entry names the payment the callback matches, found in the same
    // statement (one round trip fewer per callback).
    let taken = cached::row_opt(
        t,
        "INSERT INTO inbox (dedupe_key, payment_id, received_ms) \
         SELECT $1, (SELECT target_id FROM lookup_keys WHERE key = $2), $3 \
         ON CONFLICT (dedupe_key) DO NOTHING \
         RETURNING payment_id",
        &[&cb.dedupe_key, &cb.match_key, &i(cb.received_ms)],
    )
    .await?;
    let Some(row) = taken else {
        return Ok(Ingested::Duplicate);
    };
    let found: Option<String> = row.get(0);
    let id = match found {
        Some(id) => id,
        None => match orphan_or_found(t, policy, cb).await? {
            Some(id) => id,
            None => return Ok(Ingested::Orphaned),
        },
    };
    let mut p = load(t, &id).await?;
    let (observation, change) = record(
        t,
        policy,
        &mut p,
        cb.report.clone(),
        cb.received_ms,
        cb.unsigned_claim,
    )
    .await?;
    move_window_row(t, &mut p, WindowChange::Keep).await?;
    put_payment(t, &p).await?;
    Ok(Ingested::Applied(Box::new(Observed {
        payment: p,
        observation,
        change,
        repeat: false,
    })))
}

/// Takes the lock a track of a payment under `key` also takes before it
/// writes the key and claims its orphans (until the transaction ends):
/// of a callback kept as an orphan and its payment's track, on two
/// instances at once, one waits for the other.
async fn lock_key(t: &Transaction<'_>, key: &str) -> R<()> {
    cached::exec(
        t,
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 7340))",
        &[&key],
    )
    .await?;
    Ok(())
}

/// A callback for no known payment: under the key's lock, looked up
/// again (a track on another instance may have committed since the inbox
/// insert looked) and kept as an orphan only if still unknown. The
/// payment's id when it was found after all.
async fn orphan_or_found(
    t: &Transaction<'_>,
    policy: &Policy,
    cb: &CallbackRecord,
) -> R<Option<String>> {
    lock_key(t, &cb.match_key).await?;
    if let Some(id) = find(t, &cb.match_key).await? {
        cached::exec(
            t,
            "UPDATE inbox SET payment_id = $2 WHERE dedupe_key = $1",
            &[&cb.dedupe_key, &id],
        )
        .await?;
        return Ok(Some(id));
    }
    put_orphan(t, policy, cb).await?;
    Ok(None)
}

async fn put_orphan(t: &Transaction<'_>, policy: &Policy, cb: &CallbackRecord) -> R<()> {
    let per_key = policy.orphans_per_key.load(Ordering::Relaxed);
    let total = policy.orphans_total.load(Ordering::Relaxed);
    let under: i64 = cached::row(
        t,
        "SELECT count(*) FROM orphans WHERE match_key = $1",
        &[&cb.match_key],
    )
    .await?
    .get(0);
    if under as u64 >= per_key {
        return Err(StoreError::OrphanLimit(format!(
            "{per_key} callbacks already wait for an unknown payment under this key"
        ))
        .into());
    }
    let all: i64 = cached::row(t, "SELECT count(*) FROM orphans", &[])
        .await?
        .get(0);
    if all as u64 >= total {
        return Err(StoreError::OrphanLimit(format!(
            "{total} callbacks already wait for unknown payments"
        ))
        .into());
    }
    cached::exec(
        t,
        "INSERT INTO orphans (match_key, received_ms, record) VALUES ($1, $2, $3::text::jsonb)",
        &[&cb.match_key, &i(cb.received_ms), &json(cb)],
    )
    .await?;
    Ok(())
}

pub async fn expire_orphans(t: &Transaction<'_>, before_ms: u64) -> R<usize> {
    let gone = cached::rows(
        t,
        "DELETE FROM orphans WHERE received_ms < $1 RETURNING record::text",
        &[&i(before_ms)],
    )
    .await?;
    for row in &gone {
        let cb: CallbackRecord = from_json("orphan", row.get(0))?;
        cached::exec(
            t,
            "DELETE FROM inbox WHERE dedupe_key = $1",
            &[&cb.dedupe_key],
        )
        .await?;
    }
    Ok(gone.len())
}
