//! connectFi payment links: the set-status contract, the schema checked
//! before sending, `manualStatus` and its lock, token expiry renewed without
//! failing anything, `statusChangeHistory` recorded, and a lost answer
//! parked as unknown (connectFi has no status inquiry).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use payrecon::action::{Action, ActionRequest, ActionState};
use payrecon::cli::client::AdminClient;
use payrecon::daemon;
use payrecon::engine::TrackRequest;
use payrecon::model::Source;
use payrecon::providers::connectfi::sim::{ConnectfiSim, Faults};
use payrecon::state::State;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const LINK: &str = "29ljhq5Apu1YfdtU3wN7yx";

struct Cfi {
    _dir: tempfile::TempDir,
    sim: ConnectfiSim,
    admin: AdminClient,
    cancel: CancellationToken,
    daemon: Option<daemon::Daemon>,
}

impl Cfi {
    async fn start() -> Cfi {
        let dir = tempfile::tempdir().unwrap();
        let cancel = CancellationToken::new();
        let sim = ConnectfiSim::start(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            "CLIENTID",
            "s3cret",
            Duration::from_secs(3600),
            cancel.child_token(),
        );
        let text = format!(
            "[store]\npath = \"{}\"\n[callback]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[actions]\ndeadline = \"60s\"\n[providers.connectfi]\nbase_url = \"{}\"\nclient_id_env = \"CFI_ID\"\nclient_secret_env = \"CFI_SECRET\"\n",
            dir.path().join("store").display(),
            sim.base_url()
        );
        let env = HashMap::from([
            ("CFI_ID".to_string(), "CLIENTID".to_string()),
            ("CFI_SECRET".to_string(), "s3cret".to_string()),
        ]);
        let (d, admin) = start_daemon(&text, &env, &cancel).await;
        Cfi {
            admin,
            sim,
            cancel,
            daemon: Some(d),
            _dir: dir,
        }
    }

