//! Outbound actions against the MyFatoorah sandbox: the request contract,
//! idempotent repeats, local refusals, final and retryable errors, and the
//! real binary killed while the provider has applied a capture it never
//! answered: the capture happens exactly once and the action succeeds.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::*;
use payrecon::action::{Action, ActionRequest, ActionState};
use payrecon::cli::client::{AdminClient, ClientError};
use payrecon::daemon;
use payrecon::engine::TrackRequest;
use payrecon::model::Source;
use payrecon::providers::myfatoorah::sim::{Faults, MyfatoorahSim};
use payrecon::state::State;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const TOKEN_ENV: &str = "TEST_MYFATOORAH_TOKEN";
const TOKEN: &str = "mf-test-token";
const WEBHOOK_SECRET: &str = "mf-webhook-secret";

fn config_text(store: &std::path::Path, mf_url: &str) -> String {
    format!(
        r#"
[store]
path = "{}"

[callback]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[log]
format = "json"

[actions]
deadline = "60s"

[providers.myfatoorah]
base_url = "{mf_url}"
token_env = "{TOKEN_ENV}"
webhook_secret_env = "TEST_MF_WEBHOOK_SECRET"

[providers.myfatoorah.polling]
poll_interval_min = "1h"
poll_interval_max = "1h"
poll_window_min = "2h"
poll_window_max = "2h"
request_timeout = "30s"
"#,
        store.display()
    )
}

struct Mf {
    callback_url: String,
    admin_url: String,
    _dir: tempfile::TempDir,
    sim: MyfatoorahSim,
    admin: AdminClient,
    cancel: CancellationToken,
    daemon: Option<daemon::Daemon>,
}

impl Mf {
    async fn start() -> Mf {
        let dir = tempfile::tempdir().unwrap();
        let cancel = CancellationToken::new();
        let sim = MyfatoorahSim::start(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            TOKEN,
            cancel.child_token(),
        );
        let env = HashMap::from([
            (TOKEN_ENV.to_string(), TOKEN.to_string()),
            (
                "TEST_MF_WEBHOOK_SECRET".to_string(),
                WEBHOOK_SECRET.to_string(),
            ),
        ]);
        let text = config_text(&dir.path().join("store"), &sim.base_url());
        let (d, admin) = start_daemon(&text, &env, &cancel).await;
        Mf {
            callback_url: format!("http://{}/callback/myfatoorah", d.callback_addr),
            admin_url: format!("http://{}", d.admin_addr),
            admin,
            sim,
            cancel,
            daemon: Some(d),
            _dir: dir,
        }
    }

    /// An authorized invoice of `value` thousandths KWD, tracked.
    async fn invoice(&self, id: i64, value: i64) -> String {
        self.sim.add_invoice(id, value);
        track(&self.admin, id, value).await
    }

    async fn settled(&self, id: &str) -> Action {
        settled(&self.admin, id).await
    }

    async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(d) = self.daemon.take() {
            d.wait().await;
        }
        self.sim.shutdown().await;
    }
}

async fn track(admin: &AdminClient, id: i64, value: i64) -> String {
    let req = TrackRequest {
        provider: "myfatoorah".into(),
        keys: [("invoice_id".to_string(), id.to_string())].into(),
        amount_minor: Some(value),
        currency: Some("KWD".into()),
    };
    admin.track(&req).await.unwrap().payment.id
}

fn capture(amount: &str) -> ActionRequest {
    ActionRequest::of(&payrecon::providers::myfatoorah::Request::Capture {
        amount: amount.into(),
    })
}

