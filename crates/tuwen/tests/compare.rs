//! The comparison helper of the parity tests fails on what it must fail on.

mod common;

use common::max_abs_diff;

/// How the parity tests use the helper: `max_abs_diff(..) < tolerance`.
fn passes(a: &[f32], b: &[f32]) -> bool {
    max_abs_diff(a, b) < 1e-4
}

#[test]
fn nan_fails_the_comparison() {
    let nan = [f32::NAN, f32::NAN];
    assert!(max_abs_diff(&nan, &nan).is_nan());
    assert!(!passes(&nan, &nan));
    assert!(!passes(&[0.0, f32::NAN, 0.0], &[0.0, 1.0, 0.0]));
    assert!(!passes(&[1.0, 2.0], &[1.0, f32::NAN]));
    assert!(!passes(&[f32::INFINITY], &[f32::INFINITY]));
    assert!(passes(&[1.0, 2.0], &[1.0, 2.00001]));
    assert_eq!(max_abs_diff(&[1.0, 2.0, 3.0], &[1.0, 2.5, 2.0]), 1.0);
}

#[test]
#[should_panic(expected = "lengths differ")]
fn a_length_mismatch_fails_the_comparison() {
    max_abs_diff(&[1.0, 2.0], &[1.0]);
}
