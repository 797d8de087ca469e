//! Trust and durability: every 200 comes after a flush that covers what it
//! acknowledges, and a payment's state moves only on evidence the provider
//! signed or confirmed. In-process, against the ConnPay sandbox and a real
//! sled store.

mod common;

use common::*;
use payrecon::model::ProviderId;
use payrecon::provider::RawCallback;
use payrecon::sim::connpay::{CallbackMode, NewTransfer, Script, Settle};
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
        header: &payrecon::provider::no_headers,
    };
    // The first copy is committed but, as when its own request is still
    // waiting for the group flush, not yet on disk.
    let provider = h.engine.provider(ProviderId::Connpay).unwrap();
    let record = provider.parse_callback(&raw, 1).unwrap();
    let store = h.engine.store();
    assert!(matches!(
        store.ingest_callback(&record).unwrap(),
        Ingested::Applied(_)
    ));
    let before = store.flushed_tickets();
    let repeat = h.engine.ingest(ProviderId::Connpay, &raw).await.unwrap();
    assert!(matches!(repeat, Ingested::Duplicate));
    assert!(
        store.flushed_tickets() > before,
        "the repeat was answered before any flush covered the first copy"
    );
    h.stop().await;
}
