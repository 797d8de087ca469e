//! The daemon on the PostgreSQL engine (docs/postgres.md), against this
//! machine's server when `PAYRECON_TEST_DATABASE_URL` names one (`.ci/run`
//! sets it); each test in a schema of its own, dropped at the end.
//! Without the variable they say so and pass.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use payrecon::action::{Action, ActionRequest, ActionState};
use payrecon::cli::client::AdminClient;
use payrecon::daemon;
use payrecon::engine::TrackRequest;
use payrecon::providers::myfatoorah::sim::{Faults, MyfatoorahSim};
use payrecon::sim::platform::PlatformSim;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use payrecon::engine::PollOutcome;
use payrecon::model::ProviderId;

use common::pg::Schema;
use common::*;
use payrecon::model::Source;
use payrecon::providers::connpay::sim::{CallbackMode, NewTransfer, Script, Settle};
use payrecon::state::{Decision, State};
use payrecon::store::Lease;

#[tokio::test]
async fn payments_settle_by_polls_and_callbacks_on_postgres() {
    let Some(schema) = Schema::new().await else {
        return;
    };
    let h = Harness::start(Polling {
        window: ("300ms", "300ms"),
        store: schema.store_lines(),
        ..Default::default()
    })
    .await;
    let polled = NewTransfer::new(
        "pg-poll-1",
        Script {
            settle: Settle::AfterPolls(3),
            redirect: true,
            callback: CallbackMode::Never,
            ..Default::default()
        },
    );
    let dup = NewTransfer::new(
        "pg-dup-1",
        Script {
            settle: Settle::Manual,
            callback: CallbackMode::Duplicate,
            ..Default::default()
        },
    );
    let polled_id = h.track(&polled).await;
    let dup_id = h.track(&dup).await;
    wait_until("the polled payment is final", || async {
        h.get(&polled_id).await.payment.state.is_final()
    })
    .await;
    let v = h.get(&polled_id).await;
    assert_eq!(v.payment.state, State::Succeeded);
    assert_eq!(v.payment.final_source, Some(Source::Poll));
    let raws: Vec<_> = v
        .history
        .unwrap()
        .iter()
        .map(|o| o.raw_status.clone())
        .collect();
    assert_eq!(raws, ["PROCESSING", "REDIRECT_REQUEST", "APPROVED"]);

    // Settled only after its window: the callbacks, not a poll, bring it.
    h.window_closed(&dup_id).await;
    h.sim.settle("pg-dup-1");
    wait_until("three deliveries acknowledged", || async {
        h.sim.truth("pg-dup-1").unwrap().callbacks_acked == 3
    })
    .await;
    let v = h.get(&dup_id).await;
    assert_eq!(v.payment.state, State::Succeeded);
    let callbacks: Vec<_> = v
        .history
        .unwrap()
        .into_iter()
        .filter(|o| o.source == Source::Callback)
        .collect();
    assert_eq!(callbacks.len(), 1, "three deliveries, one observation");
    assert_eq!(callbacks[0].decision, Some(Decision::Advance));
    assert_eq!(
        h.engine
            .counters
            .callbacks_duplicate
            .load(Ordering::Relaxed),
        2
    );
    // Both payments are listed, found by their keys, and out of windows.
    assert_eq!(
        h.admin
            .list(None, None, Some(10), None)
            .await
            .unwrap()
            .payments
            .len(),
        2
    );
    assert!(h.engine.store().open_windows().await.unwrap().is_empty());
    // Another instance sweeping ConnPay: this one skips its sweep, and
    // sweeps once the other gives the lease up.
    let store = h.engine.store().clone();
    assert!(store
        .take_lease("sweep:connpay", Lease::from_now("other", 60_000))
        .await
        .unwrap());
    let busy = h.engine.reconcile(ProviderId::Connpay).await.unwrap_err();
    assert!(busy.to_string().contains("another instance"), "{busy}");
    store.release_lease("sweep:connpay", "other").await.unwrap();
    h.engine.reconcile(ProviderId::Connpay).await.unwrap();
    h.stop().await;
    // They are in the database, not in a sled folder.
    let stored: i64 = schema.rows("SELECT count(*) FROM {schema}.payments").await[0].get(0);
    assert_eq!(stored, 2);
    schema.drop().await;
}

