//! A payment's record (format 4, encoding `0x02`): the payment's fields,
//! then its history, oldest observation first.
//!
//! Compact by construction, without compression:
//! - names (key and field names, statuses, currencies) are written as
//!   their number in the store's [`Symbols`];
//! - a value already written in the same section (the payment's fields, or
//!   its history) is written as a reference to it: the order id a poll and
//!   the callback both carry is kept once;
//! - times are written as differences: the payment's from its creation, an
//!   observation's from the one before.
//!
//! A string is one varint tag, then its bytes when it is written in full:
//! `3n` is n bytes that follow, `3n+1` symbol n, `3n+2` the section's n-th
//! string written in full. An optional string writes 0 for none and its
//! tag plus one otherwise. Small enums (provider, state, source, decision)
//! are postcard's variant index, as in format 3.
//!
//! A new observation is appended; the ones before it are read only for
//! the strings they wrote in full and the time of the last.

use serde::{de::DeserializeOwned, Serialize};

use super::symbols::{Symbols, Table};
use super::{corrupt, StoreError};
use crate::model::{Keys, Mismatch, Observation, Payment, PollWindow};

pub const ENCODING: u8 = 0x02;

/// The strings a section wrote in full, as byte ranges of its buffer.
type Written = Vec<(u32, u32)>;

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

fn diff(a: u64, from: u64) -> u64 {
    zigzag((a as i64).wrapping_sub(from as i64))
}

fn undiff(d: u64, from: u64) -> u64 {
    (from as i64).wrapping_add(unzigzag(d)) as u64
}

/// Writes one section (a payment's fields, or appends to its history).
struct Out<'a> {
    buf: &'a mut Vec<u8>,
    written: &'a mut Written,
    symbols: &'a Symbols,
}

impl Out<'_> {
    fn varint(&mut self, n: u64) {
        varint(self.buf, n)
    }

    fn small<T: Serialize>(&mut self, v: &T) {
        let buf = std::mem::take(self.buf);
        // Small enums and integers into a Vec: cannot fail.
        *self.buf = postcard::to_extend(v, buf).unwrap_or_default();
    }

    fn tag(&mut self, s: &str, name: bool) -> u64 {
        if let Some(id) = name.then(|| self.symbols.id(s)).flatten() {
            return u64::from(id) * 3 + 1;
        }
        let found = self
            .written
            .iter()
            .position(|&(a, b)| &self.buf[a as usize..b as usize] == s.as_bytes());
        if let Some(i) = found {
            return i as u64 * 3 + 2;
        }
        s.len() as u64 * 3
    }

    fn text(&mut self, s: &str, name: bool, optional: bool) {
        let tag = self.tag(s, name);
        self.varint(tag + u64::from(optional));
        if tag.is_multiple_of(3) {
            let a = self.buf.len() as u32;
            self.buf.extend_from_slice(s.as_bytes());
            self.written.push((a, self.buf.len() as u32));
        }
    }

    fn value(&mut self, s: &str) {
        self.text(s, false, false)
    }

    fn name(&mut self, s: &str) {
        self.text(s, true, false)
    }

    fn opt_name(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.text(s, true, true),
            None => self.varint(0),
        }
    }

    /// A map of names to values (a payment's keys, an answer's fields).
    fn named_values(&mut self, m: &Keys) {
        self.varint(m.len() as u64);
        for (k, v) in m {
            self.name(k);
            self.value(v);
        }
    }

    /// 0 for none, the difference plus one otherwise.
    fn opt_diff(&mut self, t: Option<u64>, from: u64) {
        self.varint(t.map_or(0, |t| diff(t, from) + 1))
    }
}

/// Reads one section.
struct In<'a> {
    buf: &'a [u8],
    pos: usize,
    written: Written,
    table: Option<&'a Table>,
}

/// A string as read: in full (its range) or a symbol's number.
enum Text {
    Range(u32, u32),
    Symbol(u32),
}

