//! How records are kept on disk: one byte naming the encoding, then the
//! record. serde stays the model; JSON stays the format of the API, logs
//! and export.
//!
//! - `0x01` (formats 2 and 3): postcard of the record's fields in a fixed order
//!   (a payment's record then carries its history: [`History`]).
//!   postcard does not name fields, so a record is written as a tuple
//!   here and `skip_serializing_if` (which the JSON shapes use) never
//!   applies. Enums are written as their variant's index: new variants
//!   are only ever appended.
//! - `b'J'`: JSON, for records that hold provider JSON or a tagged enum
//!   (actions), which postcard cannot read back.
//!
//! A record whose first byte is neither is refused as corrupt, naming its
//! key; nothing guesses.

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Serialize};

use crate::action::Action;
use crate::model::{Keys, Observation, Payment, PollWindow, ProviderId, Report, Source};
use crate::money::Mismatch;
use crate::state::{Decision, State};
use crate::store::SweepMark;

use super::{CallbackRecord, Notice, StoreError};

const POSTCARD: u8 = 0x01;
const JSON: u8 = b'J';

/// A record kind that the store writes.
pub trait Record: Sized {
    fn encode(&self) -> Vec<u8>;
    fn decode_body(raw: &[u8]) -> Result<Self, String>;

    fn decode(key: &[u8], raw: &[u8]) -> Result<Self, StoreError> {
        Self::decode_body(raw).map_err(|reason| corrupt(key, reason))
    }
}

/// A record that cannot be read, named by its key.
pub fn corrupt(key: &[u8], reason: String) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    }
}

fn postcard<T: Serialize>(v: &T) -> Vec<u8> {
    // Room for a typical record: no regrowth while it is written.
    let mut out = Vec::with_capacity(192);
    out.push(POSTCARD);
    // Writing plain values into a Vec cannot fail.
    postcard::to_extend(v, out).unwrap_or_default()
}

fn body(raw: &[u8]) -> Result<&[u8], String> {
    match raw.split_first() {
        Some((&POSTCARD, body)) => Ok(body),
        Some((b, _)) => Err(format!("unknown record encoding 0x{b:02x}")),
        None => Err("empty record".into()),
    }
}

/// Reads a record's fields; bytes after them (a payment's history) are
/// left alone.
fn unpostcard<T: DeserializeOwned>(raw: &[u8]) -> Result<T, String> {
    postcard::from_bytes(body(raw)?).map_err(|e| e.to_string())
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![JSON];
    serde_json::to_writer(&mut out, v).unwrap_or_default();
    out
}

fn unjson<T: DeserializeOwned>(raw: &[u8]) -> Result<T, String> {
    match raw.split_first() {
        Some((&JSON, body)) => serde_json::from_slice(body).map_err(|e| e.to_string()),
        Some((b, _)) => Err(format!("unknown record encoding 0x{b:02x}")),
        None => Err("empty record".into()),
    }
}

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

impl Record for Payment {
    fn encode(&self) -> Vec<u8> {
        let m = self
            .mismatch
            .as_ref()
            .map(|m| (&m.reported, m.reported_minor, &m.reported_currency, m.at_ms));
        postcard(&(
            &self.id,
            self.provider,
            &self.keys,
            self.amount_minor,
            &self.currency,
            self.state,
            &self.raw_status,
            self.created_ms,
            self.updated_ms,
            self.final_ms,
            self.final_source,
            self.window,
            self.observations,
            m,
        ))
    }

    /// The payment's fields only; its history, after them, is not read.
    fn decode_body(raw: &[u8]) -> Result<Self, String> {
        unpostcard(raw).map(payment)
    }
}

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

/// A payment's history as format 3 keeps it: inside the payment's record,
/// after the payment's fields, each observation's postcard one after
/// another, oldest first. A new observation is written at the end; the
/// ones before it are copied as bytes, never decoded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History(Vec<u8>);

impl History {
    pub fn push(&mut self, o: &Observation) {
        let bytes = std::mem::take(&mut self.0);
        // Writing plain values into a Vec cannot fail.
        self.0 = postcard::to_extend(&observation_ref(o), bytes).unwrap_or_default();
    }

    pub fn from_observations<'a>(all: impl IntoIterator<Item = &'a Observation>) -> History {
        let mut h = History::default();
        for o in all {
            h.push(o);
        }
        h
    }

    pub fn read(&self) -> Result<Vec<Observation>, String> {
        let mut rest = &self.0[..];
        let mut out = vec![];
        while !rest.is_empty() {
            let (r, more) = postcard::take_from_bytes::<ObservationRec>(rest)
                .map_err(|e| format!("history entry {}: {e}", out.len()))?;
            out.push(observation(r));
            rest = more;
        }
        Ok(out)
    }
}

