//! What each write command does, against the writer's [`View`].

use std::sync::atomic::Ordering;

use super::keys::{self, Kind};
use super::writer::View;
use crate::action::{Action, ActionState};
use crate::model::{Observation, Payment, PollWindow, Report};
use crate::state::Decision;
use crate::store::apply::{add_polls, add_repeats, apply, move_window};
use crate::store::codec::{corrupt, payment_record, split_payment, History, InboxEntry, Record};
use crate::store::{
    CallbackRecord, Change, Enqueued, Ingested, NewPayment, Notice, Observed, Repeats, StoreError,
    Tracked, WindowChange,
};

/// A payment and its history, which lives in the payment's record.
fn load(v: &View, id: &str) -> Result<(Payment, History), StoreError> {
    let key = keys::of(Kind::Payment, id.as_bytes());
    match v.get(&key)? {
        Some(raw) => split_payment(&key, &raw, &v.s.symbols),
        None => Err(StoreError::NotFound(id.to_string())),
    }
}

fn put_payment(v: &mut View, p: &Payment, h: &History) {
    v.put(
        keys::of(Kind::Payment, p.id.as_bytes()),
        payment_record(p, h, &v.s.symbols),
    );
}

fn find(v: &View, key: &str) -> Result<Option<String>, StoreError> {
    Ok(v.get(&keys::of(Kind::Key, key.as_bytes()))?
        .map(|id| keys::id_of(&id)))
}

fn put_key(v: &mut View, key: &str, id: &str) {
    v.put(keys::of(Kind::Key, key.as_bytes()), keys::id_value(id));
}

/// Applies a window change and mirrors an opening or closing in `W`.
/// The next deadline of an open window is not written (it lives in memory).
fn move_window_kv(v: &mut View, p: &mut Payment, change: WindowChange) {
    let was_open = p.window.is_some_and(|w| w.open);
    let open = move_window(p, change);
    if was_open && !open {
        v.del(keys::of(Kind::Window, p.id.as_bytes()));
    }
}

/// Queues a notice of a change, when notices are on.
fn put_notice(v: &mut View, p: &Payment, c: &Change, at_ms: u64) -> Result<(), StoreError> {
    if !v.s.policy.notify.load(Ordering::SeqCst) {
        return Ok(());
    }
    let seq = v.s.db.generate_id()?;
    let n = Notice::of_change(seq, p, c, at_ms);
    v.put(keys::seq_key(Kind::Notice, seq), n.encode());
    v.count(Kind::Notice, 1);
    Ok(())
}

/// Applies a report, adds its observation to the history and queues its
/// notice.
fn record(
    v: &mut View,
    p: &mut Payment,
    h: &mut History,
    report: Report,
    at_ms: u64,
    unsigned_claim: bool,
) -> Result<(Observation, Option<Change>), StoreError> {
    let (obs, change) = apply(p, report, at_ms, unsigned_claim);
    if let Some(c) = &change {
        put_notice(v, p, c, at_ms)?;
    }
    h.push(&obs, &v.s.symbols)
        .map_err(|reason| corrupt(&keys::of(Kind::Payment, p.id.as_bytes()), reason))?;
    Ok((obs, change))
}

/// Adds repeat counts held in memory to the payment and the observation
/// they repeat.
fn fold(
    v: &View,
    p: &mut Payment,
    h: &mut History,
    carry: Option<Repeats>,
) -> Result<(), StoreError> {
    let Some(c) = carry else { return Ok(()) };
    if let Some(w) = p.window.as_mut() {
        add_polls(w, c.polls, c.next_ms);
    }
    if let Some(seq) = c.seq {
        let mut all = h
            .read(&v.s.symbols)
            .map_err(|reason| corrupt(&keys::of(Kind::Payment, p.id.as_bytes()), reason))?;
        if let Some(o) = all.iter_mut().find(|o| o.seq == seq) {
            add_repeats(o, c.repeats, c.last_ms);
            *h = History::from_observations(p.created_ms, &all, &v.s.symbols);
        }
    }
    Ok(())
}

