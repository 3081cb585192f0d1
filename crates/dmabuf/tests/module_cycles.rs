//! The crate's top-level modules import each other without cycles.
//!
//! Reads every file under `src/`, finds the paths that name another
//! top-level module (`crate::buffer::…`, `crate::{buffer, fence}`,
//! `super::…` that reaches the crate root, and crate-root re-exports such
//! as `crate::Buffer`, resolved through `lib.rs`), outside comments and
//! string literals, and fails if the graph of top-level modules has a
//! cycle. A module's children (`alloc::heap`…) belong to it: they may use
//! their parent freely.
//!
//! `KNOWN` lists the edges of cycles that are still being broken; each must
//! still exist (the list only shrinks), and the graph without them must be
//! acyclic, so a new cycle — or a new edge into an old one — fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Edges that still close a cycle, with the reason and the fix under way.
const KNOWN: &[(&str, &str, &str)] = &[];

/// Modules that must stay leaves, and the only modules each may use.
const LEAVES: &[(&str, &[&str])] = &[
    ("sys", &[]),
    ("error", &[]),
    ("units", &[]),
    ("access", &["sys"]),
    ("procfs", &[]),
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source with comments and the contents of string and char literals
/// blanked (newlines kept, so line numbers stay right).
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, c: u8| out.push(if c == b'\n' { b'\n' } else { b' ' });
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                out.push(b' ');
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if c == b'r'
            && matches!(b.get(i + 1), Some(b'"') | Some(b'#'))
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
        {
            // Raw string r"…" / r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == b'"'
                    && b[j + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&h| h == b'#')
                        .count()
                        == hashes
                {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            for &x in &b[i..j.min(b.len())] {
                blank(&mut out, x);
            }
            i = j;
        } else if c == b'"' {
            out.push(b' ');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    blank(&mut out, b[i]);
                    i += 1;
                }
                if i < b.len() {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
            out.push(b' ');
            i += 1;
        } else if c == b'\'' {
            // A char literal ('x', '\n', '\''), not a lifetime ('a).
            let end = if b.get(i + 1) == Some(&b'\\') {
                // Escaped: the closing quote comes after the escape's
                // first character (`'\''`, `'\n'`, `'\u{…}'`).
                b.get(i + 3..)
                    .and_then(|t| t.iter().position(|&x| x == b'\''))
                    .map(|p| i + 3 + p)
            } else if b.get(i + 2) == Some(&b'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(e) => {
                    out.resize(out.len() + (e + 1 - i), b' ');
                    i = e + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first path segment of every item of a `{…}` use group.
fn group_heads(group: &str) -> Vec<&str> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => start = true,
            c if start && (c.is_ascii_alphabetic() || c == '_') => {
                heads.push(ident_at(&group[i..]));
                start = false;
            }
            _ => {}
        }
    }
    heads
}

/// Where `module` (the file's module path, e.g. `["alloc", "heap"]`)
/// names crate-root items: the first segment after each `crate::`, and
/// after a `super::` chain that climbs to the root.
fn root_names(code: &str, module: &[String]) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in code.lines().enumerate() {
        for (i, _) in line.char_indices() {
            let before = line[..i].chars().last();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            let tail = &line[i..];
            let after = if let Some(t) = tail.strip_prefix("crate::") {
                t
            } else if tail.starts_with("super::") {
                let mut t = tail;
                let mut ups = 0;
                while let Some(x) = t.strip_prefix("super::") {
                    ups += 1;
                    t = x.trim_start();
                }
                // `super` climbs from the file's module; only a chain that
                // reaches the crate root names a top-level module.
                if ups < module.len() {
                    continue;
                }
                t
            } else {
                continue;
            };
            let after = after.trim_start();
            if let Some(g) = after.strip_prefix('{') {
                for h in group_heads(g) {
                    found.push((n + 1, h.to_string()));
                }
            } else {
                let id = ident_at(after);
                if !id.is_empty() {
                    found.push((n + 1, id.to_string()));
                }
            }
        }
    }
    found
}

/// The module path of a file under `src/`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

struct Graph {
    /// The crate's top-level modules.
    modules: BTreeSet<String>,
    /// Top-level module → (module it uses → first place it does).
    edges: BTreeMap<String, BTreeMap<String, String>>,
}

