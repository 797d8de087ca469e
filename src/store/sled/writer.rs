//! The one writer. A dedicated thread owns every write: it takes what is
//! queued (up to [`MAX_GROUP`] commands), applies each command to its view
//! of the records (the tree, under what the group already wrote), writes
//! the whole group as one atomic sled `Batch`, and hands the group to the
//! flusher (store/flusher.rs), which flushes once and only then answers
//! every command in it, while this thread applies the next group. No
//! transactions, no conflicts, no retries; reads run beside it on the
//! tree.
//!
//! A command that fails leaves nothing of itself in the group.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::keys::{self, Kind};
use super::{ops, Shared};
use crate::action::Action;
use crate::model::{PollWindow, Report};
use crate::store::codec::Record;
use crate::store::flusher::Flusher;
use crate::store::SweepMark;
use crate::store::{
    CallbackRecord, Change, Enqueued, Ingested, NewPayment, Notice, Observed, Repeats, StoreError,
    Tracked, WindowChange,
};

/// Commands applied per group at most: bounds a group's latency and the
/// memory of its view.
pub const MAX_GROUP: usize = 1024;

pub type Tx<T> = oneshot::Sender<Result<T, StoreError>>;

pub enum Cmd {
    Track(NewPayment, Tx<Tracked>),
    Observe {
        id: String,
        report: Report,
        window: WindowChange,
        now_ms: u64,
        carry: Option<Repeats>,
        tx: Tx<Observed>,
    },
    Advance {
        id: String,
        window: WindowChange,
        carry: Option<Repeats>,
        tx: Tx<Option<PollWindow>>,
    },
    Ingest(CallbackRecord, Tx<Ingested>),
    Enqueue(Action, Option<String>, Tx<Enqueued>),
    UpdateAction(Action, Vec<Report>, Tx<Vec<Change>>),
    UpdateNotice(Notice, Tx<()>),
    RemoveNotice(Notice, bool, Tx<()>),
    ReplayDead(Vec<u64>, Tx<Vec<Notice>>),
    SetMeta(String, Option<String>, Tx<()>),
    SetSweep(String, SweepMark, Tx<()>),
    ExpireOrphans(u64, Tx<usize>),
    Repeats(Vec<Repeats>, Tx<()>),
    Sync(Tx<()>),
}

/// Sends a command's answer once the group's flush is known.
type Answer = Box<dyn FnOnce(Option<&str>) + Send>;

fn answer<T: Send + 'static>(tx: Tx<T>, r: Result<T, StoreError>) -> Answer {
    Box::new(move |flush_failed| {
        let r = match (r, flush_failed) {
            (Ok(_), Some(e)) => Err(StoreError::Flush(e.to_string())),
            (r, _) => r,
        };
        let _ = tx.send(r);
    })
}

/// The records as the group sees them: the tree, under what earlier
/// commands of the group wrote, under what the current command wrote.
pub struct View<'s> {
    pub s: &'s Shared,
    group: HashMap<Vec<u8>, Option<Vec<u8>>>,
    cmd: HashMap<Vec<u8>, Option<Vec<u8>>>,
    group_counts: [i64; Kind::COUNTED],
    cmd_counts: [i64; Kind::COUNTED],
}

impl<'s> View<'s> {
    fn new(s: &'s Shared) -> Self {
        View {
            s,
            // Room for a group of a few dozen commands without regrowing.
            group: HashMap::with_capacity(256),
            cmd: HashMap::new(),
            group_counts: [0; Kind::COUNTED],
            cmd_counts: [0; Kind::COUNTED],
        }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.cmd.get(key).or_else(|| self.group.get(key)) {
            return Ok(v.clone());
        }
        Ok(self.s.tree.get(key)?.map(|v| v.to_vec()))
    }