/// A payment's record: its fields, then its history.
pub fn payment_record(p: &Payment, h: &History) -> Vec<u8> {
    let mut out = p.encode();
    out.extend_from_slice(&h.0);
    out
}

/// Reads a payment's record into the payment and its history (whose
/// entries are decoded only when asked for).
pub fn split_payment(key: &[u8], raw: &[u8]) -> Result<(Payment, History), StoreError> {
    let b = body(raw).map_err(|reason| corrupt(key, reason))?;
    let (r, rest) =
        postcard::take_from_bytes::<PaymentRec>(b).map_err(|e| corrupt(key, e.to_string()))?;
    Ok((payment(r), History(rest.to_vec())))
}

/// The history kept in a payment's record.
pub fn history_of(key: &[u8], raw: &[u8]) -> Result<Vec<Observation>, StoreError> {
    let (_, h) = split_payment(key, raw)?;
    h.read().map_err(|reason| corrupt(key, reason))
}

type ReportRec = (
    Source,
    String,
    Option<State>,
    BTreeMap<String, String>,
    Vec<String>,
);
type CallbackRec = (String, String, ReportRec, u64, bool);

impl Record for CallbackRecord {
    fn encode(&self) -> Vec<u8> {
        let r = &self.report;
        postcard(&(
            &self.dedupe_key,
            &self.match_key,
            (r.source, &r.raw_status, r.state, &r.fields, &r.learned_keys),
            self.received_ms,
            self.unsigned_claim,
        ))
    }

    fn decode_body(raw: &[u8]) -> Result<Self, String> {
        let (dedupe_key, match_key, r, received_ms, unsigned_claim): CallbackRec = unpostcard(raw)?;
        Ok(CallbackRecord {
            dedupe_key,
            match_key,
            report: Report {
                source: r.0,
                raw_status: r.1,
                state: r.2,
                fields: r.3,
                learned_keys: r.4,
            },
            received_ms,
            unsigned_claim,
        })
    }
}

type NoticeRec = (
    u64,
    String,
    ProviderId,
    State,
    State,
    Source,
    u64,
    Option<i64>,
    Option<String>,
    u32,
    u64,
    Option<String>,
);

impl Record for Notice {
    fn encode(&self) -> Vec<u8> {
        postcard(&(
            self.seq,
            &self.payment_id,
            self.provider,
            self.from,
            self.to,
            self.source,
            self.at_ms,
            self.amount_minor,
            &self.currency,
            self.attempts,
            self.next_ms,
            &self.last_error,
        ))
    }

    fn decode_body(raw: &[u8]) -> Result<Self, String> {
        let r: NoticeRec = unpostcard(raw)?;
        Ok(Notice {
            seq: r.0,
            payment_id: r.1,
            provider: r.2,
            from: r.3,
            to: r.4,
            source: r.5,
            at_ms: r.6,
            amount_minor: r.7,
            currency: r.8,
            attempts: r.9,
            next_ms: r.10,
            last_error: r.11,
        })
    }
}

impl Record for SweepMark {
    fn encode(&self) -> Vec<u8> {
        postcard(&(self.last_ms, self.stale_alerted, self.abandoned))
    }

    fn decode_body(raw: &[u8]) -> Result<Self, String> {
        let (last_ms, stale_alerted, abandoned) = unpostcard(raw)?;
        Ok(SweepMark {
            last_ms,
            stale_alerted,
            abandoned,
        })
    }
}

impl Record for Action {
    fn encode(&self) -> Vec<u8> {
        json(self)
    }

    fn decode_body(raw: &[u8]) -> Result<Self, String> {
        unjson(raw)
    }
}

/// Which payment a callback's inbox entry went to (none: an orphan), and
/// when it came.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxEntry {
    pub payment_id: Option<String>,
    pub received_ms: u64,
}

impl Record for InboxEntry {
    fn encode(&self) -> Vec<u8> {
        postcard(&(&self.payment_id, self.received_ms))
    }

    fn decode_body(raw: &[u8]) -> Result<Self, String> {
        let (payment_id, received_ms) = unpostcard(raw)?;
        Ok(InboxEntry {
            payment_id,
            received_ms,
        })
    }
}

#[cfg(test)]
mod tests;
