//! Footprint: RSS at rest and per payment in a window, time to readiness
//! with a large store, and bytes on disk per final payment. The memory and
//! restart figures come from the daemon as its own process.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{check, disk_usage, ratio, rss_kib, runtime, table, Opts};
use crate::cli::demo::LoopbackConfig;
use crate::model::{now_ms, Keys, Observation, Payment, PollWindow, ProviderId, Source};
use crate::providers::connpay::sim::{CallbackMode, ConnpaySim, NewTransfer, Script, Settle};
use crate::providers::lookup_key;
use crate::state::{Decision, State};
use crate::store::Store;

const KEY_ENV: &str = "PAYRECON_BENCH_CONTROL_KEY";

/// The keys of bench transfer `i`, the same in the sandbox and payrecon.
pub fn bench_keys(i: usize) -> Keys {
    Keys::from([
        ("endpoint_id".to_string(), "4211".to_string()),
        ("invoice_id".to_string(), format!("bench-{i}")),
        ("session_token".to_string(), format!("sess{i:016x}")),
        ("access_token".to_string(), format!("acc{i:032x}")),
    ])
}

/// The ConnPay sandbox in a child process (`payrecon-bench serve-sim`),
/// holding K transfers that never settle.
pub struct SimChild {
    child: Child,
    addr: String,
}

impl SimChild {
    pub fn spawn(k: usize) -> Result<SimChild, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .args(["serve-sim", &k.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("sandbox child: {e}"))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().ok_or("no stdout")?)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let addr = line
            .trim()
            .strip_prefix("ready ")
            .ok_or_else(|| format!("sandbox said `{line}`"))?
            .to_string();
        Ok(SimChild { child, addr })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SimChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Child mode: serve a sandbox with K transfers until standard input closes.
pub fn serve_sim(args: &[String]) -> ExitCode {
    let k: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(0);
    let rt = runtime("sim", 1);
    rt.block_on(async {
        let Ok(l) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
            return ExitCode::FAILURE;
        };
        let sim = ConnpaySim::start(l, "bench", tokio_util::sync::CancellationToken::new());
        for i in 0..k {
            let keys = bench_keys(i);
            sim.add(NewTransfer {
                endpoint_id: keys["endpoint_id"].clone(),
                invoice_id: keys["invoice_id"].clone(),
                session_token: keys["session_token"].clone(),
                access_token: Some(keys["access_token"].clone()),
                amount_centis: 1000,
                currency: "EUR".into(),
                script: Script {
                    settle: Settle::Manual,
                    callback: CallbackMode::Never,
                    ..Default::default()
                },
            });
        }
        println!("ready {}", sim.addr());
        let _ = std::io::stdout().flush();
        // Until the parent goes away.
        let _ = tokio::task::spawn_blocking(|| std::io::read_to_string(std::io::stdin())).await;
        ExitCode::SUCCESS
    })
}

/// The daemon as its own process (`payrecon-bench run`).
struct DaemonChild {
    child: Child,
    admin: String,
    resumed: u64,
    ready_after: Duration,
}

impl DaemonChild {
    /// Stops the daemon with SIGTERM and waits: it flushes and exits.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for DaemonChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(
    dir: &Path,
    store: &Path,
    interval: &str,
    window: &str,
    compression: bool,
) -> Result<std::path::PathBuf, String> {
    let text = LoopbackConfig {
        interval: (interval.into(), interval.into()),
        window: (window.into(), window.into()),
        log_format: "json".into(),
        key_env: KEY_ENV.into(),
        ..Default::default()
    }
    .render(store, "http://127.0.0.1:9")
    .replace(
        "\n[callback]",
        &format!("compression = {compression}\n\n[callback]"),
    );
    let path = dir.join("payrecon.toml");
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    Ok(path)
}

fn spawn_daemon(config: &Path) -> Result<DaemonChild, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let mut child = Command::new(exe)
        .args(["run", "--config"])
        .arg(config)
        .env(KEY_ENV, "bench")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("daemon child: {e}"))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Until ready, keep the last lines: they say why a daemon that
        // exits early did so.
        let mut last = std::collections::VecDeque::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(v) if v["message"] == "payrecon ready" => {
                    let _ = tx.send(Ok((v, t0.elapsed())));
                    last.clear();
                }
                _ => {
                    if last.len() == 5 {
                        last.pop_front();
                    }
                    last.push_back(line);
                }
            }
        }
        let tail = Vec::from(last).join("\n");
        let _ = tx.send(Err(tail));
    });
    let (v, ready_after) = match rx.recv_timeout(Duration::from_secs(300)) {
        Ok(Ok(ready)) => ready,
        Ok(Err(tail)) => {
            let _ = child.wait();
            return Err(format!("daemon exited before it was ready:\n{tail}"));
        }
        Err(_) => {
            let _ = child.kill();
            return Err("daemon not ready within 300 s".into());
        }
    };
    Ok(DaemonChild {
        admin: format!("http://{}", v["admin_addr"].as_str().unwrap_or_default()),
        resumed: v["resumed_windows"].as_u64().unwrap_or(0),
        ready_after,
        child,
    })
}

