//! Compile-fail UI tests: each misuse of `#[protocol]`, `#[transition]` or `#[derive(Reply)]` is one
//! spanned error at the offending token, with no cascade of follow-up errors.

#[test]
fn macro_misuse_is_a_spanned_error() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/*.rs");
}
