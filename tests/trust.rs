//! Trust and durability: every 200 comes after a flush that covers what it
//! acknowledges, and a payment's state moves only on evidence the provider
//! signed or confirmed. In-process, against the ConnPay sandbox and a real
//! sled store.

mod common;

use common::*;
use payrecon::model::ProviderId;
use payrecon::providers::connpay::sim::{CallbackMode, NewTransfer, Script, Settle};
use payrecon::providers::RawCallback;
use payrecon::store::Ingested;

fn manual(invoice: &str) -> NewTransfer {
    NewTransfer::new(
        invoice,
        Script {
            settle: Settle::Manual,
            callback: CallbackMode::Never,
            ..Default::default()
        },
    )
}

/// A silent transfer tracked at 12.50 EUR; its payment id.
async fn track_1250(h: &Harness, invoice: &str) -> String {
    let mut t = manual(invoice);
    t.amount_centis = 1250;
    h.track(&t).await
}

/// Polls far apart, so no poll's flush can cover for a missing one.
fn quiet() -> Polling {
    Polling {
        interval: ("60s", "60s"),
        window: ("120s", "120s"),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_repeat_is_answered_only_after_a_flush_covers_the_first_copy() {
    let h = Harness::start(quiet()).await;
    let t = manual("dur-1");
    h.track(&t).await;
    let q = callback_query("approved", "sale", "o-dur-1", "dur-1", CONTROL_KEY);
    let raw = RawCallback {
        method: "GET",
        query: &q,
        body: b"",
        header: &payrecon::providers::no_headers,
    };
    // The first copy and a repeat at once: they may share the writer's
    // group, and then the repeat is judged against a copy not yet on disk.
    let store = h.engine.store();
    let before = store.flushed_tickets();
    let (a, b) = tokio::join!(
        h.engine.ingest(ProviderId::Connpay, &raw),
        h.engine.ingest(ProviderId::Connpay, &raw)
    );
    let after = store.flushed_tickets();
    let mut kinds = [a.unwrap(), b.unwrap()].map(|i| matches!(i, Ingested::Duplicate));
    kinds.sort();
    assert_eq!(kinds, [false, true], "one applied, one repeat");
    assert!(
        after > before,
        "the answers came before any flush covered the first copy"
    );
    h.stop().await;
}

#[tokio::test]
async fn an_answer_that_once_panicked_is_recorded_and_the_payment_still_polled() {
    let (h, mf) = with_myfatoorah(
        "",
        "poll_interval_min = \"20ms\"\npoll_interval_max = \"30ms\"",
    )
    .await;
    mf.add_invoice(4242, 1000);
    mf.set_expiry(4242, "January 1, -262143", "00:00:00.000");
    let id = track_added_invoice(&h, 4242).await;
    wait_until("three polls of the invoice", || async {
        h.get(&id).await.payment.window.unwrap().polls >= 3
    })
    .await;
    let v = h.get(&id).await;
    assert_eq!(v.payment.state, payrecon::state::State::Authorized);
    let history = v.history.unwrap();
    assert!(history[0].fields["unreadable"].contains("-262143"));
    h.stop().await;
    mf.shutdown().await;
}

/// A provider whose first inquiry panics (a bug in an adapter), then
/// answers PROCESSING-like pending.
struct PanicsOnce {
    calls: std::sync::atomic::AtomicU32,
    sends: std::sync::atomic::AtomicU32,
    polling: payrecon::config::PollingConfig,
}

impl payrecon::providers::Provider for PanicsOnce {
    // Stands in for connectFi, whose described actions include set_status.
    fn id(&self) -> ProviderId {
        ProviderId::Connectfi
    }
    fn polling(&self) -> &payrecon::config::PollingConfig {
        &self.polling
    }
    fn track_keys(
        &self,
        keys: &payrecon::model::Keys,
    ) -> Result<payrecon::providers::TrackKeys, String> {
        let inv = keys.get("invoice_id").ok_or("no invoice_id")?;
        Ok(payrecon::providers::TrackKeys {
            idempotency_key: format!("connectfi|idem|{inv}"),
            lookup_keys: vec![format!("connectfi|inv|{inv}")],
        })
    }
    fn lookup_by(&self, _: &str, _: &str) -> Option<String> {
        None
    }
    fn check_action(
        &self,
        _: &payrecon::model::Payment,
        _: &payrecon::action::ActionRequest,
    ) -> Result<payrecon::action::ActionCheck, String> {
        Ok(payrecon::action::ActionCheck {
            exclusive_key: None,
        })
    }
    fn send_action<'a>(
        &'a self,
        _: &'a payrecon::model::Payment,
        _: &'a payrecon::action::ActionRequest,
    ) -> payrecon::providers::BoxFuture<'a, payrecon::providers::Sent> {
        Box::pin(async move {
            let n = self.sends.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::task::yield_now().await;
            if n == 0 {
                panic!("adapter bug while sending");
            }
            Ok((serde_json::json!({"ok": true}), vec![]))
        })
    }
    fn inquire<'a>(
        &'a self,
        _: &'a payrecon::model::Payment,
    ) -> payrecon::providers::BoxFuture<
        'a,
        Result<payrecon::model::Report, payrecon::providers::InquiryError>,
    > {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::task::yield_now().await;
            if n == 0 {
                let expiry: Vec<i64> = vec![];
                panic!("adapter bug: {}", expiry[n as usize]);
            }
            Ok(payrecon::model::Report {
                source: payrecon::model::Source::Poll,
                raw_status: "PROCESSING".into(),
                state: Some(payrecon::state::State::Pending),
                fields: Default::default(),
                learned_keys: vec![],
            })
        })
    }
}

