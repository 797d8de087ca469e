//! Shared helpers for the integration tests: a ConnPay sandbox and the
//! daemon on ephemeral loopback ports, a temp folder each, and waits on
//! conditions (never fixed sleeps).

#![allow(dead_code)]

pub mod pg;
pub mod proxy;

use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use payrecon::cli::client::AdminClient;
use payrecon::cli::demo::LoopbackConfig;
use payrecon::config::Config;
use payrecon::daemon::{self, Daemon, Listeners};
use payrecon::engine::{Engine, TrackRequest};
use payrecon::listen::admin::PaymentView;
use payrecon::providers::connpay::sim::{ConnpaySim, NewTransfer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const KEY_ENV: &str = "TEST_CONNPAY_CONTROL_KEY";
pub const CONTROL_KEY: &str = "test-merchant-control-key";

/// How long a condition may take before the test fails. Generous: it only
/// bounds a broken run; a passing run never waits for it.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polling settings for a test.
pub struct Polling {
    pub interval: (&'static str, &'static str),
    pub window: (&'static str, &'static str),
    pub max_in_flight: usize,
    pub request_timeout: &'static str,
    /// TOML tables appended to the config.
    pub tail: String,
    /// Lines for the `[callback]` table.
    pub callback: String,
    /// Lines for the `[store]` table (another engine).
    pub store: String,
}

impl Default for Polling {
    fn default() -> Self {
        Polling {
            interval: ("20ms", "40ms"),
            window: ("60s", "60s"),
            max_in_flight: 16,
            request_timeout: "2s",
            tail: String::new(),
            callback: String::new(),
            store: String::new(),
        }
    }
}

pub fn config_text(
    store: &std::path::Path,
    base_url: &str,
    p: &Polling,
    admin_extra: &str,
) -> String {
    LoopbackConfig {
        interval: (p.interval.0.into(), p.interval.1.into()),
        window: (p.window.0.into(), p.window.1.into()),
        max_in_flight: p.max_in_flight,
        request_timeout: p.request_timeout.into(),
        log_format: "json".into(),
        admin_extra: admin_extra.into(),
        callback_extra: p.callback.clone(),
        tail: p.tail.clone(),
        key_env: KEY_ENV.into(),
    }
    .render(store, base_url)
    .replacen("[store]\n", &format!("[store]\n{}\n", p.store), 1)
}

/// Writes a config for the sandbox at `base_url` to `dir/payrecon.toml`,
/// with the store in `dir/store`; returns the file's path.
pub fn write_config(
    dir: &std::path::Path,
    base_url: &str,
    p: &Polling,
    admin_extra: &str,
) -> std::path::PathBuf {
    let path = dir.join("payrecon.toml");
    std::fs::write(
        &path,
        config_text(&dir.join("store"), base_url, p, admin_extra),
    )
    .expect("config written");
    path
}

pub async fn start_sim(cancel: &CancellationToken) -> ConnpaySim {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    ConnpaySim::start(l, CONTROL_KEY, cancel.child_token())
}

/// The sandbox and an in-process daemon.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub sim: ConnpaySim,
    pub engine: Arc<Engine>,
    pub admin: AdminClient,
    pub callback_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub cancel: CancellationToken,
    daemon: Option<Daemon>,
    /// Whether `stop` ends the sandbox too (not when others share it).
    owns_sim: bool,
}

impl Harness {
    pub async fn start(p: Polling) -> Harness {
        Harness::start_with(p, "", HashMap::new()).await
    }

    pub async fn start_with(
        p: Polling,
        extra_admin: &str,
        env: HashMap<String, String>,
    ) -> Harness {
        let cancel = CancellationToken::new();
        let sim = start_sim(&cancel).await;
        Harness::start_on(p, extra_admin, env, sim, cancel).await
    }

    /// A daemon polling a sandbox the caller started and stops (several
    /// daemons on one sandbox: instances sharing a database).
    pub async fn start_on_sim(sim: &ConnpaySim, p: Polling) -> Harness {
        let mut h =
            Harness::start_on(p, "", HashMap::new(), sim.clone(), CancellationToken::new()).await;
        h.owns_sim = false;
        h
    }

