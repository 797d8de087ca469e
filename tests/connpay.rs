//! ConnPay end to end, in-process: the sandbox on loopback, the daemon with
//! a real sled store in a temp folder, the admin API and callbacks over
//! real HTTP.

mod common;

use payrecon::engine::PollOutcome;

use std::sync::atomic::Ordering;

use common::*;
use payrecon::model::Source;
use payrecon::providers::connpay::sim::{CallbackMode, NewTransfer, Script, Settle};
use payrecon::state::{Decision, State};

#[tokio::test]
async fn a_transfer_is_settled_by_polling_inside_its_window() {
    let h = Harness::start(Polling::default()).await;
    let t = NewTransfer::new(
        "poll-1",
        Script {
            settle: Settle::AfterPolls(3),
            redirect: true,
            callback: CallbackMode::Never,
            ..Default::default()
        },
    );
    let id = h.track(&t).await;
    wait_until("payment final", || async {
        h.get(&id).await.payment.state.is_final()
    })
    .await;
    let v = h.get(&id).await;
    let p = &v.payment;
    assert_eq!(p.state, State::Succeeded);
    assert_eq!(p.final_source, Some(Source::Poll));
    assert_eq!(p.raw_status.as_deref(), Some("APPROVED"));
    assert!(
        !p.window.unwrap().open,
        "the first final state ends the window"
    );
    let history = v.history.unwrap();
    let raws: Vec<_> = history.iter().map(|o| o.raw_status.as_str()).collect();
    assert_eq!(raws, ["PROCESSING", "REDIRECT_REQUEST", "APPROVED"]);
    assert!(history.iter().all(|o| o.source == Source::Poll));
    assert_eq!(history[2].fields["bank_order_id"], format!("bcp{:08}", 1));
    assert_eq!(p.amount_minor, Some(t.amount_centis));
    // Secrets never come back out of the API.
    assert_eq!(p.keys["access_token"], "[redacted]");
    assert_eq!(p.keys["session_token"], "[redacted]");
    assert_eq!(
        h.sim.truth("poll-1").unwrap().polls,
        3,
        "no poll after the final state"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_transfer_is_settled_by_its_callback_after_the_window() {
    let h = Harness::start(Polling {
        window: ("150ms", "200ms"),
        ..Default::default()
    })
    .await;
    let t = NewTransfer::new(
        "late-1",
        Script {
            settle: Settle::Manual,
            ..Default::default()
        },
    );
    let id = h.track(&t).await;
    h.window_closed(&id).await;
    let polls_in_window = h.sim.truth("late-1").unwrap().polls;
    assert!(polls_in_window >= 1);
    assert_eq!(h.get(&id).await.payment.state, State::Pending);

    h.sim.settle("late-1");
    wait_until("payment final", || async {
        h.get(&id).await.payment.state.is_final()
    })
    .await;
    let p = h.get(&id).await.payment;
    assert_eq!(p.state, State::Succeeded);
    assert_eq!(p.final_source, Some(Source::Callback));
    assert_eq!(
        h.sim.truth("late-1").unwrap().polls,
        polls_in_window,
        "no polls after the window"
    );
    h.stop().await;
}

#[tokio::test]
async fn duplicate_and_out_of_order_callbacks_leave_one_transition() {
    let h = Harness::start(Polling {
        window: ("100ms", "100ms"),
        ..Default::default()
    })
    .await;
    let dup = NewTransfer::new(
        "dup-1",
        Script {
            settle: Settle::Manual,
            callback: CallbackMode::Duplicate,
            ..Default::default()
        },
    );
    let ooo = NewTransfer::new(
        "ooo-1",
        Script {
            settle: Settle::Manual,
            callback: CallbackMode::OutOfOrder,
            ..Default::default()
        },
    );
    let dup_id = h.track(&dup).await;
    let ooo_id = h.track(&ooo).await;
    // The windows close first: a poll that saw the settlement before the
    // callback would be the one to advance the state.
    h.window_closed(&dup_id).await;
    h.window_closed(&ooo_id).await;
    h.sim.settle("dup-1");
    h.sim.settle("ooo-1");
    wait_until("all callbacks acknowledged", || async {
        h.sim.truth("dup-1").unwrap().callbacks_acked == 3
            && h.sim.truth("ooo-1").unwrap().callbacks_acked == 2
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

    let v = h.get(&ooo_id).await;
    assert_eq!(
        v.payment.state,
        State::Succeeded,
        "a stale processing does not regress"
    );
    let callbacks: Vec<_> = v
        .history
        .unwrap()
        .into_iter()
        .filter(|o| o.source == Source::Callback)
        .collect();
    let decisions: Vec<_> = callbacks
        .iter()
        .map(|o| (o.raw_status.as_str(), o.decision))
        .collect();
    assert_eq!(
        decisions,
        [
            ("approved", Some(Decision::Advance)),
            ("processing", Some(Decision::Backwards))
        ]
    );
    assert_eq!(
        h.engine
            .counters
            .callbacks_duplicate
            .load(Ordering::Relaxed),
        2
    );
    h.stop().await;
}

/// ConnPay's `control` does not sign `type`, and its status inquiry knows
/// no reversal: a reversal callback is recorded and held, never applied on
/// its own (docs/providers.md).
#[tokio::test]
async fn a_reversal_after_approval_is_recorded_and_held_unconfirmed() {
    let h = Harness::start(Polling {
        window: ("100ms", "100ms"),
        ..Default::default()
    })
    .await;
    let t = NewTransfer::new(
        "rev-1",
        Script {
            settle: Settle::Manual,
            reversal: true,
            ..Default::default()
        },
    );
    let id = h.track(&t).await;
    // Approved only once the poll window has closed, so the approval comes
    // by callback whatever the machine's load (a poll could otherwise see
    // it first).
    h.window_closed(&id).await;
    h.sim.settle("rev-1");
    wait_until("the reversal recorded", || async {
        h.get(&id)
            .await
            .history
            .unwrap()
            .iter()
            .any(|o| o.decision == Some(Decision::Unconfirmed))
    })
    .await;
    let v = h.get(&id).await;
    assert_eq!(v.payment.state, State::Succeeded);
    assert_eq!(v.payment.final_source, Some(Source::Callback));
    let raws: Vec<_> = v
        .history
        .unwrap()
        .into_iter()
        .filter(|o| o.source == Source::Callback)
        .map(|o| (o.raw_status, o.decision))
        .collect();
    assert_eq!(
        raws,
        [
            ("approved".to_string(), Some(Decision::Advance)),
            ("reversal:approved".to_string(), Some(Decision::Unconfirmed))
        ]
    );
    assert_eq!(
        h.sim.truth("rev-1").unwrap().expected,
        Some(State::Succeeded)
    );
    h.stop().await;
}

#[tokio::test]
async fn a_bad_control_gets_403_and_nothing_is_stored() {
    let h = Harness::start(Polling {
        window: ("100ms", "100ms"),
        ..Default::default()
    })
    .await;
    let t = NewTransfer::new(
        "forge-1",
        Script {
            settle: Settle::Manual,
            callback: CallbackMode::Never,
            ..Default::default()
        },
    );
    let id = h.track(&t).await;
    h.window_closed(&id).await;
    let before = h.get(&id).await.history.unwrap().len();
    let inbox_before = h.engine.store().inbox_len();
    let http = reqwest::Client::new();
    let url = format!("http://{}/callback/connpay", h.callback_addr);

    for (client_orderid, key) in [("forge-1", "wrong-key"), ("unknown-1", "wrong-key")] {
        let q = callback_query("approved", "sale", "o-1", client_orderid, key);
        let r = http.get(format!("{url}?{q}")).send().await.unwrap();
        assert_eq!(r.status(), 403);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "signature_invalid");
    }
    let r = http
        .get(format!("{url}?status=approved&type=sale"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "malformed_callback");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("orderid"));

    let v = h.get(&id).await;
    assert_eq!(v.payment.state, State::Pending);
    assert_eq!(v.history.unwrap().len(), before);
    assert_eq!(h.engine.store().inbox_len(), inbox_before);
    assert_eq!(h.engine.store().orphan_count().await.unwrap(), 0);
    assert_eq!(
        h.engine.counters.callbacks_rejected.load(Ordering::Relaxed),
        3
    );

    // The right key is accepted on the same URL.
    let q = callback_query("approved", "sale", "o-1", "forge-1", CONTROL_KEY);
    assert_eq!(
        http.get(format!("{url}?{q}"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(h.get(&id).await.payment.state, State::Succeeded);
    h.stop().await;
}

#[tokio::test]
async fn a_slow_or_failing_provider_stalls_no_other_payment() {
    let h = Harness::start(Polling {
        request_timeout: "200ms",
        max_in_flight: 16,
        ..Default::default()
    })
    .await;
    let mut bad = vec![];
    for i in 0..4 {
        let slow = NewTransfer::new(
            &format!("slow-{i}"),
            Script {
                settle: Settle::AfterPolls(1),
                latency_ms: 30_000,
                callback: CallbackMode::Never,
                ..Default::default()
            },
        );
        let failing = NewTransfer::new(
            &format!("fail-{i}"),
            Script {
                settle: Settle::AfterPolls(1),
                always_5xx: true,
                callback: CallbackMode::Never,
                ..Default::default()
            },
        );
        bad.push(h.track(&slow).await);
        bad.push(h.track(&failing).await);
    }
    let mut good = vec![];
    for i in 0..10 {
        let t = NewTransfer::new(
            &format!("ok-{i}"),
            Script {
                settle: Settle::AfterPolls(3),
                callback: CallbackMode::Never,
                ..Default::default()
            },
        );
        good.push(h.track(&t).await);
    }
    for id in &good {
        wait_until("healthy payment settled by poll", || async {
            h.get(id).await.payment.state == State::Succeeded
        })
        .await;
    }
    // Meanwhile the bad ones were asked, failed, and are still in their windows.
    wait_until("failed polls counted", || async {
        h.engine.counters.polls(PollOutcome::Failed) >= 8
    })
    .await;
    for id in &bad {
        let p = h.get(id).await.payment;
        assert_eq!(p.state, State::Pending);
        assert!(p.window.unwrap().open);
    }
    h.stop().await;
}

#[tokio::test]
async fn an_orphan_callback_is_matched_once_its_payment_is_tracked() {
    let h = Harness::start(Polling::default()).await;
    let t = NewTransfer::new(
        "orphan-1",
        Script {
            settle: Settle::Manual,
            outcome: payrecon::providers::connpay::sim::Outcome::Declined,
            ..Default::default()
        },
    );
    h.sim.add(t.clone());
    h.sim.settle("orphan-1");
    wait_until("orphan acknowledged", || async {
        h.sim.truth("orphan-1").unwrap().callbacks_acked == 1
    })
    .await;
    assert_eq!(h.engine.store().orphan_count().await.unwrap(), 1);

    let v = h.admin.track(&track_request(&t)).await.unwrap();
    assert_eq!(v.payment.state, State::Failed);
    assert_eq!(v.payment.final_source, Some(Source::Callback));
    assert!(
        !v.payment.window.unwrap().open,
        "no polling for a payment already final"
    );
    assert_eq!(h.engine.store().orphan_count().await.unwrap(), 0);
    h.stop().await;
}

#[tokio::test]
async fn the_admin_api_is_idempotent_paged_and_answers_errors_in_one_shape() {
    let h = Harness::start(Polling {
        window: ("50ms", "50ms"),
        ..Default::default()
    })
    .await;
    let t = NewTransfer::new(
        "api-1",
        Script {
            settle: Settle::Manual,
            callback: CallbackMode::Never,
            ..Default::default()
        },
    );
    h.sim.add(t.clone());
    let http = reqwest::Client::new();
    let base = format!("http://{}", h.admin_addr);
    let r1 = http
        .post(format!("{base}/v1/payments"))
        .json(&track_request(&t))
        .send()
        .await
        .unwrap();
    assert_eq!(r1.status(), 201);
    let r2 = http
        .post(format!("{base}/v1/payments"))
        .json(&track_request(&t))
        .send()
        .await
        .unwrap();
    assert_eq!(r2.status(), 200);
    let (a, b): (serde_json::Value, serde_json::Value) =
        (r1.json().await.unwrap(), r2.json().await.unwrap());
    assert_eq!(a["id"], b["id"]);

    for i in 0..4 {
        h.track(&NewTransfer::new(
            &format!("api-p{i}"),
            Script {
                settle: Settle::Manual,
                callback: CallbackMode::Never,
                ..Default::default()
            },
        ))
        .await;
    }
    let page1 = h
        .admin
        .list(None, Some("connpay"), Some(3), None)
        .await
        .unwrap();
    assert_eq!(page1.payments.len(), 3);
    let page2 = h
        .admin
        .list(None, None, Some(3), page1.next_after.as_deref())
        .await
        .unwrap();
    assert_eq!(page2.payments.len(), 2);
    assert!(page2.next_after.is_none());
    let pending = h
        .admin
        .list(Some("pending"), None, None, None)
        .await
        .unwrap();
    assert_eq!(pending.payments.len(), 5);

    let cases = [
        (
            http.get(format!("{base}/v1/payments/pay_nope")),
            404,
            "not_found",
        ),
        (
            http.post(format!("{base}/v1/payments")).body("{not json"),
            400,
            "invalid_json",
        ),
        (
            http.post(format!("{base}/v1/payments"))
                .json(&serde_json::json!({"provider": "connpay", "keys": {"invoice_id": "x"}})),
            400,
            "invalid_request",
        ),
        (
            http.post(format!("{base}/v1/payments"))
                .json(&serde_json::json!({"provider": "paypal", "keys": {}})),
            400,
            "unknown_provider",
        ),
        (
            http.get(format!("{base}/v1/payments?state=approved")),
            400,
            "invalid_query",
        ),
        (
            http.get(format!("{base}/v1/payments?limit=0")),
            400,
            "invalid_query",
        ),
        (
            http.delete(format!("{base}/v1/payments")),
            405,
            "method_not_allowed",
        ),
        (http.get(format!("{base}/nowhere")), 404, "not_found"),
        // The callback listener serves no admin routes.
        (
            http.get(format!("http://{}/v1/payments", h.callback_addr)),
            404,
            "not_found",
        ),
    ];
    for (req, status, code) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), status);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(body["error"]["message"].is_string());
    }
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    h.stop().await;
}

#[tokio::test]
async fn the_admin_token_is_required_when_configured() {
    let env = std::collections::HashMap::from([(
        "TEST_ADMIN_TOKEN".to_string(),
        "s3cret-token".to_string(),
    )]);
    let h = Harness::start_with(Polling::default(), "token_env = \"TEST_ADMIN_TOKEN\"", env).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", h.admin_addr);
    let r = http
        .get(format!("{base}/v1/payments"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{base}/v1/payments"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{base}/v1/payments"))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    h.stop().await;
}

#[tokio::test]
async fn payments_are_found_by_the_providers_own_identifiers() {
    let h = Harness::start(Polling::default()).await;
    let t = NewTransfer::new(
        "find-1",
        Script {
            settle: Settle::AfterPolls(1),
            callback: CallbackMode::Never,
            ..Default::default()
        },
    );
    let id = h.track(&t).await;
    assert_eq!(
        h.admin
            .find("connpay", "invoice_id", "find-1")
            .await
            .unwrap()
            .payment
            .id,
        id
    );
    // The gateway's order id is learned from the first poll.
    wait_until("final", || async {
        h.get(&id).await.payment.state.is_final()
    })
    .await;
    assert_eq!(
        h.admin
            .find("connpay", "order_id", "cp00000001")
            .await
            .unwrap()
            .payment
            .id,
        id
    );
    let err = h
        .admin
        .find("connpay", "invoice_id", "nope")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    // A name ConnPay payments are not indexed by names no payment either.
    let err = h.admin.find("connpay", "colour", "blue").await.unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    assert!(err.to_string().contains("not found by `colour`"), "{err}");
    h.stop().await;
}

#[tokio::test]
async fn the_callback_listener_bounds_body_size_and_header_time() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start(Polling::default()).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/callback/connpay", h.callback_addr);
    let r = http.post(&url).body(vec![b'a'; 5000]).send().await.unwrap();
    assert_eq!(r.status(), 413);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "body_too_large");

    // A client that never finishes its headers is cut off.
    let mut s = tokio::net::TcpStream::connect(h.callback_addr)
        .await
        .unwrap();
    s.write_all(b"GET /callback/connpay HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = vec![];
    let read = tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "connection still open after the header-read timeout"
    );
    assert_eq!(h.engine.store().inbox_len(), 0);
    h.stop().await;
}

/// Seed 002: `session.accessToken` comes only with "Optional consumer
/// authentication"; without it the field is left out of the inquiry.
#[tokio::test]
async fn a_transfer_without_an_access_token_is_tracked_and_polled() {
    let h = Harness::start(Polling::default()).await;
    let mut t = NewTransfer::new(
        "no-access-1",
        Script {
            settle: Settle::AfterPolls(2),
            callback: CallbackMode::Never,
            ..Default::default()
        },
    );
    t.access_token = None;
    let id = h.track(&t).await;
    wait_until("payment final", || async {
        h.get(&id).await.payment.state.is_final()
    })
    .await;
    let p = h.get(&id).await.payment;
    assert_eq!(p.state, State::Succeeded);
    assert!(!p.keys.contains_key("access_token"));
    assert_eq!(h.sim.truth("no-access-1").unwrap().polls, 2);
    h.stop().await;
}