impl<'a> In<'a> {
    fn new(buf: &'a [u8], table: Option<&'a Table>) -> Self {
        In {
            buf,
            pos: 0,
            written: vec![],
            table,
        }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("cut short")?;
            self.pos += 1;
            n |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(n);
            }
        }
        Err("a number is too long".into())
    }

    fn small<T: DeserializeOwned>(&mut self) -> Result<T, String> {
        let (v, rest) =
            postcard::take_from_bytes(&self.buf[self.pos..]).map_err(|e| e.to_string())?;
        self.pos = self.buf.len() - rest.len();
        Ok(v)
    }

    fn text_tagged(&mut self, tag: u64) -> Result<Text, String> {
        let n = tag / 3;
        match tag % 3 {
            0 => {
                let a = self.pos;
                let b = a.checked_add(n as usize).filter(|&b| b <= self.buf.len());
                let b = b.ok_or("a string runs past the record")?;
                self.pos = b;
                self.written.push((a as u32, b as u32));
                Ok(Text::Range(a as u32, b as u32))
            }
            1 => Ok(Text::Symbol(n as u32)),
            _ => match self.written.get(n as usize) {
                Some(&(a, b)) => Ok(Text::Range(a, b)),
                None => Err(format!("a reference to string {n}, not written before")),
            },
        }
    }

    fn text(&mut self) -> Result<Text, String> {
        let tag = self.varint()?;
        self.text_tagged(tag)
    }

    fn opt_text(&mut self) -> Result<Option<Text>, String> {
        match self.varint()? {
            0 => Ok(None),
            tag => self.text_tagged(tag - 1).map(Some),
        }
    }

    /// The string itself; reading it needs the table.
    fn resolve(&self, t: Text) -> Result<String, String> {
        match t {
            Text::Range(a, b) => std::str::from_utf8(&self.buf[a as usize..b as usize])
                .map(str::to_string)
                .map_err(|e| e.to_string()),
            Text::Symbol(id) => self
                .table
                .and_then(|t| t.name(id))
                .map(str::to_string)
                .ok_or_else(|| format!("symbol {id} is not in the store")),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let t = self.text()?;
        self.resolve(t)
    }

    fn opt_string(&mut self) -> Result<Option<String>, String> {
        match self.opt_text()? {
            Some(t) => self.resolve(t).map(Some),
            None => Ok(None),
        }
    }

    fn opt_diff(&mut self, from: u64) -> Result<Option<u64>, String> {
        Ok(match self.varint()? {
            0 => None,
            d => Some(undiff(d - 1, from)),
        })
    }
}

fn encode_payment(p: &Payment, out: &mut Out) {
    let base = p.created_ms;
    out.value(&p.id);
    out.small(&p.provider);
    out.named_values(&p.keys);
    out.small(&p.amount_minor);
    out.opt_name(p.currency.as_deref());
    out.small(&p.state);
    out.opt_name(p.raw_status.as_deref());
    out.varint(base);
    out.varint(diff(p.updated_ms, base));
    out.opt_diff(p.final_ms, base);
    out.small(&p.final_source);
    match &p.window {
        None => out.varint(0),
        Some(w) => {
            out.varint(1 + u64::from(w.open));
            out.varint(diff(w.ends_ms, base));
            out.varint(diff(w.next_ms, base));
            out.varint(u64::from(w.polls));
        }
    }
    out.varint(u64::from(p.observations));
    match &p.mismatch {
        None => out.varint(0),
        Some(m) => {
            out.varint(1);
            out.value(&m.reported);
            out.small(&m.reported_minor);
            out.opt_name(m.reported_currency.as_deref());
            out.varint(diff(m.at_ms, base));
        }
    }
}

