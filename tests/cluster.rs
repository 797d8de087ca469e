//! Three instances of the real binary on one PostgreSQL database, behind a
//! load balancer, one of them killed with SIGKILL under load (issue 12):
//! no acknowledged callback is lost, no action is sent twice, no window is
//! polled by two instances taking turns, and every payment converges.
//! Skipped (and says so) without `PAYRECON_TEST_DATABASE_URL`.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use common::pg::Schema;
use common::proxy::Proxy;
use common::*;
use payrecon::action::{ActionRequest, ActionState};
use payrecon::cli::client::AdminClient;
use payrecon::engine::TrackRequest;
use payrecon::providers::connpay::sim::{CallbackMode, ConnpaySim, NewTransfer, Script, Settle};
use payrecon::providers::myfatoorah::sim::{Faults, MyfatoorahSim};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const MF_TOKEN_ENV: &str = "TEST_CLUSTER_MF_TOKEN";
const MF_TOKEN: &str = "mf-cluster-token";

/// Adds a transfer to the sandbox and tracks it through `admin`: its
/// invoice id and payment id.
async fn open(connpay: &ConnpaySim, admin: &AdminClient, t: NewTransfer) -> (String, String) {
    connpay.add(t.clone());
    let id = admin.track(&track_request(&t)).await.unwrap().payment.id;
    (t.invoice_id, id)
}

fn capture() -> ActionRequest {
    ActionRequest::of(&payrecon::providers::myfatoorah::Request::Capture {
        amount: "10.000".into(),
    })
}

