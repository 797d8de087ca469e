//! Store formats, and moving a store to the current one at open.
//!
//! - Format 1 (payrecon 0.1 up to Store v2): a sled tree per kind
//!   (`payments`, `history`, `keys`, …), JSON records; orphans either one
//!   record each (`o|`, `i|`, `n` in `orphans`) or, before that, a JSON
//!   list per lookup key.
//! - Format 2: one tree, `records`, keys as in keys.rs, records as in
//!   codec.rs; each observation its own record under `H`.
//! - Format 3: as format 2, with each payment's history inside its record
//!   (after the payment's fields) instead of under `H`.
//!
//! From format 1 the migration writes the new tree in batches, marks the
//! format, flushes, and only then drops the old trees. A crash before the
//! mark leaves the old trees whole: the next open clears the new tree and
//! starts again. From format 2 it moves each payment's `H` records into
//! the payment's record, in place: one atomic batch per few thousand
//! payments writes the new records and removes the `H` ones, so a crash
//! midway leaves every payment either moved or not, and the next open goes
//! on (a moved payment has no `H` records left to add).

use std::sync::atomic::Ordering;

use serde::de::DeserializeOwned;

use super::keys::{self, Kind};
use super::Shared;
use crate::action::Action;
use crate::model::{Observation, Payment};
use crate::store::codec::{corrupt, payment_record, split_payment, History, InboxEntry, Record};
use crate::store::SweepMark;
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
            b"2" => {
                tracing::info!("migrating the store from format 2 to format {}", keys::FORMAT);
                let n = migrate_v2(tree)?;
                tree.insert(keys::FORMAT_KEY, keys::FORMAT.as_bytes())?;
                db.flush()?;
                tracing::info!(payments = n, "store migrated to format {}", keys::FORMAT);
                Ok(())
            }
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
    serde_json::from_slice(v).map_err(|e| corrupt(k, format!("format 1 record: {e}")))
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
    let history = old("history")?;
    for kv in old("payments")?.iter() {
        let (k, v) = kv?;
        let p: Payment = json(&k, &v)?;
        // Format 1 keyed history by (id, 0x00, seq).
        let mut prefix = k.to_vec();
        prefix.push(0);
        let mut h = History::default();
        for kv in history.scan_prefix(prefix) {
            let (hk, hv) = kv?;
            h.push(&json::<Observation>(&hk, &hv)?);
        }
        out.put(keys::of(Kind::Payment, &k), payment_record(&p, &h))?;
        out.counts[Kind::Payment as usize] += 1;
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

/// Moves every payment's `H` records of format 2 into its record.
fn migrate_v2(tree: &sled::Tree) -> Result<usize, StoreError> {
    let mut n = 0;
    let mut batch = sled::Batch::default();
    let mut len = 0;
    for kv in tree.scan_prefix([Kind::Payment.prefix()]) {
        let (k, raw) = kv?;
        let id = keys::rest(&k);
        // A payment moved before a crash has its history already, and no
        // `H` records left.
        let (p, mut h) = split_payment(&k, &raw)?;
        let mut moved = 0;
        for kv in tree.scan_prefix(keys::history_prefix(&String::from_utf8_lossy(id))) {
            let (hk, hv) = kv?;
            h.push(&Observation::decode(&hk, &hv)?);
            batch.remove(hk);
            moved += 1;
        }
        if moved > 0 {
            batch.insert(k, payment_record(&p, &h));
            len += moved + 1;
        }
        n += 1;
        if len >= BATCH {
            tree.apply_batch(std::mem::take(&mut batch))?;
            len = 0;
        }
    }
    tree.apply_batch(batch)?;
    Ok(n)
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
            payment_record(&payment, &History::from_observations(&history)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Source;
    use crate::state::State;
    use crate::store::tests::{new_payment, reopen, report};
    use crate::store::{Store, WindowChange};

    /// The raw sled database, once the store has let go of its lock.
    fn raw(path: &std::path::Path) -> sled::Db {
        for _ in 0..100 {
            if let Ok(db) = sled::open(path) {
                return db;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("sled did not open");
    }

    /// Rewrites the first `n` payments of a format 3 store the way format 2
    /// kept them (the payment alone under `P`, each observation under `H`)
    /// and marks the store format 2: what a crash midway through the
    /// migration leaves when `n` is less than all.
    fn to_format_2(path: &std::path::Path, n: usize) {
        let db = raw(path);
        let tree = db.open_tree("records").unwrap();
        let payments: Vec<_> = tree
            .scan_prefix([Kind::Payment.prefix()])
            .take(n)
            .map(|kv| kv.unwrap())
            .collect();
        for (k, raw) in payments {
            let (p, h) = split_payment(&k, &raw).unwrap();
            for o in h.read().unwrap() {
                tree.insert(keys::history(&p.id, o.seq), o.encode())
                    .unwrap();
            }
            tree.insert(k, p.encode()).unwrap();
        }
        tree.insert(keys::FORMAT_KEY, "2").unwrap();
        db.flush().unwrap();
    }

    #[tokio::test]
    async fn format_2_moves_each_history_into_its_payment_even_after_a_crash_midway() {
        let dir = tempfile::tempdir().unwrap();
        let mut before = vec![];
        {
            let store = Store::open(dir.path()).unwrap();
            for i in 0..6 {
                let id = store
                    .track(new_payment(&format!("inv-{i}")))
                    .await
                    .unwrap()
                    .payment
                    .id;
                for (t, (raw, state)) in
                    [("PROCESSING", None), ("APPROVED", Some(State::Succeeded))]
                        .into_iter()
                        .enumerate()
                {
                    let at = 1_000 * (t as u64 + 1);
                    store
                        .observe(
                            &id,
                            report(Source::Poll, raw, state),
                            WindowChange::Next(at + 4_000),
                            at,
                        )
                        .await
                        .unwrap();
                }
                before.push((
                    store.get(&id).await.unwrap().unwrap(),
                    store.history(&id).await.unwrap(),
                ));
            }
            store.close().await.unwrap();
        }
        // Half the payments still in format 2, half already moved.
        to_format_2(dir.path(), 3);
        {
            let db = raw(dir.path());
            let tree = db.open_tree("records").unwrap();
            assert_eq!(tree.scan_prefix([Kind::History.prefix()]).count(), 6);
        }
        let store = reopen(dir.path()).await;
        for (p, history) in &before {
            assert_eq!(history.len(), 2);
            assert_eq!(&store.get(&p.id).await.unwrap().unwrap(), p);
            assert_eq!(&store.history(&p.id).await.unwrap(), history);
        }
        store.close().await.unwrap();
        drop(store);
        let db = raw(dir.path());
        let tree = db.open_tree("records").unwrap();
        assert_eq!(tree.scan_prefix([Kind::History.prefix()]).count(), 0);
        assert_eq!(&*tree.get(keys::FORMAT_KEY).unwrap().unwrap(), b"3");
    }
}
