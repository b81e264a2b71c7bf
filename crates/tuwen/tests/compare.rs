//! The comparison helper of the parity tests fails on what it must fail on.

mod common;

use common::max_abs_diff;

#[test]
fn nan_fails_the_comparison() {
    let nan = [f32::NAN, f32::NAN];
    assert!(max_abs_diff(&nan, &nan).is_nan());
    assert!(!(max_abs_diff(&[0.0, f32::NAN, 0.0], &[0.0, 1.0, 0.0]) < 1e-4));
    assert!(!(max_abs_diff(&[1.0, 2.0], &[1.0, f32::NAN]) < 1e-4));
    assert!(!(max_abs_diff(&[f32::INFINITY], &[f32::INFINITY]) < 1e-4));
    assert_eq!(max_abs_diff(&[1.0, 2.0, 3.0], &[1.0, 2.5, 2.0]), 1.0);
}

#[test]
#[should_panic(expected = "lengths differ")]
fn a_length_mismatch_fails_the_comparison() {
    max_abs_diff(&[1.0, 2.0], &[1.0]);
}
