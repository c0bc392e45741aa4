//! The map guard (issue 16, DESIGN.md "Inside daemon/src"): fails when someone adds an arrow the
//! map forbids, naming the file and the edge.
//!
//! - Crates, from `cargo metadata`: nothing depends on `shoal`; the leaves (`shoal-gossip`,
//!   `shoal-netlink`, `shoal-images`) depend on no workspace crate; no cycle.
//! - Modules of `daemon/src`, from the source: every `crate::<module>` path (also inside
//!   `use crate::{..}` groups) and every `super::` chain that climbs to the crate root is an arrow
//!   from the file's module to that module. The "never" arrows of DESIGN.md, arrows out of the
//!   leaf modules, arrows into the top (`cli`, `cluster`, `wiring`), and cycles fail.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Arrows DESIGN.md forbids outright: (from, to).
const NEVER: &[(&str, &str)] =
    &[("node", "api"), ("node", "controllers"), ("controllers", "node"), ("scheduler", "node"), ("lb", "controllers")];

/// What the modules below the API may use of the daemon (DESIGN.md's "may use" column; the
/// crates below them are not listed).
/// `metrics` (the process-wide Prometheus registry) sits below them all, so each may count into
/// it. The node agent mints its pods' ServiceAccount tokens with `auth`'s signer (the kubelet
/// asks the TokenRequest API for them; here the signer is local), so `node` may use `auth`.
const MAY_USE: &[(&str, &[&str])] = &[
    ("node", &["reconcile", "streams", "members", "config", "metrics", "auth"]),
    ("scheduler", &["reconcile", "metrics"]),
    ("lb", &["reconcile", "metrics"]),
    ("proxy", &["reconcile", "metrics"]),
    ("netpol", &["reconcile", "metrics"]),
    ("dns", &["reconcile", "metrics"]),
    ("admission", &[]),
];

/// Modules that may use no other module of the daemon (only `shoal_kube` and the other crates).
const LEAVES: &[&str] = &["config", "members", "reconcile", "streams"];

/// The top: start-up and wiring of a node. Nothing below may use them.
const TOP: &[&str] = &["cli", "cluster", "wiring"];

/// Workspace crates that must depend on no other workspace crate.
const LEAF_CRATES: &[&str] = &["shoal-gossip", "shoal-netlink", "shoal-images"];

/// Crate arrows the map forbids but the code still has, each with why it stays for now.
/// Remove an entry when the arrow goes; the test fails when an entry is no longer needed.
const KNOWN_CRATE_ARROWS: &[(&str, &str, &str)] = &[(
    "shoal-kube",
    "shoal-store",
    "Objects reads and writes the store itself (Compare, Op, EventKind); cutting it needs a store trait in shoal-kube",
)];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The module of `daemon/src` a file belongs to, and its module path below the crate root.
fn module_path(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src_dir()).unwrap_or(file);
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs").to_string();
        if stem != "mod" {
            parts.push(stem);
        }
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level modules of `daemon/src` (directories and files, not `lib.rs`/`main.rs`).
fn modules() -> BTreeSet<String> {
    let mut m = BTreeSet::new();
    for e in std::fs::read_dir(src_dir()).expect("daemon/src").flatten() {
        let p = e.path();
        let name = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if p.is_dir() || (p.extension().is_some_and(|x| x == "rs") && name != "lib" && name != "main") {
            m.insert(name);
        }
    }
    m
}

/// The code of a line without its `//` comment (a `//` inside a string literal stays).
fn code_of(line: &str) -> &str {
    let mut quotes = 0;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '"' if prev != '\\' => quotes += 1,
            '/' if prev == '/' && quotes % 2 == 0 => return &line[..i - 1],
            _ => {}
        }
        prev = c;
    }
    line
}

fn ident_at(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// The first path segment of each item of a `crate::{a::b, c, d::{..}}` group.
fn group_heads(s: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut start = true;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => start = true,
            c if start && (c.is_ascii_alphabetic() || c == '_') => {
                heads.push(ident_at(&s[i..]).to_string());
                start = false;
            }
            _ => {}
        }
    }
    heads
}

