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
