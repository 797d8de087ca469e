//! The real `payrecon` binary as systemd runs it: the notify protocol,
//! SIGTERM under load and SIGHUP reloads.

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use common::*;
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
    let config = dir.path().join("payrecon.toml");
    std::fs::write(
        &config,
        config_text(
            &dir.path().join("store"),
            &sim.base_url(),
            &Polling::default(),
            "",
        ),
    )
    .unwrap();
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
