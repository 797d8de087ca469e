//! docs/openapi.yaml lists exactly the routes the server serves: the
//! document, the routers' route lists and the live listeners agree.

mod common;

use std::collections::BTreeSet;

use common::*;

/// (METHOD, path) pairs under `paths:`; the document keeps paths at two
/// spaces of indent and methods at four.
fn spec_routes() -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml"))
        .expect("docs/openapi.yaml");
    let mut out = BTreeSet::new();
    let mut in_paths = false;
    let mut path = String::new();
    for line in text.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_paths = line == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /") {
            path = format!("/{}", p.trim_end_matches(':'));
        } else if let Some(m) = line.strip_prefix("    ") {
            let m = m.trim_end_matches(':');
            if ["get", "post", "put", "delete", "patch"].contains(&m) {
                out.insert((m.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn the_openapi_document_names_every_registered_provider() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml"))
        .expect("docs/openapi.yaml");
    let line = text
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with("Provider: {type: string, enum: [")
        })
        .expect("a Provider schema");
    let listed: Vec<&str> = line
        .split_once("enum: [")
        .and_then(|(_, r)| r.split_once(']'))
        .map(|(names, _)| names.split(',').map(str::trim).collect())
        .unwrap_or_default();
    let registered: Vec<&str> = payrecon::providers::REGISTRY
        .iter()
        .map(|p| p.id.as_str())
        .collect();
    assert_eq!(listed, registered);
}

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_served_routes() {
    let spec = spec_routes();
    let code: BTreeSet<(String, String)> = payrecon::listen::admin::ROUTES
        .iter()
        .chain(payrecon::listen::callback::ROUTES.iter())
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(spec, code, "docs/openapi.yaml and the routers differ");

    let h = Harness::start(Polling::default()).await;
    let client = reqwest::Client::new();
    let fill = |p: &str| {
        p.replace("{provider}", "connpay")
            .replace("{id}", "x")
            .replace("{name}", "invoice_id")
            .replace("{value}", "x")
    };
    let base = |p: &str| {
        if p.starts_with("/callback") {
            format!("http://{}", h.callback_addr)
        } else {
            format!("http://{}", h.admin_addr)
        }
    };
    let paths: BTreeSet<&String> = spec.iter().map(|(_, p)| p).collect();
    for path in paths {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let url = format!("{}{}", base(path), fill(path));
            let resp = client
                .request(method.parse().unwrap(), &url)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap();
            let listed = spec.contains(&(method.to_string(), path.clone()));
            let unrouted = status == 405 || (status == 404 && body.contains("no such route"));
            if listed {
                assert!(
                    !unrouted,
                    "{method} {path} is documented but not served: {status} {body}"
                );
            } else {
                assert_eq!(
                    status, 405,
                    "{method} {path} is served but not documented: {body}"
                );
                // Even refusals carry the error shape.
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["error"]["code"], "method_not_allowed");
            }
        }
    }
    h.stop().await;
}

/// Every `alert = "..."` the code can raise is explained in
/// docs/operations.md.
#[test]
fn every_alert_is_documented_in_operations_md() {
    let root = env!("CARGO_MANIFEST_DIR");
    let ops = std::fs::read_to_string(format!("{root}/docs/operations.md")).unwrap();
    let mut alerts = BTreeSet::new();
    let mut dirs = vec![std::path::PathBuf::from(format!("{root}/src"))];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for part in text.split("alert = \"").skip(1) {
                if let Some(name) = part.split('"').next() {
                    alerts.insert(name.to_string());
                }
            }
        }
    }
    assert!(alerts.len() >= 10, "{alerts:?}");
    for a in alerts {
        assert!(
            ops.contains(&format!("| `{a}`")),
            "alert `{a}` is not in docs/operations.md"
        );
    }
}
