//! The sled engine: one tree (keys.rs), one writer thread (writer.rs,
//! ops.rs), reads straight from the tree. A store written by the previous
//! release (format 1: a tree per kind, JSON records) is migrated at open
//! (migrate.rs).

mod keys;
mod migrate;
mod ops;
mod writer;

use crate::store::Probe;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use keys::Kind;
use writer::{Cmd, Tx};

use crate::action::Action;
use crate::model::{Observation, Payment, PollWindow, ProviderId, Report};
use crate::store::codec::{self, Record};
use crate::store::flusher::Flusher;
use crate::store::SweepMark;
use crate::store::{
    Backend, BoxFut, CallbackRecord, Change, Enqueued, Filter, Ingested, NewPayment, Notice,
    Observed, Policy, Repeats, StoreError, Tracked, WindowChange,
};

/// Commands waiting for the writer at most; a caller beyond waits for room.
const QUEUE: usize = 8192;

/// What the writer and the readers share.
pub struct Shared {
    db: sled::Db,
    tree: sled::Tree,
    policy: Arc<Policy>,
    /// The names records write as numbers (codec/symbols.rs).
    symbols: codec::Symbols,
    /// Records of each counted kind (keys::Kind), as committed.
    counts: [AtomicU64; Kind::COUNTED],
    flushes: AtomicU64,
}

impl Shared {
    fn counted(&self, kind: Kind) -> u64 {
        self.counts[kind as usize].load(Ordering::Relaxed)
    }
}

pub struct SledStore {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Cmd>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// Dropping the store ends the writer (it answers what it holds) and waits
/// for it: when the drop returns, the files are released and another
/// process may open them.
impl Drop for SledStore {
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// A fresh id: the prefix, sled's monotonic counter (creation order, for
/// paging) and a random tail so ids from two stores do not collide.
fn new_id(db: &sled::Db, prefix: &str) -> Result<String, StoreError> {
    let n = db.generate_id()?;
    Ok(format!("{prefix}{:012x}{:04x}", n, fastrand::u16(..)))
}

impl SledStore {
    pub fn open(
        path: &std::path::Path,
        cache_mb: u64,
        compression: bool,
        policy: Arc<Policy>,
    ) -> Result<SledStore, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_mb * 1024 * 1024)
            // zstd at a low level halves the bytes kept, at a cost in
            // throughput and recovery time (BENCHMARKS.md); opt-in.
            .use_compression(compression)
            .compression_factor(3)
            // sled also flushes on its own; answers never rely on it.
            .flush_every_ms(Some(1000))
            .open()?;
        let tree = db.open_tree("records")?;
        let symbols = keys::load_symbols(&tree)?;
        migrate::to_current(&db, &tree, &symbols)?;
        let counts = std::array::from_fn(|i| {
            let raw = tree.get(keys::counter(i)).ok().flatten();
            AtomicU64::new(keys::read_u64(raw.as_deref()))
        });
        let shared = Arc::new(Shared {
            db,
            tree,
            policy,
            symbols,
            counts,
            flushes: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        let cannot = |e: std::io::Error| StoreError::Flush(format!("cannot start the store: {e}"));
        let f = shared.clone();
        let flusher = Flusher::spawn("payrecon-flush", move || {
            f.db.flush().map_err(|e| e.to_string())?;
            f.flushes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .map_err(cannot)?;
        let w = shared.clone();
        let writer = std::thread::Builder::new()
            .name("payrecon-store".into())
            .spawn(move || writer::run(w, rx, flusher))
            .map_err(cannot)?;
        Ok(SledStore {
            shared,
            tx,
            writer: Some(writer),
        })
    }

    /// Sends a command to the writer and waits for its answer.
    fn send<T: Send + 'static>(&self, cmd: impl FnOnce(Tx<T>) -> Cmd + Send) -> BoxFut<'_, T> {
        let (tx, rx) = oneshot::channel();
        let cmd = cmd(tx);
        Box::pin(async move {
            self.tx.send(cmd).await.map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn read<T: Record>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        self.shared
            .tree
            .get(key)?
            .map(|raw| T::decode(key, &raw))
            .transpose()
    }

    fn scan<T: Record>(&self, kind: Kind) -> impl Iterator<Item = Result<T, StoreError>> + '_ {
        self.shared.tree.scan_prefix([kind.prefix()]).map(|kv| {
            kv.map_err(StoreError::from)
                .and_then(|(k, v)| T::decode(&k, &v))
        })
    }

    fn find_now(&self, lookup_key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .shared
            .tree
            .get(keys::of(Kind::Key, lookup_key.as_bytes()))?
            .map(|v| keys::id_of(&v)))
    }

    /// A payment's history, from its record; empty for an unknown payment.
    fn history_now(&self, id: &str) -> Result<Vec<Observation>, StoreError> {
        let key = keys::of(Kind::Payment, id.as_bytes());
        match self.shared.tree.get(&key)? {
            Some(raw) => codec::history_of(&key, &raw, &self.shared.symbols),
            None => Ok(vec![]),
        }
    }

    fn payment_now(&self, id: &str) -> Result<Option<Payment>, StoreError> {
        let key = keys::of(Kind::Payment, id.as_bytes());
        self.shared
            .tree
            .get(&key)?
            .map(|raw| codec::payment_of(&key, &raw, &self.shared.symbols))
            .transpose()
    }

    fn action_now(&self, id: &str) -> Result<Option<Action>, StoreError> {
        self.read(&keys::of(Kind::Action, id.as_bytes()))
    }
}

/// A read, answered at once.
fn ready<'a, T: Send + 'a>(r: Result<T, StoreError>) -> BoxFut<'a, T> {
    Box::pin(std::future::ready(r))
}

impl Backend for SledStore {
    fn track(&self, new: NewPayment) -> BoxFut<'_, Tracked> {
        self.send(|tx| Cmd::Track(new, tx))
    }

    fn observe(
        &self,
        id: &str,
        report: Report,
        window: WindowChange,
        now_ms: u64,
        carry: Option<Repeats>,
    ) -> BoxFut<'_, Observed> {
        let id = id.to_string();
        self.send(move |tx| Cmd::Observe {
            id,
            report,
            window,
            now_ms,
            carry,
            tx,
        })
    }

