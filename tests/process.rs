//! The real `payrecon` binary as systemd runs it: the notify protocol,
//! SIGTERM under load and SIGHUP reloads.

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use common::*;
use payrecon::providers::connpay::sim::{CallbackMode, NewTransfer, Script, Settle};
use tokio_util::sync::CancellationToken;

/// Reads notify datagrams until `want` has arrived; returns all of them.
fn read_until(sock: &UnixDatagram, seen: &mut Vec<String>, want: impl Fn(&[String]) -> bool) {
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 512];
    while !want(seen) {
        let n = sock
            .recv(&mut buf)
            .expect("a notify message before the timeout");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
}

#[tokio::test]
async fn notify_socket_gets_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let sim = start_sim(&cancel).await;
    let config = write_config(dir.path(), &sim.base_url(), &Polling::default(), "");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let logs = Arc::new(Mutex::new(vec![]));
    let mut d = Process::spawn(
        &config,
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            // WatchdogSec=200ms: a ping every 100 ms.
            ("WATCHDOG_USEC", "200000"),
        ],
        logs,
    );
    let mut seen = vec![];
    read_until(&sock, &mut seen, |m| {
        m.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3
    });
    assert!(
        seen[0].starts_with("READY=1"),
        "READY=1 comes first: {seen:?}"
    );
    d.signal("TERM");
    read_until(&sock, &mut seen, |m| {
        m.last().is_some_and(|m| m.starts_with("STOPPING=1"))
    });
    assert_eq!(d.exit_code().await, Some(0));
    sim.shutdown().await;
}

/// Waits until a log line matches `pred`.
async fn logged(
    logs: &Arc<Mutex<Vec<String>>>,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) {
    wait_until(what, || async {
        logs.lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|v| pred(&v))
    })
    .await;
}

#[tokio::test]
async fn sighup_applies_a_new_interval_and_refuses_what_needs_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let sim = start_sim(&cancel).await;
    let config = dir.path().join("payrecon.toml");
    let write = |interval: (&'static str, &'static str), admin_extra: &str| {
        let polling = Polling {
            interval,
            window: ("1h", "1h"),
            ..Default::default()
        };
        let text = config_text(
            &dir.path().join("store"),
            &sim.base_url(),
            &polling,
            admin_extra,
        );
        std::fs::write(&config, text).unwrap();
    };
    // An hour between polls: nothing is asked while the test runs.
    write(("1h", "1h"), "");
    let logs = Arc::new(Mutex::new(vec![]));
    let mut d = Process::spawn(&config, &[], logs.clone());
    sim.set_callback_url(&d.callback_url);
    let t = NewTransfer::new(
        "inv-hup",
        Script {
            callback: CallbackMode::Never,
            ..Default::default()
        },
    );
    sim.add(t.clone());
    let id = d.admin.track(&track_request(&t)).await.unwrap().payment.id;

    // A config that does not validate is refused; the daemon goes on.
    std::fs::write(&config, "[store]\npath = 7\n").unwrap();
    d.signal("HUP");
    logged(&logs, "the invalid reload refused", |v| {
        v["alert"] == "reload_failed" && v["error"].as_str().unwrap_or("").contains("store.path")
    })
    .await;
    // A new admin address needs a restart: refused, naming the key.
    write(("20ms", "30ms"), "# moved\n");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "listen = \"127.0.0.1:0\"\n# moved",
        "listen = \"127.0.0.1:1\"",
    );
    std::fs::write(&config, text).unwrap();
    d.signal("HUP");
    logged(&logs, "the restart-only change refused", |v| {
        v["alert"] == "reload_failed" && v["error"].as_str().unwrap_or("").contains("admin.listen")
    })
    .await;
    assert_eq!(
        sim.truth(&t.invoice_id).unwrap().polls,
        0,
        "the old interval still holds"
    );

    // The new interval, alone: applied at once, without a restart.
    write(("20ms", "30ms"), "");
    d.signal("HUP");
    logged(&logs, "config reloaded", |v| {
        v["message"] == "config reloaded"
    })
    .await;
    wait_until(
        "the payment settles by polls at the new interval",
        || async {
            d.admin.get(&id).await.unwrap().payment.state == payrecon::state::State::Succeeded
        },
    )
    .await;
    assert!(sim.truth(&t.invoice_id).unwrap().polls >= 2);
    d.signal("TERM");
    assert_eq!(d.exit_code().await, Some(0));
    sim.shutdown().await;
}