fn decode_payment(r: &mut In) -> Result<Payment, String> {
    let id = r.string()?;
    let provider = r.small()?;
    let mut keys = Keys::new();
    for _ in 0..r.varint()? {
        let k = r.string()?;
        keys.insert(k, r.string()?);
    }
    let amount_minor = r.small()?;
    let currency = r.opt_string()?;
    let state = r.small()?;
    let raw_status = r.opt_string()?;
    let created_ms = r.varint()?;
    let updated_ms = undiff(r.varint()?, created_ms);
    let final_ms = r.opt_diff(created_ms)?;
    let final_source = r.small()?;
    let window = match r.varint()? {
        0 => None,
        flag => Some(PollWindow {
            open: flag == 2,
            ends_ms: undiff(r.varint()?, created_ms),
            next_ms: undiff(r.varint()?, created_ms),
            polls: r.varint()? as u32,
        }),
    };
    let observations = r.varint()? as u32;
    let mismatch = match r.varint()? {
        0 => None,
        _ => Some(Mismatch {
            reported: r.string()?,
            reported_minor: r.small()?,
            reported_currency: r.opt_string()?,
            at_ms: undiff(r.varint()?, created_ms),
        }),
    };
    Ok(Payment {
        id,
        provider,
        keys,
        amount_minor,
        currency,
        state,
        raw_status,
        created_ms,
        updated_ms,
        final_ms,
        final_source,
        window,
        observations,
        mismatch,
    })
}

/// A payment's history as its record keeps it. Pushing an observation
/// appends its bytes; reading them back needs the store's symbols.
/// Made by [`History::new`] or read from a record: its first entry's time
/// is written from the payment's creation, which a default could not know.
#[derive(Debug, Clone)]
pub struct History {
    bytes: Vec<u8>,
    /// The payment's creation: the first observation's time is written
    /// from it.
    base_ms: u64,
    /// What appending needs of the entries before, once read.
    tail: Option<(Written, u64)>,
}

impl PartialEq for History {
    fn eq(&self, other: &Self) -> bool {
        (&self.bytes, self.base_ms) == (&other.bytes, other.base_ms)
    }
}

/// Reads one entry: the observation without its strings, and its raw
/// status unresolved; each field goes to `field`, unresolved. Appending
/// reads the entries before it only for what they wrote in full, and
/// passes a `field` that keeps nothing.
fn entry(
    r: &mut In,
    prev_ms: u64,
    mut field: impl FnMut(Text, Text),
) -> Result<(Observation, Text), String> {
    let seq = r.varint()? as u32;
    let source = r.small()?;
    let at_ms = undiff(r.varint()?, prev_ms);
    let raw_status = r.text()?;
    let state = r.small()?;
    let decision = r.small()?;
    for _ in 0..r.varint()? {
        let k = r.text()?;
        field(k, r.text()?);
    }
    let repeats = r.varint()? as u32;
    let last_ms = r.opt_diff(at_ms)?;
    let o = Observation {
        seq,
        source,
        at_ms,
        raw_status: String::new(),
        state,
        decision,
        fields: Default::default(),
        repeats,
        last_ms,
    };
    Ok((o, raw_status))
}

impl History {
    /// An empty history of a payment created at `base_ms`.
    pub fn new(base_ms: u64) -> History {
        History {
            bytes: vec![],
            base_ms,
            tail: Some((vec![], base_ms)),
        }
    }

