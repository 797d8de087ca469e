//! Formats 2 and 3 of a payment's record (encoding `0x01`): postcard of the
//! payment's fields as a tuple, then (format 3) each observation's
//! postcard, oldest first; format 2 kept each observation under `H`.
//! Read by the migration to format 4; written only by tests, to make the
//! stores that earlier releases wrote.

use std::collections::BTreeMap;

use super::{body, corrupt, postcard, unpostcard, Record, StoreError};
use crate::model::{Keys, Mismatch, Observation, Payment, PollWindow, ProviderId, Source};
use crate::state::{Decision, State};

type MismatchRec = (String, Option<i64>, Option<String>, u64);

type PaymentRec = (
    String,
    ProviderId,
    Keys,
    Option<i64>,
    Option<String>,
    State,
    Option<String>,
    u64,
    u64,
    Option<u64>,
    Option<Source>,
    Option<PollWindow>,
    u32,
    Option<MismatchRec>,
);

fn payment(r: PaymentRec) -> Payment {
    Payment {
        id: r.0,
        provider: r.1,
        keys: r.2,
        amount_minor: r.3,
        currency: r.4,
        state: r.5,
        raw_status: r.6,
        created_ms: r.7,
        updated_ms: r.8,
        final_ms: r.9,
        final_source: r.10,
        window: r.11,
        observations: r.12,
        mismatch: r.13.map(|m| Mismatch {
            reported: m.0,
            reported_minor: m.1,
            reported_currency: m.2,
            at_ms: m.3,
        }),
    }
}

type ObservationRec = (
    u32,
    Source,
    u64,
    String,
    Option<State>,
    Option<Decision>,
    BTreeMap<String, String>,
    u32,
    Option<u64>,
);

type ObservationRef<'a> = (
    u32,
    Source,
    u64,
    &'a String,
    Option<State>,
    Option<Decision>,
    &'a BTreeMap<String, String>,
    u32,
    Option<u64>,
);

fn observation_ref(o: &Observation) -> ObservationRef<'_> {
    (
        o.seq,
        o.source,
        o.at_ms,
        &o.raw_status,
        o.state,
        o.decision,
        &o.fields,
        o.repeats,
        o.last_ms,
    )
}

fn observation(r: ObservationRec) -> Observation {
    Observation {
        seq: r.0,
        source: r.1,
        at_ms: r.2,
        raw_status: r.3,
        state: r.4,
        decision: r.5,
        fields: r.6,
        repeats: r.7,
        last_ms: r.8,
    }
}

/// An observation as its own record: format 2's history entries (read by
/// the migration), and tests.
impl Record for Observation {
    fn encode(&self) -> Vec<u8> {
        postcard(&observation_ref(self))
    }

    fn decode_body(raw: &[u8]) -> Result<Self, String> {
        unpostcard(raw).map(observation)
    }
}

/// A payment's record of format 2 or 3: the payment and the history it
/// carries (none in format 2).
pub fn split(key: &[u8], raw: &[u8]) -> Result<(Payment, Vec<Observation>), StoreError> {
    let b = body(raw).map_err(|reason| corrupt(key, reason))?;
    let (r, mut rest) =
        postcard::take_from_bytes::<PaymentRec>(b).map_err(|e| corrupt(key, e.to_string()))?;
    let mut history = vec![];
    while !rest.is_empty() {
        let (o, more) = postcard::take_from_bytes::<ObservationRec>(rest)
            .map_err(|e| corrupt(key, format!("history entry {}: {e}", history.len())))?;
        history.push(observation(o));
        rest = more;
    }
    Ok((payment(r), history))
}

/// A payment's record as format 3 wrote it (format 2: with no history).
#[cfg(test)]
pub fn record(p: &Payment, history: &[Observation]) -> Vec<u8> {
    let m = p
        .mismatch
        .as_ref()
        .map(|m| (&m.reported, m.reported_minor, &m.reported_currency, m.at_ms));
    let mut out = postcard(&(
        &p.id,
        p.provider,
        &p.keys,
        p.amount_minor,
        &p.currency,
        p.state,
        &p.raw_status,
        p.created_ms,
        p.updated_ms,
        p.final_ms,
        p.final_source,
        p.window,
        p.observations,
        m,
    ));
    for o in history {
        out = postcard::to_extend(&observation_ref(o), out).unwrap_or_default();
    }
    out
}