    fn advance_window(
        &self,
        id: &str,
        window: WindowChange,
        carry: Option<Repeats>,
    ) -> BoxFut<'_, Option<PollWindow>> {
        let id = id.to_string();
        self.send(move |tx| Cmd::Advance {
            id,
            window,
            carry,
            tx,
        })
    }

    fn ingest_callback(&self, cb: CallbackRecord) -> BoxFut<'_, Ingested> {
        self.send(|tx| Cmd::Ingest(cb, tx))
    }

    fn enqueue_action(&self, a: Action, exclusive_key: Option<String>) -> BoxFut<'_, Enqueued> {
        self.send(|tx| Cmd::Enqueue(a, exclusive_key, tx))
    }

    fn update_action(&self, a: Action, reports: Vec<Report>) -> BoxFut<'_, Vec<Change>> {
        self.send(|tx| Cmd::UpdateAction(a, reports, tx))
    }

    fn update_notice(&self, n: Notice) -> BoxFut<'_, ()> {
        self.send(|tx| Cmd::UpdateNotice(n, tx))
    }

    fn remove_notice(&self, n: Notice, dead: bool) -> BoxFut<'_, ()> {
        self.send(move |tx| Cmd::RemoveNotice(n, dead, tx))
    }

    fn replay_dead(&self, seqs: Vec<u64>) -> BoxFut<'_, Vec<Notice>> {
        self.send(move |tx| Cmd::ReplayDead(seqs, tx))
    }

    fn set_meta(&self, key: String, value: Option<String>) -> BoxFut<'_, ()> {
        self.send(|tx| Cmd::SetMeta(key, value, tx))
    }

    fn set_sweep_mark(&self, id: String, mark: SweepMark) -> BoxFut<'_, ()> {
        self.send(|tx| Cmd::SetSweep(id, mark, tx))
    }

    fn expire_orphans(&self, before_ms: u64) -> BoxFut<'_, usize> {
        self.send(move |tx| Cmd::ExpireOrphans(before_ms, tx))
    }

    fn record_repeats(&self, counts: Vec<Repeats>) -> BoxFut<'_, ()> {
        Box::pin(async move {
            // In slices, so one checkpoint does not hold a group long.
            let mut counts = counts;
            while !counts.is_empty() {
                let rest = counts.split_off(counts.len().min(512));
                let chunk = std::mem::replace(&mut counts, rest);
                self.send(|tx| Cmd::Repeats(chunk, tx)).await?;
            }
            Ok(())
        })
    }

    fn sync(&self) -> BoxFut<'_, ()> {
        self.send(Cmd::Sync)
    }

    fn bulk_load(
        &self,
        items: &mut dyn Iterator<Item = (Payment, Vec<Observation>, Vec<String>)>,
    ) -> Result<usize, StoreError> {
        migrate::bulk_load(&self.shared, items)
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFut<'a, Option<Payment>> {
        ready(self.payment_now(id))
    }

    fn find<'a>(&'a self, lookup_key: &'a str) -> BoxFut<'a, Option<String>> {
        ready(self.find_now(lookup_key))
    }

    fn history<'a>(&'a self, id: &'a str) -> BoxFut<'a, Vec<Observation>> {
        ready(self.history_now(id))
    }

    fn last_observation<'a>(&'a self, id: &'a str) -> BoxFut<'a, Option<Observation>> {
        ready(self.history_now(id).map(|mut h| h.pop()))
    }

    fn list<'a>(
        &'a self,
        filter: &'a Filter,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFut<'a, Vec<Payment>> {
        let start = match after {
            Some(a) => std::ops::Bound::Excluded(keys::of(Kind::Payment, a.as_bytes())),
            None => std::ops::Bound::Included(vec![Kind::Payment.prefix()]),
        };
        let end = std::ops::Bound::Excluded(vec![Kind::Payment.prefix() + 1]);
        let mut out = Vec::new();
        for kv in self.shared.tree.range((start, end)) {
            let p = match kv
                .map_err(StoreError::from)
                .and_then(|(k, v)| codec::payment_of(&k, &v, &self.shared.symbols))
            {
                Ok(p) => p,
                Err(e) => return ready(Err(e)),
            };
            if filter.keeps(&p) {
                out.push(p);
                if out.len() >= limit {
                    break;
                }
            }
        }
        ready(Ok(out))
    }

    fn open_windows(&self) -> BoxFut<'_, Vec<(String, ProviderId, u64)>> {
        let mut out = vec![];
        for kv in self.shared.tree.scan_prefix([Kind::Window.prefix()]) {
            let (k, v) = match kv {
                Ok(kv) => kv,
                Err(e) => return ready(Err(e.into())),
            };
            let id = String::from_utf8_lossy(keys::rest(&k)).into_owned();
            let parsed = (v.len() == 9)
                .then(|| ProviderId::from_code(v[8]).map(|p| (p, keys::read_u64(v.get(..8)))))
                .flatten();
            let Some((p, next)) = parsed else {
                return ready(Err(StoreError::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    reason: "window record is not 9 bytes with a known provider".into(),
                }));
            };
            out.push((id, p, next));
        }
        ready(Ok(out))
    }

    fn get_action<'a>(&'a self, id: &'a str) -> BoxFut<'a, Option<Action>> {
        ready(self.action_now(id))
    }

    /// Waits for the flush of every group applied so far, then reads:
    /// an action is never sent on a write that a crash could still undo.
    fn outbox(&self) -> BoxFut<'_, Vec<Action>> {
        Box::pin(async move {
            self.sync().await?;
            let ids = self.shared.tree.scan_prefix([Kind::Outbox.prefix()]).keys();
            ids.filter_map(|k| match k {
                Ok(k) => self
                    .action_now(&String::from_utf8_lossy(keys::rest(&k)))
                    .transpose(),
                Err(e) => Some(Err(e.into())),
            })
            .collect()
        })
    }

    fn action_counts(&self) -> BoxFut<'_, BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for a in self.scan::<Action>(Kind::Action) {
            match a {
                Ok(a) => *out.entry(a.state.as_str().to_string()).or_insert(0) += 1,
                Err(e) => return ready(Err(e)),
            }
        }
        ready(Ok(out))
    }

    fn actions_of<'a>(&'a self, payment_id: &'a str) -> BoxFut<'a, Vec<Action>> {
        let prefix = keys::of(Kind::Key, format!("action|of|{payment_id}|").as_bytes());
        ready(
            self.shared
                .tree
                .scan_prefix(prefix)
                .values()
                .filter_map(|id| match id {
                    Ok(id) => self.action_now(&keys::id_of(&id)).transpose(),
                    Err(e) => Some(Err(e.into())),
                })
                .collect(),
        )
    }

    /// Like the outbox: a notification is only ever sent about a change
    /// that is durable (the writer answers the sync after the flush that
    /// covers every group applied before it).
    fn notices(&self, limit: usize) -> BoxFut<'_, Vec<Notice>> {
        Box::pin(async move {
            self.sync().await?;
            self.scan::<Notice>(Kind::Notice).take(limit).collect()
        })
    }

    fn dead_letters(&self, after: Option<u64>, limit: usize) -> BoxFut<'_, Vec<Notice>> {
        Box::pin(async move {
            self.sync().await?;
            self.scan::<Notice>(Kind::Dead)
                .filter(|n| n.as_ref().map_or(true, |n| after.is_none_or(|a| n.seq > a)))
                .take(limit)
                .collect()
        })
    }

    fn meta<'a>(&'a self, key: &'a str) -> BoxFut<'a, Option<String>> {
        ready(
            self.shared
                .tree
                .get(keys::meta(key))
                .map(|v| v.map(|v| String::from_utf8_lossy(&v).into_owned()))
                .map_err(StoreError::from),
        )
    }

    fn sweep_mark<'a>(&'a self, id: &'a str) -> BoxFut<'a, SweepMark> {
        ready(
            self.read(&keys::of(Kind::Sweep, id.as_bytes()))
                .map(Option::unwrap_or_default),
        )
    }

    fn orphan_count(&self) -> BoxFut<'_, usize> {
        ready(Ok(self.shared.counted(Kind::Orphan) as usize))
    }

    fn payment_count(&self) -> usize {
        self.shared.counted(Kind::Payment) as usize
    }

    fn notice_backlog(&self) -> usize {
        self.shared.counted(Kind::Notice) as usize
    }

    fn dead_notices(&self) -> usize {
        self.shared.counted(Kind::Dead) as usize
    }

    fn inbox_len(&self) -> usize {
        self.shared.counted(Kind::Inbox) as usize
    }

    fn size_on_disk(&self) -> u64 {
        self.shared.db.size_on_disk().unwrap_or(0)
    }

    fn healthy(&self) -> bool {
        self.shared.tree.get(b"__probe").is_ok() && !self.tx.is_closed()
    }

    fn probe(&self) -> BoxFut<'_, Probe> {
        let ok = self.healthy();
        Box::pin(std::future::ready(Ok(Probe {
            engine: "sled",
            ok,
            round_trip_ms: None,
            pool: None,
            error: (!ok).then(|| "the store's files or its writer failed".to_string()),
        })))
    }

    fn flushes(&self) -> u64 {
        self.shared.flushes.load(Ordering::SeqCst)
    }

    fn next_id(&self) -> Result<String, StoreError> {
        new_id(&self.shared.db, "pay_")
    }
}