pub fn memory(opts: &Opts) -> Result<(), String> {
    let k = if opts.quick { 2_000 } else { 100_000 };
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    // Windows open for hours with an hour between polls: tracked and
    // scheduled, not polled during the measurement.
    let config = write_config(dir.path(), &dir.path().join("store"), "1h", "2h", true)?;
    let d = spawn_daemon(&config)?;
    let rt = runtime("loadgen", 1);
    let client = crate::cli::client::AdminClient::new(&d.admin, None);
    rt.block_on(async {
        // Let start-up allocations settle, then read the resting size.
        client
            .list(None, None, Some(1), None)
            .await
            .map_err(|e| e.to_string())
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let rest = rss_kib(d.child.id());
    let client = Arc::new(client);
    let t0 = Instant::now();
    rt.block_on(async {
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = vec![];
        // Fewer than the admin listener's 64 connections: a client that
        // opens one more while another closes is answered 503.
        for _ in 0..32 {
            let (client, next) = (client.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= k {
                        return Ok::<_, String>(());
                    }
                    let req = crate::engine::TrackRequest {
                        provider: "connpay".into(),
                        keys: bench_keys(i),
                        amount_minor: Some(1000),
                        currency: Some("EUR".into()),
                    };
                    client.track(&req).await.map_err(|e| e.to_string())?;
                }
            }));
        }
        for t in tasks {
            t.await.map_err(|e| e.to_string())??;
        }
        Ok::<_, String>(())
    })?;
    let track_secs = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let full = rss_kib(d.child.id());
    // Every payment is tracked and in its window.
    let pending = rt.block_on(async {
        let mut n = 0;
        let mut after: Option<String> = None;
        loop {
            let page = client
                .list(Some("pending"), None, Some(1000), after.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            n += page
                .payments
                .iter()
                .filter(|v| v.payment.window.is_some_and(|w| w.open))
                .count();
            match page.next_after {
                Some(a) => after = Some(a),
                None => return Ok::<_, String>(n),
            }
        }
    })?;
    check(pending == k, || {
        format!("{pending} of {k} payments in their windows")
    })?;
    let per = (full.saturating_sub(rest)) as f64 * 1024.0 / k as f64;
    // Baseline: the payment's own bytes as JSON, what any store must keep.
    let logical = serde_json::to_vec(&bench_keys(0))
        .map(|v| v.len())
        .unwrap_or(0)
        + 300;
    if opts.quick {
        println!("quick: {k} payments tracked through the API and in their windows");
    } else {
        table(
            &[
                "payments in windows",
                "RSS MiB",
                "per payment B",
                "payment JSON B",
                "÷ JSON",
                "tracked/s (API, fsync'd)",
            ],
            &[
                vec![
                    "0".into(),
                    format!("{:.1}", rest as f64 / 1024.0),
                    "".into(),
                    "".into(),
                    "".into(),
                    "".into(),
                ],
                vec![
                    k.to_string(),
                    format!("{:.1}", full as f64 / 1024.0),
                    format!("{per:.0}"),
                    logical.to_string(),
                    ratio(per, logical as f64),
                    format!("{:.0}", k as f64 / track_secs),
                ],
            ],
        );
    }
    d.stop();
    Ok(())
}