    async fn track(&self, id: &str, status: &str) -> String {
        self.sim.add_link(id, status);
        let req = TrackRequest {
            provider: "connectfi".into(),
            keys: [("transaction_id".to_string(), id.to_string())].into(),
            amount_minor: Some(150),
            currency: Some("USD".into()),
        };
        self.admin.track(&req).await.unwrap().payment.id
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

fn set(status: &str) -> ActionRequest {
    ActionRequest::of(&payrecon::providers::connectfi::Request::SetStatus {
        status: status.into(),
        description: Some(format!("Set to {status}")),
        manual_status: None,
    })
}

#[tokio::test]
async fn set_status_is_sent_as_the_seed_describes_and_its_history_recorded() {
    let c = Cfi::start().await;
    let pay = c.track(LINK, "SentToPay").await;
    let a = c.admin.action(&pay, &set("Completed"), None).await.unwrap();
    let a = c.settled(&a.id).await;
    assert_eq!(a.state, ActionState::Succeeded, "{a:?}");
    let (body, token) = c.sim.last().unwrap();
    assert!(token.unwrap().starts_with("cfi"));
    assert_eq!(
        body,
        serde_json::json!({"cFiTransactionId": LINK, "status": "Completed", "description": "Set to Completed", "manualStatus": true})
    );
    assert_eq!(
        c.sim.status(LINK),
        Some(("Completed".to_string(), true)),
        "manualStatus defaults to true: locked"
    );
    assert_eq!(c.sim.manual_changes(LINK), 1);
    // The lock keeps connectFi's own processing out.
    assert!(!c.sim.process_update(LINK, "Returned"));

    let v = c.admin.get(&pay).await.unwrap();
    assert_eq!(v.payment.state, State::Succeeded);
    let raws: Vec<_> = v
        .history
        .unwrap()
        .into_iter()
        .filter(|o| o.source == Source::Action)
        .map(|o| o.raw_status)
        .collect();
    assert_eq!(
        raws,
        [
            "Initiated",
            "Sent",
            "Processing",
            "SentToPay",
            "Completed",
            "Completed"
        ]
    );
    c.stop().await;
}

#[tokio::test]
async fn an_expired_token_is_renewed_and_fails_nothing() {
    let c = Cfi::start().await;
    let pay = c.track(LINK, "SentToPay").await;
    let a = c.admin.action(&pay, &set("Completed"), None).await.unwrap();
    c.settled(&a.id).await;
    assert_eq!(c.sim.logins(), 1);
    c.sim.expire_tokens();
    let b = c
        .admin
        .action(
            &pay,
            &ActionRequest::of(&payrecon::providers::connectfi::Request::SetStatus {
                status: "Settled".into(),
                description: None,
                manual_status: Some(false),
            }),
            None,
        )
        .await
        .unwrap();
    let b = c.settled(&b.id).await;
    assert_eq!(b.state, ActionState::Succeeded, "{b:?}");
    assert_eq!(b.attempts, 1, "the renewal is not a failed attempt");
    assert_eq!(c.sim.logins(), 2);
    assert_eq!(c.sim.status(LINK), Some(("Settled".to_string(), false)));
    let p = c.admin.get(&pay).await.unwrap().payment;
    assert_eq!(p.state, State::Settled);
    // Unlocked now: processing may move it (Completed → Settled → Returned).
    assert!(c.sim.process_update(LINK, "Returned"));
    c.stop().await;
}

#[tokio::test]
async fn the_schema_is_checked_before_anything_is_sent() {
    let c = Cfi::start().await;
    let pay = c.track(LINK, "SentToPay").await;
    for (req, what) in [
        (set("Sent"), "cannot be set"),
        (
            ActionRequest::of(&payrecon::providers::connectfi::Request::SetStatus {
                status: "Completed".into(),
                description: Some("<script>".into()),
                manual_status: None,
            }),
            "< or >",
        ),
        (
            ActionRequest::of(&payrecon::providers::connectfi::Request::SetStatus {
                status: "Completed".into(),
                description: Some("x".repeat(101)),
                manual_status: None,
            }),
            "100 characters",
        ),
        (
            ActionRequest::of(&payrecon::providers::myfatoorah::Request::Capture {
                amount: "1".into(),
            }),
            "set_status",
        ),
    ] {
        let err = c.admin.action(&pay, &req, None).await.unwrap_err();
        assert!(err.to_string().contains(what), "{err}");
    }
    let err = c
        .admin
        .track(&TrackRequest {
            provider: "connectfi".into(),
            keys: [("transaction_id".to_string(), "has-dash".to_string())].into(),
            amount_minor: None,
            currency: None,
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("1-36 letters"), "{err}");
    assert_eq!(c.sim.updates(), 0);
    assert_eq!(c.sim.logins(), 0);
    c.stop().await;
}

#[tokio::test]
async fn a_5xx_is_retried_and_a_lost_answer_is_parked_unknown() {
    let c = Cfi::start().await;
    let pay = c.track(LINK, "SentToPay").await;
    c.sim.set_faults(Faults {
        fail_next: 1,
        ..Default::default()
    });
    let a = c.admin.action(&pay, &set("Declined"), None).await.unwrap();
    let a = c.settled(&a.id).await;
    assert_eq!(a.state, ActionState::Succeeded);
    assert_eq!(a.attempts, 2);
    assert_eq!(c.sim.manual_changes(LINK), 1);

    c.sim.set_faults(Faults {
        apply_then_drop: true,
        ..Default::default()
    });
    let b = c.admin.action(&pay, &set("Error"), None).await.unwrap();
    let b = c.settled(&b.id).await;
    assert_eq!(b.state, ActionState::Unknown, "{b:?}");
    assert_eq!(c.sim.manual_changes(LINK), 2, "applied once, never resent");
    c.stop().await;
}
