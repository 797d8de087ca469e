//! Stores written by earlier releases (format 1: a sled tree per kind,
//! JSON records; format 3: one tree, postcard records) are migrated at
//! open, and nothing in them is lost. The fixtures and how they were made:
//! tests/fixtures/README.md.

use std::collections::BTreeMap;
use std::path::Path;

use payrecon::action::ActionState;
use payrecon::model::{Keys, ProviderId, Report, Source};
use payrecon::state::State;
use payrecon::store::{CallbackRecord, Ingested, NewPayment, Store};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

async fn id_of(store: &Store, inv: &str) -> String {
    store
        .find(&format!("connpay|inv|{inv}"))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{inv} not found"))
}

/// Everything the fixture holds, as today's store reads it.
async fn check(store: &Store) {
    assert_eq!(store.payment_count(), 3);
    let fin = id_of(store, "v1-final").await;
    let p = store.get(&fin).await.unwrap().unwrap();
    assert_eq!(p.state, State::Succeeded);
    assert_eq!(p.final_source, Some(Source::Callback));
    assert_eq!(p.amount_minor, Some(1250));
    let h = store.history(&fin).await.unwrap();
    let raw: Vec<_> = h.iter().map(|o| o.raw_status.as_str()).collect();
    assert_eq!(raw, ["PROCESSING", "PROCESSING", "approved"]);
    assert_eq!(h[2].fields["bank_order"], "bo-approved");

    let open = id_of(store, "v1-open").await;
    assert_eq!(
        store.find("connpay|order|ord-v1").await.unwrap(),
        Some(open.clone()),
        "a learned key"
    );
    let windows = store.open_windows().await.unwrap();
    assert_eq!(windows.len(), 1);
    assert_eq!(
        (windows[0].0.as_str(), windows[0].1),
        (open.as_str(), ProviderId::Connpay)
    );
    let mark = store.sweep_mark(&open).await.unwrap();
    assert_eq!(mark.last_ms, 1_700_000_015_000);
    assert!(mark.stale_alerted);

    let actions = store.actions_of(&fin).await.unwrap();
    let states: Vec<_> = actions.iter().map(|a| a.state).collect();
    assert_eq!(states, [ActionState::Succeeded, ActionState::Queued]);
    assert_eq!(
        actions[0].answer,
        Some(serde_json::json!({"IsSuccess": true}))
    );
    let outbox = store.outbox().await.unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].id, actions[1].id);
    assert_eq!(
        store.find("connpay|excl|v1-final").await.unwrap(),
        Some(actions[0].id.clone())
    );

    assert_eq!(store.notice_backlog(), 1);
    assert_eq!(store.dead_notices(), 1);
    let n = store.notices(10).await.unwrap();
    assert_eq!(n[0].payment_id, id_of(store, "v1-notice").await);
    assert_eq!(
        store.meta("notify.disabled_url").await.unwrap().as_deref(),
        Some("http://127.0.0.1:1/hook")
    );
    assert_eq!(store.inbox_len(), 3);
}

fn callback(inv: &str, status: &str, state: State) -> CallbackRecord {
    CallbackRecord {
        dedupe_key: format!("connpay|cb|{status}|sale|o-{inv}|{inv}"),
        match_key: format!("connpay|inv|{inv}"),
        report: Report {
            source: Source::Callback,
            raw_status: status.into(),
            state: Some(state),
            fields: BTreeMap::new(),
            learned_keys: vec![],
        },
        received_ms: 1_700_000_020_000,
        unsigned_claim: false,
    }
}

