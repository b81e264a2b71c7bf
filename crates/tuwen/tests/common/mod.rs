//! Shared helpers: the fixtures written by python/make_fixtures.py.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use safetensors::{Dtype, SafeTensors};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub enum Array {
    F32(Vec<f32>, Vec<usize>),
    U8(Vec<u8>, Vec<usize>),
    U64(Vec<u64>),
    I64(Vec<i64>, Vec<usize>),
    F64(Vec<f64>),
}

/// Every array of tests/fixtures/reference.safetensors, by name.
pub fn reference() -> BTreeMap<String, Array> {
    read_reference("reference.safetensors")
}

/// Every array of a reference file in tests/fixtures, by name.
pub fn read_reference(file: &str) -> BTreeMap<String, Array> {
    let bytes = std::fs::read(fixtures().join(file)).expect("reference file");
    let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
    st.iter()
        .map(|(name, view)| {
            let shape = view.shape().to_vec();
            let data = view.data();
            let arr = match view.dtype() {
                Dtype::F32 => Array::F32(
                    data.chunks(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                    shape,
                ),
                Dtype::U8 => Array::U8(data.to_vec(), shape),
                Dtype::U64 => Array::U64(
                    data.chunks(8)
                        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                ),
                Dtype::I64 => Array::I64(
                    data.chunks(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                    shape,
                ),
                Dtype::F64 => Array::F64(
                    data.chunks(8)
                        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                ),
                other => panic!("unexpected dtype {other:?}"),
            };
            (name.to_string(), arr)
        })
        .collect()
}

pub fn i64s(r: &BTreeMap<String, Array>, key: &str) -> (Vec<i64>, Vec<usize>) {
    match r.get(key) {
        Some(Array::I64(v, s)) => (v.clone(), s.clone()),
        _ => panic!("no i64 array {key}"),
    }
}

pub fn f64s(r: &BTreeMap<String, Array>, key: &str) -> Vec<f64> {
    match r.get(key) {
        Some(Array::F64(v)) => v.clone(),
        _ => panic!("no f64 array {key}"),
    }
}

pub fn f32s(r: &BTreeMap<String, Array>, key: &str) -> (Vec<f32>, Vec<usize>) {
    match r.get(key) {
        Some(Array::F32(v, s)) => (v.clone(), s.clone()),
        _ => panic!("no f32 array {key}"),
    }
}

/// [height, width, channels, FNV-1a-64], as the fixture script computes it.
pub fn fingerprint(bytes: &[u8], h: usize, w: usize, c: usize) -> Vec<u64> {
    let mut x: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        x = (x ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    vec![h as u64, w as u64, c as u64, x]
}

/// The largest `|a - b|`; NaN when either side holds a NaN (or both the same infinity), so
/// that `max_abs_diff(..) < tol` fails. Panics when the lengths differ.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m, d| {
            if m.is_nan() || d.is_nan() {
                f32::NAN
            } else {
                m.max(d)
            }
        })
}

/// The image files of the fixtures, sorted.
pub fn image_names() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(fixtures().join("images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
