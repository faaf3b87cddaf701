//! README's Guarantees table names the tests that prove each promise: every
//! file it cites exists, and every test it names is a function in the file
//! cited before it.

use std::path::{Path, PathBuf};

/// Where a cited file is: paths under `tests/tests/` are cited from there
/// (`integration/elements/connect.rs`), the others from the workspace root.
fn resolve(root: &Path, cited: &str) -> PathBuf {
    let from_tests = root.join("tests/tests").join(cited);
    match from_tests.exists() {
        true => from_tests,
        false => root.join(cited),
    }
}

fn is_test_name(span: &str) -> bool {
    span.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && span
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && span.contains('_')
}

#[test]
fn every_test_the_guarantees_cite_exists() {
    let root = xtask::workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let table = readme
        .split("\n## Guarantees")
        .nth(1)
        .expect("README has a Guarantees section");
    let table = table.split("\n## ").next().unwrap();
    let mut problems = Vec::new();
    let mut cited = 0;
    for row in table.lines().filter(|l| l.starts_with("| ")) {
        let Some(proved_by) = row.trim_end_matches('|').rsplit('|').next() else {
            continue;
        };
        let mut file: Option<(String, String)> = None;
        for (k, span) in proved_by.split('`').enumerate() {
            if k % 2 == 0 {
                continue;
            }
            if span.ends_with(".rs") || span.ends_with('/') {
                let path = resolve(&root, span);
                match std::fs::read_to_string(&path) {
                    Ok(text) => file = Some((span.to_owned(), text)),
                    Err(_) if path.is_dir() => file = None,
                    Err(_) => {
                        problems.push(format!("{span} does not exist"));
                        file = None;
                    }
                }
            } else if is_test_name(span) {
                cited += 1;
                match &file {
                    Some((path, text)) if text.contains(&format!("fn {span}(")) => {}
                    Some((path, _)) => problems.push(format!("{path} has no test `{span}`")),
                    None => problems.push(format!("`{span}` follows no cited file")),
                }
            }
        }
    }
    assert!(cited > 50, "the table names only {cited} tests");
    assert!(
        problems.is_empty(),
        "README's Guarantees:\n{}",
        problems.join("\n")
    );
}