#[tokio::test]
async fn a_capture_is_sent_as_the_seed_describes_and_recorded() {
    let mf = Mf::start().await;
    let pay = mf.invoice(2834690, 250_000).await;
    let a = mf
        .admin
        .action(&pay, &capture("100.000"), None)
        .await
        .unwrap();
    let a = mf.settled(&a.id).await;
    assert_eq!(a.state, ActionState::Succeeded, "{a:?}");
    assert_eq!(a.attempts, 1);
    let (body, auth) = mf.sim.last_update().unwrap();
    assert_eq!(auth.as_deref(), Some("Bearer mf-test-token"));
    assert_eq!(
        body,
        serde_json::json!({"Operation": "capture", "Amount": 100.0, "Key": "2834690", "KeyType": "InvoiceId"})
    );
    assert_eq!(mf.sim.operations(2834690), 1);
    // The provider's confirmed answer is an observation of the payment.
    let v = mf.admin.get(&pay).await.unwrap();
    assert_eq!(v.payment.state, State::Succeeded);
    let last = v.history.unwrap().pop().unwrap();
    assert_eq!(last.source, Source::Action);
    assert_eq!(last.raw_status, "Paid/Succss");
    assert_eq!(v.actions.unwrap()[0].id, a.id);
    mf.stop().await;
}

#[tokio::test]
async fn the_binary_s_capture_subcommand_made_from_the_description_sends_one_capture() {
    let mf = Mf::start().await;
    let pay = mf.invoice(7001, 250_000).await;
    let run = || async {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_payrecon"))
            .args(["capture", &pay, "--amount", "100.000"])
            .args(["--idempotency-key", "cli-1", "--admin-url", &mf.admin_url])
            .env_remove("PAYRECON_ADMIN_TOKEN")
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice::<Action>(&out.stdout).unwrap()
    };
    let a = run().await;
    assert_eq!(a.request, capture("100.000"));
    assert_eq!(mf.settled(&a.id).await.state, ActionState::Succeeded);
    assert_eq!(run().await.id, a.id, "the same key is the same action");
    assert_eq!(mf.sim.operations(7001), 1);
    // A required field is a required flag: a usage error, exit 2.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_payrecon"))
        .args(["capture", &pay, "--admin-url", &mf.admin_url])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--amount"));
    mf.stop().await;
}

#[tokio::test]
async fn a_repeated_request_with_the_same_key_is_the_same_action() {
    let mf = Mf::start().await;
    let pay = mf.invoice(100, 50_000).await;
    let a = mf
        .admin
        .action(&pay, &capture("50"), Some("order-77-capture"))
        .await
        .unwrap();
    let b = mf
        .admin
        .action(&pay, &capture("50"), Some("order-77-capture"))
        .await
        .unwrap();
    assert_eq!(a.id, b.id);
    mf.settled(&a.id).await;
    let c = mf
        .admin
        .action(&pay, &capture("50"), Some("order-77-capture"))
        .await
        .unwrap();
    assert_eq!(c.id, a.id);
    assert_eq!(c.state, ActionState::Succeeded);
    assert_eq!(mf.sim.update_requests(), 1);
    mf.stop().await;
}

