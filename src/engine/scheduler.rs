//! The one task that owns every poll deadline: a timer queue that sleeps
//! until the nearest deadline and wakes early when a nearer one arrives.
//! There is no task or sleep per payment; when a deadline falls due the
//! scheduler hands the payment id to a dispatch function and forgets it
//! until it is scheduled again.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Handle to the scheduler task. Cheap to clone. `T` is what travels with
/// an id to the dispatch function (the payment's provider).
#[derive(Clone)]
pub struct Scheduler<T = ()> {
    tx: mpsc::UnboundedSender<Msg<T>>,
    stats: Arc<Stats>,
}

enum Msg<T> {
    Schedule(String, T, Instant),
    /// Answered by the loop itself: proof that it is alive (the watchdog).
    Ping(tokio::sync::oneshot::Sender<()>),
}

/// Counters for liveness checks and metrics.
#[derive(Default)]
pub struct Stats {
    /// Deadlines currently queued.
    pub queued: AtomicU64,
    /// Deadlines dispatched so far.
    pub dispatched: AtomicU64,
    /// Loop turns; it moving shows the task is alive.
    pub turns: AtomicU64,
}

impl<T: Send + 'static> Scheduler<T> {
    /// Starts the scheduler task. `dispatch(id, tag, due)` is called from
    /// the task for each deadline that falls due; it must not block (spawn
    /// the work). The task ends when `cancel` fires.
    pub fn start<F>(
        cancel: CancellationToken,
        dispatch: F,
    ) -> (Scheduler<T>, tokio::task::JoinHandle<()>)
    where
        F: Fn(String, T, Instant) + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(run(rx, cancel, dispatch, stats.clone()));
        (Scheduler { tx, stats }, task)
    }

    /// Schedules (or moves) the deadline of `id`.
    pub fn schedule(&self, id: String, tag: T, at: Instant) {
        // Fails only once the task has ended, at shutdown: nothing to do then.
        let _ = self.tx.send(Msg::Schedule(id, tag, at));
    }

    /// Resolves once the scheduler loop has answered: it is alive and not
    /// stuck. Returns false if the loop has ended.
    pub async fn ping(&self) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Msg::Ping(tx)).is_err() {
            return false;
        }
        rx.await.is_ok()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// Every id the queue holds, as a number. A payment id (`pay_` and 16
/// lowercase hex digits, as the store makes them) is its own number; the
/// queue and its index hold every open window, and a heap string per window
/// was a tenth of payrecon's memory per payment. Any other id gets a
/// handle with the top bit set and is kept here until it is dispatched;
/// either way the dispatch function gets back the same string.
#[derive(Default)]
struct Ids {
    names: HashMap<u64, Box<str>>,
    handles: HashMap<Box<str>, u64>,
    next: u64,
}

const HANDLE: u64 = 1 << 63;

impl Ids {
    fn key(&mut self, id: String) -> u64 {
        let n = id
            .strip_prefix("pay_")
            .filter(|h| h.len() == 16 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .filter(|n| n & HANDLE == 0);
        if let Some(n) = n {
            return n;
        }
        if let Some(&k) = self.handles.get(id.as_str()) {
            return k;
        }
        self.next += 1;
        let k = HANDLE | self.next;
        let id: Box<str> = id.into();
        self.names.insert(k, id.clone());
        self.handles.insert(id, k);
        k
    }

    /// The id behind `k`, forgotten: it has left the queue.
    fn take(&mut self, k: u64) -> String {
        if k & HANDLE == 0 {
            return format!("pay_{k:016x}");
        }
        let name = self.names.remove(&k).unwrap_or_default();
        self.handles.remove(&name);
        name.into()
    }
}

/// A deadline in the heap: when (nanoseconds from the loop's start, signed
/// so an instant before it round-trips), the order it was set in, and the
/// id's number. 24 bytes; moving a deadline leaves the old entry behind,
/// stale, and it is skipped when it surfaces.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at: i64,
    seq: u64,
    key: u64,
}

/// The queue: a min-heap of deadlines and, per id, the `seq` of its live
/// entry and its tag.
struct Queue<T> {
    epoch: Instant,
    heap: BinaryHeap<Reverse<Due>>,
    live: HashMap<u64, (u64, T)>,
    ids: Ids,
    seq: u64,
    stale: usize,
}

impl<T> Queue<T> {
    fn new() -> Queue<T> {
        Queue {
            epoch: Instant::now(),
            heap: BinaryHeap::new(),
            live: HashMap::new(),
            ids: Ids::default(),
            seq: 0,
            stale: 0,
        }
    }

