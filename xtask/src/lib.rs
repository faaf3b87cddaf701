//! Generation of the workspace's checked-in code, in the rust-analyzer style:
//! generated files live in the repository, `cargo xtask codegen` rewrites them
//! and a test fails when what is checked in differs from what would be written.

pub mod api_table;
mod files;
mod fixtures;
pub mod layout;
mod proto;

use std::path::{Path, PathBuf};

pub use files::{Mode, Report};

/// Regenerates (or, with [`Mode::Check`], compares) every generated file.
pub fn codegen(mode: Mode) -> Result<Report, String> {
    let root = workspace_root();
    let mut generated = proto::generate(&root)?;
    generated.extend(fixtures::generate(&root)?);
    generated.sort_by(|a, b| a.path.cmp(&b.path));
    files::apply(&root, &generated, mode)
}

/// The workspace root, found from this crate's manifest directory so that the
/// command works from any current directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
