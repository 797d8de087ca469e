//! The real `payrecon` binary killed with SIGKILL, cycle after cycle, while
//! callbacks and their repeats race in: after each restart every callback
//! that got a 200 is there exactly once and no state went backwards.
//!
//! `cargo test` runs [`DEFAULT_CYCLES`]; a long campaign runs by hand:
//! `PAYRECON_CRASH_CYCLES=200 cargo test --release --test crash_loop -- --nocapture`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use payrecon::model::Source;
use payrecon::providers::connpay::sim::{CallbackMode, NewTransfer, Script, Settle};
use payrecon::state::State;
use tokio_util::sync::CancellationToken;

const DEFAULT_CYCLES: usize = 4;
/// Payments whose callbacks race the kill in each cycle.
const PER_CYCLE: usize = 24;

/// One callback that was answered 200 before a kill.
struct Acked {
    payment_id: String,
    raw_status: &'static str,
    state: State,
}

/// What the store shows of acknowledged callbacks after a restart.
#[derive(Default)]
struct Tally {
    /// Acknowledged, then not in the history.
    lost: usize,
    /// In the history more than once.
    doubled: usize,
    /// The payment is behind the state its callback named.
    regressed: usize,
}

impl Tally {
    async fn add(&mut self, admin: &payrecon::cli::client::AdminClient, acked: &[Acked]) {
        for a in acked {
            let v = admin.get(&a.payment_id).await.unwrap();
            let seen = v
                .history
                .unwrap()
                .iter()
                .filter(|o| o.source == Source::Callback && o.raw_status == a.raw_status)
                .count();
            match seen {
                0 => self.lost += 1,
                1 => {}
                _ => self.doubled += 1,
            }
            if v.payment.state.rank() < a.state.rank() {
                self.regressed += 1;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_callback_load_loses_and_doubles_nothing() {
    let cycles = std::env::var("PAYRECON_CRASH_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(DEFAULT_CYCLES);
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let sim = start_sim(&cancel).await;
    let polling = Polling {
        interval: ("60s", "60s"),
        window: ("120s", "120s"),
        ..Default::default()
    };
    let config = write_config(dir.path(), &sim.base_url(), &polling, "");
    let logs = Arc::new(Mutex::new(vec![]));
    let http = reqwest::Client::new();
    let mut acked: Vec<Acked> = vec![];
    let mut checked = 0;
    let mut tally = Tally::default();
    let mut raced = 0;

    for cycle in 0..cycles {
        let mut d = Process::spawn(&config, &[], logs.clone());
        // Everything acknowledged before the last kill is there, once, in
        // the state its callback named (or further on). Earlier cycles'
        // were checked after their own kill, and all are checked again at
        // the end.
        tally.add(&d.admin, &acked[checked..]).await;
        checked = acked.len();
        // This cycle's payments, tracked while the daemon is up.
        let mut batch = vec![];
        for i in 0..PER_CYCLE {
            let t = NewTransfer::new(
                &format!("loop-{cycle}-{i}"),
                Script {
                    settle: Settle::Manual,
                    callback: CallbackMode::Never,
                    ..Default::default()
                },
            );
            sim.add(t.clone());
            let id = d.admin.track(&track_request(&t)).await.unwrap().payment.id;
            let (status, state) = if i % 4 == 3 {
                ("declined", State::Failed)
            } else {
                ("approved", State::Succeeded)
            };
            let q = callback_query(
                status,
                "sale",
                &format!("o-{cycle}-{i}"),
                &t.invoice_id,
                CONTROL_KEY,
            );
            batch.push((id, status, state, format!("{}?{q}", d.callback_url)));
        }
        // Each callback and its repeat in flight together; the kill lands
        // once a random share of them has been answered.
        // The answer that makes the count is followed at once by SIGKILL,
        // sent by the task that saw it, while the others are in flight.
        let answered = Arc::new(Mutex::new(vec![]));
        let count = Arc::new(AtomicUsize::new(0));
        let kill_after = fastrand::usize(1..PER_CYCLE);
        let pid = d.child.id().to_string();
        let mut sends = tokio::task::JoinSet::new();
        for (id, status, state, url) in &batch {
            for _copy in 0..2 {
                let (http, url, answered, count, pid) = (
                    http.clone(),
                    url.clone(),
                    answered.clone(),
                    count.clone(),
                    pid.clone(),
                );
                let (id, status, state) = (id.clone(), *status, *state);
                sends.spawn(async move {
                    let Ok(r) = http.get(&url).send().await else {
                        return;
                    };
                    if r.status() != 200 {
                        return;
                    }
                    answered.lock().unwrap().push(Acked {
                        payment_id: id,
                        raw_status: status,
                        state,
                    });
                    if count.fetch_add(1, Ordering::SeqCst) + 1 == kill_after {
                        let _ = std::process::Command::new("kill")
                            .args(["-KILL", &pid])
                            .status();
                    }
                });
            }
        }
        while sends.join_next().await.is_some() {}
        // Killed by then, unless fewer answers came than the draw asked for.
        let _ = d.child.kill();
        d.child.wait().unwrap();
        let got = std::mem::take(&mut *answered.lock().unwrap());
        if got.len() < batch.len() * 2 {
            raced += 1;
        }
        acked.extend(got);
        drop(d);
    }
    // The last cycle's acknowledgements, checked after one more restart.
    let d = Process::spawn(&config, &[], logs.clone());
    let mut last = Tally::default();
    last.add(&d.admin, &acked).await;
    drop(d);
    println!(
        "crash loop: {cycles} cycles, {} acknowledged callbacks, {raced} kills cut callbacks off; after each restart: lost {}, doubled {}, regressed {}; at the end: lost {}, doubled {}, regressed {}",
        acked.len(),
        tally.lost,
        tally.doubled,
        tally.regressed,
        last.lost,
        last.doubled,
        last.regressed,
    );
    assert!(!acked.is_empty());
    for t in [&tally, &last] {
        assert_eq!((t.lost, t.doubled, t.regressed), (0, 0, 0));
    }
    cancel.cancel();
    sim.shutdown().await;
}
