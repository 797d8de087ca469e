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
//! - Format 4: as format 3, with each payment's record in the compact
//!   encoding of codec/payment.rs (names as the store's symbols, under `Y`).
//!
//! From format 1 the migration writes the new tree in batches, marks the
//! format, flushes, and only then drops the old trees. A crash before the
//! mark leaves the old trees whole: the next open clears the new tree and
//! starts again. From formats 2 and 3 it rewrites each payment's record in
//! place (moving format 2's `H` records into it): one atomic batch per
//! few thousand payments writes the new records, the symbols they name
//! and removes the `H` ones, so a crash midway leaves every payment either
//! rewritten or not, and the next open goes on (it skips the records
//! already rewritten).

use std::sync::atomic::Ordering;

use serde::de::DeserializeOwned;

use super::keys::{self, Kind};
use super::Shared;
use crate::action::Action;
use crate::model::{Observation, Payment};
use crate::store::codec::{
    corrupt, is_current, payment_record, v3, History, InboxEntry, Record, Symbols,
};
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
pub fn to_current(db: &sled::Db, tree: &sled::Tree, symbols: &Symbols) -> Result<(), StoreError> {
    if let Some(f) = tree.get(keys::FORMAT_KEY)? {
        return match &*f {
            f if f == keys::FORMAT.as_bytes() => Ok(()),
            // Format 5 packs the ids in `K` values; format 4's text ids
            // read the same, so nothing is rewritten.
            b"4" => {
                tree.insert(keys::FORMAT_KEY, keys::FORMAT.as_bytes())?;
                db.flush()?;
                tracing::info!("store format 4 is read as format {}", keys::FORMAT);
                Ok(())
            }
            old @ (b"2" | b"3") => {
                tracing::info!(
                    "migrating the store from format {} to format {}",
                    String::from_utf8_lossy(old),
                    keys::FORMAT
                );
                let n = rewrite_payments(tree, symbols)?;
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
    let n = migrate_v1(db, tree, symbols)?;
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
    symbols: &'t Symbols,
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
            apply(self.tree, self.symbols, std::mem::take(&mut self.batch))?;
            self.len = 0;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<usize, StoreError> {
        for (i, c) in self.counts.iter().enumerate() {
            self.batch.insert(keys::counter(i), &c.to_be_bytes());
        }
        apply(self.tree, self.symbols, self.batch)?;
        Ok(self.total)
    }
}

/// Applies a batch with the symbols its records name.
fn apply(tree: &sled::Tree, symbols: &Symbols, mut batch: sled::Batch) -> Result<(), StoreError> {
    let upto = keys::save_symbols(symbols, &mut batch);
    tree.apply_batch(batch)?;
    symbols.saved_up_to(upto);
    Ok(())
}

fn migrate_v1(db: &sled::Db, tree: &sled::Tree, symbols: &Symbols) -> Result<usize, StoreError> {
    let mut out = Out {
        tree,
        symbols,
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
        let mut h = vec![];
        for kv in history.scan_prefix(prefix) {
            let (hk, hv) = kv?;
            h.push(json::<Observation>(&hk, &hv)?);
        }
        let h = History::from_observations(p.created_ms, &h, symbols);
        out.put(keys::of(Kind::Payment, &k), payment_record(&p, &h, symbols))?;
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

/// Rewrites every payment's record of format 2 or 3 in the current
/// encoding, with format 2's `H` records moved into it.
fn rewrite_payments(tree: &sled::Tree, symbols: &Symbols) -> Result<usize, StoreError> {
    let mut n = 0;
    let mut batch = sled::Batch::default();
    let mut len = 0;
    for kv in tree.scan_prefix([Kind::Payment.prefix()]) {
        let (k, raw) = kv?;
        n += 1;
        // Rewritten before a crash.
        if is_current(&raw) {
            continue;
        }
        let (p, mut history) = v3::split(&k, &raw)?;
        let id = String::from_utf8_lossy(keys::rest(&k)).into_owned();
        for kv in tree.scan_prefix(keys::history_prefix(&id)) {
            let (hk, hv) = kv?;
            history.push(Observation::decode(&hk, &hv)?);
            batch.remove(hk);
            len += 1;
        }
        let h = History::from_observations(p.created_ms, &history, symbols);
        batch.insert(k, payment_record(&p, &h, symbols));
        len += 1;
        if len >= BATCH {
            apply(tree, symbols, std::mem::take(&mut batch))?;
            len = 0;
        }
    }
    apply(tree, symbols, batch)?;
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
            batch.insert(
                keys::of(Kind::Key, key.as_bytes()),
                keys::id_value(&payment.id),
            );
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
        let h = History::from_observations(payment.created_ms, &history, &s.symbols);
        batch.insert(
            keys::of(Kind::Payment, payment.id.as_bytes()),
            payment_record(&payment, &h, &s.symbols),
        );
        n += 1;
        if n % BATCH == 0 {
            apply(&s.tree, &s.symbols, std::mem::take(&mut batch))?;
        }
    }
    let total = s.counts[Kind::Payment as usize].fetch_add(n as u64, Ordering::Relaxed) + n as u64;
    batch.insert(keys::counter(Kind::Payment as usize), &total.to_be_bytes());
    apply(&s.tree, &s.symbols, batch)?;
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

    /// Rewrites the first `n` payments of a store the way format 2 (the
    /// payment alone under `P`, each observation under `H`) or format 3
    /// (the payment and its history, postcard) kept them, and marks the
    /// store so: what a crash midway through the migration leaves when
    /// `n` is less than all, what that release wrote when it is all.
    fn to_format(path: &std::path::Path, n: usize, format: u8) {
        let db = raw(path);
        let tree = db.open_tree("records").unwrap();
        let symbols = keys::load_symbols(&tree).unwrap();
        let payments: Vec<_> = tree
            .scan_prefix([Kind::Payment.prefix()])
            .map(|kv| kv.unwrap())
            .collect();
        let all = n >= payments.len();
        for (k, raw) in payments.into_iter().take(n) {
            let (p, h) = crate::store::codec::split_payment(&k, &raw, &symbols).unwrap();
            let history = h.read(&symbols).unwrap();
            if format == 2 {
                for o in &history {
                    tree.insert(keys::history(&p.id, o.seq), o.encode())
                        .unwrap();
                }
                tree.insert(k, v3::record(&p, &[])).unwrap();
            } else {
                tree.insert(k, v3::record(&p, &history)).unwrap();
            }
        }
        if all {
            for k in tree.scan_prefix([Kind::Symbol.prefix()]).keys() {
                tree.remove(k.unwrap()).unwrap();
            }
        }
        tree.insert(keys::FORMAT_KEY, format.to_string().as_bytes())
            .unwrap();
        db.flush().unwrap();
    }

    /// A store with six payments of two observations each, and what the
    /// store API says of them.
    async fn six_payments(path: &std::path::Path) -> Vec<(Payment, Vec<Observation>)> {
        let store = Store::open(path).unwrap();
        let mut before = vec![];
        for i in 0..6 {
            let id = store
                .track(new_payment(&format!("inv-{i}")))
                .await
                .unwrap()
                .payment
                .id;
            for (t, (raw, state)) in [("PROCESSING", None), ("APPROVED", Some(State::Succeeded))]
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
        before
    }

    async fn reads_as_before(path: &std::path::Path, before: &[(Payment, Vec<Observation>)]) {
        let store = reopen(path).await;
        for (p, history) in before {
            assert_eq!(history.len(), 2);
            assert_eq!(&store.get(&p.id).await.unwrap().unwrap(), p);
            assert_eq!(&store.history(&p.id).await.unwrap(), history);
        }
        // It goes on as any store: a new observation on a migrated payment.
        let (p, _) = &before[0];
        let o = store
            .observe(
                &p.id,
                report(Source::Callback, "APPROVED", Some(State::Succeeded)),
                WindowChange::Keep,
                9_000,
            )
            .await
            .unwrap();
        assert_eq!(o.observation.seq, 2);
        assert_eq!(store.history(&p.id).await.unwrap().len(), 3);
        store.close().await.unwrap();
        drop(store);
        let db = raw(path);
        let tree = db.open_tree("records").unwrap();
        assert_eq!(tree.scan_prefix([Kind::History.prefix()]).count(), 0);
        assert_eq!(&*tree.get(keys::FORMAT_KEY).unwrap().unwrap(), b"5");
        for kv in tree.scan_prefix([Kind::Payment.prefix()]) {
            assert!(is_current(&kv.unwrap().1));
        }
    }

    #[tokio::test]
    async fn format_3_is_rewritten_in_the_compact_encoding() {
        let dir = tempfile::tempdir().unwrap();
        let before = six_payments(dir.path()).await;
        to_format(dir.path(), 6, 3);
        reads_as_before(dir.path(), &before).await;
    }

    #[tokio::test]
    async fn format_2_moves_each_history_into_its_payment_even_after_a_crash_midway() {
        let dir = tempfile::tempdir().unwrap();
        let before = six_payments(dir.path()).await;
        // Half the payments still in format 2, half already rewritten.
        to_format(dir.path(), 3, 2);
        {
            let db = raw(dir.path());
            let tree = db.open_tree("records").unwrap();
            assert_eq!(tree.scan_prefix([Kind::History.prefix()]).count(), 6);
        }
        reads_as_before(dir.path(), &before).await;
    }
}