pub fn track(v: &mut View, mut new: NewPayment) -> Result<Tracked, StoreError> {
    if let Some(id) = find(v, &new.idempotency_key)? {
        return Ok(Tracked {
            payment: load(v, &id)?.0,
            created: false,
            changes: vec![],
            claims: vec![],
        });
    }
    // One provider payment, one payrecon payment: tracking it again under
    // other keys must not take its callbacks over.
    for k in &new.lookup_keys {
        if let Some(existing) = find(v, k)? {
            return Err(StoreError::AlreadyTracked {
                key: k.clone(),
                existing,
            });
        }
    }
    let id = super::new_id(&v.s.db, "pay_")?;
    let idempotency_key = std::mem::take(&mut new.idempotency_key);
    let lookup_keys = std::mem::take(&mut new.lookup_keys);
    let mut p = new.into_payment(id.clone());
    put_key(v, &idempotency_key, &id);
    let mut h = History::new(p.created_ms);
    let (mut changes, mut claims) = (vec![], vec![]);
    for k in &lookup_keys {
        put_key(v, k, &id);
        for cb in take_orphans(v, k)? {
            let (obs, change) = record(
                v,
                &mut p,
                &mut h,
                cb.report,
                cb.received_ms,
                cb.unsigned_claim,
            )?;
            if obs.decision == Some(Decision::Unconfirmed) {
                claims.extend(obs.state);
            }
            changes.extend(change);
        }
    }
    match p.window.as_mut() {
        Some(w) if w.open && !p.state.is_final() => v.put(
            keys::of(Kind::Window, id.as_bytes()),
            keys::window_value(w.next_ms, p.provider),
        ),
        Some(w) => w.open = false,
        None => {}
    }
    put_payment(v, &p, &h);
    v.count(Kind::Payment, 1);
    Ok(Tracked {
        payment: p,
        created: true,
        changes,
        claims,
    })
}

pub fn observe(
    v: &mut View,
    id: &str,
    report: Report,
    window: WindowChange,
    now_ms: u64,
    carry: Option<Repeats>,
) -> Result<Observed, StoreError> {
    let (mut p, mut h) = load(v, id)?;
    fold(v, &mut p, &mut h, carry)?;
    for k in &report.learned_keys {
        // Learned once, seen on every poll: written only when new.
        if find(v, k)?.is_none() {
            put_key(v, k, id);
        }
    }
    let (observation, change) = record(v, &mut p, &mut h, report, now_ms, false)?;
    move_window_kv(v, &mut p, window);
    put_payment(v, &p, &h);
    Ok(Observed {
        payment: p,
        observation,
        change,
        repeat: false,
    })
}

pub fn advance(
    v: &mut View,
    id: &str,
    window: WindowChange,
    carry: Option<Repeats>,
) -> Result<Option<PollWindow>, StoreError> {
    let (mut p, mut h) = load(v, id)?;
    fold(v, &mut p, &mut h, carry)?;
    move_window_kv(v, &mut p, window);
    put_payment(v, &p, &h);
    Ok(p.window)
}

pub fn record_repeats(v: &mut View, c: Repeats) -> Result<(), StoreError> {
    // A payment gone (never, today) has nothing to count on.
    let Ok((mut p, mut h)) = load(v, &c.payment_id) else {
        return Ok(());
    };
    fold(v, &mut p, &mut h, Some(c))?;
    put_payment(v, &p, &h);
    Ok(())
}

