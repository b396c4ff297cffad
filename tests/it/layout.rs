//! The source's shape as `DESIGN.md` draws it, read from `src/`: no module
//! imports another that (through others) imports it back, and the modules that
//! must not name an engine or a driver do not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Modules that name no engine and use no driver (the seam's neutral side).
const NEUTRAL: &[&str] = &[
    "checkpoint",
    "cli",
    "commands",
    "commands::order",
    "commands::preview",
    "commands::run",
    "commands::status",
    "commands::transfer",
    "commands::verify",
    "error",
    "init",
    "job",
    "order",
    "partition",
    "pattern",
    "plan",
    "report",
    "run",
    "run::start",
    "sql",
];

/// What naming an engine or a driver looks like in code.
const ENGINE_NAMES: &[&str] = &["engine::postgres", "engine::sqlite", "sqlx", "rusqlite"];

/// Every module under `src/` (`a::b` for `src/a/b.rs` or `src/a/b/mod.rs`),
/// with its code: comments and the unit tests left out.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix("src").unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            if parts.is_empty() {
                continue;
            }
            out.insert(
                parts.join("::"),
                code(&std::fs::read_to_string(&path).unwrap()),
            );
        }
    }
    let mut out = BTreeMap::new();
    walk(Path::new("src"), &mut out);
    out
}

/// A file's code without its comments and its `#[cfg(test)] mod tests`.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap();
    text.lines()
        .map(|line| match line.find("//") {
            // `//` in a string (a URL) cuts the line short: fine for finding paths.
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths a module's code names, from `crate::`, `super::` and `self::`
/// (each item of a `{...}` group), as segments from the crate's root.
fn paths(module: &str, code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for prefix in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(prefix) {
            let start = from + i;
            from = start + prefix.len();
            if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
                continue;
            }
            let mut base: Vec<String> = match prefix {
                "crate::" => Vec::new(),
                _ => module.split("::").map(String::from).collect(),
            };
            let mut rest = &code[start + prefix.len()..];
            if prefix == "super::" {
                base.pop();
                while let Some(r) = rest.strip_prefix("super::") {
                    base.pop();
                    rest = r;
                }
            }
            for item in items(rest) {
                let mut path = base.clone();
                path.extend(item.split("::").map(|s| s.trim().to_string()));
                out.push(path);
            }
        }
    }
    out
}

/// The items a path names: `a::b` or each of `{a, b::c}`.
fn items(rest: &str) -> Vec<String> {
    let word = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect::<String>()
            .trim_end_matches(':')
            .to_string()
    };
    let path = word(rest);
    let after = &rest[path.len()..];
    let group = if path.is_empty() {
        rest.strip_prefix('{')
    } else {
        after.strip_prefix("::{")
    };
    let Some(group) = group else {
        return vec![path];
    };
    let (mut depth, mut item, mut out) = (0, String::new(), Vec::new());
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut item));
                continue;
            }
            _ => {}
        }
        item.push(c);
    }
    out.push(item);
    out.iter()
        .map(|i| word(i.trim()))
        .filter(|i| !i.is_empty() && i != "self")
        .map(|i| {
            if path.is_empty() {
                i
            } else {
                format!("{path}::{i}")
            }
        })
        .collect()
}

/// Which modules each module imports: the longest module a path names,
/// leaving out a module's own ancestors and descendants (a parent declares
/// its children, and children use their parent's items).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let mut graph = BTreeMap::new();
    for (name, code) in &modules {
        let mut deps = BTreeSet::new();
        for path in paths(name, code) {
            let Some(dep) = (1..=path.len())
                .rev()
                .map(|n| path[..n].join("::"))
                .find(|m| modules.contains_key(m))
            else {
                continue;
            };
            let related = dep == *name
                || name.starts_with(&format!("{dep}::"))
                || dep.starts_with(&format!("{name}::"));
            if !related {
                deps.insert(dep);
            }
        }
        graph.insert(name.clone(), deps);
    }
    graph
}

/// The groups of modules that import each other (Tarjan's strongly connected
/// components of more than one module).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        for w in &s.graph[v] {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.stack.contains(&w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let at = s.stack.iter().position(|x| *x == v).unwrap();
            let group: Vec<String> = s.stack.drain(at..).map(String::from).collect();
            if group.len() > 1 {
                s.found.push(group);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[test]
fn no_module_imports_itself_back() {
    let graph = graph();
    // The reader finds what it must: a known edge of each kind.
    assert!(
        graph["checkpoint"].contains("plan"),
        "{:?}",
        graph["checkpoint"]
    );
    assert!(graph["commands::run"].contains("run::start"));
    assert!(graph["engine::url"].contains("engine::postgres::libpq"));
    let found = cycles(&graph);
    assert!(found.is_empty(), "import cycles: {found:?}");
}

#[test]
fn a_cycle_is_found_where_there_is_one() {
    let mut graph = graph();
    graph
        .get_mut("sql")
        .unwrap()
        .insert("checkpoint".to_string());
    let found = cycles(&graph);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains(&"sql".to_string()) && found[0].contains(&"checkpoint".to_string()));
}

#[test]
fn neutral_modules_name_no_engine() {
    let modules = modules();
    for name in NEUTRAL {
        let code = &modules[*name];
        for engine in ENGINE_NAMES {
            assert!(
                !code.contains(engine),
                "{name} names {engine}: the engine-neutral modules reach engines through crate::engine"
            );
        }
    }
}
