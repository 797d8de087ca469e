//! Footprint: RSS at rest and per payment in a window, measured on the
//! daemon as its own process, and the child processes the scenarios
//! share (the sandbox, the daemon). The store's own figures are in
//! [`super::stored`].

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{check, ratio, rss_kib, runtime, table, Opts};
use crate::cli::demo::LoopbackConfig;
use crate::model::Keys;
use crate::providers::connpay::sim::{CallbackMode, ConnpaySim, NewTransfer, Script, Settle};

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
pub(super) struct DaemonChild {
    child: Child,
    pub(super) admin: String,
    /// Poll windows it resumed at start.
    pub(super) resumed: u64,
    /// From spawn to ready.
    pub(super) ready_after: Duration,
}

impl DaemonChild {
    /// Stops the daemon with SIGTERM and waits: it flushes and exits.
    pub(super) fn stop(mut self) {
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

pub(super) fn write_config(
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

pub(super) fn spawn_daemon(config: &Path) -> Result<DaemonChild, String> {
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
