//! Checks of the crate's shape (DESIGN §5), run with the unit tests: the import graph
//! between `src/` modules has no cycles, nothing imports `app`, `config` imports no
//! behaviour, and path canonicalization imports nothing of the crate.
//!
//! The graph is read from the sources: a module is a file of the library's module tree
//! (from `lib.rs`, following `mod` declarations); it imports another when it names it
//! through `crate::` or `super::` outside comments and test modules. A parent naming its
//! own child (`pub use child::X`) is containment, not an import.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`routing::layer`, `""` for the crate root) → its file.
fn module_tree(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut todo = vec![(String::new(), src.join("lib.rs"), src.to_path_buf())];
    while let Some((name, file, dir)) = todo.pop() {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for child in declared_modules(&strip_comments(&text)) {
            let path = if name.is_empty() {
                child.clone()
            } else {
                format!("{name}::{child}")
            };
            let flat = dir.join(format!("{child}.rs"));
            let nested = dir.join(&child).join("mod.rs");
            let (f, d) = if flat.exists() {
                (flat, dir.join(&child))
            } else if nested.exists() {
                (nested, dir.join(&child))
            } else {
                continue; // an inline module: part of its parent's file
            };
            todo.push((path, f, d));
        }
        out.insert(name, file);
    }
    out
}

/// `mod x;` declarations (any visibility or attributes), test modules excluded.
fn declared_modules(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut test_attr = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with("#[cfg(test)]") {
            test_attr = true;
            continue;
        }
        let decl = l
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub ")
            .strip_prefix("mod ")
            .and_then(|r| r.strip_suffix(';'));
        if let Some(name) = decl {
            if !test_attr {
                out.push(name.trim().to_string());
            }
        }
        if !l.starts_with("#[") {
            test_attr = false;
        }
    }
    out
}

