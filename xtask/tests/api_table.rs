//! `proto/api/*.proto` has the message and field table of the NSM api
//! release that `proto/api/UPSTREAM` names, as recorded from upstream in
//! `proto/api/upstream-fields.txt`.

use xtask::api_table::{TABLE, UPSTREAM, render};

#[test]
fn the_field_table_is_the_recorded_upstream_releases() {
    let root = xtask::workspace_root();
    let ours = render(&root.join("proto/api")).expect("proto/api compiles");
    let upstream = std::fs::read_to_string(root.join(TABLE)).expect("the recorded table");
    let release = std::fs::read_to_string(root.join(UPSTREAM)).expect("the recorded release");
    let differ: Vec<String> = diff(&upstream, &ours);
    assert!(
        differ.is_empty(),
        "proto/api/*.proto differs from NSM api {} (- upstream, + ours):\n{}",
        release.trim(),
        differ.join("\n")
    );
    assert!(
        ours.contains(
            "field connectioncontext.IPContext.policies = 11 repeated connectioncontext.PolicyRoute"
        ),
        "the table names fields by number and type"
    );
}

fn diff(upstream: &str, ours: &str) -> Vec<String> {
    let mut lines: Vec<String> = upstream
        .lines()
        .filter(|l| !ours.lines().any(|o| o == *l))
        .map(|l| format!("- {l}"))
        .collect();
    lines.extend(
        ours.lines()
            .filter(|l| !upstream.lines().any(|u| u == *l))
            .map(|l| format!("+ {l}")),
    );
    lines
}