async fn reopen(path: &Path) -> Store {
    // sled holds a file lock until the last handle is gone.
    for _ in 0..200 {
        if let Ok(s) = Store::open(path) {
            return s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("store did not reopen");
}

#[tokio::test]
async fn a_store_of_the_previous_release_is_migrated_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1"),
        &path,
    );
    {
        let store = Store::open(&path).unwrap();
        check(&store).await;
        // The inbox came along: a provider re-sending is still a repeat.
        assert!(matches!(
            store
                .ingest_callback(callback("v1-final", "approved", State::Succeeded))
                .await
                .unwrap(),
            Ingested::Duplicate
        ));
        store.close().await.unwrap();
    }
    // Opened again, it is not migrated twice and still whole.
    let store = reopen(&path).await;
    check(&store).await;
    // The orphan waiting in it is applied when its payment is tracked.
    assert_eq!(store.orphan_count().await.unwrap(), 1);
    let t = store
        .track(NewPayment {
            provider: ProviderId::Connpay,
            keys: Keys::from([("invoice_id".to_string(), "v1-orphan".to_string())]),
            idempotency_key: "connpay|idem|v1-orphan".into(),
            lookup_keys: vec!["connpay|inv|v1-orphan".into()],
            amount_minor: Some(1250),
            currency: Some("EUR".into()),
            window: None,
            now_ms: 1_700_000_030_000,
        })
        .await
        .unwrap();
    assert_eq!(t.payment.state, State::Failed);
    assert_eq!(store.orphan_count().await.unwrap(), 0);
    drop(store);
    // No tree of the old format is left.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    for _ in 0..200 {
        if let Ok(db) = sled::open(&path) {
            let names: Vec<_> = db.tree_names();
            assert!(
                !names.iter().any(|n| &**n == b"payments"),
                "old trees left: {names:?}"
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("store did not reopen");
}

#[tokio::test]
async fn a_store_of_a_newer_format_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.open_tree("records")
            .unwrap()
            .insert(b"M\0format", b"6")
            .unwrap();
        db.flush().unwrap();
    }
    let err = Store::open(dir.path())
        .err()
        .expect("opened a newer format");
    let msg = err.to_string();
    assert!(msg.contains("format 6"), "{msg}");
}

#[tokio::test]
async fn a_store_of_format_3_is_rewritten_compact_and_reads_as_that_release_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    copy_dir(&fixtures.join("store-v3"), &path);
    let expected: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(fixtures.join("store-v3.expected.json")).unwrap())
            .unwrap();
    let as_then = |store: &Store| {
        let store = store.clone();
        let expected = expected.clone();
        async move {
            assert_eq!(store.payment_count(), expected.len());
            for e in &expected {
                let id = e["payment"]["id"].as_str().unwrap();
                let p = store.get(id).await.unwrap().unwrap();
                let h = store.history(id).await.unwrap();
                assert_eq!(serde_json::to_value(&p).unwrap(), e["payment"], "{id}");
                assert_eq!(serde_json::to_value(&h).unwrap(), e["history"], "{id}");
            }
            assert_eq!(store.orphan_count().await.unwrap(), 1);
        }
    };
    {
        let store = Store::open(&path).unwrap();
        as_then(&store).await;
        // The inbox came along: the provider re-sending is a repeat.
        let again = CallbackRecord {
            dedupe_key: "connpay|approved|sale|o-v3-0|v3-0".into(),
            match_key: "connpay|inv|v3-0".into(),
            report: Report {
                source: Source::Callback,
                raw_status: "approved".into(),
                state: Some(State::Succeeded),
                fields: BTreeMap::new(),
                learned_keys: vec![],
            },
            received_ms: 1_700_000_021_000,
            unsigned_claim: false,
        };
        assert!(matches!(
            store.ingest_callback(again.clone()).await.unwrap(),
            Ingested::Duplicate
        ));
        store.close().await.unwrap();
    }
    // Opened again: not migrated twice, still whole, and the records are
    // of the current format.
    let store = reopen(&path).await;
    as_then(&store).await;
    let open = expected[1]["payment"]["id"].as_str().unwrap();
    let r = Report {
        source: Source::Poll,
        raw_status: "APPROVED".into(),
        state: Some(State::Succeeded),
        fields: BTreeMap::from([("order_id".to_string(), "cp-1".to_string())]),
        learned_keys: vec![],
    };
    let o = store
        .observe(
            open,
            r,
            payrecon::store::WindowChange::Close,
            1_700_000_030_000,
        )
        .await
        .unwrap();
    assert_eq!((o.observation.seq, o.payment.state), (1, State::Succeeded));
    store.close().await.unwrap();
    drop(store);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    for _ in 0..200 {
        if let Ok(db) = sled::open(&path) {
            let tree = db.open_tree("records").unwrap();
            assert_eq!(&*tree.get(b"M\0format").unwrap().unwrap(), b"5");
            for kv in tree.scan_prefix(b"P") {
                assert_eq!(kv.unwrap().1[0], 0x02, "a payment record left in format 3");
            }
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("store did not reopen");
}
