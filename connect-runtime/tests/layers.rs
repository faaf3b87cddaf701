//! The crate's modules form layers, and every arrow points down:
//!
//! 1. leaves (`deadline`, `grpc_timeout`, `outcome`, `sync`, `telemetry`):
//!    nothing of ours;
//! 2. `map`;
//! 3. `transport`: the dialing side;
//! 4. `chain`;
//! 5. `server`: the serving side, which runs chains;
//! 6. `elements`;
//! 7. `lib.rs` and `prelude`: re-exports only.
//!
//! Modules import each other by path (`crate::transport::dial`), not through
//! the root's re-exports, and no two files import each other, however
//! indirectly. This test reads the sources and fails, naming the file and
//! the path, when either rule breaks.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const LAYERS: &[&[&str]] = &[
    &["deadline", "grpc_timeout", "outcome", "sync", "telemetry"],
    &["map"],
    &["transport"],
    &["chain"],
    &["server"],
    &["elements"],
    &["prelude"],
];

fn layer(top: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&top))
}

/// A source file, as the module path it defines (`["transport", "dial"]`)
/// and whether it is a `mod.rs` (or `lib.rs`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct File {
    module: Vec<String>,
    hub: bool,
}

impl File {
    fn name(&self) -> String {
        match self.module.is_empty() {
            true => "lib.rs".to_owned(),
            false => self.module.join("::"),
        }
    }
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn file_of(src: &Path, path: &Path) -> File {
    let relative = path.strip_prefix(src).unwrap().with_extension("");
    let mut module: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let hub = matches!(module.last().map(String::as_str), Some("mod" | "lib"));
    if hub {
        module.pop();
    }
    File { module, hub }
}

/// The source with comments, strings and character literals blanked out.
fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&chars, i) {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (0..hashes).all(|k| chars.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && (next == Some('\\') || chars.get(i + 2) == Some(&'\'')) {
            // A character literal (a lifetime has no closing quote).
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// Every path into the crate the code names, as module paths from the
/// root: `crate::a::b` as written, `super::x` resolved from `file`, and the
/// members of a `crate::{a, b::c}` group each on their own.
fn paths(file: &File, code: &str) -> Vec<Vec<String>> {
    let tokens = tokenize(code);
    let mut found = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let start = match tokens[i].as_str() {
            "crate" => Some(Vec::new()),
            "super" => {
                let mut base = file.module.clone();
                base.pop();
                Some(base)
            }
            _ => None,
        };
        let preceded_by_path = i > 0 && tokens[i - 1] == "::";
        if let (Some(mut base), false) = (start, preceded_by_path) {
            i += 1;
            while tokens.get(i).map(String::as_str) == Some("::")
                && tokens.get(i + 1).map(String::as_str) == Some("super")
            {
                base.pop();
                i += 2;
            }
            collect(&tokens, &mut i, base, &mut found);
        } else {
            i += 1;
        }
    }
    found
}

/// Reads `::a::b`, or `::{...}`, after a path's start.
fn collect(tokens: &[String], i: &mut usize, base: Vec<String>, found: &mut Vec<Vec<String>>) {
    let mut path = base;
    while tokens.get(*i).map(String::as_str) == Some("::") {
        match tokens.get(*i + 1).map(String::as_str) {
            Some("{") => {
                *i += 2;
                loop {
                    match tokens.get(*i).map(String::as_str) {
                        None | Some("}") => {
                            *i += 1;
                            return;
                        }
                        Some(",") => *i += 1,
                        Some(name) if is_ident(name) => {
                            let mut member = path.clone();
                            member.push(name.to_owned());
                            *i += 1;
                            collect(tokens, i, member, found);
                        }
                        _ => *i += 1,
                    }
                }
            }
            Some(name) if is_ident(name) => {
                path.push(name.to_owned());
                *i += 2;
            }
            _ => break,
        }
    }
    found.push(path);
}

fn is_ident(token: &str) -> bool {
    token
        .chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

fn tokenize(code: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            tokens.push("::".to_owned());
            i += 2;
        } else if c.is_whitespace() {
            i += 1;
        } else {
            tokens.push(c.to_string());
            i += 1;
        }
    }
    tokens
}

/// The file a path lands in: the deepest source file whose module is a
/// prefix of it.
fn target<'a>(files: &'a [File], path: &[String]) -> Option<&'a File> {
    files
        .iter()
        .filter(|f| path.starts_with(&f.module))
        .max_by_key(|f| f.module.len())
}

