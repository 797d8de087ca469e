//! `payrecon demo`: the real daemon on loopback with the store in a
//! temporary folder, and every registered provider's sandbox with its
//! scenes. Payments that settle on their own (ConnPay's transfers, on mixed
//! scripts and faults, `Plugin::demo_payments`) are tracked and printed as
//! their final states are learned, until payrecon knows what each sandbox
//! knows; then each provider's scripted actions run (`Plugin::demo`,
//! `cli/demo/actions.rs`), and the platform's notifications are checked.
//! Success means every payment reached its true state, every action ended
//! as expected and the platform was told of every change.

mod actions;
mod loopback;

use actions::{run_actions, ActionSandboxes};
pub use loopback::LoopbackConfig;

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
use crate::state::State;

/// Longest the demo waits for every transfer to settle.
const DEMO_DEADLINE: Duration = Duration::from_secs(90);

const NOTIFY_ENV: &str = "PAYRECON_DEMO_NOTIFY_SECRET";

/// Runs the demo; `Ok(true)` when every payment settled as it should,
/// every action ended as expected and the platform heard of every change.
pub async fn run(count: usize) -> Result<bool, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temporary folder: {e}"))?;
    let cancel = CancellationToken::new();
    let mut settling = vec![];
    for p in crate::providers::REGISTRY {
        if let Some(start) = p.demo_payments {
            settling.push((p.id, start(cancel.child_token()).await?));
        }
    }
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
    let mut text = LoopbackConfig::default().render_base(&dir.path().join("store"));
    for (_, sb) in &settling {
        text.push_str(&sb.config());
    }
    text.push_str(&sandboxes.config());
    text.push_str(&format!(
        "\n[notify]\nurl = \"{}\"\nsecret_env = \"{NOTIFY_ENV}\"\nmin_delay = \"50ms\"\nmax_delay = \"200ms\"\n",
        platform.url()
    ));
    let mut env = HashMap::from([(
        NOTIFY_ENV.to_string(),
        format!("whsec_{}", B64.encode(&notify_key)),
    )]);
    for (_, sb) in &settling {
        env.extend(sb.secrets().into_iter().map(|(k, v)| (k.to_string(), v)));
    }
    env.extend(sandboxes.secrets());
    let config = Config::parse("demo config", &text, &env).map_err(|e| e.to_string())?;
    let listeners = Listeners::bind(&config).await.map_err(|e| e.to_string())?;
    let d = daemon::start(&config, listeners, cancel.clone())
        .await
        .map_err(|e| e.to_string())?;
    for (_, sb) in &settling {
        sb.callbacks_to(&format!("http://{}", d.callback_addr));
    }
    let engine = d.engine.clone();
    let admin = AdminClient::new(&format!("http://{}", d.admin_addr), None);

    println!(
        "payrecon demo: daemon callbacks on {}, admin on {}, store in {}",
        d.callback_addr,
        d.admin_addr,
        dir.path().display()
    );
    for (_, sb) in &settling {
        println!("{}", sb.describe());
    }
    println!();

    // Payment id -> (its sandbox, its name there, its script).
    let mut labels = HashMap::new();
    let started = Instant::now();
    for (i, (pid, sb)) in settling.iter().enumerate() {
        for p in sb.payments(count) {
            let req = TrackRequest {
                provider: pid.to_string(),
                keys: p.keys,
                amount_minor: p.amount.as_ref().map(|a| a.0),
                currency: p.amount.map(|a| a.1),
            };
            let view = admin.track(&req).await.map_err(|e| e.to_string())?;
            labels.insert(view.payment.id.clone(), (i, p.name, p.label));
        }
    }
    let total = labels.len();
    println!("tracked {total} payments\n");
    println!(
        "  {:<9} {:<10} {:<9} {:>7}  script",
        "payment", "state", "learned", "after"
    );
    let truth = |id: &str| {
        labels
            .get(id)
            .and_then(|(i, name, _)| settling[*i].1.truth(name))
    };

    let mut shown: HashMap<String, State> = HashMap::new();
    let mut done = false;
    // On a terminal: how many have settled so far, below the table.
    let bar = indicatif::ProgressBar::new(total as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("  {bar:30} {pos}/{len} settled ({elapsed})")
    {
        bar.set_style(style);
    }
    while started.elapsed() < DEMO_DEADLINE {
        let page = admin
            .list(None, None, Some(1000), None)
            .await
            .map_err(|e| e.to_string())?;
        let mut settled = 0;
        for v in &page.payments {
            let p = &v.payment;
            let Some((_, name, label)) = labels.get(&p.id) else {
                continue;
            };
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
                bar.suspend(|| {
                    println!(
                        "  {name:<9} {:<10} {:<9} {secs:>6.1}s  {label}",
                        p.state.as_str(),
                        source.as_str()
                    )
                });
                shown.insert(p.id.clone(), p.state);
            }
            if truth(&p.id) == Some(p.state) {
                settled += 1;
            }
        }
        bar.set_position(settled as u64);
        if settled == total {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish_and_clear();

    // Summary, from the daemon's own records.
    let page = admin
        .list(None, None, Some(1000), None)
        .await
        .map_err(|e| e.to_string())?;
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_source: BTreeMap<&str, usize> = BTreeMap::new();
    let mut wrong = vec![];
    for v in page
        .payments
        .iter()
        .filter(|v| labels.contains_key(&v.payment.id))
    {
        let p = &v.payment;
        *by_state.entry(p.state.as_str()).or_default() += 1;
        *by_source
            .entry(p.final_source.map(|s| s.as_str()).unwrap_or("not final"))
            .or_default() += 1;
        let t = truth(&p.id);
        if t != Some(p.state) {
            let name = &labels[&p.id].1;
            wrong.push(format!(
                "{name}: payrecon says {}, sandbox says {t:?}",
                p.state
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
    let payments_ok = done && wrong.is_empty();
    let actions_ok = run_actions(&admin, &sandboxes).await?;
    let notices_ok = check_notifications(&engine, &admin, &platform).await?;
    let ok = payments_ok && actions_ok && notices_ok;
    println!();
    match (payments_ok, actions_ok) {
        (true, true) if notices_ok => println!("all {total} payments reached their true state, every action ended as expected, and the platform was told of every change"),
        (true, true) => println!("all {total} payments reached their true state and every action ended as expected, but a notification went wrong"),
        (false, _) => println!("{} of {total} payments did not reach their true state", wrong.len().max(1)),
        (true, false) => println!("all {total} payments reached their true state, but an action did not end as expected"),
    }
    cancel.cancel();
    d.wait().await;
    for (_, sb) in &settling {
        sb.shutdown().await;
    }
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
