//! Group commit with the flush behind the writer. The writer applies a
//! group of commands and hands it here; this thread flushes and only then
//! answers the group, while the writer already applies the next one. A
//! callback's 200 still waits for a flush that began after its write was
//! applied, and groups are answered in the order they were applied: a
//! group that read what an earlier group wrote is answered after that
//! group's flush.
//!
//! One flush covers every group waiting when it starts. A flush that
//! fails makes the next one happen even for a group that wrote nothing,
//! so no answer relies on a write that may be lost.

use std::sync::mpsc;
use std::thread::JoinHandle;

/// Answers a group once its flush is known: `Some(error)` if it failed.
pub type Done = Box<dyn FnOnce(Option<&str>) + Send>;

struct Group {
    wrote: bool,
    done: Done,
}

pub struct Flusher {
    tx: mpsc::SyncSender<Group>,
    thread: JoinHandle<()>,
}

impl Flusher {
    /// Starts the flushing thread. `flush` makes every write applied
    /// before the call durable.
    pub fn spawn<F>(name: &str, flush: F) -> std::io::Result<Flusher>
    where
        F: FnMut() -> Result<(), String> + Send + 'static,
    {
        // One group waits while another flushes; the writer, applying a
        // third, waits for room: at most three groups are in flight.
        let (tx, rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(rx, flush))?;
        Ok(Flusher { tx, thread })
    }

    /// Hands over a group the writer has applied (`wrote`: it changed
    /// something), to be answered by `done` after the flush that covers
    /// it.
    pub fn send(&self, wrote: bool, done: Done) {
        if let Err(mpsc::SendError(g)) = self.tx.send(Group { wrote, done }) {
            // The thread is gone (it panicked): nothing will flush.
            (g.done)(Some("the store's flushing thread stopped"));
        }
    }

    /// Waits until every group handed over is answered.
    pub fn finish(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}

/// The flushing thread's loop. Not inlined: the instructions benchmark
/// counts this thread by the name.
#[inline(never)]
fn run<F>(rx: mpsc::Receiver<Group>, mut flush: F)
where
    F: FnMut() -> Result<(), String>,
{
    let mut unflushed = false;
    while let Ok(first) = rx.recv() {
        let mut groups = vec![first];
        groups.extend(rx.try_iter());
        let mut failed = None;
        if unflushed || groups.iter().any(|g| g.wrote) {
            match flush() {
                Ok(()) => unflushed = false,
                Err(e) => {
                    tracing::error!(alert = "store_flush_failed", error = %e, "store flush failed; the groups it covered are answered with errors");
                    unflushed = true;
                    failed = Some(e);
                }
            }
        }
        for g in groups {
            (g.done)(failed.as_deref());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Hands over one group and waits for its answer: each group in its
    /// own round, so the order below does not depend on timing.
    fn round(f: &Flusher, log: &Arc<Mutex<Vec<String>>>, name: &str, wrote: bool) {
        let (tx, rx) = mpsc::channel();
        let (l, name) = (log.clone(), name.to_string());
        f.send(
            wrote,
            Box::new(move |e| {
                l.lock().unwrap().push(format!("{name}:{e:?}"));
                tx.send(()).unwrap();
            }),
        );
        rx.recv().unwrap();
    }

    #[test]
    fn a_group_is_answered_after_a_flush_and_a_failed_flush_is_redone() {
        let log = Arc::new(Mutex::new(vec![]));
        let l = log.clone();
        let mut fail_next = true;
        let f = Flusher::spawn("test-flusher", move || {
            l.lock().unwrap().push("flush".to_string());
            if std::mem::take(&mut fail_next) {
                return Err("disk full".into());
            }
            Ok(())
        })
        .unwrap();
        round(&f, &log, "wrote", true);
        round(&f, &log, "after-failure", false);
        round(&f, &log, "read-only", false);
        round(&f, &log, "wrote-again", true);
        f.finish();
        assert_eq!(
            *log.lock().unwrap(),
            [
                "flush",
                "wrote:Some(\"disk full\")",
                // Wrote nothing itself, but may have read what the failed
                // flush did not cover: flushed again.
                "flush",
                "after-failure:None",
                // Nothing written and nothing unflushed: no flush.
                "read-only:None",
                "flush",
                "wrote-again:None",
            ]
        );
    }
}