/// A typical final ConnPay payment: five observations from polls and its
/// callback.
fn typical(id: String, i: usize, now: u64) -> (Payment, Vec<Observation>, Vec<String>) {
    let keys = bench_keys(i);
    let inv = keys["invoice_id"].clone();
    let obs = |seq: u32,
               source: Source,
               raw: &str,
               state: State,
               decision: Decision,
               fields: &[(&str, String)]| Observation {
        seq,
        source,
        at_ms: now + seq as u64 * 4000,
        raw_status: raw.into(),
        state: Some(state),
        decision: Some(decision),
        fields: fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        repeats: 0,
        last_ms: None,
    };
    let order = format!("cp{i:08}");
    let base = [
        ("order_id", order.clone()),
        ("amount_minor", "1250".to_string()),
        ("order_created_date", "2026-11-22 03:00:00".to_string()),
    ];
    let mut fin = base.to_vec();
    fin.extend([
        ("bank_order_id", format!("b{order}")),
        ("commission_minor", "12".into()),
        ("transaction_created_date", "2026-11-22 03:00:09".into()),
        ("secure3d_auth_status", "AUTHENTICATED".into()),
    ]);
    let history = vec![
        obs(
            0,
            Source::Poll,
            "PROCESSING",
            State::Pending,
            Decision::Same,
            &base,
        ),
        obs(
            1,
            Source::Poll,
            "REDIRECT_REQUEST",
            State::ActionRequired,
            Decision::Advance,
            &[
                (
                    "redirect_url",
                    format!("https://sandbox.connpay.com/3ds/{order}"),
                ),
                ("order_id", order.clone()),
            ],
        ),
        obs(
            2,
            Source::Poll,
            "PROCESSING",
            State::Pending,
            Decision::Backwards,
            &base,
        ),
        obs(
            3,
            Source::Poll,
            "APPROVED",
            State::Succeeded,
            Decision::Advance,
            &fin,
        ),
        obs(
            4,
            Source::Callback,
            "approved",
            State::Succeeded,
            Decision::Same,
            &[
                ("type", "sale".into()),
                ("orderid", order.clone()),
                ("amount", "12.50".into()),
                ("currency", "EUR".into()),
            ],
        ),
    ];
    let p = Payment {
        id,
        provider: ProviderId::Connpay,
        keys,
        amount_minor: Some(1250),
        currency: Some("EUR".into()),
        state: State::Succeeded,
        raw_status: Some("APPROVED".into()),
        created_ms: now,
        updated_ms: now + 16_000,
        final_ms: Some(now + 12_000),
        final_source: Some(Source::Poll),
        window: Some(PollWindow {
            ends_ms: now + 150_000,
            next_ms: now + 16_000,
            polls: 4,
            open: false,
        }),
        observations: 5,
        mismatch: None,
    };
    let keys = vec![
        lookup_key(ProviderId::Connpay, "inv", &inv),
        lookup_key(ProviderId::Connpay, "idem", &format!("4211/{inv}")),
        lookup_key(ProviderId::Connpay, "ord", &order),
    ];
    (p, history, keys)
}

/// Opens `path` again once the previous handle has let go of it.
fn reopen(rt: &tokio::runtime::Runtime, path: &Path) -> Result<Store, String> {
    reopen_with(rt, path, false)
}