pub fn ingest(v: &mut View, cb: CallbackRecord) -> Result<Ingested, StoreError> {
    let inbox = keys::of(Kind::Inbox, cb.dedupe_key.as_bytes());
    if v.get(&inbox)?.is_some() {
        return Ok(Ingested::Duplicate);
    }
    let Some(id) = find(v, &cb.match_key)? else {
        put_orphan(v, &cb)?;
        let entry = InboxEntry {
            payment_id: None,
            received_ms: cb.received_ms,
        };
        v.put(inbox, entry.encode());
        v.count(Kind::Inbox, 1);
        return Ok(Ingested::Orphaned);
    };
    let (mut p, mut h) = load(v, &id)?;
    let (observation, change) = record(
        v,
        &mut p,
        &mut h,
        cb.report,
        cb.received_ms,
        cb.unsigned_claim,
    )?;
    move_window_kv(v, &mut p, WindowChange::Keep);
    put_payment(v, &p, &h);
    let entry = InboxEntry {
        payment_id: Some(id),
        received_ms: cb.received_ms,
    };
    v.put(inbox, entry.encode());
    v.count(Kind::Inbox, 1);
    Ok(Ingested::Applied(Box::new(Observed {
        payment: p,
        observation,
        change,
        repeat: false,
    })))
}

fn load_action(v: &View, id: &str) -> Result<Action, StoreError> {
    v.load(&keys::of(Kind::Action, id.as_bytes()))?
        .ok_or_else(|| StoreError::NotFound(id.to_string()))
}

pub fn enqueue(
    v: &mut View,
    mut action: Action,
    exclusive_key: Option<String>,
) -> Result<Enqueued, StoreError> {
    load(v, &action.payment_id)?;
    let idem = action
        .idempotency_key
        .as_ref()
        .map(|k| format!("action|idem|{}|{k}", action.payment_id));
    if let Some(id) = idem.as_deref().map(|k| find(v, k)).transpose()?.flatten() {
        return Ok(Enqueued::Existing(load_action(v, &id)?));
    }
    if let Some(id) = exclusive_key
        .as_deref()
        .map(|k| find(v, k))
        .transpose()?
        .flatten()
    {
        let holder = load_action(v, &id)?;
        if holder.state != ActionState::Failed {
            return Ok(Enqueued::Refused(holder));
        }
    }
    action.id = super::new_id(&v.s.db, "act_")?;
    for k in exclusive_key.iter().chain(idem.iter()) {
        put_key(v, k, &action.id);
    }
    let of = format!("action|of|{}|{}", action.payment_id, action.id);
    put_key(v, &of, &action.id);
    v.put(
        keys::of(Kind::Action, action.id.as_bytes()),
        action.encode(),
    );
    v.put(keys::of(Kind::Outbox, action.id.as_bytes()), vec![]);
    Ok(Enqueued::Created(action))
}

pub fn update_action(
    v: &mut View,
    action: &Action,
    reports: Vec<Report>,
) -> Result<Vec<Change>, StoreError> {
    let id = action.id.as_bytes();
    v.put(keys::of(Kind::Action, id), action.encode());
    if action.state.is_final() {
        v.del(keys::of(Kind::Outbox, id));
    } else {
        v.put(keys::of(Kind::Outbox, id), vec![]);
    }
    let mut changes = vec![];
    if !reports.is_empty() {
        let (mut p, mut h) = load(v, &action.payment_id)?;
        for r in reports {
            let (_, c) = record(v, &mut p, &mut h, r, action.updated_ms, false)?;
            changes.extend(c);
        }
        move_window_kv(v, &mut p, WindowChange::Keep);
        put_payment(v, &p, &h);
    }
    Ok(changes)
}

pub fn update_notice(v: &mut View, n: &Notice) -> Result<(), StoreError> {
    // Only if still queued: never resurrect a delivered notice.
    let key = keys::seq_key(Kind::Notice, n.seq);
    if v.get(&key)?.is_some() {
        v.put(key, n.encode());
    }
    Ok(())
}

pub fn remove_notice(v: &mut View, n: &Notice, dead: bool) -> Result<(), StoreError> {
    let key = keys::seq_key(Kind::Notice, n.seq);
    if v.get(&key)?.is_none() {
        return Ok(());
    }
    if dead {
        v.put(keys::seq_key(Kind::Dead, n.seq), n.encode());
        v.count(Kind::Dead, 1);
    }
    v.del(key);
    v.count(Kind::Notice, -1);
    Ok(())
}

