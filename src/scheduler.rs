//! The one task that owns every poll deadline: a timer queue that sleeps
//! until the nearest deadline and wakes early when a nearer one arrives.
//! There is no task or sleep per payment; when a deadline falls due the
//! scheduler hands the payment id to a dispatch function and forgets it
//! until it is scheduled again.

use std::collections::{BTreeMap, HashMap};
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

/// An id as the queue keeps it. A payment id (`pay_` and 16 lowercase hex
/// digits, as the store makes them) is kept as its number: the queue and
/// its index hold every open window's id, and two heap strings per window
/// were a tenth of payrecon's memory per payment. Anything else is kept as
/// it came; either way the dispatch function gets back the same string.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Id {
    Pay(u64),
    Other(Box<str>),
}

impl Id {
    fn new(id: String) -> Id {
        let n = id
            .strip_prefix("pay_")
            .filter(|h| h.len() == 16 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .and_then(|h| u64::from_str_radix(h, 16).ok());
        match n {
            Some(n) => Id::Pay(n),
            None => Id::Other(id.into_boxed_str()),
        }
    }

    fn into_string(self) -> String {
        match self {
            Id::Pay(n) => format!("pay_{n:016x}"),
            Id::Other(s) => s.into(),
        }
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
    // (deadline, tie-breaker) → id and tag, and id → its key, so moving a
    // deadline replaces the old one.
    let mut queue: BTreeMap<(Instant, u64), (Id, T)> = BTreeMap::new();
    let mut index: HashMap<Id, (Instant, u64)> = HashMap::new();
    let mut seq = 0u64;
    let mut insert =
        |queue: &mut BTreeMap<_, _>, index: &mut HashMap<_, _>, id: String, tag: T, at| {
            seq += 1;
            let id = Id::new(id);
            if let Some(old) = index.insert(id.clone(), (at, seq)) {
                queue.remove(&old);
            }
            queue.insert((at, seq), (id, tag));
        };
    loop {
        stats.turns.fetch_add(1, Ordering::Relaxed);
        stats.queued.store(queue.len() as u64, Ordering::Relaxed);
        let next = queue.keys().next().map(|(at, _)| *at);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                let mut take = |msg| match msg {
                    Msg::Schedule(id, tag, at) => insert(&mut queue, &mut index, id, tag, at),
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
                while let Some(entry) = queue.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    let ((due, _), (id, tag)) = entry.remove_entry();
                    index.remove(&id);
                    stats.dispatched.fetch_add(1, Ordering::Relaxed);
                    dispatch(id.into_string(), tag, due);
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
