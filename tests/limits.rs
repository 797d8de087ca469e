//! The listeners under hostile clients: a body that never finishes, more
//! connections than the limit, and path values that need decoding.

mod common;

use std::collections::HashMap;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads what the server sends until it closes the connection.
async fn answer(mut s: TcpStream) -> String {
    let mut out = vec![];
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_body_that_never_finishes_is_answered_408_and_closed() {
    let h = Harness::start(Polling {
        callback: "body_read_timeout = \"200ms\"".into(),
        ..Default::default()
    })
    .await;
    for length in ["1000", "100000000000"] {
        let mut s = TcpStream::connect(h.callback_addr).await.unwrap();
        let head = format!(
            "POST /callback/myfatoorah HTTP/1.1\r\nhost: x\r\ncontent-length: {length}\r\n\r\n{{\"Even"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        // Nothing more is sent; the server must not wait for ever.
        let got = tokio::time::timeout(PATIENCE, answer(s)).await.unwrap();
        let status = got.lines().next().unwrap_or_default().to_string();
        assert!(
            status.contains("408") || status.contains("413"),
            "{length}: {got}"
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn connections_over_the_limit_get_503_at_once_and_the_admin_api_still_answers() {
    let h = Harness::start(Polling {
        callback: "max_connections = 3\nbody_read_timeout = \"60s\"".into(),
        ..Default::default()
    })
    .await;
    // Three slow clients hold every slot (headers sent, body trickling).
    let mut slow = vec![];
    for _ in 0..3 {
        let mut s = TcpStream::connect(h.callback_addr).await.unwrap();
        s.write_all(
            b"POST /callback/connpay HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\nstatus=",
        )
        .await
        .unwrap();
        slow.push(s);
    }
    // The server has taken all three once a fourth is refused.
    wait_until("a fourth connection is refused", || async {
        let mut s = TcpStream::connect(h.callback_addr).await.unwrap();
        let _ = s
            .write_all(b"GET /callback/connpay HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
        let got = tokio::time::timeout(PATIENCE, answer(s)).await.unwrap();
        got.starts_with("HTTP/1.1 503") && got.contains("too_many_connections")
    })
    .await;
    // The admin listener has its own limit.
    let health = reqwest::get(format!("http://{}/healthz", h.admin_addr))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // A slot frees when a slow client goes away.
    slow.pop();
    wait_until("a new connection is served again", || async {
        let r = reqwest::get(format!(
            "http://{}/callback/connpay?status=x",
            h.callback_addr
        ))
        .await
        .unwrap();
        r.status() == 400
    })
    .await;
    drop(slow);
    h.stop().await;
}

#[tokio::test]
async fn path_values_are_percent_decoded() {
    let h = Harness::start_with(
        Polling {
            tail: "[providers.crm]\nbase_url = \"http://127.0.0.1:9\"\nusername_env = \"LIMITS_CRM_USER\"\npassword_env = \"LIMITS_CRM_PASS\"\n".into(),
            ..Default::default()
        },
        "",
        HashMap::from([
            ("LIMITS_CRM_USER".to_string(), "u".to_string()),
            ("LIMITS_CRM_PASS".to_string(), "p".to_string()),
        ]),
    )
    .await;
    let req = payrecon::engine::TrackRequest {
        provider: "crm".into(),
        keys: payrecon::model::Keys::from([(
            "reference_number".to_string(),
            "inv 7/ä".to_string(),
        )]),
        amount_minor: None,
        currency: None,
    };
    let id = h.admin.track(&req).await.unwrap().payment.id;
    let found = h
        .admin
        .find("crm", "reference_number", "inv 7/ä")
        .await
        .unwrap();
    assert_eq!(found.payment.id, id);
    h.stop().await;
}

/// The unit gives the process far more file descriptors than both
/// listeners may hold open, so the listeners' own limits are what refuse
/// a flood, never a failing accept().
#[test]
fn the_unit_leaves_room_above_the_connection_limits() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/payrecon.service"
    ))
    .unwrap();
    let nofile: usize = unit
        .lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .expect("LimitNOFILE= in the unit")
        .trim()
        .parse()
        .unwrap();
    let defaults = payrecon::config::FileConfig::default_limits();
    assert!(
        nofile >= 4 * (defaults.0 + defaults.1),
        "LimitNOFILE={nofile} for {defaults:?} connections"
    );
}
