//! The store, through its public face: on a real sled store on disk, and
//! the tests marked so also on PostgreSQL when `PAYRECON_TEST_DATABASE_URL`
//! names a server (a schema of their own, dropped at the end).

use super::*;
use crate::model::{Keys, PollWindow, ProviderId, Source};
use crate::state::{Decision, State};
use std::collections::BTreeMap;

/// An engine a test runs on: sled in a temporary folder, or PostgreSQL
/// in a schema of its own.
pub(super) struct Each {
    dir: tempfile::TempDir,
    pg: Option<pg::tests::Scratch>,
}

impl Each {
    /// The store opened again on the same data (the caller has dropped
    /// its last handle on the previous one).
    pub async fn reopen(&self) -> Store {
        match &self.pg {
            None => reopen(self.dir.path()).await,
            Some(s) => Store::open_postgres(&s.settings).await.unwrap(),
        }
    }

    pub async fn done(self) {
        if let Some(s) = self.pg {
            s.drop().await;
        }
    }
}

/// sled always; PostgreSQL too when the tests have a server.
pub(super) async fn each_engine() -> Vec<(Each, Store)> {
    let dir = tempfile::tempdir().unwrap();
    let sled = Store::open(dir.path()).unwrap();
    let mut out = vec![(Each { dir, pg: None }, sled)];
    if let Some(s) = pg::tests::Scratch::new().await {
        let store = Store::open_postgres(&s.settings).await.unwrap();
        let each = Each {
            dir: tempfile::tempdir().unwrap(),
            pg: Some(s),
        };
        out.push((each, store));
    }
    out
}

pub(super) fn report(source: Source, raw: &str, state: Option<State>) -> Report {
    Report {
        source,
        raw_status: raw.into(),
        state,
        fields: BTreeMap::new(),
        learned_keys: vec![],
    }
}

pub(super) fn new_payment(inv: &str) -> NewPayment {
    NewPayment {
        provider: ProviderId::Connpay,
        keys: Keys::from([("invoice_id".to_string(), inv.to_string())]),
        idempotency_key: format!("connpay|idem|{inv}"),
        lookup_keys: vec![format!("connpay|inv|{inv}")],
        amount_minor: Some(100),
        currency: Some("EUR".into()),
        window: Some(PollWindow {
            ends_ms: 10_000,
            next_ms: 1_000,
            polls: 0,
            open: true,
        }),
        now_ms: 0,
    }
}

fn callback(inv: &str, status: &str, state: State) -> CallbackRecord {
    CallbackRecord {
        dedupe_key: format!("connpay|{status}|sale|o-{inv}|{inv}"),
        match_key: format!("connpay|inv|{inv}"),
        report: report(Source::Callback, status, Some(state)),
        received_ms: 5,
        unsigned_claim: false,
    }
}

#[tokio::test]
async fn track_is_idempotent_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let store = Store::open(dir.path()).unwrap();
        let a = store.track(new_payment("inv-1")).await.unwrap();
        let b = store.track(new_payment("inv-1")).await.unwrap();
        assert!(a.created && !b.created);
        assert_eq!(a.payment.id, b.payment.id);
        store.sync().await.unwrap();
        a.payment.id
    };
    // sled holds a file lock until every handle is gone.
    tokio::task::yield_now().await;
    let store = reopen(dir.path()).await;
    let p = store.get(&id).await.unwrap().unwrap();
    assert_eq!(p.state, State::Pending);
    assert_eq!(
        store.find("connpay|inv|inv-1").await.unwrap(),
        Some(id.clone())
    );
    assert_eq!(
        store.open_windows().await.unwrap(),
        vec![(id, ProviderId::Connpay, 1_000)]
    );
}

