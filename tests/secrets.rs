//! Secrets never reach a log. The real binary runs with debug logging,
//! an admin token, ConnPay, MyFatoorah (API token and webhook secret) and
//! signed notifications; it serves polls, callbacks, a forged callback, a
//! capture, notifications, a reload and a shutdown. Then every log line is
//! searched for every configured secret.

mod common;

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use common::*;
use payrecon::action::{ActionRequest, ActionState};
use payrecon::cli::client::AdminClient;
use payrecon::engine::TrackRequest;
use payrecon::providers::connpay::sim::{NewTransfer, Script};
use payrecon::providers::myfatoorah::sim::MyfatoorahSim;
use payrecon::sim::platform::PlatformSim;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const ADMIN_TOKEN: &str = "admin-token-7f3c9e1d";
const MF_TOKEN: &str = "mf-api-token-b2d4f6a8";
const MF_WEBHOOK: &str = "mf-webhook-secret-c1e3a5b7";

#[tokio::test]
async fn no_configured_secret_appears_in_the_logs_of_a_full_run() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let sim = start_sim(&cancel).await;
    let mf = MyfatoorahSim::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        MF_TOKEN,
        cancel.clone(),
    );
    let notify_key = [9u8; 32];
    let notify_b64 = base64::engine::general_purpose::STANDARD.encode(notify_key);
    let notify_secret = format!("whsec_{notify_b64}");
    let platform = PlatformSim::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        notify_key.to_vec(),
        cancel.clone(),
    );
    let tail = format!(
        r#"
[providers.myfatoorah]
base_url = "{}"
token_env = "T_MF_TOKEN"
webhook_secret_env = "T_MF_WEBHOOK"

[notify]
url = "{}"
secret_env = "T_NOTIFY"
min_delay = "10ms"
max_delay = "50ms"
"#,
        mf.base_url(),
        platform.url()
    );
    let polling = Polling {
        tail,
        ..Default::default()
    };
    let config = dir.path().join("payrecon.toml");
    let text = config_text(
        &dir.path().join("store"),
        &sim.base_url(),
        &polling,
        "token_env = \"T_ADMIN\"",
    )
    .replace("format = \"json\"", "format = \"json\"\nlevel = \"debug\"");
    std::fs::write(&config, text).unwrap();
    let logs = Arc::new(Mutex::new(vec![]));
    let env = [
        ("T_ADMIN", ADMIN_TOKEN),
        ("T_MF_TOKEN", MF_TOKEN),
        ("T_MF_WEBHOOK", MF_WEBHOOK),
        ("T_NOTIFY", notify_secret.as_str()),
    ];
    let mut d = Process::spawn(&config, &env, logs.clone());
    let admin = AdminClient::new(&d.admin_url, Some(ADMIN_TOKEN.into()));
    sim.set_callback_url(&d.callback_url);
    mf.set_webhook(
        &d.callback_url.replace("connpay", "myfatoorah"),
        MF_WEBHOOK,
        2,
    );

    let mut secrets = vec![
        CONTROL_KEY.to_string(),
        ADMIN_TOKEN.to_string(),
        MF_TOKEN.to_string(),
        MF_WEBHOOK.to_string(),
        notify_secret.clone(),
        notify_b64,
    ];
    // ConnPay transfers settled by polls and callbacks.
    let mut ids = vec![];
    for i in 0..5 {
        let t = NewTransfer::new(&format!("inv-secret-{i}"), Script::default());
        secrets.push(t.session_token.clone());
        secrets.extend(t.access_token.clone());
        sim.add(t.clone());
        ids.push(admin.track(&track_request(&t)).await.unwrap().payment.id);
    }
    // A forged callback: refused, alert logged.
    let forged = reqwest::get(format!(
        "{}?{}",
        d.callback_url,
        callback_query("approved", "sale", "1", "inv-secret-0", "wrong-key")
    ))
    .await
    .unwrap();
    assert_eq!(forged.status(), 403);
    // A MyFatoorah capture (bearer token out, signed webhook in).
    mf.add_invoice(4242, 10_000);
    let pay = admin
        .track(&TrackRequest {
            provider: "myfatoorah".into(),
            keys: [("invoice_id".to_string(), "4242".to_string())].into(),
            amount_minor: Some(10_000),
            currency: Some("KWD".into()),
        })
        .await
        .unwrap()
        .payment
        .id;
    let a = admin
        .action(
            &pay,
            &ActionRequest::of(&payrecon::providers::myfatoorah::Request::Capture {
                amount: "10.000".into(),
            }),
            None,
        )
        .await
        .unwrap();
    let a = settled(&admin, &a.id).await;
    assert_eq!(a.state, ActionState::Succeeded);
    for id in &ids {
        wait_until("final", || async {
            admin.get(id).await.unwrap().payment.state.is_final()
        })
        .await;
    }
    wait_until("notifications delivered", || async {
        platform.delivered().len() >= ids.len()
    })
    .await;
    d.signal("HUP");
    d.signal("TERM");
    assert_eq!(d.exit_code().await, Some(0));
    drop(d);

    let logs = logs.lock().unwrap().clone();
    assert!(logs.len() > 50, "a full run logs plenty: {}", logs.len());
    assert!(
        logs.iter()
            .any(|l| l.contains("callback_signature_invalid")),
        "the forged callback raised its alert"
    );
    for line in logs.iter() {
        for s in &secrets {
            assert!(!line.contains(s.as_str()), "a secret in the logs: {line}");
        }
    }
    sim.shutdown().await;
    mf.shutdown().await;
    platform.shutdown().await;
}
