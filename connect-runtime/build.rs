//! Links this crate's examples, the program among them, with its hot code
//! together (`examples/passthrough/hot-text.ld`, written by
//! `cargo xtask layout`), and with packed relative relocations where the C
//! library can load them. Nothing here reaches a crate that depends on this
//! one: cargo applies these arguments to this package's examples only.

use std::path::Path;

fn main() {
    let script = "examples/passthrough/hot-text.ld";
    println!("cargo::rerun-if-changed={script}");
    println!("cargo::rerun-if-env-changed=CONNECT_NO_HOT_TEXT");
    // An ELF script read by GNU ld and lld; other targets link as usual, and
    // so does a build that sets CONNECT_NO_HOT_TEXT (for gold or mold, or to
    // profile the program for the script).
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux")
        || std::env::var_os("CONNECT_NO_HOT_TEXT").is_some()
    {
        return;
    }
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let path = Path::new(&dir).join(script);
    if path.exists() {
        println!("cargo::rustc-link-arg-examples=-Wl,-T,{}", path.display());
    }
    // DT_RELR: the loader reads kilobytes of relocations at start, not the
    // hundreds that would then stay resident. glibc loads them from 2.36,
    // and the linker marks the binary as needing it.
    if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu")
        && std::env::var("TARGET").ok() == std::env::var("HOST").ok()
        && host_glibc().is_some_and(|version| version >= (2, 36))
    {
        println!("cargo::rustc-link-arg-examples=-Wl,-z,pack-relative-relocs");
    }
}

/// The host's glibc version, as `getconf` gives it ("glibc 2.36").
fn host_glibc() -> Option<(u32, u32)> {
    let out = std::process::Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let (major, minor) = text.trim().strip_prefix("glibc ")?.split_once('.')?;
    let minor = minor.split('.').next()?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}
