//! `payrecon demo`: a ConnPay sandbox and the real daemon on loopback, with
//! the store in a temporary folder, tracking a few dozen transfers with
//! mixed scripts and faults. It prints each final state as it is learned
//! and ends with a summary; success means every transfer reached the state
//! the sandbox knows to be true.
//!
//! Time runs at a tenth of ConnPay's advice: polls every 0.3-0.5 s for 4-5 s
//! instead of 3-5 s for 2-3 minutes, so the demo takes seconds.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::client::AdminClient;
use crate::config::Config;
use crate::daemon::{self, Listeners};
use crate::engine::{PollOutcome, TrackRequest};
use crate::model::Source;
use crate::providers::connpay::sim::{
    CallbackMode, ConnpaySim, Faults, NewTransfer, Outcome, Script, Settle,
};
use crate::state::State;

/// Longest the demo waits for every transfer to settle.
const DEMO_DEADLINE: Duration = Duration::from_secs(90);

const KEY_ENV: &str = "PAYRECON_DEMO_CONTROL_KEY";
const NOTIFY_ENV: &str = "PAYRECON_DEMO_NOTIFY_SECRET";

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
    /// Extra lines for the `[callback]` table.
    pub callback_extra: String,
    /// Extra tables appended at the end (`[circuit]`, ...).
    pub tail: String,
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
            callback_extra: String::new(),
            tail: String::new(),
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
{callback_extra}

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

{tail}
"#,
            tail = self.tail,
            store = store.display(),
            admin_extra = self.admin_extra,
            callback_extra = self.callback_extra,
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
            "approved, then a reversal (unsigned: held)",
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
            "after its window, then a reversal (held)",
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

/// Secrets the demo's sandboxes and daemon share, by environment variable.
const DEMO_SECRETS: [(&str, &str); 6] = [
    ("PAYRECON_DEMO_MF_TOKEN", "demo-mf-token"),
    ("PAYRECON_DEMO_REST_KEY", "demo-rest-key"),
    ("PAYRECON_DEMO_CFI_ID", "DEMOCLIENT"),
    ("PAYRECON_DEMO_CFI_SECRET", "demo-cfi-secret"),
    ("PAYRECON_DEMO_CRM_USER", "demo-ops"),
    ("PAYRECON_DEMO_CRM_PASS", "demo-crm-password"),
];

/// The four action providers' sandboxes.
struct ActionSandboxes {
    mf: crate::providers::myfatoorah::sim::MyfatoorahSim,
    rest: crate::providers::rest_status::sim::RestStatusSim,
    cfi: crate::providers::connectfi::sim::ConnectfiSim,
    crm: crate::providers::crm::sim::CrmSim,
}

impl ActionSandboxes {
    async fn start(cancel: &CancellationToken) -> Result<ActionSandboxes, String> {
        let l = || async {
            TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| e.to_string())
        };
        Ok(ActionSandboxes {
            mf: crate::providers::myfatoorah::sim::MyfatoorahSim::start(
                l().await?,
                DEMO_SECRETS[0].1,
                cancel.child_token(),
            ),
            rest: crate::providers::rest_status::sim::RestStatusSim::start(
                l().await?,
                DEMO_SECRETS[1].1,
                cancel.child_token(),
            ),
            cfi: crate::providers::connectfi::sim::ConnectfiSim::start(
                l().await?,
                DEMO_SECRETS[2].1,
                DEMO_SECRETS[3].1,
                Duration::from_secs(3600),
                cancel.child_token(),
            ),
            crm: crate::providers::crm::sim::CrmSim::start(
                l().await?,
                DEMO_SECRETS[4].1,
                DEMO_SECRETS[5].1,
                Duration::from_secs(3600),
                cancel.child_token(),
            ),
        })
    }

    /// Config sections for the four providers.
    fn config(&self) -> String {
        format!(
            r#"
[providers.myfatoorah]
base_url = "{}"
token_env = "{}"

[providers.myfatoorah.polling]
poll_interval_min = "300ms"
poll_interval_max = "500ms"
poll_window_min = "4s"
poll_window_max = "5s"

[providers.rest_status]
base_url = "{}"
api_key_env = "{}"

[providers.connectfi]
base_url = "{}"
client_id_env = "{}"
client_secret_env = "{}"

[providers.crm]
base_url = "{}"
username_env = "{}"
password_env = "{}"

[actions]
deadline = "30s"
"#,
            self.mf.base_url(),
            DEMO_SECRETS[0].0,
            self.rest.base_url(),
            DEMO_SECRETS[1].0,
            self.cfi.base_url(),
            DEMO_SECRETS[2].0,
            DEMO_SECRETS[3].0,
            self.crm.base_url(),
            DEMO_SECRETS[4].0,
            DEMO_SECRETS[5].0,
        )
    }

    async fn shutdown(&self) {
        self.mf.shutdown().await;
        self.rest.shutdown().await;
        self.cfi.shutdown().await;
        self.crm.shutdown().await;
    }
}