#[tokio::test]
async fn invalid_actions_are_refused_locally_and_nothing_is_sent() {
    let mf = Mf::start().await;
    let pay = mf.invoice(200, 10_000).await;
    let refuse = |r: Result<Action, ClientError>, code: &str| match r {
        Err(ClientError::Api {
            code: c, message, ..
        }) => {
            assert_eq!(c, code, "{message}");
            message
        }
        other => panic!("expected {code}, got {other:?}"),
    };
    let m = refuse(
        mf.admin.action(&pay, &capture("10.001"), None).await,
        "action_refused",
    );
    assert!(m.contains("more than the invoice value"), "{m}");
    let m = refuse(
        mf.admin
            .action(
                &pay,
                &ActionRequest::of(&payrecon::providers::myfatoorah::Request::Release {
                    amount: Some("5".into()),
                }),
                None,
            )
            .await,
        "action_refused",
    );
    assert!(m.contains("must equal the invoice value"), "{m}");
    refuse(
        mf.admin.action(&pay, &capture("ten"), None).await,
        "action_refused",
    );
    // Checked against what MyFatoorah describes before it judges them: a
    // missing field is a bad request, an action it does not take a refusal.
    let bare = |name: &str| ActionRequest {
        action: name.into(),
        fields: Default::default(),
    };
    let m = refuse(
        mf.admin.action(&pay, &bare("capture"), None).await,
        "invalid_request",
    );
    assert_eq!(m, "`capture` needs `amount`");
    let m = refuse(
        mf.admin.action(&pay, &bare("refund"), None).await,
        "action_refused",
    );
    assert_eq!(m, "myfatoorah takes capture, release, not `refund`");
    assert_eq!(mf.sim.update_requests(), 0);

    // One capture or release per invoice: the second is refused here.
    let a = mf.admin.action(&pay, &capture("10"), None).await.unwrap();
    let m = refuse(
        mf.admin
            .action(
                &pay,
                &ActionRequest::of(&payrecon::providers::myfatoorah::Request::Release {
                    amount: None,
                }),
                None,
            )
            .await,
        "action_conflict",
    );
    assert!(m.contains(&a.id), "{m}");
    mf.settled(&a.id).await;
    // After it succeeded, the same rule: a conflict naming the holder.
    let m = refuse(
        mf.admin.action(&pay, &capture("1"), None).await,
        "action_conflict",
    );
    assert!(m.contains(&a.id) && m.contains("succeeded"), "{m}");
    assert_eq!(mf.sim.update_requests(), 1);
    assert_eq!(mf.sim.operations(200), 1);
    mf.stop().await;
}

#[tokio::test]
async fn a_final_4xx_is_not_retried() {
    let mf = Mf::start().await;
    // The sandbox knows a larger value than payrecon was told; it refuses
    // a release that payrecon's own check lets through.
    mf.sim.add_invoice(300, 20_000);
    let pay = track(&mf.admin, 300, 10_000).await;
    let a = mf
        .admin
        .action(
            &pay,
            &ActionRequest::of(&payrecon::providers::myfatoorah::Request::Release { amount: None }),
            None,
        )
        .await
        .unwrap();
    let a = mf.settled(&a.id).await;
    assert_eq!(a.state, ActionState::Failed);
    assert_eq!(a.attempts, 1);
    assert!(a.error.unwrap().contains("release amount must be equal"));
    assert!(a.details.unwrap().to_string().contains("Amount"));
    assert_eq!(mf.sim.update_requests(), 1);
    assert_eq!(mf.sim.operations(300), 0);
    mf.stop().await;
}

#[tokio::test]
async fn a_5xx_is_retried_and_then_succeeds() {
    let mf = Mf::start().await;
    let pay = mf.invoice(400, 5_000).await;
    mf.sim.set_faults(Faults {
        fail_next_updates: 2,
        ..Default::default()
    });
    let a = mf.admin.action(&pay, &capture("5"), None).await.unwrap();
    let a = mf.settled(&a.id).await;
    assert_eq!(a.state, ActionState::Succeeded);
    assert_eq!(a.attempts, 3);
    assert_eq!(mf.sim.update_requests(), 3);
    assert_eq!(mf.sim.operations(400), 1);
    mf.stop().await;
}

#[tokio::test]
async fn a_dropped_answer_is_settled_by_inquiry_not_by_resending() {
    let mf = Mf::start().await;
    let pay = mf.invoice(500, 7_500).await;
    mf.sim.set_faults(Faults {
        apply_then_drop: true,
        ..Default::default()
    });
    let a = mf
        .admin
        .action(
            &pay,
            &ActionRequest::of(&payrecon::providers::myfatoorah::Request::Release {
                amount: Some("7.5".into()),
            }),
            None,
        )
        .await
        .unwrap();
    let a = mf.settled(&a.id).await;
    assert_eq!(a.state, ActionState::Succeeded, "{a:?}");
    assert_eq!(a.answer.unwrap()["ConfirmedBy"], "GetPaymentStatus");
    assert_eq!(mf.sim.update_requests(), 1, "never sent twice");
    assert_eq!(mf.sim.operations(500), 1);
    assert_eq!(
        mf.admin.get(&pay).await.unwrap().payment.state,
        State::Reversed
    );
    mf.stop().await;
}

