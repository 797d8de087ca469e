//! `payrecon export`: the same rows through the API of a running daemon
//! and offline from its store once it has stopped.

mod common;

use std::process::Command;

use common::*;
use payrecon::providers::connpay::sim::{NewTransfer, Outcome, Script};

#[tokio::test]
async fn export_through_the_api_and_offline_agree() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let sim = start_sim(&cancel).await;
    let config = write_config(dir.path(), &sim.base_url(), &Polling::default(), "");
    let logs = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
    let mut d = Process::spawn(&config, &[], logs);
    sim.set_callback_url(&d.callback_url);
    let mut transfers = vec![];
    for i in 0..6 {
        let t = NewTransfer::new(
            &format!("inv-exp-{i}"),
            Script {
                outcome: if i % 3 == 0 {
                    Outcome::Declined
                } else {
                    Outcome::Approved
                },
                ..Default::default()
            },
        );
        sim.add(t.clone());
        let id = d.admin.track(&track_request(&t)).await.unwrap().payment.id;
        transfers.push((id, t));
    }
    for (id, _) in &transfers {
        wait_until("final", || async {
            d.admin.get(id).await.unwrap().payment.state.is_final()
        })
        .await;
    }
    let csv = String::from_utf8(d.admin.export("2020-01-01", "csv").await.unwrap()).unwrap();
    let jsonl = String::from_utf8(d.admin.export("2020-01-01", "jsonl").await.unwrap()).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], payrecon::export::CSV_HEADER);
    assert_eq!(lines.len(), 7, "{csv}");
    let rows: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 6);
    for (id, t) in &transfers {
        let r = rows
            .iter()
            .find(|r| r["payment_id"] == id.as_str())
            .unwrap();
        assert_eq!(r["amount_minor"], t.amount_centis);
        assert_eq!(r["references"]["invoice_id"], t.invoice_id.as_str());
        assert!(r["final_at"].as_str().unwrap().ends_with('Z'));
        let access = t.access_token.as_deref().unwrap();
        assert!(!csv.contains(access) && !csv.contains(&t.session_token));
        assert!(!jsonl.contains(access));
    }
    // Nothing is final after tomorrow.
    let none = d.admin.export("2999-01-01", "jsonl").await.unwrap();
    assert!(none.is_empty());
    // A bad date is a 400 with the error shape.
    let e = d.admin.export("last tuesday", "csv").await.unwrap_err();
    assert!(e.to_string().contains("2026-11-01"), "{e}");

    // While it runs, the store is locked: the offline export says so.
    let locked = Command::new(env!("CARGO_BIN_EXE_payrecon"))
        .args(["export", "--since", "2020-01-01", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!locked.status.success());
    assert!(String::from_utf8_lossy(&locked.stderr).contains("through its API"));
    // Offline, from the stopped daemon's store: the same bytes.
    d.signal("TERM");
    assert_eq!(d.exit_code().await, Some(0));
    let offline = Command::new(env!("CARGO_BIN_EXE_payrecon"))
        .args([
            "export",
            "--since",
            "2020-01-01",
            "--format",
            "csv",
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        offline.status.success(),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );
    assert_eq!(String::from_utf8(offline.stdout).unwrap(), csv);
    sim.shutdown().await;
}