/// One outbound action of the demo and what it should end as.
struct DemoAction {
    label: &'static str,
    provider: &'static str,
    keys: Vec<(&'static str, String)>,
    amount: Option<(i64, &'static str)>,
    request: crate::action::ActionRequest,
    expected: crate::action::ActionState,
}

/// Sends status changes to the four action providers, with faults, and
/// checks each ends as expected and each provider applied it exactly once.
async fn run_actions(admin: &AdminClient, sb: &ActionSandboxes) -> Result<bool, String> {
    use crate::action::{ActionRequest, ActionState, Trust};
    use crate::providers::{
        connectfi::sim as connectfi, crm::sim as crm, myfatoorah::sim as myfatoorah,
        rest_status::sim as rest_status,
    };
    sb.mf.add_invoice(9001, 250_000);
    sb.mf.add_invoice(9002, 80_000);
    sb.mf.add_invoice(9003, 40_000);
    sb.cfi.add_link("DemoLink01", "SentToPay");
    sb.cfi.add_link("DemoLink02", "SentToPay");
    sb.crm.add_payment("D-500", "DRAFT");
    sb.crm.add_payment("D-501", "POSTED");
    let trust = Trust {
        seed: "demo-seed".into(),
        value: "c10cd9445121e4ed".into(),
        alt_value: "demo-alt".into(),
    };
    let uuid = |n: u32| format!("b8f2d832-72e2-4e47-8b8a-{n:012x}");
    let s = ActionState::Succeeded;
    let actions = vec![
        DemoAction {
            label: "capture 100.000 of 250.000 KWD",
            provider: "myfatoorah",
            keys: vec![("invoice_id", "9001".into())],
            amount: Some((250_000, "KWD")),
            request: ActionRequest::Capture {
                amount: "100.000".into(),
            },
            expected: s,
        },
        DemoAction {
            label: "release 80.000 KWD",
            provider: "myfatoorah",
            keys: vec![("invoice_id", "9002".into())],
            amount: Some((80_000, "KWD")),
            request: ActionRequest::Release {
                amount: Some("80.000".into()),
            },
            expected: s,
        },
        DemoAction {
            label: "capture; answer dropped after applying",
            provider: "myfatoorah",
            keys: vec![("invoice_id", "9003".into())],
            amount: Some((40_000, "KWD")),
            request: ActionRequest::Capture {
                amount: "40".into(),
            },
            expected: s,
        },
        DemoAction {
            label: "update to completed",
            provider: "rest_status",
            keys: vec![("payment_id", uuid(1))],
            amount: None,
            request: ActionRequest::UpdateStatus {
                status: "completed".into(),
                trust: trust.clone(),
            },
            expected: s,
        },
        DemoAction {
            label: "update; answer lost (no inquiry)",
            provider: "rest_status",
            keys: vec![("payment_id", uuid(2))],
            amount: None,
            request: ActionRequest::UpdateStatus {
                status: "cancelled".into(),
                trust,
            },
            expected: ActionState::Unknown,
        },
        DemoAction {
            label: "set Completed",
            provider: "connectfi",
            keys: vec![("transaction_id", "DemoLink01".into())],
            amount: None,
            request: ActionRequest::SetStatus {
                status: "Completed".into(),
                description: Some("paid by ACH".into()),
                manual_status: None,
            },
            expected: s,
        },
        DemoAction {
            label: "set Declined after the token expired",
            provider: "connectfi",
            keys: vec![("transaction_id", "DemoLink02".into())],
            amount: None,
            request: ActionRequest::SetStatus {
                status: "Declined".into(),
                description: None,
                manual_status: None,
            },
            expected: s,
        },
        DemoAction {
            label: "reject a DRAFT payment",
            provider: "crm",
            keys: vec![("reference_number", "D-500".into())],
            amount: None,
            request: ActionRequest::Reject {
                rejection_reason: [(
                    "name".to_string(),
                    "Reject Due to Business Request".to_string(),
                )]
                .into(),
                fields_set: None,
            },
            expected: s,
        },
        DemoAction {
            label: "reject a POSTED payment (CRM.COM refuses)",
            provider: "crm",
            keys: vec![("reference_number", "D-501".into())],
            amount: None,
            request: ActionRequest::Reject {
                rejection_reason: [("id".to_string(), "R1".to_string())].into(),
                fields_set: None,
            },
            expected: ActionState::Failed,
        },
    ];
    println!("\noutbound actions: sent once, retried only where safe\n");
    println!(
        "  {:<12} {:<44} {:<10} {:>8}  note",
        "provider", "action", "state", "attempts"
    );
    let mut ok = true;
    for (i, a) in actions.iter().enumerate() {
        let req = TrackRequest {
            provider: a.provider.into(),
            keys: a
                .keys
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            amount_minor: a.amount.map(|x| x.0),
            currency: a.amount.map(|x| x.1.to_string()),
        };
        let pay = admin
            .track(&req)
            .await
            .map_err(|e| e.to_string())?
            .payment
            .id;
        match i {
            2 => sb.mf.set_faults(myfatoorah::Faults {
                apply_then_drop: true,
                ..Default::default()
            }),
            4 => sb.rest.set_faults(rest_status::Faults {
                apply_then_drop: true,
                ..Default::default()
            }),
            6 => sb.cfi.expire_tokens(),
            _ => {}
        }
        let queued = admin
            .action(&pay, &a.request, Some(&format!("demo-{i}")))
            .await
            .map_err(|e| e.to_string())?;
        let started = Instant::now();
        let done = loop {
            let x = admin
                .get_action(&queued.id)
                .await
                .map_err(|e| e.to_string())?;
            if x.state.is_final()
                || x.state == ActionState::Unknown
                || started.elapsed() > Duration::from_secs(30)
            {
                break x;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut note = match (i, &done.error) {
            (2, _) => "settled by GetPaymentStatus, not resent".to_string(),
            (6, _) => "token renewed; not a failed attempt".to_string(),
            (_, Some(e)) if done.state == ActionState::Failed => e.chars().take(60).collect(),
            _ => String::new(),
        };
        if done.state == ActionState::Unknown {
            // An operator checks with the provider, then settles it.
            let applied = sb.rest.changes(&uuid(2)) == ["cancelled"];
            let r = crate::listen::admin::Resolve {
                state: if applied { s } else { ActionState::Failed },
                note: Some("checked with the provider".into()),
            };
            admin
                .resolve_action(&done.id, &r)
                .await
                .map_err(|e| e.to_string())?;
            note = format!(
                "alert raised; operator resolved it as {}",
                if applied { "succeeded" } else { "failed" }
            );
        }
        let good = done.state == a.expected;
        ok &= good;
        println!(
            "  {:<12} {:<44} {:<10} {:>8}  {note}{}",
            a.provider,
            a.label,
            format!("{:?}", done.state).to_lowercase(),
            done.attempts,
            if good { "" } else { "  UNEXPECTED" }
        );
    }
    // Each provider applied each change exactly once.
    let once = [9001, 9002, 9003].iter().all(|i| sb.mf.operations(*i) == 1)
        && sb.rest.changes(&uuid(1)).len() == 1
        && sb.rest.changes(&uuid(2)).len() == 1
        && sb.cfi.manual_changes("DemoLink01") == 1
        && sb.cfi.manual_changes("DemoLink02") == 1
        && sb.crm.state("D-500") == Some(("REJECTED".to_string(), 1))
        && sb.crm.state("D-501").map(|s| s.1) == Some(0);
    println!(
        "  every provider applied each change exactly once: {}",
        if once { "yes" } else { "NO" }
    );
    let _ = (connectfi::Faults::default(), crm::Faults::default());
    Ok(ok && once)
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

    let sandboxes = ActionSandboxes::start(&cancel).await?;
    // The platform's receiver of notifications; it refuses the first few.
    let notify_key: Vec<u8> = (0..32).map(|_| fastrand::u8(..)).collect();
    let platform = crate::sim::platform::PlatformSim::start(
        TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?,
        notify_key.clone(),
        cancel.child_token(),
    );
    platform.fail_next(3);
    let text = LoopbackConfig::default().render(&dir.path().join("store"), &sim.base_url())
        + &sandboxes.config()
        + &format!(
            "\n[notify]\nurl = \"{}\"\nsecret_env = \"{NOTIFY_ENV}\"\nmin_delay = \"50ms\"\nmax_delay = \"200ms\"\n",
            platform.url()
        );
    let mut env = HashMap::from([
        (KEY_ENV.to_string(), key),
        (
            NOTIFY_ENV.to_string(),
            format!("whsec_{}", B64.encode(&notify_key)),
        ),
    ]);
    env.extend(
        DEMO_SECRETS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
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
        c.polls(PollOutcome::Ok), c.polls(PollOutcome::Failed), c.callbacks_received.load(Relaxed), c.callbacks_duplicate.load(Relaxed)
    );
    println!("  state transitions:   {}", c.transitions.load(Relaxed));
    for w in &wrong {
        println!("  MISMATCH {w}");
    }
    let transfers_ok = done && wrong.is_empty();
    let actions_ok = run_actions(&admin, &sandboxes).await?;
    let notices_ok = check_notifications(&engine, &admin, &platform).await?;
    let ok = transfers_ok && actions_ok && notices_ok;
    println!();
    match (transfers_ok, actions_ok) {
        (true, true) if notices_ok => println!("all {count} ConnPay transfers reached their true state, every action ended as expected, and the platform was told of every change"),
        (true, true) => println!("all {count} ConnPay transfers reached their true state and every action ended as expected, but a notification went wrong"),
        (false, _) => println!("{} of {count} ConnPay transfers did not reach their true state", wrong.len().max(1)),
        (true, false) => println!("all {count} ConnPay transfers reached their true state, but an action did not end as expected"),
    }
    cancel.cancel();
    d.wait().await;
    sim.shutdown().await;
    sandboxes.shutdown().await;
    platform.shutdown().await;
    Ok(ok)
}

/// Waits for the notification outbox to drain, then checks what the
/// platform got: every signature verified, every final payment announced,
/// and each payment's events in order (each `from` is the previous `to`).
async fn check_notifications(
    engine: &crate::engine::Engine,
    admin: &AdminClient,
    platform: &crate::sim::platform::PlatformSim,
) -> Result<bool, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while engine.store().notice_backlog() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received = platform.received();
    let delivered = platform.delivered();
    let mut problems = vec![];
    if engine.store().notice_backlog() > 0 {
        problems.push(format!(
            "{} notifications still queued",
            engine.store().notice_backlog()
        ));
    }
    if received.iter().any(|r| !r.verified) {
        problems.push("a signature did not verify".into());
    }
    let mut last: HashMap<String, String> = HashMap::new();
    for r in &delivered {
        let d = &r.body["data"];
        let id = d["payment_id"].as_str().unwrap_or_default().to_string();
        let from = d["from"].as_str().unwrap_or_default().to_string();
        let expected_from = last.get(&id).cloned().unwrap_or_else(|| "pending".into());
        if from != expected_from {
            problems.push(format!("{id}: event from {from} after {expected_from}"));
        }
        last.insert(id, d["to"].as_str().unwrap_or_default().to_string());
    }
    let page = admin
        .list(None, None, Some(1000), None)
        .await
        .map_err(|e| e.to_string())?;
    for v in &page.payments {
        let p = &v.payment;
        if p.state.is_final() && last.get(&p.id).map(String::as_str) != Some(p.state.as_str()) {
            problems.push(format!(
                "{} is {} but the platform was not told",
                p.id, p.state
            ));
        }
    }
    let retries = received.len() - delivered.len();
    println!(
        "  notifications:       {} delivered to the platform ({retries} refused and retried with the same webhook-id), signed, in order per payment",
        delivered.len()
    );
    for p in &problems {
        println!("  NOTIFICATION PROBLEM {p}");
    }
    Ok(problems.is_empty())
}

fn fmt_counts(m: &BTreeMap<&str, usize>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