/// The real binary, its stderr lines collected.
struct Proc(Child, String);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(config: &std::path::Path) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_payrecon"))
        .args(["run", "--config"])
        .arg(config)
        .env(TOKEN_ENV, TOKEN)
        .env("TEST_MF_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["message"] == "payrecon ready" {
                    let _ = tx.send(v["admin_addr"].as_str().unwrap_or_default().to_string());
                }
            }
        }
    });
    let admin = rx.recv_timeout(PATIENCE).expect("ready");
    Proc(child, format!("http://{admin}"))
}

#[tokio::test]
async fn sigkill_after_the_provider_applied_a_capture_ends_with_exactly_one_capture() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let sim = MyfatoorahSim::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TOKEN,
        cancel.child_token(),
    );
    let config = dir.path().join("payrecon.toml");
    std::fs::write(
        &config,
        config_text(&dir.path().join("store"), &sim.base_url()),
    )
    .unwrap();
    sim.add_invoice(600, 90_000);

    let mut p = spawn(&config);
    let admin = AdminClient::new(&p.1, None);
    let pay = track(&admin, 600, 90_000).await;
    // The capture is applied and its answer never comes.
    sim.set_faults(Faults {
        apply_then_hang: true,
        ..Default::default()
    });
    let a = admin
        .action(&pay, &capture("90"), Some("k1"))
        .await
        .unwrap();
    wait_until("capture applied at the provider", || async {
        sim.operations(600) == 1
    })
    .await;
    assert_eq!(
        admin.get_action(&a.id).await.unwrap().state,
        ActionState::Sending
    );
    p.0.kill().unwrap(); // SIGKILL mid-request
    p.0.wait().unwrap();
    drop(p);

    let p = spawn(&config);
    let admin = AdminClient::new(&p.1, None);
    let a = settled(&admin, &a.id).await;
    assert_eq!(a.state, ActionState::Succeeded, "{a:?}");
    assert_eq!(sim.operations(600), 1, "exactly one capture");
    assert_eq!(sim.update_requests(), 1, "the capture was never sent again");
    assert_eq!(
        admin.get(&pay).await.unwrap().payment.state,
        State::Succeeded
    );
    // The same request again is the same action, still not resent.
    let again = admin
        .action(&pay, &capture("90"), Some("k1"))
        .await
        .unwrap();
    assert_eq!(again.id, a.id);
    assert_eq!(sim.update_requests(), 1);
    drop(p);
    sim.shutdown().await;
}

#[tokio::test]
async fn signed_webhooks_v1_and_v2_are_recorded_and_forged_ones_refused() {
    use payrecon::providers::myfatoorah::webhook::{sign, signed_text};
    let mf = Mf::start().await;
    // v1: the customer authorized; the webhook says so before any poll.
    mf.sim.set_webhook(&mf.callback_url, WEBHOOK_SECRET, 1);
    let pay = mf.invoice(700, 20_000).await;
    assert_eq!(mf.sim.send_webhook(700).await, Some(200));
    let v = mf.admin.get(&pay).await.unwrap();
    assert_eq!(v.payment.state, State::Authorized);
    assert_eq!(v.payment.final_source, None);
    assert_eq!(v.history.unwrap()[0].raw_status, "webhook:AUTHORIZE");
    // The same v1 webhook again is one observation.
    assert_eq!(mf.sim.send_webhook(700).await, Some(200));
    assert_eq!(mf.admin.get(&pay).await.unwrap().history.unwrap().len(), 1);

    // v2: the capture is announced after it is applied.
    mf.sim.set_webhook(&mf.callback_url, WEBHOOK_SECRET, 2);
    let a = mf.admin.action(&pay, &capture("20"), None).await.unwrap();
    mf.settled(&a.id).await;
    wait_until("v2 webhook delivered", || async {
        mf.sim.webhooks_acked() >= 2
    })
    .await;
    let h = mf.admin.get(&pay).await.unwrap().history.unwrap();
    let cb: Vec<_> = h
        .iter()
        .filter(|o| o.source == Source::Callback)
        .map(|o| o.raw_status.clone())
        .collect();
    assert_eq!(cb, ["webhook:AUTHORIZE", "webhook:SUCCESS"]);

    // Forged: wrong secret, or no signature. 403, nothing stored.
    let body = serde_json::json!({"Event": {"Code": 1, "Reference": "WH-X"}, "Data": {"Invoice": {"Id": 700, "Status": "CANCELED"}, "Transaction": {"Status": "CANCELED", "PaymentId": "x"}}});
    let bad = sign("not-the-secret", &signed_text(&body).unwrap().1);
    let http = reqwest::Client::new();
    for sig in [Some(bad.as_str()), None] {
        let mut rb = http.post(&mf.callback_url).json(&body);
        if let Some(s) = sig {
            rb = rb.header("MyFatoorah-Signature", s);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), 403);
    }
    assert_eq!(
        mf.admin.get(&pay).await.unwrap().history.unwrap().len(),
        h.len()
    );
    mf.stop().await;
}

