//! The source tree has no import circles: between the top-level modules
//! (the floors: `store`, `engine`, `listen`, `config`, ...) and between
//! sibling modules inside a folder. A floor's lower modules never import
//! the ones above them; `config` parses into `settings` types that the
//! floors below read, and nothing below imports `config` back.
//!
//! A child module using its own parent (`engine::notify` using
//! `engine::Engine`) is nesting, not a circle, and is allowed.
//!
//! The check reads `crate::` paths in `src/` (tests inside files
//! included); `payrecon::` paths only appear in binaries, which sit on top.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`engine::scheduler`) → the file's text.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
                continue;
            }
            if p.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = p
                .strip_prefix(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))
                .expect("under src");
            let mut parts: Vec<String> = rel
                .with_extension("")
                .iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            // Binaries are roots of their own crates, above everything.
            if parts[0] == "bin" || parts == ["main"] || parts == ["lib"] {
                continue;
            }
            if parts.last().is_some_and(|l| l == "mod") {
                parts.pop();
            }
            let text = std::fs::read_to_string(&p).expect("readable");
            out.insert(parts.join("::"), text);
        }
    }
    let mut out = BTreeMap::new();
    walk(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        &mut out,
    );
    out
}

/// Every `crate::a::b::c` path in `text`, as its segments; `crate::{x, y::z}`
/// gives one path per item.
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    fn segments(s: &str) -> Vec<String> {
        let mut out = vec![];
        let mut rest = s;
        loop {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if end == 0 {
                break;
            }
            out.push(rest[..end].to_string());
            match rest[end..].strip_prefix("::") {
                Some(r) if r.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') => rest = r,
                _ => break,
            }
        }
        out
    }
    let mut out = vec![];
    for (i, _) in text.match_indices("crate::") {
        if i > 0 && text[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue; // `payrecon_crate::` and the like
        }
        let after = &text[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(segments(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            out.push(segments(item.trim()));
        } else {
            out.push(segments(after));
        }
    }
    out.retain(|p| !p.is_empty());
    out
}

/// Edges between modules that must not form a circle: for each reference
/// from module `a` to module `b`, the pair of their ancestors just below
/// the level where their paths part (the floors when they differ at the
/// top, siblings inside one folder otherwise). A reference to one's own
/// ancestor or descendant is nesting and adds no edge.
fn edges(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, text) in mods {
        let a: Vec<&str> = from.split("::").collect();
        for path in crate_paths(text) {
            // The longest prefix of the path that is a module.
            let Some(to) = (1..=path.len())
                .rev()
                .map(|k| path[..k].join("::"))
                .find(|m| mods.contains_key(m))
            else {
                continue;
            };
            let b: Vec<&str> = to.split("::").collect();
            let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
            if common == a.len() || common == b.len() {
                continue;
            }
            out.entry(a[..=common].join("::"))
                .or_default()
                .insert(b[..=common].join("::"));
        }
    }
    out
}

/// One circle in the graph, as the modules along it, if there is any.
fn find_circle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(n.to_string(), Mark::Open);
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            match marks.get(m) {
                Some(Mark::Open) => {
                    let at = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut circle = stack[at..].to_vec();
                    circle.push(m.clone());
                    return Some(circle);
                }
                Some(Mark::Done) => {}
                None => {
                    if let Some(c) = visit(m, edges, marks, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        marks.insert(n.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in edges.keys() {
        if !marks.contains_key(n) {
            if let Some(c) = visit(n, edges, &mut marks, &mut vec![]) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let mods = modules();
    assert!(mods.contains_key("engine::scheduler") && mods.contains_key("config"));
    let edges = edges(&mods);
    if let Some(circle) = find_circle(&edges) {
        panic!("import circle: {}", circle.join(" -> "));
    }
}

#[test]
fn nothing_below_config_imports_it() {
    let mods = modules();
    let above = ["config", "daemon", "cli", "bench"];
    for (m, text) in &mods {
        let floor = m.split("::").next().unwrap_or_default();
        if above.contains(&floor) {
            continue;
        }
        let bad: Vec<_> = crate_paths(text)
            .into_iter()
            .filter(|p| p[0] == "config")
            .collect();
        assert!(bad.is_empty(), "{m} imports crate::{}", bad[0].join("::"));
    }
}

#[test]
fn the_checker_sees_a_circle_and_grouped_imports() {
    let mods: BTreeMap<String, String> = [
        ("a", "use crate::{b::X, c};"),
        ("b", "fn f() { crate::c::g() }"),
        ("c", "use crate::a::Y;"),
        ("a::child", "use crate::a::Z;"),
    ]
    .into_iter()
    .map(|(m, t)| (m.to_string(), t.to_string()))
    .collect();
    let e = edges(&mods);
    assert_eq!(e["a"], BTreeSet::from(["b".to_string(), "c".to_string()]));
    assert!(!e.contains_key("a::child"), "nesting is not a circle");
    let circle = find_circle(&e).expect("a -> b -> c -> a");
    assert_eq!(circle.first(), circle.last());
    assert_eq!(circle.len(), 4);
}