pub(super) async fn reopen(path: &std::path::Path) -> Store {
    for _ in 0..100 {
        if let Ok(s) = Store::open(path) {
            return s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("store did not reopen");
}

#[tokio::test]
async fn duplicate_callbacks_leave_one_entry_and_late_news_does_not_regress() {
    for (e, store) in each_engine().await {
        let id = store.track(new_payment("inv-2")).await.unwrap().payment.id;
        let cb = callback("inv-2", "approved", State::Succeeded);
        let Ingested::Applied(o) = store.ingest_callback(cb.clone()).await.unwrap() else {
            panic!("not applied")
        };
        assert_eq!(o.change.unwrap().to, State::Succeeded);
        assert!(matches!(
            store.ingest_callback(cb.clone()).await.unwrap(),
            Ingested::Duplicate
        ));
        let late = store
            .observe(
                &id,
                report(Source::Poll, "PROCESSING", Some(State::Pending)),
                WindowChange::Keep,
                9,
            )
            .await
            .unwrap();
        assert!(late.change.is_none());
        assert_eq!(late.observation.decision, Some(Decision::Backwards));
        let p = store.get(&id).await.unwrap().unwrap();
        assert_eq!(p.state, State::Succeeded);
        assert_eq!(p.final_source, Some(Source::Callback));
        assert!(!p.window.unwrap().open, "final closes the window");
        assert!(store.open_windows().await.unwrap().is_empty());
        assert_eq!(store.history(&id).await.unwrap().len(), 2);
        drop(store);
        e.done().await;
    }
}

#[tokio::test]
async fn orphans_are_applied_when_their_payment_is_tracked() {
    for (e, store) in each_engine().await {
        let cb = callback("inv-3", "declined", State::Failed);
        assert!(matches!(
            store.ingest_callback(cb.clone()).await.unwrap(),
            Ingested::Orphaned
        ));
        assert!(matches!(
            store.ingest_callback(cb.clone()).await.unwrap(),
            Ingested::Duplicate
        ));
        assert_eq!(store.orphan_count().await.unwrap(), 1);
        let t = store.track(new_payment("inv-3")).await.unwrap();
        assert_eq!(t.payment.state, State::Failed);
        assert_eq!(t.changes.len(), 1);
        assert_eq!(store.orphan_count().await.unwrap(), 0);
        assert!(store.open_windows().await.unwrap().is_empty());
        // A retry after the match is still a duplicate.
        assert!(matches!(
            store.ingest_callback(cb.clone()).await.unwrap(),
            Ingested::Duplicate
        ));
        drop(store);
        e.done().await;
    }
}

fn orphan(inv: &str, kind: &str) -> CallbackRecord {
    let mut cb = callback(inv, "approved", State::Succeeded);
    cb.dedupe_key = format!("connpay|cb|approved|{kind}|o-{inv}|{inv}");
    cb
}

#[tokio::test]
async fn orphans_are_one_record_each_within_their_limits() {
    for (e, store) in each_engine().await {
        store.set_orphan_limits(3, 5);
        for kind in ["a", "b", "c"] {
            assert!(matches!(
                store.ingest_callback(orphan("inv-o1", kind)).await.unwrap(),
                Ingested::Orphaned
            ));
        }
        // A fourth under the same key is refused, and nothing of it stored.
        let inbox = store.inbox_len();
        assert!(matches!(
            store.ingest_callback(orphan("inv-o1", "d")).await,
            Err(StoreError::OrphanLimit(_))
        ));
        assert_eq!(store.inbox_len(), inbox);
        for inv in ["inv-o2", "inv-o3"] {
            store.ingest_callback(orphan(inv, "a")).await.unwrap();
        }
        assert!(matches!(
            store.ingest_callback(orphan("inv-o4", "a")).await,
            Err(StoreError::OrphanLimit(_))
        ));
        assert_eq!(store.orphan_count().await.unwrap(), 5);
        // Tracking applies and removes them, in the order they came.
        let t = store.track(new_payment("inv-o1")).await.unwrap();
        assert_eq!(t.payment.observations, 3);
        assert_eq!(store.orphan_count().await.unwrap(), 2);
        drop(store);
        e.done().await;
    }
}

#[tokio::test]
async fn replayed_orphans_grow_the_store_linearly() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.set_orphan_limits(2_000, 10_000);
    let mut all = tokio::task::JoinSet::new();
    for i in 0..2_000 {
        let s = store.clone();
        all.spawn(async move {
            s.ingest_callback(orphan("inv-flood", &format!("t{i}")))
                .await
                .unwrap();
        });
    }
    all.join_all().await;
    store.sync().await.unwrap();
    // One list rewritten per orphan reached 590 MB for this.
    let size = store.size_on_disk();
    assert!(size < 64 << 20, "{size} bytes for 2,000 orphans");
    assert_eq!(store.orphan_count().await.unwrap(), 2_000);
}

#[tokio::test]
async fn expired_orphans_are_forgotten_with_their_inbox_entry() {
    for (e, store) in each_engine().await {
        let mut old = orphan("inv-e1", "a");
        old.received_ms = 1_000;
        let mut young = orphan("inv-e1", "b");
        young.received_ms = 9_000;
        store.ingest_callback(old.clone()).await.unwrap();
        store.ingest_callback(young.clone()).await.unwrap();
        assert_eq!(store.expire_orphans(5_000).await.unwrap(), 1);
        assert_eq!(store.orphan_count().await.unwrap(), 1);
        // The provider sending it again is heard, not taken as a repeat.
        assert!(matches!(
            store.ingest_callback(old.clone()).await.unwrap(),
            Ingested::Orphaned
        ));
        assert_eq!(store.expire_orphans(5_000).await.unwrap(), 1);
        assert_eq!(store.expire_orphans(5_000).await.unwrap(), 0);
        let t = store.track(new_payment("inv-e1")).await.unwrap();
        assert_eq!(t.payment.observations, 1, "only the young one is left");
        drop(store);
        e.done().await;
    }
}

#[tokio::test]
async fn orphan_lists_of_the_oldest_layout_are_migrated_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        // A format 1 store with orphans as a JSON list per lookup key.
        let db = ::sled::open(dir.path()).unwrap();
        db.open_tree("payments").unwrap();
        let list = vec![orphan("inv-m1", "a"), orphan("inv-m1", "b")];
        let json = serde_json::to_vec(&list).unwrap();
        db.open_tree("orphans")
            .unwrap()
            .insert("connpay|inv|inv-m1", json)
            .unwrap();
        db.flush().unwrap();
    }
    let store = reopen(dir.path()).await;
    assert_eq!(store.orphan_count().await.unwrap(), 2);
    let t = store.track(new_payment("inv-m1")).await.unwrap();
    assert_eq!(t.payment.observations, 2);
    assert_eq!(store.orphan_count().await.unwrap(), 0);
}

