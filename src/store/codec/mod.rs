//! How records are kept on disk: one byte naming the encoding, then the
//! record. serde stays the model; JSON stays the format of the API, logs
//! and export.
//!
//! - `0x01`: postcard of the record's fields in a fixed order. postcard
//!   does not name fields, so a record is written as a tuple here and
//!   `skip_serializing_if` (which the JSON shapes use) never applies.
//!   Enums are written as their variant's index: new variants are only
//!   ever appended. (Formats 2 and 3 wrote payments so too: [`v3`].)
//! - `0x02`: a payment's record with its history, its names written as
//!   the store's [`Symbols`] ([`payment`]).
//! - `b'J'`: JSON, for records that hold provider JSON or a tagged enum
//!   (actions), which postcard cannot read back.
//!
//! A record whose first byte is neither is refused as corrupt, naming its
//! key; nothing guesses.

mod payment;
mod symbols;
pub mod v3;

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Serialize};

use crate::action::Action;
use crate::model::{ProviderId, Report, Source};
use crate::state::State;
use crate::store::SweepMark;

pub use payment::{history_of, is_current, payment_of, payment_record, split_payment, History};
pub use symbols::Symbols;

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