/// The text without comments (line and block) and without `#[cfg(test)]` items that are
/// inline modules (`mod tests { ... }` to the end of the file, by convention).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_str = false;
    while let Some(c) = chars.next() {
        if in_str {
            out.push(c);
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else if c == '"' {
                in_str = false;
            }
            continue;
        }
        match (c, chars.peek()) {
            ('/', Some('/')) => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            ('/', Some('*')) => {
                chars.next();
                let mut prev = ' ';
                for n in chars.by_ref() {
                    if prev == '*' && n == '/' {
                        break;
                    }
                    prev = n;
                }
            }
            ('"', _) => {
                in_str = true;
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    match out.find("#[cfg(test)]\nmod tests {") {
        Some(i) => out[..i].to_string(),
        None => out,
    }
}

/// The longest module path in `tree` that `segments` starts with.
fn resolve(tree: &BTreeMap<String, PathBuf>, segments: &[&str]) -> Option<String> {
    (1..=segments.len())
        .rev()
        .map(|n| segments[..n].join("::"))
        .find(|m| tree.contains_key(m))
}

/// Module → the modules it imports.
fn imports(tree: &BTreeMap<String, PathBuf>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for (module, file) in tree {
        let text = strip_comments(&std::fs::read_to_string(file).unwrap_or_default());
        let is_dir = file.ends_with("mod.rs") || file.ends_with("lib.rs");
        let here: Vec<&str> = if module.is_empty() {
            Vec::new()
        } else {
            module.split("::").collect()
        };
        let mut edges = BTreeSet::new();
        for (i, _) in text.match_indices("crate::") {
            if i > 0 && is_ident(text.as_bytes()[i - 1]) {
                continue;
            }
            for segs in paths_at(&text[i + "crate::".len()..]) {
                let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
                if let Some(m) = resolve(tree, &segs) {
                    edges.insert(m);
                }
            }
        }
        for (i, _) in text.match_indices("super::") {
            if i > 0 && (is_ident(text.as_bytes()[i - 1]) || text.as_bytes()[i - 1] == b':') {
                continue;
            }
            let mut rest = &text[i..];
            let mut base: Vec<&str> = if is_dir {
                here.clone()
            } else {
                here[..here.len().saturating_sub(1)].to_vec()
            };
            let mut ups = 0;
            while let Some(r) = rest.strip_prefix("super::") {
                rest = r;
                ups += 1;
            }
            base.truncate(base.len().saturating_sub(ups - 1));
            for segs in paths_at(rest) {
                let mut full = base.clone();
                full.extend(segs.iter().map(String::as_str));
                if let Some(m) = resolve(tree, &full) {
                    edges.insert(m);
                }
            }
        }
        edges.remove(module);
        // A parent's own descendants are containment, not imports; so is the root.
        edges.retain(|m| !m.is_empty() && !is_descendant(m, module));
        out.insert(module.clone(), edges);
    }
    out
}

/// `routing::layer` is a descendant of `routing`.
fn is_descendant(m: &str, of: &str) -> bool {
    !of.is_empty() && m.strip_prefix(of).is_some_and(|r| r.starts_with("::"))
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The paths named at the start of `s`: `a::b::C` gives `[a, b, C]`; `a::{b, c::d}` gives
/// `[a, b]` and `[a, c, d]`; `{a, b}` gives `[a]` and `[b]`.
fn paths_at(s: &str) -> Vec<Vec<String>> {
    let mut head = Vec::new();
    let mut rest = s;
    loop {
        let end = rest
            .bytes()
            .position(|b| !is_ident(b))
            .unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        head.push(rest[..end].to_string());
        rest = &rest[end..];
        match rest.strip_prefix("::") {
            Some(r) => rest = r,
            None => return vec![head],
        }
    }
    let Some(group) = rest.strip_prefix('{') else {
        return vec![head];
    };
    // Split the group at top-level commas.
    let mut depth = 0;
    let mut start = 0;
    let mut out = Vec::new();
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                out.extend(branch(&head, &group[start..i]));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.extend(branch(&head, &group[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    out
}

fn branch(head: &[String], item: &str) -> Vec<Vec<String>> {
    paths_at(item.trim())
        .into_iter()
        .map(|tail| head.iter().cloned().chain(tail).collect())
        .collect()
}

/// Cycles (strongly connected components of more than one module), each sorted.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Tarjan's algorithm, iteratively enough for a few dozen modules.
    struct T<'g> {
        g: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on: BTreeSet<&'g str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'g>(t: &mut T<'g>, v: &'g str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        let g = t.g;
        for w in g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn crate_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let tree = module_tree(&src);
    assert!(
        tree.contains_key("routing::layer") && tree.contains_key("app"),
        "module tree not read: {:?}",
        tree.keys().collect::<Vec<_>>()
    );
    imports(&tree)
}

#[test]
fn the_import_graph_has_no_cycles() {
    let graph = crate_graph();
    let found = cycles(&graph);
    assert!(
        found.is_empty(),
        "import cycles between src/ modules: {found:#?}"
    );
}

#[test]
fn nothing_imports_app() {
    let graph = crate_graph();
    let importers: Vec<&String> = graph
        .iter()
        .filter(|(_, e)| e.contains("app"))
        .map(|(m, _)| m)
        .collect();
    assert!(importers.is_empty(), "app is imported by {importers:?}");
}

#[test]
fn config_imports_no_behaviour_and_path_imports_nothing() {
    let graph = crate_graph();
    for (m, edges) in &graph {
        if m == "path" {
            assert!(edges.is_empty(), "path imports {edges:?}");
        }
        if m == "config" || m.starts_with("config::") {
            let behaviour: Vec<&String> = edges
                .iter()
                .filter(|e| !(e.starts_with("config") || *e == "path"))
                .collect();
            assert!(behaviour.is_empty(), "{m} imports {behaviour:?}");
        }
    }
}

#[test]
fn the_checker_sees_imports_and_cycles() {
    // Reading: grouped, nested, super:: and comment handling.
    let text = "use crate::{a::B, c::{d::E, F}};\n// crate::zzz\nfn f() { super::g::h(); }";
    let stripped = strip_comments(text);
    assert!(!stripped.contains("zzz"));
    let got = paths_at("{a::B, c::{d::E, F}};");
    assert_eq!(
        got,
        vec![
            vec!["a".to_string(), "B".into()],
            vec!["c".into(), "d".into(), "E".into()],
            vec!["c".into(), "F".into()],
        ]
    );
    // A cycle of three and an independent edge.
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, b) in [("x", "y"), ("y", "z"), ("z", "x"), ("z", "w")] {
        g.entry(a.into()).or_default().insert(b.into());
        g.entry(b.into()).or_default();
    }
    assert_eq!(cycles(&g), vec![vec!["x", "y", "z"]]);
    // And the real graph has the edges we know of.
    let graph = crate_graph();
    assert!(graph["routing::layer"].contains("path"));
    assert!(graph["stack"].contains("routing::layer"));
    assert!(
        graph["auth::gate"].contains("routing::table") || graph["auth::gate"].contains("routing")
    );
}
