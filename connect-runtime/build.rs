//! Links this crate's examples, the program among them, with its hot code
//! together (`examples/passthrough/hot-text.ld`, written by
//! `cargo xtask layout`). Nothing here reaches a crate that depends on this
//! one: cargo applies these arguments to this package's examples only.

use std::path::Path;

fn main() {
    let script = "examples/passthrough/hot-text.ld";
    println!("cargo::rerun-if-changed={script}");
    // An ELF script read by GNU ld and lld; other targets link as usual.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let path = Path::new(&dir).join(script);
    if path.exists() {
        println!("cargo::rustc-link-arg-examples=-Wl,-T,{}", path.display());
    }
}