/// Two instances on one database: each window is polled by the instance
/// holding its lease, never by both; when that instance stops, its
/// windows are free once the lease runs out and the other takes them.
#[tokio::test]
async fn two_instances_poll_each_window_once_and_take_over_a_stopped_one_s() {
    let Some(schema) = Schema::new().await else {
        return;
    };
    let polling = || Polling {
        request_timeout: "300ms",
        store: schema.store_lines(),
        ..Default::default()
    };
    let sim_cancel = tokio_util::sync::CancellationToken::new();
    let sim = start_sim(&sim_cancel).await;
    let a = Harness::start_on_sim(&sim, polling()).await;
    let open = |i: usize| {
        NewTransfer::new(
            &format!("pg-two-{i}"),
            Script {
                settle: Settle::Manual,
                callback: CallbackMode::Never,
                ..Default::default()
            },
        )
    };
    for i in 0..6 {
        a.track(&open(i)).await;
    }
    wait_until("a polls every window", || async {
        (0..6).all(|i| a.sim.truth(&format!("pg-two-{i}")).unwrap().polls >= 2)
    })
    .await;
    // b starts: it schedules every open window, and finds each leased.
    let b = Harness::start_on_sim(&sim, polling()).await;
    wait_until("b finds every window leased to a", || async {
        b.engine
            .counters
            .windows_leased_elsewhere
            .load(Ordering::Relaxed)
            >= 6
    })
    .await;
    let polled = |h: &Harness| {
        h.engine
            .counters
            .polls_of(ProviderId::Connpay, PollOutcome::Ok)
    };
    assert_eq!(polled(&b), 0, "b polled a window a holds");
    // a stops; its leases run out (2 x 40 ms + 300 ms) and b adopts them.
    // Counted once a has stopped: a poll a had in flight is not b's.
    a.stop().await;
    let before: Vec<u32> = (0..6)
        .map(|i| sim.truth(&format!("pg-two-{i}")).unwrap().polls)
        .collect();
    wait_until("b polls every window a left", || async {
        (0..6).all(|i| sim.truth(&format!("pg-two-{i}")).unwrap().polls > before[i])
    })
    .await;
    // b counts a poll when its answer is in, a moment after the sandbox
    // counted the request.
    wait_until("b counts the polls it took over", || async {
        polled(&b) >= 6
    })
    .await;
    b.stop().await;
    sim.shutdown().await;
    schema.drop().await;
}

const MF_TOKEN_ENV: &str = "TEST_PG_MF_TOKEN";
const MF_TOKEN: &str = "mf-pg-token";
const NOTIFY_SECRET_ENV: &str = "TEST_PG_NOTIFY_SECRET";
const NOTIFY_KEY: [u8; 32] = [7u8; 32];

/// An in-process daemon sending MyFatoorah actions and notifications,
/// on a shared schema.
struct Sender {
    admin: AdminClient,
    cancel: CancellationToken,
    daemon: Option<daemon::Daemon>,
}

impl Sender {
    async fn start(schema: &Schema, mf: &MyfatoorahSim, platform: &PlatformSim) -> Sender {
        use base64::Engine as _;
        let secret = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(NOTIFY_KEY)
        );
        let env = HashMap::from([
            (MF_TOKEN_ENV.to_string(), MF_TOKEN.to_string()),
            (NOTIFY_SECRET_ENV.to_string(), secret),
        ]);
        // Sends that hang (a fault below) stay in flight: the time limit
        // is long, so only a stop ends one.
        let text = format!(
            "[store]\n{}\n\n[callback]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [actions]\ndeadline = \"60s\"\n\n\
             [notify]\nurl = \"{}\"\nsecret_env = \"{NOTIFY_SECRET_ENV}\"\nmin_delay = \"10ms\"\nmax_delay = \"20ms\"\n\n\
             [providers.myfatoorah]\nbase_url = \"{}\"\ntoken_env = \"{MF_TOKEN_ENV}\"\n\n\
             [providers.myfatoorah.polling]\npoll_interval_min = \"1h\"\npoll_interval_max = \"1h\"\n\
             poll_window_min = \"2h\"\npoll_window_max = \"2h\"\nrequest_timeout = \"30s\"\n",
            schema.store_lines(),
            platform.url(),
            mf.base_url()
        );
        let cancel = CancellationToken::new();
        let (d, admin) = start_daemon(&text, &env, &cancel).await;
        Sender {
            admin,
            cancel,
            daemon: Some(d),
        }
    }

    async fn capture(&self, mf: &MyfatoorahSim, invoice: i64) -> Action {
        mf.add_invoice(invoice, 10_000);
        let req = TrackRequest {
            provider: "myfatoorah".into(),
            keys: [("invoice_id".to_string(), invoice.to_string())].into(),
            amount_minor: Some(10_000),
            currency: Some("KWD".into()),
        };
        let pay = self.admin.track(&req).await.unwrap().payment.id;
        let capture = ActionRequest::of(&payrecon::providers::myfatoorah::Request::Capture {
            amount: "10.000".into(),
        });
        self.admin.action(&pay, &capture, None).await.unwrap()
    }

    async fn settled(&self, id: &str) -> Action {
        wait_until("the action is final", || async {
            self.admin.get_action(id).await.unwrap().state.is_final()
        })
        .await;
        self.admin.get_action(id).await.unwrap()
    }

    async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(d) = self.daemon.take() {
            d.wait().await;
        }
    }
}