    pub fn from_observations<'a>(
        base_ms: u64,
        all: impl IntoIterator<Item = &'a Observation>,
        symbols: &Symbols,
    ) -> History {
        let mut h = History::new(base_ms);
        let (mut written, mut prev_ms) = (vec![], base_ms);
        for o in all {
            h.append(o, symbols, &mut written, prev_ms);
            prev_ms = o.at_ms;
        }
        h.tail = Some((written, prev_ms));
        h
    }

    /// The strings written in full so far and the last entry's time.
    fn tail(&mut self) -> Result<&mut (Written, u64), String> {
        if self.tail.is_none() {
            let mut r = In::new(&self.bytes, None);
            let mut at = self.base_ms;
            while !r.done() {
                at = entry(&mut r, at, |_, _| {})?.0.at_ms;
            }
            self.tail = Some((r.written, at));
        }
        Ok(self.tail.get_or_insert_default())
    }

    /// Appends an observation. Fails only when the entries before it
    /// cannot be read.
    pub fn push(&mut self, o: &Observation, symbols: &Symbols) -> Result<(), String> {
        let (mut written, prev_ms) = std::mem::take(self.tail()?);
        self.append(o, symbols, &mut written, prev_ms);
        self.tail = Some((written, o.at_ms));
        Ok(())
    }

    fn append(&mut self, o: &Observation, symbols: &Symbols, written: &mut Written, prev_ms: u64) {
        let mut out = Out {
            buf: &mut self.bytes,
            written,
            symbols,
        };
        out.varint(u64::from(o.seq));
        out.small(&o.source);
        out.varint(diff(o.at_ms, prev_ms));
        out.name(&o.raw_status);
        out.small(&o.state);
        out.small(&o.decision);
        out.named_values(&o.fields);
        out.varint(u64::from(o.repeats));
        out.opt_diff(o.last_ms, o.at_ms);
    }

    pub fn read(&self, symbols: &Symbols) -> Result<Vec<Observation>, String> {
        let table = symbols.read();
        let mut r = In::new(&self.bytes, Some(&table));
        let mut out = vec![];
        let mut at = self.base_ms;
        while !r.done() {
            let err = |e: String| format!("history entry {}: {e}", out.len());
            let mut fields = vec![];
            let (mut o, status) = entry(&mut r, at, |k, v| fields.push((k, v))).map_err(err)?;
            o.raw_status = r.resolve(status).map_err(err)?;
            for (k, v) in fields {
                let k = r.resolve(k).map_err(err)?;
                o.fields.insert(k, r.resolve(v).map_err(err)?);
            }
            at = o.at_ms;
            out.push(o);
        }
        Ok(out)
    }
}

/// A payment's record: its fields, then its history.
pub fn payment_record(p: &Payment, h: &History, symbols: &Symbols) -> Vec<u8> {
    let mut buf = Vec::with_capacity(128 + h.bytes.len());
    buf.push(ENCODING);
    let mut written = vec![];
    // The payment's section starts at 1: its ranges are of `buf` itself.
    encode_payment(
        p,
        &mut Out {
            buf: &mut buf,
            written: &mut written,
            symbols,
        },
    );
    buf.extend_from_slice(&h.bytes);
    buf
}

/// Reads a payment's record into the payment and its history (whose
/// entries are decoded only when asked for).
pub fn split_payment(
    key: &[u8],
    raw: &[u8],
    symbols: &Symbols,
) -> Result<(Payment, History), StoreError> {
    let table = symbols.read();
    let (p, rest) = payment_and_rest(raw, &table).map_err(|reason| corrupt(key, reason))?;
    let h = History {
        bytes: raw[rest..].to_vec(),
        base_ms: p.created_ms,
        tail: None,
    };
    Ok((p, h))
}

/// The payment alone; its history is not read.
pub fn payment_of(key: &[u8], raw: &[u8], symbols: &Symbols) -> Result<Payment, StoreError> {
    let table = symbols.read();
    payment_and_rest(raw, &table)
        .map(|(p, _)| p)
        .map_err(|reason| corrupt(key, reason))
}

/// The history kept in a payment's record.
pub fn history_of(
    key: &[u8],
    raw: &[u8],
    symbols: &Symbols,
) -> Result<Vec<Observation>, StoreError> {
    let (_, h) = split_payment(key, raw, symbols)?;
    h.read(symbols).map_err(|reason| corrupt(key, reason))
}

/// The payment, and where its history starts in `raw`.
fn payment_and_rest(raw: &[u8], table: &Table) -> Result<(Payment, usize), String> {
    match raw.split_first() {
        Some((&ENCODING, _)) => {}
        Some((b, _)) => return Err(format!("unknown payment encoding 0x{b:02x}")),
        None => return Err("empty record".into()),
    }
    // Ranges are of the whole record, as they were written.
    let mut r = In::new(raw, Some(table));
    r.pos = 1;
    let p = decode_payment(&mut r)?;
    Ok((p, r.pos))
}

/// Whether a payment record is of this encoding (a migration skips those).
pub fn is_current(raw: &[u8]) -> bool {
    raw.first() == Some(&ENCODING)
}
