//! `cargo xtask`: the workspace's developer commands.
//!
//! ```text
//! cargo xtask codegen          # rewrite every checked-in generated file
//! cargo xtask codegen --check  # fail if any of them is stale
//! cargo xtask api-table CLONE  # rewrite proto/api/upstream-fields.txt from
//!                              # a clone of networkservicemesh/api
//! cargo xtask layout PROFILE   # rewrite the program's hot-text linker
//!                              # script from a callgrind profile of it
//! ```

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mode = match args.as_slice() {
        ["codegen"] => xtask::Mode::Write,
        ["codegen", "--check"] => xtask::Mode::Check,
        ["api-table", clone] => return api_table(clone),
        ["layout", profile] => return layout(profile),
        _ => {
            eprintln!(
                "usage: cargo xtask codegen [--check] | cargo xtask api-table CLONE | cargo xtask layout PROFILE"
            );
            return ExitCode::from(2);
        }
    };
    match xtask::codegen(mode) {
        Ok(report) => {
            print!("{report}");
            if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn api_table(clone: &str) -> ExitCode {
    let root = xtask::workspace_root();
    match xtask::api_table::write_upstream(&root, std::path::Path::new(clone)) {
        Ok(release) => {
            println!(
                "wrote {} from {clone} at {release}",
                xtask::api_table::TABLE
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn layout(profile: &str) -> ExitCode {
    let root = xtask::workspace_root();
    match xtask::layout::write_script(&root, std::path::Path::new(profile)) {
        Ok(patterns) => {
            println!("wrote {} ({patterns} functions)", xtask::layout::SCRIPT);
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