    async fn start_on(
        p: Polling,
        extra_admin: &str,
        mut env: HashMap<String, String>,
        sim: ConnpaySim,
        cancel: CancellationToken,
    ) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let text = config_text(&dir.path().join("store"), &sim.base_url(), &p, extra_admin);
        env.insert(KEY_ENV.into(), CONTROL_KEY.into());
        let config = Config::parse("test config", &text, &env).unwrap();
        let listeners = Listeners::bind(&config).await.unwrap();
        let d = daemon::start(&config, listeners, cancel.clone())
            .await
            .unwrap();
        sim.set_callback_url(&format!("http://{}/callback/connpay", d.callback_addr));
        Harness {
            admin: AdminClient::new(&format!("http://{}", d.admin_addr), None),
            engine: d.engine.clone(),
            callback_addr: d.callback_addr,
            admin_addr: d.admin_addr,
            sim,
            dir,
            cancel,
            daemon: Some(d),
            owns_sim: true,
        }
    }

    /// Creates the transfer in the sandbox and tracks it; returns its id.
    pub async fn track(&self, t: &NewTransfer) -> String {
        self.sim.add(t.clone());
        self.admin
            .track(&track_request(t))
            .await
            .unwrap()
            .payment
            .id
    }

    pub async fn get(&self, id: &str) -> PaymentView {
        self.admin.get(id).await.unwrap()
    }

    /// Waits until the payment's poll window has closed: from then on only
    /// a callback (or a sweep) can move its state.
    pub async fn window_closed(&self, id: &str) {
        wait_until("the poll window closed", || async {
            self.get(id).await.payment.window.is_some_and(|w| !w.open)
        })
        .await;
    }

    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(d) = self.daemon.take() {
            d.wait().await;
        }
        if self.owns_sim {
            self.sim.shutdown().await;
        }
    }
}

pub fn track_request(t: &NewTransfer) -> TrackRequest {
    TrackRequest {
        provider: "connpay".into(),
        keys: t.keys(),
        amount_minor: Some(t.amount_centis),
        currency: Some(t.currency.clone()),
    }
}