#[tokio::test]
async fn concurrent_syncs_share_flushes() {
    for (e, store) in each_engine().await {
        let mut tasks = vec![];
        for i in 0..50 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.track(new_payment(&format!("inv-c{i}"))).await.unwrap();
                s.sync().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(store.list(None, None, None, 100).await.unwrap().len(), 50);
        let page = store.list(None, None, None, 20).await.unwrap();
        let next = store
            .list(None, None, Some(&page[19].id), 100)
            .await
            .unwrap();
        assert_eq!(next.len(), 30);
        drop(store);
        e.done().await;
    }
}

#[tokio::test]
async fn a_repeated_poll_answer_is_counted_not_recorded() {
    for (e, store) in each_engine().await {
        let id = store.track(new_payment("inv-r1")).await.unwrap().payment.id;
        let poll = |raw: &str| report(Source::Poll, raw, Some(State::Pending));
        let first = store
            .observe(&id, poll("PROCESSING"), WindowChange::Next(2_000), 1_000)
            .await
            .unwrap();
        assert!(!first.repeat);
        let flushes = store.flushed_tickets();
        for i in 0..5u64 {
            let o = store
                .observe(
                    &id,
                    poll("PROCESSING"),
                    WindowChange::Next(3_000 + i),
                    2_000 + i,
                )
                .await
                .unwrap();
            assert!(o.repeat && o.change.is_none());
            assert_eq!(o.observation.seq, first.observation.seq);
        }
        assert_eq!(store.flushed_tickets(), flushes, "a repeat wrote nothing");
        // Readers see the counts held in memory.
        let p = store.get(&id).await.unwrap().unwrap();
        assert_eq!(p.window.unwrap().polls, 6);
        assert_eq!(p.window.unwrap().next_ms, 3_004);
        let h = store.history(&id).await.unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(
            (h[0].at_ms, h[0].repeats, h[0].last_ms),
            (1_000, 5, Some(2_004))
        );
        // Something new is recorded, and the counts are written with it.
        let moved = store
            .observe(&id, poll("WAITING_3DS"), WindowChange::Next(9_000), 8_000)
            .await
            .unwrap();
        assert!(!moved.repeat);
        assert_eq!(moved.payment.window.unwrap().polls, 7);
        store.close().await.unwrap();
        drop(store);
        let store = e.reopen().await;
        let h = store.history(&id).await.unwrap();
        let seen: Vec<_> = h
            .iter()
            .map(|o| (o.raw_status.as_str(), o.repeats))
            .collect();
        assert_eq!(seen, [("PROCESSING", 5), ("WAITING_3DS", 0)]);
        assert_eq!(h[0].last_ms, Some(2_004));
        assert_eq!(
            store.get(&id).await.unwrap().unwrap().window.unwrap().polls,
            7
        );
        drop(store);
        e.done().await;
    }
}

