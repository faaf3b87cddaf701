//! Links this crate's examples, the program among them, with its hot code
//! together (`examples/passthrough/hot-text.ld`, written by
//! `cargo xtask layout`). Nothing here reaches a crate that depends on this
//! one: cargo applies these arguments to this package's examples only.

use std::path::Path;

fn main() {
    let script = "examples/passthrough/hot-text.ld";
    println!("cargo::rerun-if-changed={script}");
    println!("cargo::rerun-if-env-changed=CONNECT_NO_HOT_TEXT");
    // An ELF script read by GNU ld and lld; other targets link as usual, and
    // so does a build that sets CONNECT_NO_HOT_TEXT (for gold or mold).
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
}