#[tokio::test]
async fn duplicate_and_stale_webhooks_change_nothing_twice() {
    use payrecon::providers::myfatoorah::sim::WebhookMode;
    let mf = Mf::start().await;
    mf.sim.set_webhook(&mf.callback_url, WEBHOOK_SECRET, 2);
    let pay = mf.invoice(800, 30_000).await;
    mf.sim.set_faults(Faults {
        webhooks: WebhookMode::OutOfOrder,
        ..Default::default()
    });
    let a = mf.admin.action(&pay, &capture("30"), None).await.unwrap();
    mf.settled(&a.id).await;
    wait_until("both webhooks delivered", || async {
        mf.sim.webhooks_acked() >= 2
    })
    .await;
    let v = mf.admin.get(&pay).await.unwrap();
    assert_eq!(
        v.payment.state,
        State::Succeeded,
        "a stale AUTHORIZE does not regress"
    );
    let cb: Vec<_> = v
        .history
        .unwrap()
        .into_iter()
        .filter(|o| o.source == Source::Callback)
        .map(|o| (o.raw_status, o.decision))
        .collect();
    assert_eq!(cb.len(), 2);
    assert_eq!(cb[1].1, Some(payrecon::state::Decision::Backwards));
    assert_eq!(mf.sim.operations(800), 1);
    mf.stop().await;
}

#[tokio::test]
async fn a_v2_webhook_replayed_with_new_references_is_one_observation() {
    use payrecon::providers::myfatoorah::webhook::{sign, signed_text};
    let mf = Mf::start().await;
    let pay = mf.invoice(910, 10_000).await;
    let http = reqwest::Client::new();
    for reference in ["WH-1", "WH-2", "WH-3"] {
        let body = serde_json::json!({"Event": {"Code": 1, "Name": "PAYMENT_STATUS_CHANGED", "Reference": reference},
            "Data": {"Invoice": {"Id": 910, "Status": "PAID", "ExternalIdentifier": null}, "Transaction": {"Status": "SUCCESS", "PaymentId": "07079100"}}});
        let sig = sign(WEBHOOK_SECRET, &signed_text(&body).unwrap().1);
        let r = http
            .post(&mf.callback_url)
            .header("MyFatoorah-Signature", sig)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let v = mf.admin.get(&pay).await.unwrap();
    let callbacks: Vec<_> = v
        .history
        .unwrap()
        .into_iter()
        .filter(|o| o.source == Source::Callback)
        .collect();
    assert_eq!(callbacks.len(), 1, "the reference is not signed");
    assert_eq!(callbacks[0].fields["event_reference"], "WH-1");
    assert_eq!(v.payment.state, State::Succeeded);
    mf.stop().await;
}
