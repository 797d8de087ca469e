//! The scheduler at scale: K transfers in their polling windows against the
//! ConnPay sandbox (in a child process), for a steady-state period. The
//! baseline is a bare reqwest loop sending the same requests at the same
//! rate to the same sandbox: the client's own cost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::footprint::{bench_keys, SimChild};
use super::{check, ratio, runtime, table, thread_cpu, Opts};
use crate::cli::demo::LoopbackConfig;
use crate::config::Config;
use crate::daemon::{self, Listeners};
use crate::model::{now_ms, PollWindow, ProviderId};
use crate::providers::lookup_key;

const KEY_ENV: &str = "PAYRECON_BENCH_CONTROL_KEY";

pub fn run(opts: &Opts) -> Result<(), String> {
    let (ks, warm, measure, base_measure) = if opts.quick {
        (
            vec![200],
            Duration::from_secs(6),
            Duration::from_secs(4),
            Duration::from_secs(2),
        )
    } else {
        (
            vec![1_000, 10_000, 50_000],
            Duration::from_secs(6),
            Duration::from_secs(60),
            Duration::from_secs(15),
        )
    };
    let mut rows = vec![];
    for k in ks {
        let sim = SimChild::spawn(k)?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let rt = runtime("payrecon", 2);
        let text = settings().render(&dir.path().join("store"), &sim.base_url());
        let env = HashMap::from([(KEY_ENV.to_string(), "k".to_string())]);
        let config = Config::parse("bench config", &text, &env).map_err(|e| e.to_string())?;
        let store = rt
            .block_on(async { crate::store::Store::open(&config.file.store.path) })
            .map_err(|e| e.to_string())?;
        load_windows(&store, k)?;
        drop(store);
        let cancel = CancellationToken::new();
        let d = rt.block_on(async {
            // The bulk loader's handle lets go of the folder asynchronously.
            let mut last = String::new();
            for _ in 0..100 {
                let l = Listeners::bind(&config).await.map_err(|e| e.to_string())?;
                match daemon::start(&config, l, cancel.clone()).await {
                    Ok(d) => return Ok(d),
                    Err(e) => last = e.to_string(),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(last)
        })?;
        let c = &d.engine.counters;
        use crate::engine::PollOutcome;
        let failed = || c.polls(PollOutcome::Failed);
        let polls = || c.polls(PollOutcome::Ok) + failed();
        std::thread::sleep(warm);
        let (p0, f0) = (polls(), failed());
        c.poll_lag.reset();
        let (_, cpu0) = thread_cpu(&[]);
        let t0 = Instant::now();
        std::thread::sleep(measure);
        let (_, cpu1) = thread_cpu(&[]);
        let elapsed = t0.elapsed().as_secs_f64();
        let (p1, f1) = (polls(), failed());
        let achieved = (p1 - p0) as f64 / elapsed;
        let expected = k as f64 / 4.0;
        let lag = &c.poll_lag;
        let (lag50, lag99, lagmax) = (lag.quantile_us(0.5), lag.quantile_us(0.99), lag.max_us());
        let ours_cpu = (cpu1 - cpu0).as_secs_f64();
        check(p1 > p0, || format!("K={k}: no polls in steady state"))?;
        // Under saturation polls time out; that is a figure, not a failure,
        // except in the quick run where the load is light.
        if opts.quick {
            check(f1 == f0, || format!("K={k}: {} polls failed", f1 - f0))?;
        }
        cancel.cancel();
        rt.block_on(d.wait());
        drop(rt);

        // Baseline: the same requests at the same rate, bare reqwest.
        let brt = runtime("baseline", 2);
        let (base_cpu, base_sent) =
            brt.block_on(baseline(&sim.base_url(), k, achieved, base_measure));
        drop(brt);
        check(base_sent > 0, || "baseline sent nothing".into())?;
        let ours_per_k = ours_cpu / (p1 - p0) as f64 * 1000.0;
        let base_per_k = base_cpu / base_sent as f64 * 1000.0;
        rows.push(vec![
            k.to_string(),
            format!("{expected:.0}"),
            format!("{achieved:.0}"),
            format!("{:+.1}%", (achieved / expected - 1.0) * 100.0),
            (f1 - f0).to_string(),
            format!("{:.1}", lag50 as f64 / 1000.0),
            format!("{:.1}", lag99 as f64 / 1000.0),
            format!("{:.1}", lagmax as f64 / 1000.0),
            format!("{:.0}%", ours_cpu / elapsed * 100.0),
            format!("{ours_per_k:.3}"),
            format!("{base_per_k:.3}"),
            ratio(ours_per_k, base_per_k),
        ]);
    }
    if opts.quick {
        println!("quick: polls ran in steady state and none failed");
    } else {
        table(
            &[
                "K",
                "expected polls/s",
                "achieved",
                "off",
                "failed",
                "lag p50 ms",
                "lag p99 ms",
                "lag max ms",
                "CPU",
                "CPU s/1k polls",
                "reqwest CPU s/1k",
                "÷ reqwest",
            ],
            &rows,
        );
        println!("CPU is payrecon's share of one core; the sandbox runs in its own process. RSS: see the memory scenario, measured on a daemon process of its own.");
    }
    Ok(())
}

/// The scenario's daemon: ConnPay's rule (a poll every 3-5 s), windows
/// longer than the run, 512 polls in flight.
pub(super) fn settings() -> LoopbackConfig {
    LoopbackConfig {
        interval: ("3s".into(), "5s".into()),
        window: ("10m".into(), "10m".into()),
        max_in_flight: 512,
        request_timeout: "5s".into(),
        key_env: KEY_ENV.into(),
        ..Default::default()
    }
}

/// K pending ConnPay payments (the sandbox's `bench_keys`), each in an
/// open 10-minute window whose first poll falls due in 3-5 s.
pub(super) fn load_windows(store: &crate::store::Store, k: usize) -> Result<(), String> {
    let now = now_ms();
    let items = (0..k).map(|i| {
        let keys = bench_keys(i);
        let inv = keys["invoice_id"].clone();
        let window = PollWindow {
            ends_ms: now + 600_000,
            next_ms: now + fastrand::u64(3_000..=5_000),
            polls: 0,
            open: true,
        };
        let id = store.next_id().unwrap_or_default();
        let p = super::pending(id, keys, 1000, Some(window), now);
        (
            p,
            vec![],
            vec![lookup_key(ProviderId::Connpay, "inv", &inv)],
        )
    });
    store.bulk_load(items).map_err(|e| e.to_string())?;
    Ok(())
}

/// The status request of bench transfer `i`: its URL and body.
pub(super) fn status_request(base_url: &str, i: usize) -> (String, serde_json::Value) {
    let keys = bench_keys(i);
    let url = format!(
        "{base_url}/paynet/dapi/v1/transfer/{}/{}/status",
        keys["endpoint_id"], keys["invoice_id"]
    );
    let body = serde_json::json!({"session": {"accessToken": keys["access_token"], "token": keys["session_token"]}});
    (url, body)
}

/// Runs `one(n)` for n = 0, 1, … at `rate` per second for `dur`, at most
/// 512 at once (payrecon's `max_in_flight` in the scenario); returns how
/// many it started. Every one has ended when it returns.
pub(super) async fn paced<F, Fut>(rate: f64, dur: Duration, one: F) -> u64
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(tokio::sync::Semaphore::new(512));
    let start = Instant::now();
    let mut sent = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    while start.elapsed() < dur {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            let permit = limit.clone().acquire_owned().await;
            let work = one(sent);
            tasks.spawn(async move {
                let _p = permit;
                work.await
            });
            sent += 1;
        }
        while tasks.try_join_next().is_some() {}
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    while tasks.join_next().await.is_some() {}
    sent
}

/// Sends status requests for the K transfers round-robin at `rate` per
/// second for `dur`; returns the CPU seconds it took and requests sent.
async fn baseline(base_url: &str, k: usize, rate: f64, dur: Duration) -> (f64, u64) {
    let client = reqwest::Client::new();
    let (cpu0, _) = thread_cpu(&["baseline"]);
    let sent = paced(rate, dur, |n| {
        let (url, body) = status_request(base_url, n as usize % k);
        let client = client.clone();
        async move {
            if let Ok(r) = client.post(url).json(&body).send().await {
                let _ = r.bytes().await;
            }
        }
    })
    .await;
    let (cpu1, _) = thread_cpu(&["baseline"]);
    ((cpu1 - cpu0).as_secs_f64(), sent)
}
