//! The reconciliation sweep and the circuit breaker, in-process against
//! the ConnPay and MyFatoorah sandboxes on loopback and a real store.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use payrecon::circuit::CircuitState;
use payrecon::engine::{EngineError, PollOutcome};
use payrecon::model::{ProviderId, Source};
use payrecon::providers::connpay::sim::{CallbackMode, NewTransfer, Script, Settle};
use payrecon::providers::myfatoorah::sim::Faults;
use payrecon::state::State;

/// Short windows: a payment is a sweep candidate a moment after tracking.
fn short_windows(tail: &str) -> Polling {
    Polling {
        interval: ("20ms", "30ms"),
        window: ("60ms", "60ms"),
        tail: tail.into(),
        ..Default::default()
    }
}

/// A transfer that settles only when told, and never calls back.
fn silent() -> Script {
    Script {
        settle: Settle::Manual,
        callback: CallbackMode::Never,
        ..Default::default()
    }
}

async fn window_closed(h: &Harness, id: &str) {
    wait_until("the poll window closes", || async {
        !h.get(id).await.payment.window.unwrap().open
    })
    .await;
}

#[tokio::test]
async fn a_sweep_finds_a_final_state_that_no_callback_brought() {
    let h = Harness::start(short_windows("")).await;
    let t = NewTransfer::new("inv-sweep-1", silent());
    let id = h.track(&t).await;
    window_closed(&h, &id).await;
    assert_eq!(h.get(&id).await.payment.state, State::Pending);
    // The sandbox reaches the final state; no callback is sent.
    h.sim.settle(&t.invoice_id);
    let r = h.engine.reconcile(ProviderId::Connpay).await.unwrap();
    assert_eq!((r.candidates, r.asked, r.changed, r.drift), (1, 1, 1, 1));
    let p = h.get(&id).await.payment;
    assert_eq!(p.state, State::Succeeded);
    assert_eq!(p.final_source, Some(Source::Reconcile));
    assert_eq!(h.sim.truth(&t.invoice_id).unwrap().callbacks_sent, 0);
    // Final now: the next sweep has nothing to ask.
    let r = h.engine.reconcile(ProviderId::Connpay).await.unwrap();
    assert_eq!((r.candidates, r.asked), (0, 0));
    // What Prometheus sees: the drift and the transition under their
    // provider, two sweeps timed, and when the last one ended.
    let metrics = scrape(h.admin_addr).await;
    for line in [
        "payrecon_drift_total{provider=\"connpay\"} 1",
        "payrecon_sweeps_total{provider=\"connpay\"} 2",
        "payrecon_sweep_seconds_count{provider=\"connpay\"} 2",
        "payrecon_transitions_total{provider=\"connpay\",to=\"succeeded\"} 1",
        "payrecon_provider_request_seconds_count{provider=\"connpay\",call=\"inquiry\"}",
        "payrecon_build_info{version=\"",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    let swept_at: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "payrecon_last_successful_sweep_timestamp_seconds{provider=\"connpay\"} ",
            )
        })
        .expect("the last sweep's time")
        .parse()
        .unwrap();
    let now = payrecon::model::now_ms() as f64 / 1000.0;
    assert!(
        swept_at <= now && now - swept_at < 60.0,
        "{swept_at} vs {now}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_payment_the_provider_does_not_know_is_drift() {
    let h = Harness::start(short_windows("")).await;
    // Tracked, but never created in the sandbox.
    let t = NewTransfer::new("inv-ghost", silent());
    let id = h.admin.track(&track_request(&t)).await.unwrap().payment.id;
    window_closed(&h, &id).await;
    let r = h.engine.reconcile(ProviderId::Connpay).await.unwrap();
    assert_eq!((r.asked, r.drift, r.changed), (1, 1, 0));
    assert_eq!(h.engine.counters.drift.load(Ordering::Relaxed), 1);
    // Nothing is decided from it.
    assert_eq!(h.get(&id).await.payment.state, State::Pending);
    h.stop().await;
}

#[tokio::test]
async fn a_stale_payment_raises_the_alert_once_then_is_backed_off() {
    // Stale at once; then asked at most hourly.
    let h = Harness::start(short_windows(
        "[providers.connpay.reconcile]\nstale_after = \"1ms\"\nstale_every = \"1h\"\n",
    ))
    .await;
    let t = NewTransfer::new("inv-stale", silent());
    let id = h.track(&t).await;
    window_closed(&h, &id).await;
    let r = h.engine.reconcile(ProviderId::Connpay).await.unwrap();
    assert_eq!((r.asked, r.stale, r.backed_off), (1, 1, 0));
    let polls = h.sim.truth(&t.invoice_id).unwrap().polls;
    // The next runs skip it and raise nothing again.
    for _ in 0..3 {
        let r = h.engine.reconcile(ProviderId::Connpay).await.unwrap();
        assert_eq!((r.asked, r.stale, r.backed_off), (0, 0, 1));
    }
    assert_eq!(h.sim.truth(&t.invoice_id).unwrap().polls, polls);
    assert_eq!(h.engine.counters.stale.load(Ordering::Relaxed), 1);
    h.stop().await;
}

