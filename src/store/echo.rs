//! Repeats of poll answers, counted in memory.
//!
//! Most polls of a payment in its window get the same answer as the poll
//! before ("still processing"). Such an answer changes nothing: it is not
//! a new history entry and needs no durable write. Its count (on the
//! observation it repeats, and the window's polls) and the window's next
//! deadline are kept here and written with the payment's next real
//! change, at the periodic checkpoint, or at shutdown. A crash loses at
//! most the counts since the last checkpoint, never an observation that
//! said something new (docs/states.md).
//!
//! An answer is a repeat when its source, raw status, state and fields
//! equal those of the payment's last observation; a 64-bit digest of them
//! is kept per payment, not the observation.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use crate::model::{Observation, Payment, Report, Source};
use crate::state::State;

use super::{Repeats, WindowChange};

#[derive(Default)]
pub struct Echoes {
    by_payment: Mutex<HashMap<String, Echo>>,
}

#[derive(Default)]
struct Echo {
    /// The last observation: its seq and digest.
    last: Option<(u32, u64)>,
    /// Counted since the last write, on this observation.
    repeats: u32,
    repeats_on: Option<u32>,
    last_ms: u64,
    polls: u32,
    next_ms: Option<u64>,
}

fn digest(
    source: Source,
    raw: &str,
    state: Option<State>,
    fields: &std::collections::BTreeMap<String, String>,
) -> u64 {
    // SipHash with fixed keys: the same in every run.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (source.as_str(), raw, state.map(State::as_str), fields).hash(&mut h);
    h.finish()
}

impl Echoes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Echo>> {
        self.by_payment.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the payment's last observation is known here.
    pub fn knows(&self, id: &str) -> bool {
        self.lock().get(id).is_some_and(|e| e.last.is_some())
    }

    /// Remembers the payment's last observation (just written or read).
    pub fn remember(&self, id: &str, o: &Observation) {
        let d = digest(o.source, &o.raw_status, o.state, &o.fields);
        self.lock().entry(id.to_string()).or_default().last = Some((o.seq, d));
    }

    /// If `report` repeats the last observation, counts it (and the poll
    /// and the window's next deadline) and returns the repeated seq.
    pub fn repeat(
        &self,
        id: &str,
        report: &Report,
        window: WindowChange,
        now_ms: u64,
    ) -> Option<u32> {
        let d = digest(
            report.source,
            &report.raw_status,
            report.state,
            &report.fields,
        );
        let mut map = self.lock();
        let e = map.get_mut(id)?;
        let (seq, last) = e.last?;
        if last != d {
            return None;
        }
        e.repeats += 1;
        e.repeats_on = Some(seq);
        e.last_ms = e.last_ms.max(now_ms);
        if let WindowChange::Next(at) = window {
            e.polls += 1;
            e.next_ms = Some(at);
        }
        Some(seq)
    }

    /// A poll that got no answer: counted, and the window's next deadline.
    pub fn count_poll(&self, id: &str, next_ms: u64) {
        let mut map = self.lock();
        let e = map.entry(id.to_string()).or_default();
        e.polls += 1;
        e.next_ms = Some(next_ms);
    }

    /// Takes the counts held for a payment, to write with its next change.
    pub fn take(&self, id: &str) -> Option<Repeats> {
        let mut map = self.lock();
        let e = map.get_mut(id)?;
        take_counts(id, e)
    }

    /// Puts counts back that could not be written.
    pub fn restore(&self, r: Option<Repeats>) {
        let Some(r) = r else { return };
        let mut map = self.lock();
        let e = map.entry(r.payment_id).or_default();
        e.repeats += r.repeats;
        e.repeats_on = e.repeats_on.or(r.seq);
        e.last_ms = e.last_ms.max(r.last_ms);
        e.polls += r.polls;
        e.next_ms = e.next_ms.or(r.next_ms);
    }

    /// Something else was recorded for the payment: the next answer is
    /// compared with that, so the last observation here is stale.
    pub fn forget_last(&self, id: &str) {
        if let Some(e) = self.lock().get_mut(id) {
            e.last = None;
        }
    }

    /// The window closed: nothing more is counted for the payment.
    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Takes every count held, for the checkpoint.
    pub fn drain(&self) -> Vec<Repeats> {
        let mut map = self.lock();
        map.iter_mut()
            .filter_map(|(id, e)| take_counts(id, e))
            .collect()
    }

    /// Adds the counts held to a payment read from the engine.
    pub fn overlay(&self, p: &mut Payment) {
        let map = self.lock();
        let (Some(e), Some(w)) = (map.get(&p.id), p.window.as_mut()) else {
            return;
        };
        super::apply::add_polls(w, e.polls, e.next_ms);
    }

    /// Adds the repeats held to the observation they repeat.
    pub fn overlay_history(&self, id: &str, h: &mut [Observation]) {
        let map = self.lock();
        let Some(e) = map.get(id).filter(|e| e.repeats > 0) else {
            return;
        };
        if let Some(o) = e
            .repeats_on
            .and_then(|seq| h.iter_mut().find(|o| o.seq == seq))
        {
            super::apply::add_repeats(o, e.repeats, e.last_ms);
        }
    }
}

fn take_counts(id: &str, e: &mut Echo) -> Option<Repeats> {
    if e.repeats == 0 && e.polls == 0 {
        return None;
    }
    let r = Repeats {
        payment_id: id.to_string(),
        seq: e.repeats_on.filter(|_| e.repeats > 0),
        repeats: e.repeats,
        last_ms: e.last_ms,
        polls: e.polls,
        next_ms: e.next_ms,
    };
    (e.repeats, e.repeats_on, e.polls, e.next_ms) = (0, None, 0, None);
    Some(r)
}