/// Every top-level module a file refers to, with the line it does so on.
fn references(file: &Path, text: &str) -> Vec<(usize, String)> {
    let base = module_path(file);
    let mut out = Vec::new();
    // Inline modules (`mod tests {`) add a level for `super::`; rustfmt'd code tells their extent
    // by indentation.
    let mut inline: Vec<usize> = Vec::new();
    // `use crate::{` groups may span lines.
    let mut open_group: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = code_of(raw);
        let indent = raw.len() - raw.trim_start().len();
        while inline.last().is_some_and(|&i| indent <= i && !raw.trim().is_empty()) {
            inline.pop();
        }
        if let Some(g) = open_group.as_mut() {
            g.push_str(line);
            if line.contains('}') {
                let g = open_group.take().unwrap_or_default();
                out.extend(group_heads(&g).into_iter().map(|h| (n + 1, h)));
            }
            continue;
        }
        let t = line.trim_start();
        let decl = t.trim_start_matches("pub(crate) ").trim_start_matches("pub ");
        if decl.starts_with("mod ") && t.trim_end().ends_with('{') {
            inline.push(indent);
        }
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let before = rest[..i].chars().last();
            let after = &rest[i + "crate::".len()..];
            rest = after;
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
                continue; // `shoal_crate::`, `$crate::`
            }
            if let Some(g) = after.strip_prefix('{') {
                if g.contains('}') {
                    out.extend(group_heads(g).into_iter().map(|h| (n + 1, h)));
                } else {
                    open_group = Some(g.to_string());
                }
            } else {
                out.push((n + 1, ident_at(after).to_string()));
            }
        }
        // `super::super::x` climbing to the crate root names the top-level module `x`.
        let mut rest = line;
        while let Some(i) = rest.find("super::") {
            let before = rest[..i].chars().last();
            let mut s = &rest[i..];
            let mut ups = 0;
            while let Some(r) = s.strip_prefix("super::") {
                ups += 1;
                s = r;
            }
            rest = s;
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let depth = base.len() + inline.len();
            if ups == depth {
                if let Some(g) = s.strip_prefix('{') {
                    out.extend(group_heads(g).into_iter().map(|h| (n + 1, h)));
                } else {
                    out.push((n + 1, ident_at(s).to_string()));
                }
            }
        }
    }
    out
}

/// One arrow: from module, to module, where.
#[derive(Debug, Clone)]
struct Arrow {
    from: String,
    to: String,
    file: PathBuf,
    line: usize,
}

fn arrows() -> Vec<Arrow> {
    let mods = modules();
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let path = module_path(&f);
        let Some(from) = path.first().cloned() else { continue };
        if from == "lib" || from == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
        for (line, to) in references(&f, &text) {
            if to != from && mods.contains(&to) {
                out.push(Arrow { from: from.clone(), to, file: f.clone(), line });
            }
        }
    }
    out
}

fn show(a: &Arrow) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rel = a.file.strip_prefix(root).unwrap_or(&a.file);
    format!("daemon/{}:{}: {} -> {}", rel.display(), a.line, a.from, a.to)
}

/// A cycle through the graph, if any (module names in order).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(c) = visit(n, graph, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

/// The top is one layer: `cli`, `cluster` and `wiring` may use each other.
fn layer(m: &str) -> &str {
    if TOP.contains(&m) {
        "cluster"
    } else {
        m
    }
}

fn module_violations(arrows: &[Arrow]) -> Vec<String> {
    let mut bad = Vec::new();
    for a in arrows {
        let (from, to) = (a.from.as_str(), a.to.as_str());
        if NEVER.contains(&(from, to)) {
            bad.push(format!("{}  (DESIGN.md: never {from} -> {to})", show(a)));
        } else if LEAVES.contains(&from) {
            bad.push(format!("{}  ({from} is a leaf: it may use shoal_kube, not other daemon modules)", show(a)));
        } else if TOP.contains(&to) && !TOP.contains(&from) {
            bad.push(format!("{}  ({to} is the top: nothing below it may use it)", show(a)));
        } else if let Some((_, may)) = MAY_USE.iter().find(|(m, _)| *m == from) {
            if !may.contains(&to) {
                bad.push(format!("{}  (DESIGN.md: {from} may use {} only)", show(a), may.join(", ")));
            }
        }
    }
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for a in arrows {
        let (f, t) = (layer(&a.from).to_string(), layer(&a.to).to_string());
        if f != t {
            graph.entry(f).or_default().insert(t);
        }
    }
    if let Some(cycle) = find_cycle(&graph) {
        let mut msg = format!("cycle between daemon modules: {}", cycle.join(" -> "));
        for pair in cycle.windows(2) {
            if let Some(a) = arrows.iter().find(|a| layer(&a.from) == pair[0] && layer(&a.to) == pair[1]) {
                msg.push_str(&format!("\n    {}", show(a)));
            }
        }
        bad.push(msg);
    }
    bad
}