    fn offset(&self, at: Instant) -> i64 {
        let nanos = |d: std::time::Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        if at >= self.epoch {
            nanos(at - self.epoch)
        } else {
            -nanos(self.epoch - at)
        }
    }

    fn instant(&self, at: i64) -> Instant {
        let d = std::time::Duration::from_nanos(at.unsigned_abs());
        if at >= 0 {
            self.epoch + d
        } else {
            self.epoch.checked_sub(d).unwrap_or(self.epoch)
        }
    }

    fn len(&self) -> usize {
        self.live.len()
    }

    /// Schedules (or moves) the deadline of `id`.
    fn insert(&mut self, id: String, tag: T, at: Instant) {
        self.seq += 1;
        let key = self.ids.key(id);
        if self.live.insert(key, (self.seq, tag)).is_some() {
            self.stale += 1;
        }
        let at = self.offset(at);
        self.heap.push(Reverse(Due {
            at,
            seq: self.seq,
            key,
        }));
        // Moved deadlines leave entries behind; never let them be most of
        // the heap.
        if self.stale > self.live.len() + 1024 {
            let live = &self.live;
            self.heap
                .retain(|Reverse(d)| live.get(&d.key).is_some_and(|(s, _)| *s == d.seq));
            self.stale = 0;
        }
    }

    fn is_live(&self, d: &Due) -> bool {
        self.live.get(&d.key).is_some_and(|(s, _)| *s == d.seq)
    }

    /// The nearest live deadline, dropping stale entries on the way.
    fn next(&mut self) -> Option<Instant> {
        while let Some(Reverse(d)) = self.heap.peek() {
            if self.is_live(d) {
                return Some(self.instant(d.at));
            }
            self.heap.pop();
            self.stale = self.stale.saturating_sub(1);
        }
        None
    }

    /// Takes the nearest deadline if it is due by `now`.
    fn pop_due(&mut self, now: Instant) -> Option<(String, T, Instant)> {
        let due = self.next()?;
        if due > now {
            return None;
        }
        let Reverse(d) = self.heap.pop()?;
        let (_, tag) = self.live.remove(&d.key)?;
        Some((self.ids.take(d.key), tag, due))
    }
}