#[tokio::test]
async fn a_panicking_poll_or_action_is_contained_and_the_loops_go_on() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let store = payrecon::store::Store::open(dir.path()).unwrap();
    let provider = Arc::new(PanicsOnce {
        calls: Default::default(),
        sends: Default::default(),
        polling: payrecon::config::PollingConfig {
            poll_interval_min: std::time::Duration::from_millis(10),
            poll_interval_max: std::time::Duration::from_millis(20),
            ..Default::default()
        },
    });
    let cancel = tokio_util::sync::CancellationToken::new();
    let engine = payrecon::engine::Engine::start(
        store,
        vec![provider.clone()],
        payrecon::engine::Settings {
            action_deadline: std::time::Duration::from_secs(60),
            ..Default::default()
        },
        cancel.clone(),
    );
    let id = engine
        .track(payrecon::engine::TrackRequest {
            provider: "connectfi".into(),
            keys: payrecon::model::Keys::from([("invoice_id".to_string(), "p-1".to_string())]),
            amount_minor: Some(100),
            currency: Some("EUR".into()),
        })
        .await
        .unwrap()
        .payment
        .id;
    wait_until("polled again after the panic", || async {
        provider.calls.load(std::sync::atomic::Ordering::SeqCst) >= 3
    })
    .await;
    use payrecon::engine::PollOutcome;
    assert!(
        engine
            .counters
            .polls_of(ProviderId::Connectfi, PollOutcome::Failed)
            >= 1
    );
    wait_until("the later answers recorded", || async {
        let h = engine.store().history(&id).await.unwrap();
        // A repeated answer is counted on the observation it repeats.
        h.iter().map(|o| 1 + o.repeats).sum::<u32>() >= 2
    })
    .await;
    let p = engine.store().get(&id).await.unwrap().unwrap();
    assert!(p.window.unwrap().open);
    assert!(
        p.window.unwrap().polls >= 3,
        "the panicked poll moved the window too"
    );

    // An action whose send panics is parked, never resent blindly; the
    // outbound loop goes on with the next one.
    use payrecon::action::{ActionRequest, ActionState};
    let update = || {
        ActionRequest::of(&payrecon::providers::connectfi::Request::SetStatus {
            status: "Completed".into(),
            description: None,
            manual_status: None,
        })
    };
    let (first, _) = engine.request_action(&id, update(), None).await.unwrap();
    let (second, _) = engine.request_action(&id, update(), None).await.unwrap();
    // They run side by side: whichever is sent first meets the panic.
    let states = || async {
        let store = engine.store();
        let mut s = [
            store.get_action(&first.id).await.unwrap().unwrap(),
            store.get_action(&second.id).await.unwrap().unwrap(),
        ];
        s.sort_by_key(|a| a.state == ActionState::Succeeded);
        s
    };
    wait_until("both actions settled", || async {
        let [parked, sent] = states().await;
        parked.state == ActionState::Unknown && sent.state == ActionState::Succeeded
    })
    .await;
    let [parked, _] = states().await;
    assert!(parked
        .error
        .unwrap()
        .contains("parked after an internal error"));
    assert_eq!(provider.sends.load(std::sync::atomic::Ordering::SeqCst), 2);
    cancel.cancel();
    engine.tasks().close();
    engine.tasks().wait().await;
}