#[test]
fn daemon_modules_follow_the_map() {
    let arrows = arrows();
    assert!(!arrows.is_empty(), "no arrows found: is the scan reading daemon/src?");
    let bad = module_violations(&arrows);
    assert!(bad.is_empty(), "wrong arrows between daemon modules:\n  {}", bad.join("\n  "));
}

#[test]
fn the_scan_sees_every_form_of_arrow() {
    let f = src_dir().join("node").join("pod.rs");
    let text = "use crate::api::Error;\nuse crate::{config::X,\n    controllers::{a, b}};\n\
                fn f() { crate::lb::go(); let s = \"x\"; } // crate::dns in a comment\n\
                // crate::proxy::ignored\n#[cfg(test)]\nmod tests {\n    use super::super::super::scheduler::Y;\n}\n\
                fn g() { super::super::streams::Z }\n";
    let got: Vec<String> = references(&f, text).into_iter().map(|(_, m)| m).collect();
    assert_eq!(got, ["api", "config", "controllers", "lb", "scheduler", "streams"]);
    let arrows = vec![
        Arrow { from: "node".into(), to: "api".into(), file: f.clone(), line: 1 },
        Arrow { from: "api".into(), to: "node".into(), file: src_dir().join("api/mod.rs"), line: 2 },
    ];
    let bad = module_violations(&arrows);
    assert!(bad.iter().any(|b| b.contains("daemon/src/node/pod.rs:1: node -> api")), "{bad:?}");
    assert!(bad.iter().any(|b| b.starts_with("cycle between daemon modules")), "{bad:?}");
    let sideways = [Arrow { from: "node".into(), to: "scheduler".into(), file: f.clone(), line: 3 }];
    let bad = module_violations(&sideways);
    assert!(bad.iter().any(|b| b.contains("node -> scheduler  (DESIGN.md: node may use")), "{bad:?}");
}

fn metadata() -> serde_json::Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

#[test]
fn workspace_crates_follow_the_map() {
    let meta = metadata();
    let members: BTreeSet<String> = meta["workspace_members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str().map(String::from))
        .collect();
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut names = BTreeSet::new();
    let mut manifests = BTreeMap::new();
    for p in meta["packages"].as_array().into_iter().flatten() {
        if p["id"].as_str().is_some_and(|id| members.contains(id)) {
            let name = p["name"].as_str().unwrap_or_default().to_string();
            manifests.insert(name.clone(), p["manifest_path"].as_str().unwrap_or_default().to_string());
            names.insert(name);
        }
    }
    for p in meta["packages"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or_default().to_string();
        if !names.contains(&name) {
            continue;
        }
        for d in p["dependencies"].as_array().into_iter().flatten() {
            let dep = d["name"].as_str().unwrap_or_default();
            if names.contains(dep) {
                deps.entry(name.clone()).or_default().insert(dep.to_string());
            }
        }
    }
    let mut bad = Vec::new();
    let mut known_used = BTreeSet::new();
    for (from, tos) in &deps {
        for to in tos {
            let manifest = manifests.get(from).map(String::as_str).unwrap_or_default();
            let arrow = format!("{manifest}: {from} -> {to}");
            if KNOWN_CRATE_ARROWS.iter().any(|(f, t, _)| f == from && t == to) {
                known_used.insert((from.clone(), to.clone()));
                continue;
            }
            if to == "shoal" {
                bad.push(format!("{arrow}: nothing depends on the daemon"));
            } else if LEAF_CRATES.contains(&from.as_str()) {
                bad.push(format!("{arrow}: {from} is a leaf and depends on no workspace crate"));
            }
        }
    }
    for (f, t, why) in KNOWN_CRATE_ARROWS {
        if !known_used.contains(&(f.to_string(), t.to_string())) {
            bad.push(format!("{f} -> {t} is gone: remove it from KNOWN_CRATE_ARROWS ({why})"));
        }
    }
    for leaf in LEAF_CRATES {
        assert!(names.contains(*leaf), "{leaf} is not a workspace member any more: update the map");
    }
    let graph: BTreeMap<String, BTreeSet<String>> = deps.clone();
    if let Some(cycle) = find_cycle(&graph) {
        bad.push(format!("cycle between crates: {}", cycle.join(" -> ")));
    }
    assert!(bad.is_empty(), "wrong arrows between crates:\n  {}", bad.join("\n  "));
}