/// Dead letters back to the queue, attempts reset, under the same seq.
pub fn replay_dead(v: &mut View, seqs: &[u64]) -> Result<Vec<Notice>, StoreError> {
    let mut back = vec![];
    for &seq in seqs {
        let key = keys::seq_key(Kind::Dead, seq);
        let Some(raw) = v.get(&key)? else { continue };
        let mut n = Notice::decode(&key, &raw)?;
        n.reset_attempts();
        v.del(key);
        v.count(Kind::Dead, -1);
        v.put(keys::seq_key(Kind::Notice, seq), n.encode());
        v.count(Kind::Notice, 1);
        back.push(n);
    }
    Ok(back)
}

/// Keeps one orphan callback as its own record, within the limits.
fn put_orphan(v: &mut View, cb: &CallbackRecord) -> Result<(), StoreError> {
    let per_key = v.s.policy.orphans_per_key.load(Ordering::Relaxed);
    let total = v.s.policy.orphans_total.load(Ordering::Relaxed);
    let idx = keys::of(Kind::OrphanIndex, cb.match_key.as_bytes());
    let mut ids = keys::read_ids(v.get(&idx)?.as_deref());
    if ids.len() as u64 >= per_key {
        return Err(StoreError::OrphanLimit(format!(
            "{per_key} callbacks already wait for an unknown payment under this key"
        )));
    }
    if v.s.counted(Kind::Orphan) as i64 + v.pending(Kind::Orphan) >= total as i64 {
        return Err(StoreError::OrphanLimit(format!(
            "{total} callbacks already wait for unknown payments"
        )));
    }
    let id = v.s.db.generate_id()?;
    v.put(keys::seq_key(Kind::Orphan, id), cb.encode());
    ids.push(id);
    v.put(idx, keys::write_ids(&ids));
    v.count(Kind::Orphan, 1);
    Ok(())
}

/// Removes and returns the orphan callbacks waiting under a lookup key, in
/// the order they came.
fn take_orphans(v: &mut View, match_key: &str) -> Result<Vec<CallbackRecord>, StoreError> {
    let idx = keys::of(Kind::OrphanIndex, match_key.as_bytes());
    let Some(raw) = v.get(&idx)? else {
        return Ok(vec![]);
    };
    v.del(idx);
    let mut out = vec![];
    for id in keys::read_ids(Some(&raw)) {
        let key = keys::seq_key(Kind::Orphan, id);
        if let Some(cb) = v.load::<CallbackRecord>(&key)? {
            v.del(key);
            v.count(Kind::Orphan, -1);
            out.push(cb);
        }
    }
    Ok(out)
}

/// Forgets orphan callbacks received before `before_ms`: the record, its
/// place under its key, and its inbox entry.
pub fn expire_orphans(v: &mut View, before_ms: u64) -> Result<usize, StoreError> {
    let mut expired = vec![];
    for kv in v.s.tree.scan_prefix([Kind::Orphan.prefix()]) {
        let (k, raw) = kv?;
        let cb = CallbackRecord::decode(&k, &raw)?;
        if cb.received_ms < before_ms {
            expired.push((k.to_vec(), cb));
        }
    }
    let mut n = 0;
    for (key, cb) in expired {
        // Taken since the scan (by a track earlier in this group).
        if v.get(&key)?.is_none() {
            continue;
        }
        let id = keys::read_u64(Some(keys::rest(&key)));
        let idx = keys::of(Kind::OrphanIndex, cb.match_key.as_bytes());
        let mut ids = keys::read_ids(v.get(&idx)?.as_deref());
        ids.retain(|i| *i != id);
        if ids.is_empty() {
            v.del(idx);
        } else {
            v.put(idx, keys::write_ids(&ids));
        }
        v.del(key);
        v.count(Kind::Orphan, -1);
        v.del(keys::of(Kind::Inbox, cb.dedupe_key.as_bytes()));
        v.count(Kind::Inbox, -1);
        n += 1;
    }
    Ok(n)
}
