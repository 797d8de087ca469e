//! Notifications to the platform: signed the Standard Webhooks way,
//! delivered at least once with one webhook-id per event, in order per
//! payment, and stopped by a 410.

mod common;

use std::collections::HashMap;

use base64::Engine as _;
use common::*;
use payrecon::providers::connpay::sim::{CallbackMode, NewTransfer, Script, Settle};
use payrecon::sim::platform::PlatformSim;
use payrecon::state::State;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const SECRET_ENV: &str = "TEST_NOTIFY_SECRET";

struct Setup {
    h: Harness,
    platform: PlatformSim,
}

async fn setup() -> Setup {
    setup_with("40ms").await
}

async fn setup_with(max_delay: &str) -> Setup {
    setup_notify(&format!("max_delay = \"{max_delay}\"\n")).await
}

/// `[notify]` with `extra` lines (min_delay is 10 ms).
async fn setup_notify(extra: &str) -> Setup {
    let key = [42u8; 32];
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let platform = PlatformSim::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        key.to_vec(),
        CancellationToken::new(),
    );
    let tail = format!(
        "[notify]\nurl = \"{}\"\nsecret_env = \"{SECRET_ENV}\"\nmin_delay = \"10ms\"\n{extra}",
        platform.url()
    );
    let h = Harness::start_with(
        Polling {
            tail,
            ..Default::default()
        },
        "",
        HashMap::from([(SECRET_ENV.to_string(), secret)]),
    )
    .await;
    Setup { h, platform }
}

/// pending → action_required → succeeded (by poll): two changes.
fn two_changes() -> Script {
    Script {
        redirect: true,
        settle: Settle::AfterPolls(3),
        callback: CallbackMode::Never,
        ..Default::default()
    }
}

