//! Checked-in generated code must match what `cargo xtask codegen` writes.

#[test]
fn generated_code_is_fresh() {
    let report = xtask::codegen(xtask::Mode::Check).expect("code generation runs");
    assert!(
        report.stale.is_empty(),
        "stale generated files {:?}: run `cargo xtask codegen` and commit the result",
        report.stale
    );
    assert!(!report.fresh.is_empty(), "nothing was generated");
}
