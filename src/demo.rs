//! `payrecon demo`: a ConnPay sandbox and the real daemon on loopback, with
//! the store in a temporary folder, tracking a few dozen transfers with
//! mixed scripts and faults. It prints each final state as it is learned
//! and ends with a summary; success means every transfer reached the state
//! the sandbox knows to be true.
//!
//! Time runs at a tenth of ConnPay's advice: polls every 0.3-0.5 s for 4-5 s
//! instead of 3-5 s for 2-3 minutes, so the demo takes seconds.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::client::AdminClient;
use crate::config::Config;
use crate::daemon::{self, Listeners};
use crate::engine::TrackRequest;
use crate::model::Source;
use crate::sim::connpay::{CallbackMode, ConnpaySim, Faults, NewTransfer, Outcome, Script, Settle};
use crate::state::State;

/// Longest the demo waits for every transfer to settle.
const DEMO_DEADLINE: Duration = Duration::from_secs(90);

const KEY_ENV: &str = "PAYRECON_DEMO_CONTROL_KEY";

/// A config for a daemon on loopback against a sandbox: the demo, the
/// tests and the benchmarks all start the daemon through the same loader
/// and checks as production.
#[derive(Debug, Clone)]
pub struct LoopbackConfig {
    pub interval: (String, String),
    pub window: (String, String),
    pub max_in_flight: usize,
    pub request_timeout: String,
    /// `text` or `json`.
    pub log_format: String,
    /// Extra lines for the `[admin]` table.
    pub admin_extra: String,
    /// Environment variable that holds the control key.
    pub key_env: String,
}

impl Default for LoopbackConfig {
    /// The demo's settings: a tenth of ConnPay's timescale.
    fn default() -> Self {
        LoopbackConfig {
            interval: ("300ms".into(), "500ms".into()),
            window: ("4s".into(), "5s".into()),
            max_in_flight: 16,
            request_timeout: "2s".into(),
            log_format: "text".into(),
            admin_extra: String::new(),
            key_env: KEY_ENV.into(),
        }
    }
}

impl LoopbackConfig {
    pub fn render(&self, store: &std::path::Path, base_url: &str) -> String {
        format!(
            r#"
[store]
path = "{store}"

[callback]
listen = "127.0.0.1:0"
max_body_bytes = 4096
header_read_timeout = "300ms"

[admin]
listen = "127.0.0.1:0"
{admin_extra}

[log]
format = "{log_format}"

[providers.connpay]
base_url = "{base_url}"
control_key_env = "{key_env}"

[providers.connpay.polling]
poll_interval_min = "{i0}"
poll_interval_max = "{i1}"
poll_window_min = "{w0}"
poll_window_max = "{w1}"
max_in_flight = {max_in_flight}
request_timeout = "{request_timeout}"
"#,
            store = store.display(),
            admin_extra = self.admin_extra,
            log_format = self.log_format,
            key_env = self.key_env,
            i0 = self.interval.0,
            i1 = self.interval.1,
            w0 = self.window.0,
            w1 = self.window.1,
            max_in_flight = self.max_in_flight,
            request_timeout = self.request_timeout,
        )
    }
}

/// The scripts the demo cycles through, with a label for each.
fn scripts() -> Vec<(&'static str, Script)> {
    let s = Script::default;
    vec![
        (
            "approved on the 2nd poll",
            Script {
                settle: Settle::AfterPolls(2),
                ..s()
            },
        ),
        (
            "declined on the 3rd poll",
            Script {
                outcome: Outcome::Declined,
                settle: Settle::AfterPolls(3),
                ..s()
            },
        ),
        (
            "3-D Secure redirect, then approved",
            Script {
                redirect: true,
                settle: Settle::AfterPolls(4),
                ..s()
            },
        ),
        (
            "approved after its window",
            Script {
                settle: Settle::AfterMs(6500),
                ..s()
            },
        ),
        (
            "declined after its window",
            Script {
                outcome: Outcome::Declined,
                settle: Settle::AfterMs(7000),
                ..s()
            },
        ),
        (
            "after its window, callback sent 3 times",
            Script {
                settle: Settle::AfterMs(6000),
                callback: CallbackMode::Duplicate,
                ..s()
            },
        ),
        (
            "after its window, stale callback last",
            Script {
                settle: Settle::AfterMs(5800),
                callback: CallbackMode::OutOfOrder,
                ..s()
            },
        ),
        (
            "approved, then reversed",
            Script {
                settle: Settle::AfterPolls(2),
                reversal: true,
                ..s()
            },
        ),
        (
            "approved, callback never comes",
            Script {
                settle: Settle::AfterPolls(3),
                callback: CallbackMode::Never,
                ..s()
            },
        ),
        (
            "approved, callback 1 s late",
            Script {
                settle: Settle::AfterPolls(2),
                callback_delay_ms: 1000,
                ..s()
            },
        ),
        (
            "after its window, then reversed",
            Script {
                settle: Settle::AfterMs(6200),
                reversal: true,
                ..s()
            },
        ),
        (
            "approved on the 1st poll",
            Script {
                settle: Settle::AfterPolls(1),
                ..s()
            },
        ),
    ]
}