/// Waits until an action is final or unknown, and returns it.
pub async fn settled(admin: &AdminClient, id: &str) -> payrecon::action::Action {
    use payrecon::action::ActionState;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let a = admin.get_action(id).await.unwrap();
        if a.state.is_final() || a.state == ActionState::Unknown {
            return a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "action never settled: {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `cond` holds, checking every few milliseconds.
pub async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A signed ConnPay callback query string, without amount or currency
/// (both optional and unsigned); see [`with_amount`].
pub fn callback_query(
    status: &str,
    kind: &str,
    orderid: &str,
    client_orderid: &str,
    key: &str,
) -> String {
    let control = payrecon::providers::connpay::control(status, orderid, client_orderid, key);
    format!("status={status}&type={kind}&orderid={orderid}&client_orderid={client_orderid}&merchant_order={client_orderid}&control={control}")
}

/// The real `payrecon` binary running `run --config`; killed when dropped
/// so a failing test leaves nothing behind.
pub struct Process {
    pub child: Child,
    pub admin: AdminClient,
    pub admin_url: String,
    pub callback_url: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        if !std::thread::panicking() {
            // A panic inside the daemon is a defect even where the test's
            // own checks pass (it is caught, and the request or unit of work
            // it broke is retried or fails elsewhere).
            let panicked: Vec<&String> = logs.iter().filter(|l| is_panic_line(l)).collect();
            assert!(panicked.is_empty(), "the daemon panicked: {panicked:#?}");
        } else {
            // A failed test shows what the daemon logged last: a rare
            // failure is then explained by its first occurrence.
            eprintln!(
                "--- the daemon's last {} log lines ---",
                logs.len().min(200)
            );
            for line in logs.iter().rev().take(200).rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A log line of a caught panic: `alert=panic` from
/// `payrecon::guard::install_panic_hook`, or a worker's `*_panicked` alert.
fn is_panic_line(line: &str) -> bool {
    payrecon::metrics::ALERTS
        .iter()
        .filter(|a| **a == "panic" || a.ends_with("_panicked"))
        .any(|a| line.contains(&format!("\"alert\":\"{a}\"")))
}

impl Process {
    /// Starts the binary with the ConnPay key and `env`, collects its JSON
    /// log lines into `logs`, and returns once it has logged "ready".
    pub fn spawn(
        config: &std::path::Path,
        env: &[(&str, &str)],
        logs: Arc<Mutex<Vec<String>>>,
    ) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_payrecon"))
            .args(["run", "--config"])
            .arg(config)
            .env(KEY_ENV, CONTROL_KEY)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("payrecon starts");
        let stderr = child.stderr.take().unwrap();
        let kept = logs.clone();
        let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "payrecon ready" {
                        let _ = tx.send(v);
                    }
                }
                logs.lock().unwrap().push(line);
            }
        });
        let ready = rx.recv_timeout(PATIENCE).expect("daemon logs ready");
        let field = |k: &str| ready[k].as_str().unwrap().to_string();
        Process {
            admin: AdminClient::new(&format!("http://{}", field("admin_addr")), None),
            admin_url: format!("http://{}", field("admin_addr")),
            callback_url: format!("http://{}/callback/connpay", field("callback_addr")),
            child,
            logs: kept,
        }
    }

    /// Sends a signal by name (`TERM`, `HUP`, ...).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -s {name} failed");
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn exit_code(&mut self) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "process never exited"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The ConnPay harness with a MyFatoorah sandbox beside it: `tables` are
/// extra config tables, `polling` lines of MyFatoorah's polling table
/// (windows are a minute long).
pub async fn with_myfatoorah(
    tables: &str,
    polling: &str,
) -> (Harness, payrecon::providers::myfatoorah::sim::MyfatoorahSim) {
    let mf = payrecon::providers::myfatoorah::sim::MyfatoorahSim::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        "mf-token",
        tokio_util::sync::CancellationToken::new(),
    );
    let tail = format!(
        "{tables}\n[providers.myfatoorah]\nbase_url = \"{}\"\ntoken_env = \"TEST_MF_TOKEN\"\n\n[providers.myfatoorah.polling]\npoll_window_min = \"60s\"\npoll_window_max = \"60s\"\n{polling}",
        mf.base_url()
    );
    let h = Harness::start_with(
        Polling {
            tail,
            ..Default::default()
        },
        "",
        std::collections::HashMap::from([("TEST_MF_TOKEN".to_string(), "mf-token".to_string())]),
    )
    .await;
    (h, mf)
}

/// An invoice in the MyFatoorah sandbox, tracked.
pub async fn track_invoice(
    h: &Harness,
    mf: &payrecon::providers::myfatoorah::sim::MyfatoorahSim,
    id: i64,
) {
    mf.add_invoice(id, 1000);
    track_added_invoice(h, id).await;
}

/// Tracks an invoice already in the sandbox (1.000 KWD); its payment id.
pub async fn track_added_invoice(h: &Harness, id: i64) -> String {
    h.engine
        .track(TrackRequest {
            provider: "myfatoorah".into(),
            keys: payrecon::model::Keys::from([("invoice_id".to_string(), id.to_string())]),
            amount_minor: Some(1000),
            currency: Some("KWD".into()),
        })
        .await
        .unwrap()
        .payment
        .id
}

/// A callback query with an (unsigned) amount and currency added.
pub fn with_amount(query: &str, amount: &str, currency: &str) -> String {
    let amount: String = form_urlencoded::byte_serialize(amount.as_bytes()).collect();
    format!("{query}&amount={amount}&currency={currency}")
}

/// An in-process daemon on the config `text` with `env` for its secrets,
/// and a client of its admin API.
pub async fn start_daemon(
    text: &str,
    env: &HashMap<String, String>,
    cancel: &CancellationToken,
) -> (Daemon, AdminClient) {
    let config = Config::parse("t", text, env).unwrap();
    let listeners = Listeners::bind(&config).await.unwrap();
    let d = daemon::start(&config, listeners, cancel.clone())
        .await
        .unwrap();
    let admin = AdminClient::new(&format!("http://{}", d.admin_addr), None);
    (d, admin)
}

/// `GET /metrics` on an admin listener, as a scraper sees it.
pub async fn scrape(admin_addr: SocketAddr) -> String {
    reqwest::get(format!("http://{admin_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