#[tokio::test]
async fn two_sweeps_of_one_provider_never_overlap() {
    let h = Harness::start(short_windows(
        "[providers.connpay.reconcile]\nconcurrency = 1\nrate_per_sec = 1000.0\n",
    ))
    .await;
    let mut ids = vec![];
    for i in 0..3 {
        let t = NewTransfer::new(
            &format!("inv-slow-{i}"),
            Script {
                latency_ms: 300,
                ..silent()
            },
        );
        ids.push(h.track(&t).await);
    }
    for id in &ids {
        window_closed(&h, id).await;
    }
    let engine = h.engine.clone();
    let first = tokio::spawn(async move { engine.reconcile(ProviderId::Connpay).await });
    let before = h.sim.requests();
    wait_until("the first sweep is asking", || async {
        h.sim.requests() > before
    })
    .await;
    match h.engine.reconcile(ProviderId::Connpay).await {
        Err(EngineError::Busy(_)) => {}
        other => panic!("a second sweep ran alongside the first: {other:?}"),
    }
    assert_eq!(first.await.unwrap().unwrap().asked, 3);
    h.stop().await;
}

#[tokio::test]
async fn an_open_circuit_stops_one_provider_while_another_keeps_polling() {
    let (h, mf) = with_myfatoorah(
        "[circuit]\nfailures = 3\ncool_down = \"1h\"\n",
        "poll_interval_min = \"20ms\"\npoll_interval_max = \"30ms\"\nrequest_timeout = \"1s\"\n",
    )
    .await;
    mf.set_faults(Faults {
        error_rate: 1.0,
        ..Default::default()
    });
    for i in 0..3 {
        track_invoice(&h, &mf, 7000 + i).await;
    }
    let breaker = h.engine.breaker(ProviderId::Myfatoorah).unwrap().clone();
    wait_until("MyFatoorah's circuit opens", || async {
        breaker.state() == CircuitState::Open
    })
    .await;
    let mf_calls = mf.requests();
    let skipped = h.engine.counters.polls(PollOutcome::Skipped);
    // ConnPay keeps polling: its transfers settle by poll alone.
    let mut ids = vec![];
    for i in 0..3 {
        let t = NewTransfer::new(
            &format!("inv-cp-{i}"),
            Script {
                callback: CallbackMode::Never,
                ..Default::default()
            },
        );
        ids.push(h.track(&t).await);
    }
    for id in &ids {
        wait_until("the ConnPay transfer settles by poll", || async {
            h.get(id).await.payment.state == State::Succeeded
        })
        .await;
    }
    // MyFatoorah's polls kept falling due but none was sent.
    wait_until("MyFatoorah polls are skipped", || async {
        h.engine.counters.polls(PollOutcome::Skipped) > skipped + 3
    })
    .await;
    assert_eq!(
        mf.requests(),
        mf_calls,
        "a call went through an open circuit"
    );
    assert_eq!(
        h.engine.breaker(ProviderId::Connpay).unwrap().state(),
        CircuitState::Closed
    );
    // The same, as an operator's scraper sees it.
    let metrics = scrape(h.admin_addr).await;
    assert!(
        metrics.contains("payrecon_circuit_state{provider=\"myfatoorah\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("payrecon_circuit_state{provider=\"connpay\"} 0"));
    assert!(metrics.contains("payrecon_circuit_opened_total{provider=\"myfatoorah\"} 1"));
    let skipped_line = metrics
        .lines()
        .find(|l| {
            l.starts_with("payrecon_polls_total{provider=\"myfatoorah\",outcome=\"skipped\"}")
        })
        .unwrap();
    assert!(!skipped_line.ends_with(" 0"), "{skipped_line}");
    for name in [
        "payrecon_callbacks_received_total",
        "payrecon_callbacks_rejected_total",
        "payrecon_callbacks_deduplicated_total",
        "payrecon_poll_lag_seconds_count",
        "payrecon_poll_lag_seconds_bucket{le=",
        "payrecon_notification_delivery_seconds_count",
        "payrecon_transitions_total",
        "payrecon_actions",
        "payrecon_notifications_backlog",
        "payrecon_store_size_bytes",
    ] {
        assert!(metrics.contains(&format!("\n{name}")), "{name} missing");
    }
    h.stop().await;
    mf.shutdown().await;
}

#[tokio::test]
async fn polls_keep_to_the_providers_inquiry_budget() {
    // Ten invoices polled every 20 ms would be 500 inquiries a second; the
    // budget allows 20.
    let (h, mf) = with_myfatoorah(
        "",
        "poll_interval_min = \"20ms\"\npoll_interval_max = \"20ms\"\nrate_per_sec = 20.0\n",
    )
    .await;
    let start = std::time::Instant::now();
    for i in 0..10 {
        track_invoice(&h, &mf, 8000 + i).await;
    }
    wait_until("30 inquiries", || async { mf.requests() >= 30 }).await;
    let n = mf.requests();
    // A bound the budget guarantees however slow the machine: n inquiries
    // need at least (n - 1) gaps of 50 ms.
    let floor = std::time::Duration::from_millis(50 * (n - 1));
    assert!(
        start.elapsed() >= floor,
        "{n} inquiries in {:?}: faster than 20 a second",
        start.elapsed()
    );
    h.stop().await;
    mf.shutdown().await;
}