fn reopen_with(
    rt: &tokio::runtime::Runtime,
    path: &Path,
    compression: bool,
) -> Result<Store, String> {
    rt.block_on(async {
        let mut last = String::new();
        for _ in 0..200 {
            match Store::open_with(path, crate::store::DEFAULT_CACHE_MB, compression) {
                Ok(s) => return Ok(s),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(last)
    })
}

pub fn restart(opts: &Opts) -> Result<(), String> {
    let (total, open) = if opts.quick {
        (20_000, 2_000)
    } else {
        (1_000_000, 100_000)
    };
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let store_path = dir.path().join("store");
    let t0 = Instant::now();
    {
        let rt = runtime("loadgen", 1);
        let store = reopen_with(&rt, &store_path, false)?;
        let now = now_ms();
        let items = (0..total).map(|i| {
            let (mut p, mut h, mut keys) = typical(store.next_id().unwrap_or_default(), i, now);
            h.truncate(1);
            keys.truncate(2);
            p.observations = 1;
            if i % (total / open) == 0 {
                p.state = State::Pending;
                p.final_ms = None;
                p.final_source = None;
                p.window = Some(PollWindow {
                    ends_ms: now + 7_200_000,
                    next_ms: now + 3_600_000,
                    polls: 1,
                    open: true,
                });
            }
            (p, h, keys)
        });
        store.bulk_load(items).map_err(|e| e.to_string())?;
    }
    let build = t0.elapsed();
    // The daemon first, on the store as the writes left it: a restart after
    // a busy day, with whatever sled must replay.
    let config = write_config(dir.path(), &store_path, "1h", "2h", false)?;
    let first = spawn_daemon(&config)?;
    check(first.resumed as usize == open, || {
        format!("daemon resumed {} windows of {open}", first.resumed)
    })?;
    let cold = first.ready_after;
    first.stop();
    // Again, once sled has recovered (and snapshotted) that log.
    let warm = {
        let d = spawn_daemon(&config)?;
        check(d.resumed as usize == open, || {
            format!("daemon resumed {} windows of {open}", d.resumed)
        })?;
        let t = d.ready_after;
        d.stop();
        t
    };
    // Baseline: opening the same store and reading the open windows,
    // in-process, with no daemon around it.
    let rt = runtime("loadgen", 1);
    let t1 = Instant::now();
    let windows = {
        let store = reopen_with(&rt, &store_path, false)?;
        rt.block_on(store.open_windows())
            .map_err(|e| e.to_string())?
            .len()
    };
    let store_open = t1.elapsed();
    drop(rt);
    check(windows == open, || {
        format!("{windows} open windows stored, {open} expected")
    })?;
    let (alloc, _) = disk_usage(&store_path);
    if opts.quick {
        println!("quick: {total} payments stored, the daemon resumed all {open} open windows");
    } else {
        table(
            &[
                "stored",
                "not final",
                "store MiB",
                "ready s, right after the writes",
                "ready s, log recovered",
                "store open + windows s",
                "÷ store alone",
                "target s",
            ],
            &[vec![
                total.to_string(),
                open.to_string(),
                format!("{:.0}", alloc as f64 / 1048576.0),
                format!("{:.2}", cold.as_secs_f64()),
                format!("{:.2}", warm.as_secs_f64()),
                format!("{:.2}", store_open.as_secs_f64()),
                ratio(warm.as_secs_f64(), store_open.as_secs_f64()),
                "2".into(),
            ]],
        );
        println!("(building the store took {:.0} s, uncompressed to keep the run short; each start is measured from process start to the ready line; each daemon was stopped with SIGTERM)", build.as_secs_f64());
    }
    Ok(())
}

pub fn disk(opts: &Opts) -> Result<(), String> {
    let m = if opts.quick { 2_000 } else { 50_000 };
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("store");
    let mut logical = 0usize;
    {
        let rt = runtime("loadgen", 1);
        let store = reopen(&rt, &path)?;
        let now = now_ms();
        let items: Vec<_> = (0..m)
            .map(|i| typical(store.next_id().unwrap_or_default(), i, now))
            .collect();
        for (p, h, k) in &items {
            logical += serde_json::to_vec(p).map(|v| v.len()).unwrap_or(0)
                + h.iter()
                    .map(|o| serde_json::to_vec(o).map(|v| v.len()).unwrap_or(0) + p.id.len() + 5)
                    .sum::<usize>()
                + k.iter().map(|k| k.len() + p.id.len()).sum::<usize>()
                + p.id.len();
        }
        store.bulk_load(items).map_err(|e| e.to_string())?;
    }
    // Let sled settle: reopen (recovery), flush, close.
    {
        let rt = runtime("loadgen", 1);
        let store = reopen(&rt, &path)?;
        check(
            rt.block_on(store.list(None, None, None, m + 1))
                .map_err(|e| e.to_string())?
                .len()
                == m,
            || "payments missing after reopen".into(),
        )?;
        rt.block_on(store.close()).map_err(|e| e.to_string())?;
    }
    let (alloc, apparent) = disk_usage(&path);
    let per = alloc as f64 / m as f64;
    let per_logical = logical as f64 / m as f64;
    // Baseline: the same records, byte for byte, written the cheapest way
    // sled offers (one tree, key order, big batches): what sled 0.34 takes
    // on disk for these bytes, whoever writes them.
    let alone = dir.path().join("sled-alone");
    let (records, bytes) = super::baseline::copy_records(&path, &alone)?;
    let (alone_alloc, _) = disk_usage(&alone);
    let per_alone = alone_alloc as f64 / m as f64;
    if opts.quick {
        println!("quick: {m} final payments with 5 observations each, all there after reopen");
    } else {
        table(
            &[
                "final payments",
                "on disk MiB",
                "apparent MiB",
                "per payment B",
                "records/payment",
                "record bytes/payment",
                "sled alone, same records B",
                "÷ sled alone",
                "logical B",
                "÷ logical",
                "target B",
            ],
            &[vec![
                m.to_string(),
                format!("{:.1}", alloc as f64 / 1048576.0),
                format!("{:.1}", apparent as f64 / 1048576.0),
                format!("{per:.0}"),
                format!("{:.1}", records as f64 / m as f64),
                format!("{:.0}", bytes as f64 / m as f64),
                format!("{per_alone:.0}"),
                ratio(per, per_alone),
                format!("{per_logical:.0}"),
                ratio(per, per_logical),
                "2048".into(),
            ]],
        );
    }
    Ok(())
}