/// GETs a ConnPay callback URL; returns the status code.
async fn send_callback(h: &Harness, query: &str) -> u16 {
    reqwest::get(format!(
        "http://{}/callback/connpay?{query}",
        h.callback_addr
    ))
    .await
    .unwrap()
    .status()
    .as_u16()
}

#[tokio::test]
async fn a_replayed_approval_relabelled_reversal_is_held_until_an_inquiry_confirms_it() {
    use payrecon::state::{Decision, State};
    let h = Harness::start(quiet()).await;
    let t = manual("rev-1");
    let id = h.track(&t).await;
    h.sim.settle("rev-1");
    let approved = callback_query("approved", "sale", "o-rev-1", "rev-1", CONTROL_KEY);
    assert_eq!(send_callback(&h, &approved).await, 200);
    assert_eq!(h.get(&id).await.payment.state, State::Succeeded);
    let polls = h.sim.truth("rev-1").unwrap().polls;

    // The attacker's replay: the signed fields as captured, `type` changed.
    let replay = approved.replace("type=sale", "type=reversal");
    assert_eq!(send_callback(&h, &replay).await, 200);
    wait_until("the claim is checked with the provider", || async {
        h.sim.truth("rev-1").unwrap().polls > polls
    })
    .await;
    wait_until("the inquiry's answer is recorded", || async {
        h.get(&id).await.history.unwrap().len() == 3
    })
    .await;
    let v = h.get(&id).await;
    assert_eq!(
        v.payment.state,
        State::Succeeded,
        "unconfirmed: no reversal"
    );
    let history = v.history.unwrap();
    assert_eq!(history[1].raw_status, "reversal:approved");
    assert_eq!(history[1].decision, Some(Decision::Unconfirmed));
    assert_eq!(history[2].raw_status, "APPROVED", "what the provider said");

    // The same replay with other unsigned values is not a new entry.
    let relabelled = with_amount(&replay, "99.99", "USD");
    assert_eq!(send_callback(&h, &relabelled).await, 200);
    assert_eq!(send_callback(&h, &replay).await, 200);
    assert_eq!(h.get(&id).await.history.unwrap().len(), 3);
    assert_eq!(h.get(&id).await.payment.state, State::Succeeded);
    h.stop().await;
}

/// POSTs a track request to the admin API; returns status and JSON body.
async fn post_track(h: &Harness, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/payments", h.admin_addr))
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn one_invoice_tracked_under_a_second_endpoint_is_a_conflict() {
    let h = Harness::start(quiet()).await;
    let t = manual("dup-inv-1");
    let id = h.track(&t).await;
    let mut other = serde_json::to_value(track_request(&t)).unwrap();
    other["keys"]["endpoint_id"] = "9999".into();
    let (status, body) = post_track(&h, &other).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
    assert!(body["error"]["message"].as_str().unwrap().contains(&id));
    // The first tracking still gets the invoice's callbacks.
    h.sim.settle("dup-inv-1");
    let q = callback_query("approved", "sale", "o-d1", "dup-inv-1", CONTROL_KEY);
    assert_eq!(send_callback(&h, &q).await, 200);
    assert_eq!(
        h.get(&id).await.payment.state,
        payrecon::state::State::Succeeded
    );
    // The same request again is still idempotent.
    let (status, body) = post_track(&h, &serde_json::to_value(track_request(&t)).unwrap()).await;
    assert_eq!(status, 200, "{body}");
    h.stop().await;
}

#[tokio::test]
async fn non_positive_or_absurd_amounts_are_refused_on_track() {
    let h = Harness::start(quiet()).await;
    for (i, bad) in [0i64, -1250, 10_i64.pow(16), i64::MAX]
        .into_iter()
        .enumerate()
    {
        let t = manual(&format!("amt-bad-{i}"));
        let mut req = serde_json::to_value(track_request(&t)).unwrap();
        req["amount_minor"] = bad.into();
        let (status, body) = post_track(&h, &req).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("amount_minor"));
    }
    assert_eq!(h.engine.store().payment_count(), 0);
    h.stop().await;
}