/// Actions and notifications with several instances on one database:
/// an action is sent by the instance holding its lease, once; one left
/// `sending` by a stopped instance is settled by another by inquiry,
/// never sent again; each payment's notifications are delivered once
/// each, in order, whichever instance sends them.
#[tokio::test]
async fn instances_send_each_action_once_and_settle_a_stopped_one_s_by_inquiry() {
    let Some(schema) = Schema::new().await else {
        return;
    };
    let sims = CancellationToken::new();
    let mf = MyfatoorahSim::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        MF_TOKEN,
        sims.child_token(),
    );
    let platform = PlatformSim::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        NOTIFY_KEY.to_vec(),
        sims.child_token(),
    );
    // a sends a capture the provider applies and never answers.
    let a = Sender::start(&schema, &mf, &platform).await;
    mf.set_faults(Faults {
        apply_then_hang: true,
        ..Default::default()
    });
    let hung = a.capture(&mf, 100).await;
    wait_until("the capture is applied at the provider", || async {
        mf.operations(100) == 1
    })
    .await;
    // b holds off while a's lease runs (a is still waiting for the answer).
    let b = Sender::start(&schema, &mf, &platform).await;
    let held = b.admin.get_action(&hung.id).await.unwrap();
    assert_eq!(held.state, ActionState::Sending);
    // a stops mid-send and gives its lease up; b asks MyFatoorah, learns
    // the capture was applied and does not send it again.
    a.stop().await;
    let settled = b.settled(&hung.id).await;
    assert_eq!(settled.state, ActionState::Succeeded, "{settled:?}");
    assert_eq!(settled.attempts, 1);
    assert_eq!(mf.update_requests(), 1, "the capture was never sent again");

    // b and c take queued actions from one outbox; the provider answers
    // slowly, so two senders of one action would both be in flight.
    let c = Sender::start(&schema, &mf, &platform).await;
    mf.set_faults(Faults {
        latency_ms: 30,
        ..Default::default()
    });
    let mut queued = vec![];
    for i in 0..20 {
        let via = if i % 2 == 0 { &b } else { &c };
        queued.push((200 + i, via.capture(&mf, 200 + i).await));
    }
    for (invoice, action) in &queued {
        let a = b.settled(&action.id).await;
        assert_eq!(a.state, ActionState::Succeeded, "{a:?}");
        assert_eq!(a.attempts, 1, "{a:?}");
        assert_eq!(mf.operations(*invoice), 1, "invoice {invoice}");
    }
    assert_eq!(mf.update_requests(), 21, "each capture sent once");

    // Each payment moved pending -> succeeded: one notification each
    // (21), each delivered once, whichever instance sent it.
    wait_until("every notification is delivered", || async {
        platform.delivered().len() >= 21
    })
    .await;
    b.stop().await;
    c.stop().await;
    let delivered = platform.delivered();
    let mut ids: Vec<&str> = delivered.iter().map(|r| r.webhook_id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), delivered.len(), "a notification delivered twice");
    assert_eq!(delivered.len(), 21);
    assert!(delivered.iter().all(|r| r.verified));
    sims.cancel();
    mf.shutdown().await;
    platform.shutdown().await;
    schema.drop().await;
}

/// `/readyz` asks the database: its round trip and the pool when it
/// answers; a 503 naming the database while it cannot be reached; ready
/// again once it can.
#[tokio::test]
async fn readyz_reports_the_database_and_its_loss() {
    let Some(schema) = Schema::new().await else {
        return;
    };
    let cancel = CancellationToken::new();
    let link = common::proxy::Proxy::start(cancel.clone()).await;
    link.add(schema.server());
    let h = Harness::start(Polling {
        store: schema.store_lines_via(&link.addr.to_string()),
        ..Default::default()
    })
    .await;
    let http = reqwest::Client::new();
    let readyz = || async {
        let r = http
            .get(format!("http://{}/readyz", h.admin_addr))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<serde_json::Value>().await.unwrap())
    };
    let (status, body) = readyz().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["store"]["engine"], "postgres");
    assert!(body["store"]["round_trip_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(body["store"]["pool"]["max"], 4);
    link.cut();
    let (status, body) = readyz().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "not_ready");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("postgres") && message.contains("database"),
        "{message}"
    );
    link.restore();
    wait_until("ready again once the database answers", || async {
        readyz().await.0 == 200
    })
    .await;
    h.stop().await;
    cancel.cancel();
    schema.drop().await;
}
