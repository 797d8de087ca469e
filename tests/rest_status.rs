//! The REST "Update Payment Status" API: the request contract, problem
//! documents, retries, and an update whose answer is lost: with no status
//! inquiry it is parked as unknown, never resent, and an operator resolves
//! it with one CLI command.

mod common;

use std::collections::HashMap;

use common::*;
use payrecon::action::{Action, ActionRequest, ActionState};
use payrecon::cli::client::AdminClient;
use payrecon::daemon;
use payrecon::engine::TrackRequest;
use payrecon::model::Source;
use payrecon::providers::rest_status::sim::{Faults, RestStatusSim};
use payrecon::state::State;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const KEY_ENV: &str = "TEST_REST_API_KEY";
const KEY: &str = "rest-api-key";
const PAYMENT: &str = "b8f2d832-72e2-4e47-8b8a-7f6a3a3e7abe";

struct Rest {
    _dir: tempfile::TempDir,
    sim: RestStatusSim,
    admin: AdminClient,
    admin_url: String,
    cancel: CancellationToken,
    daemon: Option<daemon::Daemon>,
}

impl Rest {
    async fn start() -> Rest {
        let dir = tempfile::tempdir().unwrap();
        let cancel = CancellationToken::new();
        let sim = RestStatusSim::start(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            KEY,
            cancel.child_token(),
        );
        let text = format!(
            "[store]\npath = \"{}\"\n[callback]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[actions]\ndeadline = \"60s\"\n[providers.rest_status]\nbase_url = \"{}\"\napi_key_env = \"{KEY_ENV}\"\nrequest_timeout = \"5s\"\n",
            dir.path().join("store").display(),
            sim.base_url()
        );
        let env = HashMap::from([(KEY_ENV.to_string(), KEY.to_string())]);
        let (d, admin) = start_daemon(&text, &env, &cancel).await;
        let admin_url = format!("http://{}", d.admin_addr);
        Rest {
            admin,
            admin_url,
            sim,
            cancel,
            daemon: Some(d),
            _dir: dir,
        }
    }

    async fn track(&self) -> String {
        let req = TrackRequest {
            provider: "rest_status".into(),
            keys: [("payment_id".to_string(), PAYMENT.to_string())].into(),
            amount_minor: None,
            currency: None,
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

fn update(status: &str) -> ActionRequest {
    ActionRequest::of(&payrecon::providers::rest_status::Request::UpdateStatus {
        status: status.into(),
        trust: payrecon::providers::rest_status::Trust {
            seed: "seed-1".into(),
            value: "c10cd944".into(),
            alt_value: "alt-1".into(),
        },
    })
}

#[tokio::test]
async fn an_update_is_sent_as_the_schema_spells_it_and_confirmed() {
    let r = Rest::start().await;
    let pay = r.track().await;
    assert!(
        r.admin.get(&pay).await.unwrap().payment.window.is_none(),
        "no status inquiry, no polling"
    );
    let a = r
        .admin
        .action(&pay, &update("completed"), None)
        .await
        .unwrap();
    let a = r.settled(&a.id).await;
    assert_eq!(a.state, ActionState::Succeeded, "{a:?}");
    let (body, key) = r.sim.last().unwrap();
    assert_eq!(key.as_deref(), Some(KEY));
    assert_eq!(
        body,
        serde_json::json!({"apiKey": KEY, "id": PAYMENT, "status": "completed", "trust_Seed": "seed-1", "trust_Value": "c10cd944", "alt_Trust_Value": "alt-1"})
    );
    assert_eq!(r.sim.changes(PAYMENT), ["completed"]);
    let v = r.admin.get(&pay).await.unwrap();
    assert_eq!(v.payment.state, State::Succeeded);
    assert_eq!(v.history.unwrap()[0].source, Source::Action);
    r.stop().await;
}

#[tokio::test]
async fn a_400_problem_is_final_and_its_errors_reach_the_caller() {
    let r = Rest::start().await;
    let pay = r.track().await;
    // Refused locally: nothing sent.
    let bad = ActionRequest::of(&payrecon::providers::rest_status::Request::UpdateStatus {
        status: "x".into(),
        trust: payrecon::providers::rest_status::Trust {
            seed: "".into(),
            value: "v".into(),
            alt_value: "a".into(),
        },
    });
    let err = r.admin.action(&pay, &bad, None).await.unwrap_err();
    assert!(err.to_string().contains("trust.seed"), "{err}");
    assert_eq!(r.sim.requests(), 0);
    // Refused by the API: final, sent once, its errors map kept.
    r.sim.set_faults(Faults {
        reject_next: true,
        ..Default::default()
    });
    let a = r
        .admin
        .action(&pay, &update("completed"), None)
        .await
        .unwrap();
    let a = r.settled(&a.id).await;
    assert_eq!(a.state, ActionState::Failed);
    assert_eq!(a.attempts, 1);
    assert!(a
        .error
        .unwrap()
        .contains("One or more validation errors occurred."));
    assert_eq!(
        a.details.unwrap()["status"][0],
        "The status is not allowed for this payment."
    );
    assert_eq!(r.sim.requests(), 1);
    assert!(r.sim.changes(PAYMENT).is_empty());
    r.stop().await;
}

#[tokio::test]
async fn a_500_is_retried_and_then_succeeds() {
    let r = Rest::start().await;
    let pay = r.track().await;
    r.sim.set_faults(Faults {
        fail_next: 2,
        ..Default::default()
    });
    let a = r
        .admin
        .action(&pay, &update("cancelled"), None)
        .await
        .unwrap();
    let a = r.settled(&a.id).await;
    assert_eq!(a.state, ActionState::Succeeded);
    assert_eq!(a.attempts, 3);
    assert_eq!(r.sim.changes(PAYMENT), ["cancelled"]);
    assert_eq!(
        r.admin.get(&pay).await.unwrap().payment.state,
        State::Failed
    );
    r.stop().await;
}

#[tokio::test]
async fn a_lost_answer_is_parked_unknown_and_resolved_by_an_operator() {
    let r = Rest::start().await;
    let pay = r.track().await;
    r.sim.set_faults(Faults {
        apply_then_drop: true,
        ..Default::default()
    });
    let a = r
        .admin
        .action(&pay, &update("completed"), Some("ord-9"))
        .await
        .unwrap();
    let a = r.settled(&a.id).await;
    assert_eq!(a.state, ActionState::Unknown, "{a:?}");
    assert!(a.error.as_deref().unwrap().contains("resolve-action"));
    assert_eq!(r.sim.requests(), 1, "not sent again");
    assert_eq!(r.sim.changes(PAYMENT), ["completed"]);
    // The same request is the same action, still not resent.
    assert_eq!(
        r.admin
            .action(&pay, &update("completed"), Some("ord-9"))
            .await
            .unwrap()
            .id,
        a.id
    );

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_payrecon"))
        .args([
            "resolve-action",
            "--admin-url",
            &r.admin_url,
            &a.id,
            "--as",
            "succeeded",
            "--note",
            "confirmed by phone",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "succeeded");
    assert_eq!(
        r.admin.get_action(&a.id).await.unwrap().state,
        ActionState::Succeeded
    );
    // Resolving twice is refused.
    let again = r
        .admin
        .resolve_action(
            &a.id,
            &payrecon::listen::admin::Resolve {
                state: ActionState::Failed,
                note: None,
            },
        )
        .await;
    assert!(format!("{again:?}").contains("action_conflict"));
    assert_eq!(r.sim.requests(), 1);
    r.stop().await;
}
