//! The layer rule of `docs/architecture.md`, checked on the source: a module imports only from
//! its own folder and from lower layers, and every module of `src/` has a place in the table.
//! The table in the doc is the one source, so the map cannot drift from the code.

use std::collections::BTreeMap;
use std::path::Path;

use tern_testkit::workspace_root;

/// `module → layer`, from the table under "## Layers" in docs/architecture.md.
fn layers() -> BTreeMap<String, u32> {
    let doc = std::fs::read_to_string(workspace_root().join("docs/architecture.md")).unwrap();
    let section = doc
        .split("## Layers")
        .nth(1)
        .expect("docs/architecture.md has a Layers section");
    let mut out = BTreeMap::new();
    for line in section.lines().take_while(|l| !l.starts_with("## ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(layer) = cells.get(1).and_then(|c| c.parse::<u32>().ok()) else {
            continue;
        };
        for m in cells[2].split(',') {
            let m = m.trim().trim_matches('`');
            assert!(
                out.insert(m.to_string(), layer).is_none(),
                "`{m}` is listed twice"
            );
        }
    }
    assert!(!out.is_empty(), "no layer table found");
    out
}

/// The modules a file imports (`crate::name`, and each name of a `crate::{a, b::c}` group),
/// outside comments.
fn imports(src: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let code: String = src
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group only: `b::{c, d}` names `b`.
            let mut depth = 0;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        rest = &group[j..];
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    _ if item_start && !c.is_whitespace() => {
                        item_start = false;
                        out.push(ident(&group[j..]));
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

/// Every `.rs` file under `dir`, with the top-level module it belongs to.
fn files(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir) {
        let e = e.unwrap();
        let p = e.path();
        if p.extension().is_some_and(|x| x == "rs") {
            let rel = p.strip_prefix(dir).unwrap();
            let first = rel.components().next().unwrap().as_os_str();
            let module = first.to_string_lossy().trim_end_matches(".rs").to_string();
            out.push((module, p.to_path_buf()));
        }
    }
    out
}

#[test]
fn imports_point_down_the_layers() {
    let layers = layers();
    let src = workspace_root().join("src");
    let mut upward = Vec::new();
    let mut unplaced = Vec::new();
    for (module, path) in files(&src) {
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(&mine) = layers.get(&module) else {
            unplaced.push(module);
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap();
        for dep in imports(&text) {
            if dep == module {
                continue;
            }
            match layers.get(&dep) {
                Some(&theirs) if theirs < mine => {}
                Some(&theirs) => upward.push(format!(
                    "{} (layer {mine}) imports `{dep}` (layer {theirs})",
                    path.strip_prefix(&src).unwrap().display()
                )),
                None => unplaced.push(dep),
            }
        }
    }
    unplaced.sort();
    unplaced.dedup();
    assert!(
        unplaced.is_empty(),
        "modules missing from the layer table of docs/architecture.md: {unplaced:?}"
    );
    assert!(
        upward.is_empty(),
        "imports that do not point down (docs/architecture.md, Layers):\n{}",
        upward.join("\n")
    );
}

#[test]
fn every_module_in_the_table_exists() {
    let src = workspace_root().join("src");
    for m in layers().keys() {
        assert!(
            src.join(format!("{m}.rs")).exists() || src.join(m).join("mod.rs").exists(),
            "docs/architecture.md lists `{m}`, which is not a module of src/"
        );
    }
}

#[test]
fn the_checker_finds_imports_and_skips_comments() {
    let src = "use crate::stats::Stats;\n// crate::server is only named here\nlet x = crate::timer::now_ms();\n/// see [`crate::proxy`]\nuse crate::{admin, upstream::{cluster, lb},\n    state::Shared};\n";
    assert_eq!(
        imports(src),
        vec!["stats", "timer", "admin", "upstream", "state"]
    );
}