fn mf_track(invoice: i64) -> TrackRequest {
    TrackRequest {
        provider: "myfatoorah".into(),
        keys: [("invoice_id".to_string(), invoice.to_string())].into(),
        amount_minor: Some(10_000),
        currency: Some("KWD".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_lose_nothing_when_one_is_killed_under_load() {
    let Some(schema) = Schema::new().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sims = CancellationToken::new();
    let connpay = start_sim(&sims).await;
    let mf = MyfatoorahSim::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        MF_TOKEN,
        sims.child_token(),
    );
    let lb = Proxy::start(sims.child_token()).await;
    connpay.set_callback_url(&format!("http://{}/callback/connpay", lb.addr));
    // ConnPay windows: polls every 200-300 ms. MyFatoorah: sends with a
    // 5 s limit (an action's lease is four of them), no polls to speak of.
    let polling = Polling {
        interval: ("200ms", "300ms"),
        window: ("60s", "60s"),
        request_timeout: "1s",
        store: schema.store_lines(),
        tail: format!(
            "[actions]\ndeadline = \"120s\"\n\n\
             [providers.myfatoorah]\nbase_url = \"{}\"\ntoken_env = \"{MF_TOKEN_ENV}\"\n\n\
             [providers.myfatoorah.polling]\npoll_interval_min = \"1h\"\npoll_interval_max = \"1h\"\n\
             poll_window_min = \"2h\"\npoll_window_max = \"2h\"\nrequest_timeout = \"5s\"\n",
            mf.base_url()
        ),
        ..Default::default()
    };
    let config = write_config(dir.path(), &connpay.base_url(), &polling, "");
    let env = [(MF_TOKEN_ENV, MF_TOKEN)];
    let logs: Vec<_> = (0..3).map(|_| Arc::new(Mutex::new(vec![]))).collect();
    let spawn = |i: usize| Process::spawn(&config, &env, logs[i].clone());

    let polled = |i: usize| {
        NewTransfer::new(
            &format!("cl-p-{i}"),
            Script {
                settle: Settle::Manual,
                callback: CallbackMode::Never,
                ..Default::default()
            },
        )
    };
    let called = |i: usize| {
        NewTransfer::new(
            &format!("cl-c-{i}"),
            Script {
                settle: Settle::Manual,
                callback: CallbackMode::Normal,
                ..Default::default()
            },
        )
    };
    let mut payments = vec![];

    // Instance 0 alone first: it leases ten windows (settled by polls
    // only, so another instance must take them over for them to settle),
    // and sends a capture MyFatoorah applies and never answers: killed
    // while it waits, it leaves the action `sending`.
    let mut procs = vec![Some(spawn(0))];
    let zero = procs[0].as_ref().unwrap();
    lb.add(&zero.callback_url);
    for i in 0..10 {
        payments.push(open(&connpay, &zero.admin, polled(i)).await);
    }
    wait_until("instance 0 polls its windows", || async {
        (0..10).all(|i| connpay.truth(&format!("cl-p-{i}")).unwrap().polls >= 1)
    })
    .await;
    mf.add_invoice(1, 10_000);
    let pay = zero.admin.track(&mf_track(1)).await.unwrap().payment.id;
    mf.set_faults(Faults {
        apply_then_hang: true,
        ..Default::default()
    });
    let hung = zero.admin.action(&pay, &capture(), None).await.unwrap();
    wait_until("the capture is applied at MyFatoorah", || async {
        mf.operations(1) == 1
    })
    .await;
    mf.set_faults(Faults {
        latency_ms: 50,
        ..Default::default()
    });
    for i in 1..3 {
        let p = spawn(i);
        lb.add(&p.callback_url);
        procs.push(Some(p));
    }
    let admins: Vec<_> = procs
        .iter()
        .map(|p| AdminClient::new(&p.as_ref().unwrap().admin_url, None))
        .collect();

    // Load, spread over the three: more windows, transfers settled by a
    // callback through the balancer, captures.
    for i in 10..30 {
        payments.push(open(&connpay, &admins[i % 3], polled(i)).await);
    }
    for i in 0..30 {
        payments.push(open(&connpay, &admins[i % 3], called(i)).await);
    }
    let mut actions = vec![(1, hung.id.clone())];
    for i in 0..15i64 {
        let invoice = 100 + i;
        mf.add_invoice(invoice, 10_000);
        let admin = &admins[i as usize % 3];
        let pay = admin.track(&mf_track(invoice)).await.unwrap().payment.id;
        let a = admin.action(&pay, &capture(), None).await.unwrap();
        actions.push((invoice, a.id));
    }
    for i in 0..15 {
        connpay.settle(&format!("cl-c-{i}"));
    }
    // Under load: instance 0 dies with its windows open, callbacks
    // arriving and a send of its own in flight.
    let mut zero = procs[0].take().unwrap();
    zero.child.kill().unwrap(); // SIGKILL
    zero.child.wait().unwrap();
    for i in 15..30 {
        connpay.settle(&format!("cl-c-{i}"));
    }
    for i in 0..30 {
        connpay.settle(&format!("cl-p-{i}"));
    }

    // Every payment converges to what the sandbox knows.
    let survivor = &admins[1];
    for (invoice, id) in &payments {
        let truth = || connpay.truth(invoice).unwrap();
        wait_until(&format!("{invoice} settles"), || async {
            truth().expected.is_some()
                && survivor.get(id).await.unwrap().payment.state == truth().expected.unwrap()
        })
        .await;
    }
    // Every acknowledged callback is in the database, whichever instance
    // took it (instance 0's included).
    let inbox: Vec<String> = schema
        .rows("SELECT dedupe_key FROM {schema}.inbox")
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    for i in 0..30 {
        let invoice = format!("cl-c-{i}");
        let acked = connpay.truth(&invoice).unwrap().callbacks_acked;
        assert!(acked >= 1, "{invoice}: no callback acknowledged");
        let suffix = format!("|{invoice}");
        assert!(
            inbox.iter().any(|k| k.ends_with(&suffix)),
            "{invoice}: an acknowledged callback is not in the database"
        );
    }
    // No window was polled by two instances taking turns: each window's
    // pollers, in order, name each instance once (a hand-over from the
    // killed instance is one change of poller).
    for (invoice, _) in &payments {
        let pollers = connpay.truth(invoice).unwrap().pollers;
        let distinct: HashSet<&String> = pollers.iter().collect();
        assert_eq!(
            distinct.len(),
            pollers.len(),
            "{invoice} polled by instances taking turns: {pollers:?}"
        );
    }
    // Instance 0's windows were settled by the instance that took each over.
    for i in 0..10 {
        let pollers = connpay.truth(&format!("cl-p-{i}")).unwrap().pollers;
        assert_eq!(pollers.len(), 2, "cl-p-{i}: {pollers:?}");
    }
    // Every capture sent once, the hung one included: the instance that
    // took it over asked MyFatoorah and found it applied.
    let mut attempts = HashMap::new();
    for (invoice, id) in &actions {
        wait_until(&format!("capture of {invoice} is final"), || async {
            survivor.get_action(id).await.unwrap().state.is_final()
        })
        .await;
        let a = survivor.get_action(id).await.unwrap();
        assert_eq!(a.state, ActionState::Succeeded, "{a:?}");
        assert_eq!(mf.operations(*invoice), 1, "invoice {invoice}");
        attempts.insert(*invoice, a.attempts);
    }
    assert_eq!(attempts[&1], 1, "the hung capture was not sent again");
    assert_eq!(
        mf.update_requests(),
        actions.len() as u64,
        "a capture sent twice"
    );

    drop(procs);
    sims.cancel();
    connpay.shutdown().await;
    mf.shutdown().await;
    schema.drop().await;
}