/// Runs the demo; `Ok(true)` when every transfer settled as it should.
pub async fn run(count: usize) -> Result<bool, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temporary folder: {e}"))?;
    let cancel = CancellationToken::new();
    let key = format!("demo-{:016x}", fastrand::u64(..));
    let sim_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let sim = ConnpaySim::start(sim_listener, &key, cancel.child_token());
    sim.set_faults(Faults {
        latency_ms: (5, 40),
        error_rate: 0.05,
        drop_rate: 0.03,
    });

    let text = LoopbackConfig::default().render(&dir.path().join("store"), &sim.base_url());
    let env = HashMap::from([(KEY_ENV.to_string(), key)]);
    let config = Config::parse("demo config", &text, &env).map_err(|e| e.to_string())?;
    let listeners = Listeners::bind(&config).await.map_err(|e| e.to_string())?;
    let d = daemon::start(&config, listeners, cancel.clone())
        .await
        .map_err(|e| e.to_string())?;
    sim.set_callback_url(&format!("http://{}/callback/connpay", d.callback_addr));
    let engine = d.engine.clone();
    let admin = AdminClient::new(&format!("http://{}", d.admin_addr), None);

    println!(
        "payrecon demo: ConnPay sandbox on {}, daemon callbacks on {}, admin on {}",
        sim.addr(),
        d.callback_addr,
        d.admin_addr
    );
    println!(
        "store in {}; sandbox faults: 5-40 ms latency, 5% 503s, 3% dropped connections",
        dir.path().display()
    );
    println!("polling every 0.3-0.5 s for 4-5 s (ConnPay's 3-5 s for 2-3 min, at 1/10 scale)\n");

    let scripts = scripts();
    let mut labels = HashMap::new();
    let started = Instant::now();
    for i in 0..count {
        let (label, script) = scripts[i % scripts.len()].clone();
        let t = NewTransfer::new(&format!("inv-{:04}", i + 1), script);
        sim.add(t.clone());
        let req = TrackRequest {
            provider: "connpay".into(),
            keys: t.keys(),
            amount_minor: Some(t.amount_centis),
            currency: Some(t.currency.clone()),
        };
        let view = admin.track(&req).await.map_err(|e| e.to_string())?;
        labels.insert(view.payment.id.clone(), (t.invoice_id.clone(), label));
    }
    println!("tracked {count} transfers\n");
    println!(
        "  {:<9} {:<10} {:<9} {:>7}  script",
        "invoice", "state", "learned", "after"
    );

    let mut shown: HashMap<String, State> = HashMap::new();
    let mut done = false;
    while started.elapsed() < DEMO_DEADLINE {
        let page = admin
            .list(None, Some("connpay"), Some(1000), None)
            .await
            .map_err(|e| e.to_string())?;
        let mut settled = 0;
        for v in &page.payments {
            let p = &v.payment;
            let (inv, label) = &labels[&p.id];
            if p.state.is_final() && shown.get(&p.id) != Some(&p.state) {
                let (source, at) = if p.state == State::Reversed {
                    (Source::Callback, p.updated_ms)
                } else {
                    (
                        p.final_source.unwrap_or(Source::Poll),
                        p.final_ms.unwrap_or(p.updated_ms),
                    )
                };
                let secs = at.saturating_sub(p.created_ms) as f64 / 1000.0;
                println!(
                    "  {inv:<9} {:<10} {:<9} {secs:>6.1}s  {label}",
                    p.state.as_str(),
                    source.as_str()
                );
                shown.insert(p.id.clone(), p.state);
            }
            if sim.truth(inv).and_then(|t| t.expected) == Some(p.state) {
                settled += 1;
            }
        }
        if settled == count {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Summary, from the daemon's own records.
    let page = admin
        .list(None, None, Some(1000), None)
        .await
        .map_err(|e| e.to_string())?;
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_source: BTreeMap<&str, usize> = BTreeMap::new();
    let mut wrong = vec![];
    for v in &page.payments {
        let p = &v.payment;
        *by_state.entry(p.state.as_str()).or_default() += 1;
        *by_source
            .entry(p.final_source.map(|s| s.as_str()).unwrap_or("not final"))
            .or_default() += 1;
        let (inv, _) = &labels[&p.id];
        let truth = sim.truth(inv).and_then(|t| t.expected);
        if truth != Some(p.state) {
            wrong.push(format!(
                "{inv}: payrecon says {}, sandbox says {:?}",
                p.state, truth
            ));
        }
    }
    let c = &engine.counters;
    use std::sync::atomic::Ordering::Relaxed;
    println!("\nsummary after {:.1}s", started.elapsed().as_secs_f64());
    println!("  final states:        {}", fmt_counts(&by_state));
    println!("  first learned from:  {}", fmt_counts(&by_source));
    println!(
        "  polls: {} answered, {} gave up after retries | callbacks: {} received, {} duplicates ignored",
        c.polls_ok.load(Relaxed), c.polls_failed.load(Relaxed), c.callbacks_received.load(Relaxed), c.callbacks_duplicate.load(Relaxed)
    );
    println!("  state transitions:   {}", c.transitions.load(Relaxed));
    let ok = done && wrong.is_empty();
    if ok {
        println!("\nall {count} transfers reached their true state");
    } else {
        for w in &wrong {
            println!("  MISMATCH {w}");
        }
        println!(
            "\n{} of {count} transfers did not reach their true state",
            wrong.len()
        );
    }
    cancel.cancel();
    d.wait().await;
    sim.shutdown().await;
    Ok(ok)
}

fn fmt_counts(m: &BTreeMap<&str, usize>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
