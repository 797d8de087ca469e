//! Store formats, and moving a store to the current one at open.
//!
//! - Format 1 (payrecon 0.1 up to Store v2): a sled tree per kind
//!   (`payments`, `history`, `keys`, …), JSON records; orphans either one
//!   record each (`o|`, `i|`, `n` in `orphans`) or, before that, a JSON
//!   list per lookup key.
//! - Format 2: one tree, `records`, keys as in keys.rs, records as in
//!   codec.rs.
//!
//! The migration writes the new tree in batches, marks the format, flushes,
//! and only then drops the old trees. A crash before the mark leaves the
//! old trees whole: the next open clears the new tree and starts again.

use std::sync::atomic::Ordering;

use serde::de::DeserializeOwned;

use super::keys::{self, Kind};
use super::Shared;
use crate::action::Action;
use crate::engine::SweepMark;
use crate::model::{Observation, Payment};
use crate::store::codec::{InboxEntry, Record};
use crate::store::{CallbackRecord, Notice, StoreError};

const V1_TREES: [&str; 12] = [
    "payments",
    "history",
    "keys",
    "inbox",
    "orphans",
    "windows",
    "actions",
    "outbox",
    "sweeps",
    "notices",
    "dead_notices",
    "meta",
];

const BATCH: usize = 10_000;

/// Brings the store in `db` to the current format, or says why not.
pub fn to_current(db: &sled::Db, tree: &sled::Tree) -> Result<(), StoreError> {
    if let Some(f) = tree.get(keys::FORMAT_KEY)? {
        return match &*f {
            f if f == keys::FORMAT.as_bytes() => Ok(()),
            f => Err(StoreError::Format(format!(
                "the store is of format {}, newer than this payrecon reads (format {}); run the release that wrote it",
                String::from_utf8_lossy(f),
                keys::FORMAT
            ))),
        };
    }
    let names = db.tree_names();
    let v1 = names.iter().any(|n| &**n == b"payments");
    if !v1 {
        // A new store.
        tree.insert(keys::FORMAT_KEY, keys::FORMAT.as_bytes())?;
        return Ok(());
    }
    tracing::info!(
        "migrating the store from format 1 to format {}",
        keys::FORMAT
    );
    tree.clear()?;
    let n = migrate_v1(db, tree)?;
    tree.insert(keys::FORMAT_KEY, keys::FORMAT.as_bytes())?;
    db.flush()?;
    for name in V1_TREES {
        db.drop_tree(name)?;
    }
    db.flush()?;
    tracing::info!(records = n, "store migrated to format {}", keys::FORMAT);
    Ok(())
}

fn json<T: DeserializeOwned>(k: &[u8], v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        reason: format!("format 1 record: {e}"),
    })
}

/// Writes batches of a migration, counting records.
struct Out<'t> {
    tree: &'t sled::Tree,
    batch: sled::Batch,
    len: usize,
    total: usize,
    counts: [u64; Kind::COUNTED],
}