async fn run<T, F>(
    mut rx: mpsc::UnboundedReceiver<Msg<T>>,
    cancel: CancellationToken,
    dispatch: F,
    stats: Arc<Stats>,
) where
    F: Fn(String, T, Instant),
{
    let mut queue = Queue::new();
    loop {
        stats.turns.fetch_add(1, Ordering::Relaxed);
        stats.queued.store(queue.len() as u64, Ordering::Relaxed);
        let next = queue.next();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                let mut take = |msg| match msg {
                    Msg::Schedule(id, tag, at) => queue.insert(id, tag, at),
                    Msg::Ping(reply) => {
                        let _ = reply.send(());
                    }
                };
                take(msg);
                // Take whatever else is waiting in one go.
                while let Ok(msg) = rx.try_recv() {
                    take(msg);
                }
            }
            _ = sleep_until(next), if next.is_some() => {
                let now = Instant::now();
                while let Some((id, tag, due)) = queue.pop_due(now) {
                    stats.dispatched.fetch_add(1, Ordering::Relaxed);
                    dispatch(id, tag, due);
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    type Log = Arc<Mutex<Vec<(String, Instant)>>>;

    fn start() -> (Scheduler<()>, Log, CancellationToken, Instant) {
        let log: Log = Arc::default();
        let l = log.clone();
        let cancel = CancellationToken::new();
        let (s, _task) = Scheduler::start(cancel.clone(), move |id, (), _due| {
            l.lock().unwrap().push((id, Instant::now()));
        });
        (s, log, cancel, Instant::now())
    }

    async fn wait_for(log: &Log, n: usize) {
        while log.lock().unwrap().len() < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_fire_in_order_at_their_time() {
        let (s, log, _c, t0) = start();
        s.schedule("c".into(), (), t0 + Duration::from_secs(5));
        s.schedule("a".into(), (), t0 + Duration::from_secs(3));
        s.schedule("b".into(), (), t0 + Duration::from_secs(4));
        wait_for(&log, 3).await;
        let log = log.lock().unwrap();
        let ids: Vec<_> = log.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        for (i, (_, at)) in log.iter().enumerate() {
            assert_eq!(*at - t0, Duration::from_secs(3 + i as u64));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_nearer_deadline_wakes_the_sleeping_task() {
        let (s, log, _c, t0) = start();
        s.schedule("far".into(), (), t0 + Duration::from_secs(100));
        // Let the task go to sleep on the far deadline first.
        tokio::time::sleep(Duration::from_secs(1)).await;
        s.schedule("near".into(), (), t0 + Duration::from_secs(2));
        wait_for(&log, 1).await;
        let (id, at) = log.lock().unwrap()[0].clone();
        assert_eq!(id, "near");
        assert_eq!(at - t0, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn rescheduling_moves_the_deadline_instead_of_adding_one() {
        let (s, log, _c, t0) = start();
        s.schedule("x".into(), (), t0 + Duration::from_secs(2));
        s.schedule("x".into(), (), t0 + Duration::from_secs(7));
        s.schedule("y".into(), (), t0 + Duration::from_secs(9));
        wait_for(&log, 2).await;
        let log = log.lock().unwrap();
        assert_eq!(log[0].0, "x");
        assert_eq!(log[0].1 - t0, Duration::from_secs(7));
        assert_eq!(log.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn ten_thousand_deadlines_need_one_task() {
        let (s, log, _c, t0) = start();
        for i in 0..10_000u64 {
            s.schedule(
                format!("p{i}"),
                (),
                t0 + Duration::from_millis(3000 + i % 2000),
            );
        }
        wait_for(&log, 10_000).await;
        let log = log.lock().unwrap();
        assert!(log.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!(log.iter().all(|(_, at)| *at - t0 >= Duration::from_secs(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn ids_come_back_as_they_were_given() {
        let (s, log, _c, t0) = start();
        let ids = [
            "pay_00000000002a0f1c",
            "pay_ffffffffffffffff",
            "pay_00000000002A0F1C",
            "pay_2a0f1c",
            "pay_+0000000002a0f1c",
            "act_00000000002a0f1c",
        ];
        for (i, id) in ids.iter().enumerate() {
            s.schedule(id.to_string(), (), t0 + Duration::from_secs(1 + i as u64));
        }
        // Moving a payment id's deadline still finds the first one.
        s.schedule(ids[0].into(), (), t0 + Duration::from_secs(10));
        wait_for(&log, ids.len()).await;
        let got: Vec<_> = log
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(got, [&ids[1..], &ids[..1]].concat());
    }

    #[test]
    fn moved_deadlines_leave_no_more_stale_entries_than_live_ones() {
        let mut q = Queue::new();
        let t0 = Instant::now();
        for i in 0..100u64 {
            q.insert(format!("pay_{i:016x}"), (), t0 + Duration::from_secs(i));
        }
        // Each id moved 50 times: 5000 entries left behind if never pruned.
        for round in 0..50u64 {
            for i in 0..100u64 {
                let at = t0 + Duration::from_secs(1000 + round * 100 + i);
                q.insert(format!("pay_{i:016x}"), (), at);
            }
        }
        assert_eq!(q.len(), 100);
        assert!(q.heap.len() <= 2 * 100 + 1024 + 1, "{}", q.heap.len());
        // Only the last deadline of each id comes out, in order.
        let mut out = vec![];
        while let Some((id, (), due)) = q.pop_due(t0 + Duration::from_secs(1_000_000)) {
            out.push((id, due - t0));
        }
        let want: Vec<_> = (0..100u64)
            .map(|i| {
                (
                    format!("pay_{i:016x}"),
                    Duration::from_secs(1000 + 49 * 100 + i),
                )
            })
            .collect();
        assert_eq!(out, want);
        assert!(q.heap.is_empty() && q.ids.names.is_empty());
    }

    #[test]
    fn a_deadline_before_the_queue_began_comes_back_as_given() {
        let early = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        let mut q = Queue::new();
        q.insert("other".into(), (), early);
        let (id, (), due) = q.pop_due(Instant::now()).unwrap();
        assert_eq!((id.as_str(), due), ("other", early));
        assert!(q.ids.names.is_empty() && q.ids.handles.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_ends_the_task() {
        let log: Log = Arc::default();
        let cancel = CancellationToken::new();
        let (s, task) = Scheduler::<()>::start(cancel.clone(), |_, _, _| {});
        s.schedule("x".into(), (), Instant::now() + Duration::from_secs(3600));
        cancel.cancel();
        task.await.unwrap();
        assert!(log.lock().unwrap().is_empty());
    }
}
