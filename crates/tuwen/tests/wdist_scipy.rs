//! tuwen's Wasserstein-1 distances agree with scipy's on the sets of
//! python/make_wdist_fixtures.py (tests/fixtures/wdist): the exact 1-D distance (with and
//! without weights) with `scipy.stats.wasserstein_distance`, exact optimal transport with the
//! mean cost of `scipy.optimize.linear_sum_assignment` (equal sizes) and
//! `scipy.stats.wasserstein_distance_nd` (unequal sizes).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;
use tuwen::data::arrays::{Points, read_points};
use tuwen::wdist::{distance, exact_ot, w1_1d};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/wdist")
}

fn json(name: &str) -> Value {
    let text = std::fs::read_to_string(dir().join(name)).expect("fixture file");
    serde_json::from_str(&text).expect("valid JSON")
}

fn points(name: &str) -> Points {
    read_points(&dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Within 1e-6 absolute; false for NaN.
fn agrees(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-6
}

fn pairs() -> Vec<BTreeMap<String, Value>> {
    serde_json::from_value(json("expected.json")["pairs"].clone()).expect("pairs")
}

#[test]
fn every_pair_matches_scipy() {
    let pairs = pairs();
    assert_eq!(pairs.len(), 6);
    for pair in pairs {
        let (a, b) = (pair["a"].as_str().unwrap(), pair["b"].as_str().unwrap());
        let want = pair["w1"].as_f64().unwrap();
        if pair.get("weighted").and_then(Value::as_bool) == Some(true) {
            continue; // every_weighted_pair_matches_scipy
        }
        let report = distance(&points(a), &points(b), None, 0).unwrap();
        assert_eq!(
            report.method,
            pair["method"].as_str().unwrap(),
            "{a} vs {b}"
        );
        assert!(
            agrees(report.w1, want),
            "{a} vs {b}: tuwen {} scipy {want}",
            report.w1
        );
    }
}

#[test]
fn every_weighted_pair_matches_scipy() {
    let weights = json("weights.json");
    let weights_of = |name: &str| -> Vec<f64> {
        serde_json::from_value(weights[name].clone()).expect("weights")
    };
    let mut seen = 0;
    for pair in pairs() {
        if pair.get("weighted").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let (a, b) = (pair["a"].as_str().unwrap(), pair["b"].as_str().unwrap());
        let (pa, pb) = (points(a), points(b));
        assert_eq!((pa.dims, pb.dims), (1, 1));
        let (wa, wb) = (weights_of(a), weights_of(b));
        let got = w1_1d(&pa.data, Some(&wa), &pb.data, Some(&wb)).unwrap();
        let want = pair["w1"].as_f64().unwrap();
        assert!(agrees(got, want), "{a} vs {b}: tuwen {got} scipy {want}");
        // The weights matter here: without them the distance differs.
        let plain = w1_1d(&pa.data, None, &pb.data, None).unwrap();
        assert!(!agrees(plain, want), "{plain}");
        seen += 1;
    }
    assert_eq!(seen, 1);
}

#[test]
fn sets_have_the_expected_shapes() {
    for (name, rows, dims) in [
        ("a1.npy", 300, 1),
        ("b1.csv", 517, 1),
        ("a2_64.npy", 64, 2),
        ("b2_64.npy", 64, 2),
        ("a3_50.npy", 50, 3),
        ("b3_50.npy", 50, 3),
        ("a2_30.npy", 30, 2),
        ("b2_45.npy", 45, 2),
    ] {
        let p = points(name);
        assert_eq!(
            (p.rows, p.dims, p.data.len()),
            (rows, dims, rows * dims),
            "{name}"
        );
    }
}

#[test]
fn csv_and_npy_hold_the_same_points() {
    let same: Vec<(String, String)> =
        serde_json::from_value(json("expected.json")["same_points"].clone()).unwrap();
    assert!(!same.is_empty());
    for (csv, npy) in same {
        assert_eq!(points(&csv), points(&npy), "{csv} vs {npy}");
    }
}

#[test]
fn the_distance_is_symmetric() {
    for (a, b) in [("a2_64.npy", "b2_64.npy"), ("a2_30.npy", "b2_45.npy")] {
        let (a, b) = (points(a), points(b));
        let (ab, ba) = (exact_ot(&a, &b).unwrap(), exact_ot(&b, &a).unwrap());
        assert!((ab - ba).abs() <= 1e-9, "{ab} vs {ba}");
    }
}
