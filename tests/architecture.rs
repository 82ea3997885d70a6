//! The layers hold: each top-level module of `src/` imports only the modules its layer may
//! (see docs/architecture.md). Read from the source text, so a new `use` that points the
//! wrong way fails here, with the file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Which crate modules each layer may use (besides itself).
fn allowed(layer: &str) -> Option<&'static [&'static str]> {
    Some(match layer {
        "clock" => &[],
        "domain" => &["clock"],
        "outbound" | "store" => &["domain", "clock"],
        "inbound" => &["domain", "clock", "outbound"],
        "metrics" => &["domain", "clock"],
        "config" => &["domain", "clock", "inbound", "outbound", "store"],
        "telemetry" => &["config"],
        "verdicts" => &["domain", "clock", "outbound", "store"],
        "worker" => &[
            "domain",
            "clock",
            "outbound",
            "store",
            "metrics",
            "config",
            "telemetry",
        ],
        "http" => &[
            "domain",
            "clock",
            "outbound",
            "inbound",
            "store",
            "metrics",
            "config",
            "telemetry",
            "verdicts",
        ],
        "app" => &[
            "domain",
            "clock",
            "outbound",
            "inbound",
            "store",
            "metrics",
            "config",
            "telemetry",
            "verdicts",
            "worker",
            "http",
        ],
        "cli" => &[
            "domain",
            "clock",
            "outbound",
            "inbound",
            "store",
            "metrics",
            "config",
            "telemetry",
            "verdicts",
            "worker",
            "http",
            "app",
        ],
        _ => return None,
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`src/store/gates.rs` → `store`).
fn layer_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_owned())
}

/// The crate modules a line of code names (`crate::store::Store` → `store`).
fn crate_modules(line: &str) -> Vec<&str> {
    line.match_indices("crate::")
        .filter_map(|(at, _)| {
            let rest = &line[at + "crate::".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (end > 0).then(|| &rest[..end])
        })
        .collect()
}

#[test]
fn each_layer_imports_only_what_it_may() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "no sources found under {}", src.display());
    let mut wrong = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for file in &files {
        let Some(layer) = layer_of(&src, file) else {
            continue;
        };
        // The binaries and the crate root sit above every layer.
        if matches!(layer.as_str(), "bin" | "lib" | "main") {
            continue;
        }
        let Some(may) = allowed(&layer) else {
            wrong.push(format!(
                "{}: module {layer:?} has no place in docs/architecture.md's layers",
                file.display()
            ));
            continue;
        };
        *seen.entry(layer.clone()).or_default() += 1;
        let text = std::fs::read_to_string(file).unwrap_or_default();
        // Grouped imports (`use crate::{a, b}`) would hide what they name from the line scan.
        if let Some(at) = text.find("crate::{") {
            wrong.push(format!(
                "{}: `crate::{{` at byte {at}: import each crate module on its own path",
                file.display()
            ));
        }
        for (number, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for used in crate_modules(code) {
                if used != layer && !may.contains(&used) {
                    wrong.push(format!(
                        "{}:{}: {layer} may not use crate::{used}",
                        file.display(),
                        number + 1
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
    for layer in [
        "domain", "outbound", "store", "inbound", "http", "worker", "cli",
    ] {
        assert!(seen.contains_key(layer), "no files found for layer {layer}");
    }
}

#[test]
fn the_product_links_no_test_double() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    for file in files {
        if file.starts_with(root.join("src/bin/approver-dev")) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(
            !text.contains("approver_test_support"),
            "{} uses the test doubles; only tests and approver-dev may",
            file.display()
        );
    }
}

#[test]
fn the_domain_is_pure() {
    // No I/O crate in the vocabulary: decisions stay testable without a network or a store.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/domain");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for (number, line) in text.lines().enumerate() {
            for io in [
                "sqlx::",
                "reqwest::",
                "axum::",
                "hyper::",
                "tokio::net",
                "std::fs",
            ] {
                assert!(
                    !line.contains(io) || line.trim_start().starts_with("//"),
                    "{}:{}: the domain uses {io}",
                    file.display(),
                    number + 1
                );
            }
        }
    }
}

/// `src/store/gates.rs` → `store::gates`; `src/store/mod.rs` → `store`.
fn module_path(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?.with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .filter_map(|c| c.as_os_str().to_str().map(str::to_owned))
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    Some(parts.join("::"))
}

/// The module a path names: the longest known module it starts with.
fn resolve(path: &[&str], modules: &BTreeMap<String, Vec<String>>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|candidate| modules.contains_key(candidate))
}

fn related(a: &str, b: &str) -> bool {
    a == b || a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"))
}

#[test]
fn no_module_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let files: Vec<(String, PathBuf)> = files
        .into_iter()
        .filter(|f| !f.starts_with(src.join("bin")))
        // Test modules (`#[path]` siblings) use their parent; they are not part of the graph.
        .filter(|f| !f.to_string_lossy().ends_with("tests.rs"))
        .filter_map(|f| Some((module_path(&src, &f)?, f)))
        .filter(|(m, _)| !matches!(m.as_str(), "lib" | "main"))
        .collect();
    let mut edges: BTreeMap<String, Vec<String>> =
        files.iter().map(|(m, _)| (m.clone(), Vec::new())).collect();
    let known = edges.clone();
    for (module, file) in &files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let is_dir_module = file.ends_with("mod.rs");
        let parent: Vec<&str> = if is_dir_module {
            module.split("::").collect()
        } else {
            let mut p: Vec<&str> = module.split("::").collect();
            p.pop();
            p
        };
        for line in text.lines().map(str::trim_start) {
            if line.starts_with("//") {
                continue;
            }
            for (prefix, base) in [("crate::", Vec::new()), ("super::", parent.clone())] {
                for (at, _) in line.match_indices(prefix) {
                    // `super::` inside `crate::a::super::` cannot happen; skip `self::super`.
                    let rest = &line[at + prefix.len()..];
                    let mut path = base.clone();
                    path.extend(
                        rest.split("::")
                            .map(|p| {
                                p.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                                    .next()
                                    .unwrap_or("")
                            })
                            .take_while(|p| !p.is_empty()),
                    );
                    if let Some(target) = resolve(&path, &known) {
                        if !related(module, &target) {
                            edges.entry(module.clone()).or_default().push(target);
                        }
                    }
                }
            }
        }
    }
    // Depth-first search; a grey node reached again closes a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        White,
        Grey,
        Black,
    }
    fn visit(
        node: &str,
        edges: &BTreeMap<String, Vec<String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(node.to_owned(), Mark::Grey);
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            match marks.get(next).copied().unwrap_or(Mark::White) {
                Mark::Grey => {
                    let from = stack.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::White => {
                    if let Some(cycle) = visit(next, edges, marks, stack) {
                        return Some(cycle);
                    }
                }
                Mark::Black => {}
            }
        }
        stack.pop();
        marks.insert(node.to_owned(), Mark::Black);
        None
    }
    let mut marks = BTreeMap::new();
    for node in edges.keys() {
        if marks.get(node).copied().unwrap_or(Mark::White) == Mark::White {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(node, &edges, &mut marks, &mut stack) {
                panic!("module cycle: {}", cycle.join(" -> "));
            }
        }
    }
    assert!(edges.len() > 20, "too few modules found: {}", edges.len());
}