#[tokio::test]
async fn sigterm_under_load_exits_0_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let sim = start_sim(&cancel).await;
    let polling = Polling {
        interval: ("20ms", "40ms"),
        window: ("120s", "120s"),
        ..Default::default()
    };
    let config = write_config(dir.path(), &sim.base_url(), &polling, "");
    let logs = Arc::new(Mutex::new(vec![]));
    let mut d = Process::spawn(&config, &[], logs.clone());
    sim.set_callback_url(&d.callback_url);
    let mut transfers = vec![];
    for i in 0..150 {
        let t = NewTransfer::new(
            &format!("term-{i:03}"),
            Script {
                settle: Settle::Manual,
                ..Default::default()
            },
        );
        sim.add(t.clone());
        let id = d.admin.track(&track_request(&t)).await.unwrap().payment.id;
        transfers.push((id, t.invoice_id));
    }
    // Load: 150 windows polled every 20-40 ms, and callbacks for all of
    // them arriving; SIGTERM lands once a third are acknowledged.
    for (_, inv) in &transfers {
        sim.settle(inv);
    }
    let acked = |inv: &str| sim.truth(inv).unwrap().callbacks_acked >= 1;
    wait_until("a third of the callbacks acknowledged", || async {
        transfers.iter().filter(|(_, inv)| acked(inv)).count() >= transfers.len() / 3
    })
    .await;
    d.signal("TERM");
    assert_eq!(d.exit_code().await, Some(0), "a clean exit");
    let acked_at_stop: Vec<bool> = transfers.iter().map(|(_, inv)| acked(inv)).collect();
    drop(d);
    assert!(
        logs.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("store flushed")),
        "the store was flushed on the way out"
    );

    // Restarted on the same store: every acknowledged callback is there,
    // and the rest settle (re-sent callbacks, or polls of resumed windows).
    let d = Process::spawn(&config, &[], logs.clone());
    sim.set_callback_url(&d.callback_url);
    for ((id, _), was_acked) in transfers.iter().zip(&acked_at_stop) {
        if *was_acked {
            let p = d.admin.get(id).await.unwrap().payment;
            assert!(
                p.state.is_final(),
                "{id} was acknowledged but is {}",
                p.state
            );
        }
    }
    for (id, inv) in &transfers {
        let expected = sim.truth(inv).unwrap().expected.unwrap();
        wait_until("every transfer reaches its true state", || async {
            d.admin.get(id).await.unwrap().payment.state == expected
        })
        .await;
    }
    sim.shutdown().await;
}

/// Started by systemd, whose `JOURNAL_STREAM` names the process's standard
/// error, every line starts with its syslog priority for journald: the
/// binary wires the detection to the output.
#[tokio::test]
async fn under_journald_each_line_starts_with_its_priority() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let sim = start_sim(&cancel).await;
    let config = write_config(dir.path(), &sim.base_url(), &Polling::default(), "");
    let (reader, writer) = std::io::pipe().unwrap();
    let meta = std::fs::File::from(std::os::fd::OwnedFd::from(writer.try_clone().unwrap()))
        .metadata()
        .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_payrecon"))
        .args(["run", "--config"])
        .arg(&config)
        .env(KEY_ENV, CONTROL_KEY)
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stdout(std::process::Stdio::null())
        .stderr(writer)
        .spawn()
        .unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(reader)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("payrecon ready"))
    })
    .await
    .unwrap()
    .expect("a ready line");
    let json = ready
        .strip_prefix("<6>")
        .unwrap_or_else(|| panic!("{ready}"));
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["level"], "INFO");
    child.kill().unwrap();
    child.wait().unwrap();
    sim.shutdown().await;
}