impl Out<'_> {
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), StoreError> {
        self.batch.insert(key, value);
        self.len += 1;
        self.total += 1;
        if self.len >= BATCH {
            self.tree.apply_batch(std::mem::take(&mut self.batch))?;
            self.len = 0;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<usize, StoreError> {
        for (i, c) in self.counts.iter().enumerate() {
            self.batch.insert(keys::counter(i), &c.to_be_bytes());
        }
        self.tree.apply_batch(self.batch)?;
        Ok(self.total)
    }
}

fn migrate_v1(db: &sled::Db, tree: &sled::Tree) -> Result<usize, StoreError> {
    let mut out = Out {
        tree,
        batch: sled::Batch::default(),
        len: 0,
        total: 0,
        counts: [0; Kind::COUNTED],
    };
    let old = |name: &str| db.open_tree(name);
    for kv in old("payments")?.iter() {
        let (k, v) = kv?;
        let p: Payment = json(&k, &v)?;
        out.put(keys::of(Kind::Payment, &k), p.encode())?;
        out.counts[Kind::Payment as usize] += 1;
    }
    // Same key layout (id, 0x00, seq) under the prefix.
    for kv in old("history")?.iter() {
        let (k, v) = kv?;
        let o: Observation = json(&k, &v)?;
        out.put(keys::of(Kind::History, &k), o.encode())?;
    }
    for (name, kind) in [
        ("keys", Kind::Key),
        ("windows", Kind::Window),
        ("outbox", Kind::Outbox),
        ("meta", Kind::Meta),
    ] {
        for kv in old(name)?.iter() {
            let (k, v) = kv?;
            out.put(keys::of(kind, &k), v.to_vec())?;
        }
    }
    for kv in old("inbox")?.iter() {
        let (k, v) = kv?;
        #[derive(serde::Deserialize)]
        struct V1Inbox {
            payment_id: Option<String>,
            received_ms: u64,
        }
        let e: V1Inbox = json(&k, &v)?;
        let e = InboxEntry {
            payment_id: e.payment_id,
            received_ms: e.received_ms,
        };
        out.put(keys::of(Kind::Inbox, &k), e.encode())?;
        out.counts[Kind::Inbox as usize] += 1;
    }
    for kv in old("actions")?.iter() {
        let (k, v) = kv?;
        let a: Action = json(&k, &v)?;
        out.put(keys::of(Kind::Action, &k), a.encode())?;
    }
    for kv in old("sweeps")?.iter() {
        let (k, v) = kv?;
        let m: SweepMark = json(&k, &v)?;
        out.put(keys::of(Kind::Sweep, &k), m.encode())?;
    }
    for (name, kind) in [("notices", Kind::Notice), ("dead_notices", Kind::Dead)] {
        for kv in old(name)?.iter() {
            let (k, v) = kv?;
            let n: Notice = json(&k, &v)?;
            out.put(keys::of(kind, &k), n.encode())?;
            out.counts[kind as usize] += 1;
        }
    }
    migrate_orphans(db, &mut out)?;
    out.finish()
}

/// Orphans of format 1, in either of its two layouts, one record each.
fn migrate_orphans(db: &sled::Db, out: &mut Out) -> Result<(), StoreError> {
    let mut index: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    let mut put = |out: &mut Out, id: u64, cb: CallbackRecord| -> Result<(), StoreError> {
        index.entry(cb.match_key.clone()).or_default().push(id);
        out.counts[Kind::Orphan as usize] += 1;
        out.put(keys::seq_key(Kind::Orphan, id), cb.encode())
    };
    for kv in db.open_tree("orphans")?.iter() {
        let (k, v) = kv?;
        if let Some(id) = k.strip_prefix(b"o|") {
            let id = keys::read_u64(Some(id));
            put(out, id, json(&k, &v)?)?;
        } else if !(k.starts_with(b"i|") || &*k == b"n") {
            // The older layout: a JSON list per lookup key.
            let list: Vec<CallbackRecord> = json(&k, &v)?;
            for cb in list {
                put(out, db.generate_id()?, cb)?;
            }
        }
    }
    for (key, ids) in index {
        out.put(
            keys::of(Kind::OrphanIndex, key.as_bytes()),
            keys::write_ids(&ids),
        )?;
    }
    Ok(())
}

/// Writes payments with their histories and lookup keys in large
/// batches, without checks or the writer.
pub fn bulk_load(
    s: &Shared,
    items: &mut dyn Iterator<Item = (Payment, Vec<Observation>, Vec<String>)>,
) -> Result<usize, StoreError> {
    let mut batch = sled::Batch::default();
    let mut n = 0;
    for (payment, history, lookup) in items {
        for obs in &history {
            batch.insert(keys::history(&payment.id, obs.seq), obs.encode());
        }
        for key in lookup {
            batch.insert(keys::of(Kind::Key, key.as_bytes()), payment.id.as_bytes());
        }
        if let Some(w) = payment
            .window
            .filter(|w| w.open && !payment.state.is_final())
        {
            batch.insert(
                keys::of(Kind::Window, payment.id.as_bytes()),
                keys::window_value(w.next_ms, payment.provider),
            );
        }
        batch.insert(
            keys::of(Kind::Payment, payment.id.as_bytes()),
            payment.encode(),
        );
        n += 1;
        if n % BATCH == 0 {
            s.tree.apply_batch(std::mem::take(&mut batch))?;
        }
    }
    let total = s.counts[Kind::Payment as usize].fetch_add(n as u64, Ordering::Relaxed) + n as u64;
    batch.insert(keys::counter(Kind::Payment as usize), &total.to_be_bytes());
    s.tree.apply_batch(batch)?;
    s.db.flush()?;
    Ok(n)
}