    pub fn load<T: Record>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        self.get(key)?.map(|raw| T::decode(key, &raw)).transpose()
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.cmd.insert(key, Some(value));
    }

    pub fn del(&mut self, key: Vec<u8>) {
        self.cmd.insert(key, None);
    }

    /// Counts records of a kind in or out.
    pub fn count(&mut self, kind: Kind, delta: i64) {
        self.cmd_counts[kind as usize] += delta;
    }

    /// Records of a kind counted in or out by the group so far.
    pub fn pending(&self, kind: Kind) -> i64 {
        let i = kind as usize;
        self.group_counts[i] + self.cmd_counts[i]
    }

    fn keep(&mut self) {
        for (k, v) in self.cmd.drain() {
            self.group.insert(k, v);
        }
        for (g, c) in self.group_counts.iter_mut().zip(self.cmd_counts.iter_mut()) {
            *g += std::mem::take(c);
        }
    }

    fn discard(&mut self) {
        self.cmd.clear();
        self.cmd_counts = [0; Kind::COUNTED];
    }

    /// Runs one command against the view and keeps what it wrote if it
    /// succeeded.
    fn run(&mut self, cmd: Cmd) -> Answer {
        macro_rules! step {
            ($tx:expr, $r:expr) => {{
                let r = $r;
                if r.is_ok() {
                    self.keep()
                } else {
                    self.discard()
                }
                answer($tx, r)
            }};
        }
        match cmd {
            Cmd::Track(new, tx) => step!(tx, ops::track(self, new)),
            Cmd::Observe {
                id,
                report,
                window,
                now_ms,
                carry,
                tx,
            } => step!(tx, ops::observe(self, &id, report, window, now_ms, carry)),
            Cmd::Advance {
                id,
                window,
                carry,
                tx,
            } => step!(tx, ops::advance(self, &id, window, carry)),
            Cmd::Ingest(cb, tx) => step!(tx, ops::ingest(self, cb)),
            Cmd::Enqueue(a, excl, tx) => step!(tx, ops::enqueue(self, a, excl)),
            Cmd::UpdateAction(a, reports, tx) => step!(tx, ops::update_action(self, &a, reports)),
            Cmd::UpdateNotice(n, tx) => step!(tx, ops::update_notice(self, &n)),
            Cmd::RemoveNotice(n, dead, tx) => step!(tx, ops::remove_notice(self, &n, dead)),
            Cmd::ReplayDead(seqs, tx) => step!(tx, ops::replay_dead(self, &seqs)),
            Cmd::SetMeta(k, v, tx) => step!(tx, {
                let key = keys::meta(&k);
                match v {
                    Some(v) => self.put(key, v.into_bytes()),
                    None => self.del(key),
                }
                Ok(())
            }),
            Cmd::SetSweep(id, m, tx) => step!(tx, {
                self.put(keys::of(Kind::Sweep, id.as_bytes()), m.encode());
                Ok(())
            }),
            Cmd::ExpireOrphans(before, tx) => step!(tx, ops::expire_orphans(self, before)),
            Cmd::Repeats(counts, tx) => step!(tx, {
                counts
                    .into_iter()
                    .try_for_each(|c| ops::record_repeats(self, c))
            }),
            Cmd::Sync(tx) => answer(tx, Ok(())),
        }
    }

    /// Writes the group as one batch, with the counters it moved and the
    /// symbols it saves.
    fn into_batch(self) -> Option<(sled::Batch, [i64; Kind::COUNTED], usize)> {
        if self.group.is_empty() {
            return None;
        }
        let mut batch = sled::Batch::default();
        let symbols = keys::save_symbols(&self.s.symbols, &mut batch);
        for (i, d) in self.group_counts.iter().enumerate() {
            if *d != 0 {
                let now = self.s.counts[i].load(Ordering::Relaxed) as i64 + d;
                batch.insert(keys::counter(i), &(now.max(0) as u64).to_be_bytes());
            }
        }
        for (k, v) in self.group {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        Some((batch, self.group_counts, symbols))
    }
}

/// The writer thread's loop: applies groups and hands each to the
/// flusher (store/flusher.rs), which answers it after the flush that
/// covers it. Ends when every sender is gone, after every group is
/// answered and a last flush.
#[inline(never)] // counted by name in the instructions benchmark
pub fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Cmd>, flusher: Flusher) {
    while let Some(first) = rx.blocking_recv() {
        let mut view = View::new(&shared);
        let mut answers = vec![view.run(first)];
        while answers.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(cmd) => answers.push(view.run(cmd)),
                Err(_) => break,
            }
        }
        let (wrote, failed) = match apply(&shared, view) {
            Ok(wrote) => (wrote, None),
            Err(e) => {
                tracing::error!(alert = "store_flush_failed", error = %e, "store write failed; the group's answers are errors");
                (false, Some(e))
            }
        };
        flusher.send(
            wrote,
            Box::new(move |flush_failed| {
                let failed = failed.as_deref().or(flush_failed);
                for a in answers {
                    a(failed);
                }
            }),
        );
    }
    flusher.finish();
    let _ = shared.db.flush();
}

/// Writes the group's batch to the tree (not yet durable); true if it
/// wrote anything.
fn apply(shared: &Shared, view: View<'_>) -> Result<bool, String> {
    let Some((batch, deltas, symbols)) = view.into_batch() else {
        return Ok(false);
    };
    shared.tree.apply_batch(batch).map_err(|e| e.to_string())?;
    shared.symbols.saved_up_to(symbols);
    for (c, d) in shared.counts.iter().zip(deltas) {
        let now = (c.load(Ordering::Relaxed) as i64 + d).max(0);
        c.store(now as u64, Ordering::Relaxed);
    }
    Ok(true)
}