#[tokio::test]
async fn a_callback_naming_other_money_is_recorded_alerted_and_never_success() {
    use payrecon::state::{Decision, State};
    let h = Harness::start(quiet()).await;
    let mut held = vec![];
    for (i, (amount, currency)) in [
        ("-100", "EUR"),
        ("1e308", "EUR"),
        ("abc", "EUR"),
        ("0.01", "EUR"),
        ("12.50", "USD"),
    ]
    .into_iter()
    .enumerate()
    {
        let invoice = format!("amt-{i}");
        let id = track_1250(&h, &invoice).await;
        let q = callback_query(
            "approved",
            "sale",
            &format!("o-amt-{i}"),
            &invoice,
            CONTROL_KEY,
        );
        assert_eq!(
            send_callback(&h, &with_amount(&q, amount, currency)).await,
            200
        );
        let v = h.get(&id).await;
        assert_eq!(v.payment.state, State::Pending, "{amount} {currency}");
        let m = v.payment.mismatch.expect("mismatch recorded");
        assert_eq!(m.reported, format!("{amount} {currency}"));
        let history = v.history.unwrap();
        assert_eq!(
            history.last().unwrap().decision,
            Some(Decision::AmountMismatch)
        );
        assert_eq!(
            history.last().unwrap().fields["amount"],
            amount,
            "the evidence is kept"
        );
        held.push(id);
    }
    // The right money is success; a decline with other money is still a
    // decline, and the mismatch is shown with it.
    let right_id = track_1250(&h, "amt-right").await;
    let q = callback_query("approved", "sale", "o-amt-right", "amt-right", CONTROL_KEY);
    assert_eq!(
        send_callback(&h, &with_amount(&q, "12.50", "EUR")).await,
        200
    );
    assert_eq!(h.get(&right_id).await.payment.state, State::Succeeded);
    assert!(h.get(&right_id).await.payment.mismatch.is_none());
    let declined_id = track_1250(&h, "amt-declined").await;
    let q = callback_query("declined", "sale", "o-amt-d", "amt-declined", CONTROL_KEY);
    assert_eq!(
        send_callback(&h, &with_amount(&q, "99.00", "EUR")).await,
        200
    );
    assert_eq!(h.get(&declined_id).await.payment.state, State::Failed);

    // `list --mismatch` shows exactly those, and export shows the money.
    let page = h
        .admin
        .list_filtered(None, None, true, None, None)
        .await
        .unwrap();
    let mut listed: Vec<String> = page.payments.into_iter().map(|v| v.payment.id).collect();
    listed.sort();
    held.push(declined_id.clone());
    held.sort();
    assert_eq!(listed, held);
    let csv = reqwest::get(format!(
        "http://{}/v1/export?since=2000-01-01&format=csv",
        h.admin_addr
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let row = csv.lines().find(|l| l.starts_with(&declined_id)).unwrap();
    assert!(row.ends_with(",99.00 EUR"), "{row}");
    h.stop().await;
}

#[tokio::test]
async fn replays_for_an_unknown_payment_stop_at_the_per_key_limit_with_a_503() {
    let h = Harness::start(quiet()).await;
    let limit = payrecon::store::DEFAULT_ORPHANS_PER_KEY;
    for i in 0..=limit {
        let q = callback_query(
            "approved",
            &format!("t{i}"),
            "o-x",
            "never-tracked",
            CONTROL_KEY,
        );
        let r = reqwest::get(format!("http://{}/callback/connpay?{q}", h.callback_addr))
            .await
            .unwrap();
        if i < limit {
            assert_eq!(r.status(), 200);
        } else {
            assert_eq!(r.status(), 503);
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "orphan_limit");
        }
    }
    assert_eq!(
        h.engine.store().orphan_count().await.unwrap(),
        limit as usize
    );
    let metrics = scrape(h.admin_addr).await;
    assert!(
        metrics.contains(&format!("payrecon_orphans {limit}")),
        "{metrics}"
    );
    assert!(metrics.contains("payrecon_orphans_refused_total 1"));
    h.stop().await;
}
