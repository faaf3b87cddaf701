//! Misuse of the macros fails to compile with an error at the user's tokens
//! (the `.stderr` files beside each case in `tests/ui/`), and what they
//! promise to accept compiles and runs (`tests/ui/pass/`).
//!
//! After an intended change to a message, regenerate the expectations with
//! `TRYBUILD=overwrite cargo test -p connect-runtime --test ui` and review them.

#[test]
fn misuse_of_the_macros_is_a_clear_compile_error() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
    cases.pass("tests/ui/pass/*.rs");
}
