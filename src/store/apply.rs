//! What a report does to a payment, in memory. Every engine applies
//! reports through here, so the state machine is judged the same way
//! whichever store keeps the result.

use crate::model::{Observation, Payment, PollWindow, Report, Source};
use crate::state::{decide, Decision};

use super::{Change, WindowChange};

/// Applies a report to a payment in memory: numbers it, judges it with the
/// state machine, and moves the payment if it advances. A move claimed on
/// unsigned fields is held as [`Decision::Unconfirmed`].
pub fn apply(
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
        repeats: 0,
        last_ms: None,
    };
    payment.observations += 1;
    (observation, change)
}

/// Applies a window change to a payment. A final payment's window is
/// closed whatever the change. Returns whether the window is open after.
pub fn move_window(payment: &mut Payment, change: WindowChange) -> bool {
    let fin = payment.state.is_final();
    let Some(w) = payment.window.as_mut() else {
        return false;
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
    if fin {
        w.open = false;
    }
    w.open
}

/// Whether a report says exactly what an observation said: then it is a
/// repeat, counted on that observation rather than recorded again.
pub fn repeats(report: &Report, last: &Observation) -> bool {
    report.source == last.source
        && report.raw_status == last.raw_status
        && report.state == last.state
        && report.fields == last.fields
}

/// Adds polls counted in memory (not yet written) to a window, and the
/// deadline they last set. The same for every engine and for readers.
pub fn add_polls(w: &mut PollWindow, polls: u32, next_ms: Option<u64>) {
    w.polls += polls;
    if let Some(n) = next_ms {
        w.next_ms = n;
    }
}

/// Adds repeats counted in memory to the observation they repeat.
pub fn add_repeats(o: &mut Observation, repeats: u32, last_ms: u64) {
    o.repeats += repeats;
    o.last_ms = Some(o.last_ms.unwrap_or(0).max(last_ms));
}