#[tokio::test]
async fn repeat_counts_survive_a_clean_stop_and_a_callback_breaks_the_run() {
    for (e, store) in each_engine().await {
        let id = store.track(new_payment("inv-r2")).await.unwrap().payment.id;
        let poll = || report(Source::Poll, "PROCESSING", Some(State::Pending));
        for t in 0..3 {
            store
                .observe(&id, poll(), WindowChange::Next(10_000), 1_000 + t)
                .await
                .unwrap();
        }
        // A callback comes between: the same poll answer after it is news.
        let mut cb = callback("inv-r2", "processing", State::Pending);
        cb.report.raw_status = "processing".into();
        store.ingest_callback(cb.clone()).await.unwrap();
        let after = store
            .observe(&id, poll(), WindowChange::Next(10_000), 5_000)
            .await
            .unwrap();
        assert!(!after.repeat);
        store
            .observe(&id, poll(), WindowChange::Next(10_000), 6_000)
            .await
            .unwrap();
        // Only the stop writes the last repeat.
        store.close().await.unwrap();
        drop(store);
        let store = e.reopen().await;
        let h = store.history(&id).await.unwrap();
        let seen: Vec<_> = h.iter().map(|o| (o.source, o.repeats, o.last_ms)).collect();
        assert_eq!(
            seen,
            [
                (Source::Poll, 2, Some(1_002)),
                (Source::Callback, 0, None),
                (Source::Poll, 1, Some(6_000)),
            ]
        );
        assert_eq!(
            store.get(&id).await.unwrap().unwrap().window.unwrap().polls,
            5
        );
        drop(store);
        e.done().await;
    }
}

