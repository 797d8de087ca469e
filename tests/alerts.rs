//! The alert contract of docs/operations.md, checked on the source: every
//! ERROR event carries an `alert` field (operators match on it), and every
//! alert the code raises is in the alerts table with what to do.

use std::path::Path;

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push((
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            ));
        }
    }
}

/// The text of each `name!( … )` invocation in `src`, by its line.
fn invocations<'a>(src: &'a str, name: &str) -> Vec<(usize, &'a str)> {
    let mut out = vec![];
    let mut from = 0;
    while let Some(at) = src[from..].find(name) {
        let start = from + at;
        let open = start + name.len();
        // `name` ends with the opening parenthesis.
        let mut depth = 1;
        let mut end = open;
        for (i, c) in src[open..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.push((src[..start].lines().count(), &src[start..=end]));
        from = end + 1;
    }
    out
}

fn all_sources() -> Vec<(String, String)> {
    let mut files = vec![];
    sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    // The sandboxes and the bench are not the daemon.
    files.retain(|(p, _)| !p.contains("/sim") && !p.contains("/bench/"));
    files
}

#[test]
fn every_error_event_carries_an_alert() {
    let mut missing = vec![];
    for (path, src) in all_sources() {
        for (line, call) in invocations(&src, "tracing::error!(") {
            if !call.contains("alert =") {
                missing.push(format!(
                    "{path}:{line}: {}",
                    call.lines().next().unwrap_or("")
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "ERROR events without an alert: {missing:#?}"
    );
}

#[test]
fn every_alert_is_in_the_operations_table() {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .unwrap();
    let mut missing = vec![];
    for (path, src) in all_sources() {
        for part in src.split("alert = \"").skip(1) {
            let name = part.split('"').next().unwrap();
            if !docs.contains(&format!("| `{name}`")) {
                missing.push(format!("{name} ({path})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "alerts not in docs/operations.md: {missing:#?}"
    );
}

/// Each alert the source raises is in `payrecon::metrics::ALERTS` (so
/// `payrecon_alerts_total` has its series from 0) and has a rule in
/// deploy/prometheus-alerts.yml; the list names nothing the source does
/// not raise.
#[test]
fn every_alert_has_a_series_and_a_prometheus_rule() {
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus-alerts.yml"
    ))
    .unwrap();
    let sources = all_sources();
    let raised = |name: &str| {
        sources.iter().any(|(_, src)| {
            src.contains(&format!("\"{name}\"")) && !src.contains("pub const ALERTS")
        })
    };
    let mut problems = vec![];
    for (path, src) in &sources {
        for part in src.split("alert = \"").skip(1) {
            let name = part.split('"').next().unwrap();
            if !payrecon::metrics::ALERTS.contains(&name) {
                problems.push(format!("{name} ({path}) is not in metrics::ALERTS"));
            }
        }
    }
    for name in payrecon::metrics::ALERTS {
        if !raised(name) {
            problems.push(format!("{name} is in metrics::ALERTS but never raised"));
        }
        if !rules.contains(&format!("alert=\"{name}\"")) {
            problems.push(format!(
                "{name} has no rule in deploy/prometheus-alerts.yml"
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Alerts are counted whatever `log.level` lets through: a WARN alert
/// under `log.level = "error"` is not printed but is counted.
#[test]
fn alerts_are_counted_even_when_the_level_hides_them() {
    payrecon::logging::init(payrecon::settings::LogFormat::Json, "error");
    let before = payrecon::metrics::alert_count("drift");
    tracing::warn!(alert = "drift", kind = "missed_change", "drift");
    tracing::info!(event = "transition", "not an alert");
    assert_eq!(payrecon::metrics::alert_count("drift"), before + 1);
    // The printed level still reloads (SIGHUP) with the counter beside it.
    assert_eq!(payrecon::logging::set_level("warn"), Ok(()));
}

/// Every metric the Grafana dashboard and the Prometheus rules query is one
/// payrecon exports (a renamed metric would leave an empty panel or a rule
/// that never fires).
#[test]
fn the_dashboard_and_the_rules_query_only_exported_metrics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exported = std::fs::read_to_string(root.join("src/metrics.rs")).unwrap();
    let dashboard = std::fs::read_to_string(root.join("deploy/grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(queries.len() > 10, "{queries:?}");
    let rules = std::fs::read_to_string(root.join("deploy/prometheus-alerts.yml")).unwrap();
    queries.extend(
        rules
            .lines()
            .filter_map(|l| l.trim().strip_prefix("expr: "))
            .map(str::to_string),
    );
    let mut unknown = vec![];
    for q in &queries {
        for part in q.split("payrecon_").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let base = ["_bucket", "_total", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            if !exported.contains(&format!("\"payrecon_{base}\"")) {
                unknown.push(format!("payrecon_{name} in {q}"));
            }
        }
    }
    assert!(unknown.is_empty(), "{unknown:#?}");
}