fn graph() -> Graph {
    let src = src_dir();
    let lib = code_only(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    // Top-level modules, and what the root re-exports from which module.
    let mut modules = BTreeSet::new();
    let mut reexports: BTreeMap<String, String> = BTreeMap::new();
    // Every `mod NAME;` and `use PATH;` item of lib.rs, wherever it starts
    // (after an attribute, a macro definition, another item).
    let items = lib.char_indices().filter_map(|(i, _)| {
        let before = lib[..i].chars().last();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            return None;
        }
        let rest = &lib[i..];
        if !(rest.starts_with("mod ") || rest.starts_with("use ")) {
            return None;
        }
        let end = rest.find(';')?;
        Some(rest[..end].split_whitespace().collect::<Vec<_>>().join(" "))
    });
    for l in items {
        if let Some(m) = l.strip_prefix("mod ") {
            modules.insert(ident_at(m).to_string());
        } else if let Some(u) = l.strip_prefix("use ") {
            let module = ident_at(u).to_string();
            let names = match u.find('{') {
                Some(p) => u[p + 1..]
                    .split(',')
                    .map(|s| ident_at(s.trim()).to_string())
                    .collect(),
                None => vec![u.rsplit("::").next().unwrap().into()],
            };
            for n in names.into_iter().filter(|n| !n.is_empty()) {
                reexports.insert(n, module.clone());
            }
        }
    }
    assert!(
        modules.len() > 5 && modules.contains("buffer"),
        "lib.rs's modules not found: {modules:?}"
    );
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap().to_path_buf();
        let module = module_of(&rel);
        let Some(top) = module.first() else { continue }; // lib.rs
        let code = code_only(&std::fs::read_to_string(&file).unwrap());
        for (line, name) in root_names(&code, &module) {
            let target = if modules.contains(&name) {
                name
            } else if let Some(m) = reexports.get(&name) {
                m.clone()
            } else {
                continue;
            };
            if &target != top {
                edges
                    .entry(top.clone())
                    .or_default()
                    .entry(target)
                    .or_insert_with(|| format!("src/{}:{line}", rel.display()));
            }
        }
    }
    Graph { modules, edges }
}

/// A cycle in `edges`, as the list of modules on it, if there is one.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m.as_str()) {
                Some(1) => {
                    let at = stack.iter().position(|s| s == m).unwrap();
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if !state.contains_key(n) {
            if let Some(c) = visit(n, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let g = graph();
    let mut rest: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in &g.edges {
        for to in tos.keys() {
            if !KNOWN.iter().any(|(f, t, _)| f == from && t == to) {
                rest.entry(from.clone()).or_default().insert(to.clone());
            }
        }
    }
    if let Some(cycle) = find_cycle(&rest) {
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|w| format!("{} -> {} ({})", w[0], w[1], g.edges[&w[0]][&w[1]]))
            .collect();
        panic!("import cycle between modules:\n  {}", steps.join("\n  "));
    }
    for (from, to, why) in KNOWN {
        assert!(
            g.edges.get(*from).is_some_and(|t| t.contains_key(*to)),
            "the known cycle edge {from} -> {to} ({why}) is gone: remove it from KNOWN"
        );
    }
}

#[test]
fn leaf_modules_stay_leaves() {
    let g = graph();
    for (leaf, allowed) in LEAVES {
        assert!(g.modules.contains(*leaf), "no module `{leaf}` in lib.rs");
        for (to, at) in g.edges.get(*leaf).into_iter().flatten() {
            assert!(
                allowed.contains(&to.as_str()),
                "`{leaf}` must stay a leaf, but uses `{to}` ({at})"
            );
        }
    }
}

/// The checker itself: it sees the edges it must see, and nothing in
/// comments or strings.
#[test]
fn the_checker_sees_uses_and_ignores_comments_and_strings() {
    let code = code_only(
        "use crate::{buffer::Buffer, fence};\n\
         // use crate::probe;\n\
         let s = \"crate::share\"; /* crate::frame */ let c = 'c'; let q = '\\'';\n\
         let r = r#\"crate::probe\"#; let q = '\\n'; let e = \"\\\"crate::endpoint\";\n\
         fn f<'a>(x: &'a crate::Allocator) { super::super::units::x(); }\n",
    );
    let names: Vec<String> = root_names(&code, &["alloc".into(), "heap".into()])
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert_eq!(names, ["buffer", "fence", "Allocator", "units"]);
    // `super` from a top-level module file reaches the root; from a child
    // it stays inside its parent.
    assert_eq!(
        root_names("use super::buffer;", &["mapping".into()]).len(),
        1
    );
    assert!(root_names("use super::Backend;", &["alloc".into(), "heap".into()]).is_empty());
    // The real graph has the modules and edges it must have.
    let g = graph();
    for m in [
        "access",
        "alloc",
        "buffer",
        "dma_buf",
        "endpoint",
        "error",
        "fence",
        "frame",
        "inspect",
        "mapping",
        "probe",
        "reservation",
        "share",
        "sys",
        "units",
    ] {
        assert!(g.modules.contains(m), "module `{m}` not seen in lib.rs");
    }
    assert!(g.edges["reservation"].contains_key("access"));
    assert!(g.edges["buffer"].contains_key("dma_buf"));
    assert!(g.edges["mapping"].contains_key("buffer"));
    assert!(g.edges["alloc"].contains_key("buffer"));
    assert!(!g.edges["alloc"].contains_key("alloc"));
    // A cycle is found.
    let mut e: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    e.entry("a".into()).or_default().insert("b".into());
    e.entry("b".into()).or_default().insert("c".into());
    assert!(find_cycle(&e).is_none());
    e.entry("c".into()).or_default().insert("a".into());
    assert_eq!(find_cycle(&e).unwrap(), ["a", "b", "c", "a"]);
}