#[tokio::test]
async fn a_window_is_leased_to_one_instance_at_a_time() {
    for (e, store) in each_engine().await {
        let a = store.track(new_payment("inv-l1")).await.unwrap().payment.id;
        let shared = e.pg.is_some();
        // Instance "a" polls it; "b" may not while a's lease runs.
        assert!(store
            .claim_window(&a, Lease::at("a", 1_000, 5_000))
            .await
            .unwrap());
        assert_eq!(
            store
                .claim_window(&a, Lease::at("b", 2_000, 6_000))
                .await
                .unwrap(),
            !shared
        );
        assert!(store
            .claim_window(&a, Lease::at("a", 3_000, 7_000))
            .await
            .unwrap());
        // a stops renewing (it died): after the lease, b takes it.
        assert!(store
            .claim_window(&a, Lease::at("b", 7_001, 11_000))
            .await
            .unwrap());
        assert_eq!(
            store
                .claim_window(&a, Lease::at("a", 8_000, 12_000))
                .await
                .unwrap(),
            !shared
        );
        // Windows nobody holds: claimed once, by one of two instances
        // asking together, and not again while the lease runs.
        let mut ids = vec![];
        for i in 0..20 {
            let t = store
                .track(new_payment(&format!("inv-l2-{i}")))
                .await
                .unwrap();
            ids.push(t.payment.id);
        }
        let (x, y) = tokio::join!(
            store.claim_free_windows(Lease::at("x", 9_000, 20_000), 100),
            store.claim_free_windows(Lease::at("y", 9_000, 20_000), 100)
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        if shared {
            let mut all: Vec<String> = x.iter().chain(&y).map(|w| w.0.clone()).collect();
            all.sort();
            let mut want = ids.clone();
            want.sort();
            assert_eq!(all, want, "each free window claimed once");
            assert!(store
                .claim_free_windows(Lease::at("z", 10_000, 30_000), 100)
                .await
                .unwrap()
                .is_empty());
            // b's lease on the first ran out at 11 000.
            let later = store
                .claim_free_windows(Lease::at("z", 11_001, 30_000), 100)
                .await
                .unwrap();
            assert_eq!(later.len(), 1);
            assert_eq!(later[0].0, a);
        } else {
            assert!(
                x.is_empty() && y.is_empty(),
                "one instance owns a sled store"
            );
        }
        drop(store);
        e.done().await;
    }
}

#[tokio::test]
async fn a_named_lease_has_one_holder_until_it_runs_out_or_is_given_up() {
    for (e, store) in each_engine().await {
        let shared = e.pg.is_some();
        assert!(store
            .take_lease("sweep:connpay", Lease::at("a", 1_000, 5_000))
            .await
            .unwrap());
        assert_eq!(
            store
                .take_lease("sweep:connpay", Lease::at("b", 2_000, 6_000))
                .await
                .unwrap(),
            !shared
        );
        // Renewed by its holder; another name is another lease.
        assert!(store
            .take_lease("sweep:connpay", Lease::at("a", 3_000, 9_000))
            .await
            .unwrap());
        assert!(store
            .take_lease("sweep:crm", Lease::at("b", 3_000, 9_000))
            .await
            .unwrap());
        assert_eq!(
            store
                .take_lease("sweep:connpay", Lease::at("b", 8_000, 12_000))
                .await
                .unwrap(),
            !shared
        );
        // Run out: b takes it; given up: a takes it back at once.
        assert!(store
            .take_lease("sweep:connpay", Lease::at("b", 9_001, 12_000))
            .await
            .unwrap());
        store.release_lease("sweep:connpay", "b").await.unwrap();
        assert!(store
            .take_lease("sweep:connpay", Lease::at("a", 9_002, 12_000))
            .await
            .unwrap());
        drop(store);
        e.done().await;
    }
}

fn queued_action(payment_id: &str) -> Action {
    Action {
        id: String::new(),
        payment_id: payment_id.into(),
        provider: ProviderId::Connpay,
        request: crate::action::ActionRequest {
            action: "reject".into(),
            fields: Default::default(),
        },
        state: crate::action::ActionState::Queued,
        idempotency_key: None,
        created_ms: 1,
        updated_ms: 1,
        deadline_ms: 1_000_000,
        attempts: 0,
        answer: None,
        error: None,
        details: None,
    }
}

#[tokio::test]
async fn an_action_is_claimed_by_one_instance_and_read_as_stored() {
    use crate::action::ActionState;
    for (e, store) in each_engine().await {
        let shared = e.pg.is_some();
        let p = store.track(new_payment("inv-a1")).await.unwrap().payment.id;
        let Enqueued::Created(mut a) = store.enqueue_action(queued_action(&p), None).await.unwrap()
        else {
            panic!("a new action is created");
        };
        // a takes it and reads it as stored.
        let got = store.claim_action(&a.id, Lease::at("a", 1_000, 5_000));
        assert_eq!(got.await.unwrap().as_ref(), Some(&a));
        a.state = ActionState::Sending;
        a.attempts = 1;
        store.update_action(&a, vec![]).await.unwrap();
        // b may not while a's lease runs; a renews it and sees its mark.
        let b = store.claim_action(&a.id, Lease::at("b", 2_000, 6_000));
        assert_eq!(b.await.unwrap().is_some(), !shared);
        let renewed = store.claim_action(&a.id, Lease::at("a", 3_000, 9_000));
        assert_eq!(renewed.await.unwrap().unwrap().state, ActionState::Sending);
        // a died: after its lease b takes the action over, `sending`, to
        // settle it by inquiry; a's renewal then fails.
        let b = store.claim_action(&a.id, Lease::at("b", 9_001, 20_000));
        assert_eq!(b.await.unwrap().unwrap().state, ActionState::Sending);
        let a_again = store.claim_action(&a.id, Lease::at("a", 9_500, 20_000));
        assert_eq!(a_again.await.unwrap().is_some(), !shared);
        // Given up, it is free at once.
        store.release_action(&a.id, "b").await.unwrap();
        let a_again = store.claim_action(&a.id, Lease::at("a", 9_600, 20_000));
        assert!(a_again.await.unwrap().is_some());
        // A final action is claimed by nobody.
        a.state = ActionState::Succeeded;
        store.update_action(&a, vec![]).await.unwrap();
        let after = store.claim_action(&a.id, Lease::at("a", 9_700, 30_000));
        assert!(after.await.unwrap().is_none());
        drop(store);
        e.done().await;
    }
}

#[tokio::test]
async fn a_payments_notices_have_one_sender_and_go_in_order() {
    for (e, store) in each_engine().await {
        let shared = e.pg.is_some();
        store.enable_notices(true);
        let id = store.track(new_payment("inv-n1")).await.unwrap().payment.id;
        let moves = [("auth", State::Authorized), ("approved", State::Succeeded)];
        for (raw, state) in moves {
            let r = report(Source::Poll, raw, Some(state));
            store
                .observe(&id, r, WindowChange::Keep, 2_000)
                .await
                .unwrap();
        }
        let queued = store.notices(10).await.unwrap();
        assert_eq!(queued.len(), 2);
        let (first, second) = (queued[0].seq, queued[1].seq);
        // The second is not taken while the first waits: order per payment.
        let early = store.claim_notice(second, Lease::at("a", 1_000, 5_000));
        assert_eq!(early.await.unwrap(), !shared);
        assert!(store
            .claim_notice(first, Lease::at("a", 1_000, 5_000))
            .await
            .unwrap());
        // One sender: b waits for a's lease.
        let b = store.claim_notice(first, Lease::at("b", 2_000, 6_000));
        assert_eq!(b.await.unwrap(), !shared);
        // a's attempt failed and is recorded: that gives the lease up.
        let mut n = queued[0].clone();
        n.attempts = 1;
        n.next_ms = 3_000;
        store.update_notice(&n).await.unwrap();
        let b = store.claim_notice(first, Lease::at("b", 2_500, 6_000));
        assert!(b.await.unwrap());
        // b delivers it; then the second is the payment's oldest.
        store.remove_notice(&n, false).await.unwrap();
        assert!(
            !store
                .claim_notice(first, Lease::at("b", 2_600, 6_000))
                .await
                .unwrap()
                || !shared
        );
        assert!(store
            .claim_notice(second, Lease::at("a", 2_700, 6_000))
            .await
            .unwrap());
        drop(store);
        e.done().await;
    }
}

/// A callback and its payment's track arriving at once (on PostgreSQL:
/// at two instances): the callback is applied to the payment, never left
/// an orphan beside it.
#[tokio::test]
async fn a_callback_racing_its_payments_track_is_applied_not_left_an_orphan() {
    for (e, store) in each_engine().await {
        // On PostgreSQL a second instance: its own pool on the same schema.
        let other = match e.pg {
            Some(_) => e.reopen().await,
            None => store.clone(),
        };
        for i in 0..40 {
            let inv = format!("inv-race-{i}");
            let (tracked, ingested) = tokio::join!(
                store.track(new_payment(&inv)),
                other.ingest_callback(callback(&inv, "approved", State::Succeeded))
            );
            let id = tracked.unwrap().payment.id;
            ingested.unwrap();
            let h = store.history(&id).await.unwrap();
            assert!(
                h.iter().any(|o| o.source == Source::Callback),
                "{inv}: the callback was left an orphan"
            );
        }
        assert_eq!(store.orphan_count().await.unwrap(), 0);
        drop((store, other));
        e.done().await;
    }
}

#[tokio::test]
async fn dead_letters_are_listed_in_order_and_replayed_once() {
    for (e, store) in each_engine().await {
        store.enable_notices(true);
        let id = store.track(new_payment("inv-d1")).await.unwrap().payment.id;
        let moves = [("auth", State::Authorized), ("approved", State::Succeeded)];
        for (raw, state) in moves {
            let r = report(Source::Poll, raw, Some(state));
            store
                .observe(&id, r, WindowChange::Keep, 2_000)
                .await
                .unwrap();
        }
        let mut queued = store.notices(10).await.unwrap();
        for n in &mut queued {
            n.attempts = 7;
            n.last_error = Some("HTTP 503".into());
            store.remove_notice(n, true).await.unwrap();
        }
        assert!(store.notices(10).await.unwrap().is_empty());
        assert_eq!(store.dead_notices(), 2);
        let dead = store.dead_letters(None, 10).await.unwrap();
        assert_eq!(dead, queued, "kept as they were given up, in order");
        let after = store.dead_letters(Some(dead[0].seq), 10).await.unwrap();
        assert_eq!(after, dead[1..]);
        // One back: queued again under its seq, its attempts reset.
        let back = store.replay_dead(vec![dead[0].seq]).await.unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(
            (back[0].seq, back[0].attempts, back[0].next_ms),
            (dead[0].seq, 0, 0)
        );
        let q = store.notices(10).await.unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!((q[0].seq, q[0].attempts), (dead[0].seq, 0));
        assert!(store
            .replay_dead(vec![dead[0].seq])
            .await
            .unwrap()
            .is_empty());
        // The rest by time: none before, all since.
        let at = dead[1].at_ms;
        store.enable_notices(false);
        assert_eq!(store.replay_dead_since(at + 1).await.unwrap(), 0);
        assert_eq!(store.replay_dead_since(at).await.unwrap(), 1);
        assert_eq!(store.dead_notices(), 0);
        assert_eq!(store.notices(10).await.unwrap().len(), 2);
        drop(store);
        e.done().await;
    }
}
