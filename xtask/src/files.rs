//! Writing generated files, or checking that the checked-in copies are fresh.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// What [`crate::codegen`] does with the files it generates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Rewrite files whose contents changed.
    Write,
    /// Change nothing; report every file that is stale or missing.
    Check,
}

/// One generated file, its path relative to the workspace root.
pub(crate) struct Generated {
    pub(crate) path: PathBuf,
    pub(crate) contents: String,
}

/// The outcome of a run: which files were (or would have been) rewritten.
#[derive(Debug)]
pub struct Report {
    /// Whether stale files were rewritten or only reported.
    pub mode: Mode,
    /// Files whose checked-in contents differ from the generated ones.
    pub stale: Vec<PathBuf>,
    /// Files that were up to date.
    pub fresh: Vec<PathBuf>,
}

impl Report {
    /// In check mode a stale file is a failure; in write mode it was fixed.
    pub fn is_clean(&self) -> bool {
        self.mode == Mode::Write || self.stale.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = match self.mode {
            Mode::Write => "updated",
            Mode::Check => "stale",
        };
        for path in &self.stale {
            writeln!(f, "{verb}: {}", path.display())?;
        }
        writeln!(
            f,
            "{} generated files: {} fresh, {} {verb}",
            self.stale.len() + self.fresh.len(),
            self.fresh.len(),
            self.stale.len()
        )
    }
}

pub(crate) fn apply(root: &Path, generated: &[Generated], mode: Mode) -> Result<Report, String> {
    let mut report = Report {
        mode,
        stale: Vec::new(),
        fresh: Vec::new(),
    };
    for file in generated {
        let full = root.join(&file.path);
        let current = fs::read_to_string(&full).ok();
        if current.as_deref() == Some(file.contents.as_str()) {
            report.fresh.push(file.path.clone());
            continue;
        }
        if mode == Mode::Write {
            if let Some(dir) = full.parent() {
                fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            }
            fs::write(&full, &file.contents)
                .map_err(|e| format!("writing {}: {e}", full.display()))?;
        }
        report.stale.push(file.path.clone());
    }
    Ok(report)
}

/// Formats Rust source with the toolchain's rustfmt and the workspace's
/// `rustfmt.toml`.
pub(crate) fn rustfmt(source: &str) -> Result<String, String> {
    use std::io::Write;
    use std::process::{Command, Stdio};

    let config = crate::workspace_root().join("rustfmt.toml");
    let mut child = Command::new(std::env::var("RUSTFMT").unwrap_or_else(|_| "rustfmt".into()))
        .args(["--edition", "2024", "--emit", "stdout", "--config-path"])
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running rustfmt: {e}"))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(source.as_bytes())
        .map_err(|e| format!("writing to rustfmt: {e}"))?;
    let output = child
        .wait_with_output()
        .map_err(|e| format!("running rustfmt: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "rustfmt failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    String::from_utf8(output.stdout).map_err(|_| "rustfmt wrote non-UTF-8".to_owned())
}