#[test]
fn every_arrow_of_the_module_graph_points_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths_on_disk = Vec::new();
    sources(&src, &mut paths_on_disk);
    let files: Vec<File> = paths_on_disk.iter().map(|p| file_of(&src, p)).collect();
    let tops: BTreeSet<&str> = files
        .iter()
        .filter_map(|f| f.module.first().map(String::as_str))
        .collect();
    let mut problems = Vec::new();
    let mut edges: BTreeMap<File, BTreeSet<File>> = BTreeMap::new();
    for (path, file) in paths_on_disk.iter().zip(&files) {
        let source = fs::read_to_string(path).unwrap();
        // Tests inside a file may reach anywhere.
        let source = source.split("#[cfg(test)]").next().unwrap();
        let code = code_only(source);
        let from = file.module.first().map(String::as_str);
        for target_path in paths(file, &code) {
            let Some(to) = target_path.first().map(String::as_str) else {
                continue;
            };
            // The wire API is another crate's; the derives' hidden module
            // is the root's own.
            if to == "proto" || to == "__private" {
                continue;
            }
            if !tops.contains(to) {
                if !file.module.is_empty() && from != Some("prelude") {
                    problems.push(format!(
                        "{} names crate::{} through the root: import it by its module's path",
                        file.name(),
                        target_path.join("::")
                    ));
                }
                continue;
            }
            match (from.and_then(layer), layer(to)) {
                (Some(a), Some(b)) if from != Some(to) && b >= a => problems.push(format!(
                    "{} (layer {}) imports crate::{} (layer {}): arrows must point down",
                    file.name(),
                    a + 1,
                    target_path.join("::"),
                    b + 1
                )),
                (None, _) if !file.module.is_empty() => {
                    problems.push(format!("{} is in no layer", file.name()));
                }
                _ => {}
            }
            // Re-exports of a hub are its structure, not its dependencies.
            let structural = file.hub && target_path.starts_with(&file.module);
            if let Some(to_file) = target(&files, &target_path)
                && to_file != file
                && !structural
            {
                edges
                    .entry(file.clone())
                    .or_default()
                    .insert(to_file.clone());
            }
        }
    }
    if let Some(cycle) = find_cycle(&edges) {
        let names: Vec<String> = cycle.iter().map(File::name).collect();
        problems.push(format!("a circle between files: {}", names.join(" -> ")));
    }
    problems.sort();
    problems.dedup();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn find_cycle(edges: &BTreeMap<File, BTreeSet<File>>) -> Option<Vec<File>> {
    fn visit(
        node: &File,
        edges: &BTreeMap<File, BTreeSet<File>>,
        stack: &mut Vec<File>,
        done: &mut BTreeSet<File>,
    ) -> Option<Vec<File>> {
        if let Some(at) = stack.iter().position(|f| f == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.clone());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(cycle) = visit(node, edges, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn the_reader_sees_paths_as_written() {
    let file = File {
        module: vec!["transport".into(), "dial".into()],
        hub: false,
    };
    let code = code_only(
        "use crate::{chain::Next, map};\n// crate::elements::Connect\nlet s = \"crate::server\";\nuse super::tls::ClientTls;\nfn f<'a>(x: &'a str) -> char { 'c' }",
    );
    let found = paths(&file, &code);
    let found: Vec<String> = found.iter().map(|p| p.join("::")).collect();
    assert_eq!(found, ["chain::Next", "map", "transport::tls::ClientTls"]);
}

#[test]
fn a_circle_is_found() {
    let file = |name: &str| File {
        module: vec!["transport".into(), name.into()],
        hub: false,
    };
    let mut edges = BTreeMap::new();
    edges.insert(file("tls"), BTreeSet::from([file("spiffe")]));
    edges.insert(file("spiffe"), BTreeSet::from([file("dial"), file("tls")]));
    let cycle = find_cycle(&edges).expect("tls and spiffe import each other");
    let names: Vec<String> = cycle.iter().map(File::name).collect();
    assert!(names.contains(&"transport::tls".to_owned()), "{names:?}");
    edges.remove(&file("tls"));
    assert_eq!(find_cycle(&edges), None);
}