#[tokio::test]
async fn delivered_after_three_failures_with_one_id_in_order_and_signed() {
    let Setup { h, platform } = setup().await;
    platform.fail_next(3);
    let id = h
        .track(&NewTransfer::new("inv-notify-1", two_changes()))
        .await;
    wait_until("two notifications delivered", || async {
        platform.delivered().len() == 2
    })
    .await;
    let got = platform.received();
    // The first event was refused three times, then taken: one id for all.
    assert_eq!(got.len(), 5, "{got:#?}");
    assert!(got[..3].iter().all(|r| r.status == 503));
    assert!(got[..4].iter().all(|r| r.webhook_id == got[0].webhook_id));
    assert!(got.iter().all(|r| r.verified), "every signature verifies");
    // In order: each event's `from` is the previous one's `to`.
    let delivered = platform.delivered();
    let steps: Vec<(String, String)> = delivered
        .iter()
        .map(|r| {
            assert_eq!(r.body["data"]["payment_id"], id.as_str());
            (
                r.body["data"]["from"].as_str().unwrap().to_string(),
                r.body["data"]["to"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("pending".into(), "action_required".into()),
            ("action_required".into(), "succeeded".into()),
        ]
    );
    assert_eq!(delivered[0].body["type"], "payment.state_changed");
    assert_eq!(delivered[1].body["type"], "payment.final");
    // Ids grow with the order of the changes, and are all distinct.
    let ids: Vec<&str> = delivered.iter().map(|r| r.webhook_id.as_str()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // The session and access tokens never leave payrecon.
    let keys = delivered[0].body["data"]["keys"].as_object().unwrap();
    assert!(keys.contains_key("invoice_id"));
    assert!(
        !keys.contains_key("session_token") && !keys.contains_key("access_token"),
        "{keys:?}"
    );
    wait_until("the outbox is empty", || async {
        h.engine.store().notice_backlog() == 0
    })
    .await;
    assert_eq!(h.get(&id).await.payment.state, State::Succeeded);
    h.stop().await;
    platform.shutdown().await;
}

/// A receiver that answers 302 (to a page that answers anything 200) has
/// not taken the event: payrecon does not follow, counts a failure and
/// sends the same event again.
#[tokio::test]
async fn a_redirect_is_a_failed_delivery_and_is_never_followed() {
    let Setup { h, platform } = setup().await;
    platform.redirect_next(2);
    h.track(&NewTransfer::new("inv-redirect-1", two_changes()))
        .await;
    wait_until("two notifications delivered, outbox empty", || async {
        platform.delivered().len() == 2 && h.engine.store().notice_backlog() == 0
    })
    .await;
    let got = platform.received();
    assert_eq!(got.len(), 4, "{got:#?}");
    assert!(got[..2].iter().all(|r| r.status == 302));
    assert!(got[..3].iter().all(|r| r.webhook_id == got[0].webhook_id));
    assert_eq!(platform.moved(), 0, "a redirect was followed");
    h.stop().await;
    platform.shutdown().await;
}

/// A 429 with Retry-After: the next attempt waits at least that long (up
/// to max_delay), however short the back-off would have been.
#[tokio::test]
async fn a_retry_after_is_honoured_up_to_max_delay() {
    let Setup { h, platform } = setup_with("2h").await;
    platform.throttle_next(1, 3600);
    h.track(&NewTransfer::new("inv-throttle-1", Script::default()))
        .await;
    wait_until("the 429 is recorded on the notice", || async {
        let n = h.engine.store().notices(10).await.unwrap();
        n.first().is_some_and(|n| n.attempts == 1)
    })
    .await;
    let n = h.engine.store().notices(10).await.unwrap().remove(0);
    let wait_ms = n.next_ms.saturating_sub(payrecon::model::now_ms());
    assert!(
        (3_500_000..=3_600_000).contains(&wait_ms),
        "next attempt in {wait_ms} ms, not after the receiver's hour: {n:?}"
    );
    assert_eq!(n.last_error.as_deref(), Some("HTTP 429 Too Many Requests"));
    assert_eq!(platform.received().len(), 1);
    h.stop().await;
    platform.shutdown().await;
}

#[tokio::test]
async fn a_410_disables_the_endpoint_keeps_the_notices_and_a_reload_resumes() {
    let Setup { h, platform } = setup().await;
    platform.set_gone(true);
    h.track(&NewTransfer::new("inv-gone-1", Script::default()))
        .await;
    wait_until("the 410 arrives", || async {
        !platform.received().is_empty()
    })
    .await;
    h.track(&NewTransfer::new("inv-gone-2", Script::default()))
        .await;
    wait_until("both notices queued", || async {
        h.engine.store().notice_backlog() == 2
    })
    .await;
    assert_eq!(
        platform.received().len(),
        1,
        "nothing more goes to a disabled URL"
    );
    // The endpoint is fixed and the operator reloads (SIGHUP does this):
    // delivery resumes, nothing was dropped.
    platform.set_gone(false);
    h.engine.reenable_notifications().await;
    // The receiver records a delivery before payrecon reads its 200 and
    // clears the notice: wait for both.
    wait_until("both delivered after the reload, outbox empty", || async {
        platform.delivered().len() == 2 && h.engine.store().notice_backlog() == 0
    })
    .await;
    h.stop().await;
    platform.shutdown().await;
}

/// Across a kill -9 and a restart, queued notifications keep their ids and
/// are delivered once the platform answers again.
#[tokio::test]
async fn queued_notifications_survive_a_kill_with_their_ids() {
    let key = [7u8; 32];
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let cancel = CancellationToken::new();
    let platform = PlatformSim::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        key.to_vec(),
        cancel.clone(),
    );
    platform.fail_next(u32::MAX);
    let sim = start_sim(&cancel).await;
    let dir = tempfile::tempdir().unwrap();
    let polling = Polling {
        tail: format!(
            "[notify]\nurl = \"{}\"\nsecret_env = \"{SECRET_ENV}\"\nmin_delay = \"10ms\"\nmax_delay = \"20ms\"\n",
            platform.url()
        ),
        ..Default::default()
    };
    let config = write_config(dir.path(), &sim.base_url(), &polling, "");
    let logs = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
    let env = [(SECRET_ENV, secret.as_str())];
    let mut d = Process::spawn(&config, &env, logs.clone());
    sim.set_callback_url(&d.callback_url);
    for i in 0..4 {
        let t = NewTransfer::new(&format!("inv-kill-{i}"), Script::default());
        sim.add(t.clone());
        d.admin.track(&track_request(&t)).await.unwrap();
    }
    // Each payment's event has been tried (and refused) at least once.
    wait_until("every event tried", || async {
        let ids: std::collections::BTreeSet<String> = platform
            .received()
            .into_iter()
            .map(|r| r.webhook_id)
            .collect();
        ids.len() == 4
    })
    .await;
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let tried: std::collections::BTreeSet<String> = platform
        .received()
        .into_iter()
        .map(|r| r.webhook_id)
        .collect();
    drop(d);

    platform.fail_next(0);
    let _d = Process::spawn(&config, &env, logs);
    wait_until("all delivered after the restart", || async {
        platform.delivered().len() >= 4
    })
    .await;
    let delivered: std::collections::BTreeSet<String> = platform
        .delivered()
        .into_iter()
        .map(|r| r.webhook_id)
        .collect();
    assert_eq!(delivered, tried, "the same ids, none lost, none new");
    sim.shutdown().await;
    platform.shutdown().await;
}

/// Dead letters: notifications given up after the horizon are listed by
/// the admin API, and put back by id (API) or by time (the binary's CLI):
/// delivered under their own webhook ids, in their payment's order.
#[tokio::test]
async fn dead_letters_are_listed_and_replayed_under_their_own_ids() {
    let Setup { h, platform } = setup_notify("max_delay = \"20ms\"\nhorizon = \"300ms\"\n").await;
    platform.fail_next(u32::MAX);
    let id = h
        .track(&NewTransfer::new("inv-dead-1", two_changes()))
        .await;
    wait_until("both notifications are dead letters", || async {
        h.engine.store().dead_notices() == 2
    })
    .await;
    let page = h.admin.dead_letters(None, None).await.unwrap();
    let dead: Vec<_> = page
        .notifications
        .iter()
        .map(|d| d.webhook_id.clone())
        .collect();
    assert_eq!(dead.len(), 2, "{:?}", page.notifications);
    for d in &page.notifications {
        assert_eq!(d.payment_id, id);
        assert!(d.attempts >= 1 && d.last_error.as_deref().unwrap_or("").contains("503"));
    }
    // Paged by webhook id.
    let first = h.admin.dead_letters(None, Some(1)).await.unwrap();
    let rest = h
        .admin
        .dead_letters(first.next_after.as_deref(), Some(1))
        .await
        .unwrap();
    assert_eq!(rest.notifications[0].webhook_id, dead[1]);
    // The receiver is back: the first is replayed by its id and delivered
    // under it; a second replay of it finds no dead letter.
    platform.fail_next(0);
    let back = h.admin.replay(&dead[0]).await.unwrap();
    assert_eq!(
        (back.webhook_id.as_str(), back.attempts),
        (dead[0].as_str(), 0)
    );
    wait_until("the replayed notification is delivered", || async {
        platform.delivered().iter().any(|r| r.webhook_id == dead[0])
    })
    .await;
    let again = h.admin.replay(&dead[0]).await.unwrap_err();
    assert!(again.to_string().contains("not_found"), "{again}");
    // The rest by time, from the command line.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_payrecon"))
        .args(["replay", "--since", "2000-01-01", "--admin-url"])
        .arg(format!("http://{}", h.admin_addr))
        .env_remove("PAYRECON_ADMIN_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let replayed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(replayed["replayed"], 1);
    wait_until("both are delivered", || async {
        platform.delivered().len() == 2
    })
    .await;
    let ids: Vec<String> = platform
        .delivered()
        .iter()
        .map(|r| r.webhook_id.clone())
        .collect();
    assert_eq!(ids, dead, "delivered under their own ids, in order");
    assert!(h
        .admin
        .dead_letters(None, None)
        .await
        .unwrap()
        .notifications
        .is_empty());
    h.stop().await;
    platform.shutdown().await;
}
