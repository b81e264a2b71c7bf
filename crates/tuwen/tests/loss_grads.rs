//! The grouped contrastive losses (identical captions are positives) and their gradients in the
//! embeddings, the temperature and the bias equal PyTorch's, on 12 random pairs of width 7 in
//! 5 groups (reference: python/make_loss_fixtures.py).

mod common;

use std::collections::BTreeMap;

use burn::prelude::*;
use common::fixtures;
use safetensors::{Dtype, SafeTensors};
use tuwen::burn;
use tuwen::loss::{clip_loss_grouped, siglip_loss_chunked_grouped, siglip_loss_grouped};
use tuwen::pipeline::to_vec;

/// Relative and absolute tolerance: `|ours - theirs| <= TOL (1 + |theirs|)`.
const TOL: f32 = 1e-5;

/// The arrays of tests/fixtures/loss_reference.safetensors: f32 by name, and the group ids.
struct Reference {
    f32s: BTreeMap<String, (Vec<f32>, Vec<usize>)>,
    groups: Vec<usize>,
}

fn reference() -> Reference {
    let bytes = std::fs::read(fixtures().join("loss_reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut f32s = BTreeMap::new();
    let mut groups = None;
    for (name, view) in st.iter() {
        let data = view.data();
        match view.dtype() {
            Dtype::F32 => {
                let v = data
                    .chunks(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                f32s.insert(name.to_string(), (v, view.shape().to_vec()));
            }
            Dtype::I64 if name == "groups" => {
                let ids = data
                    .chunks(8)
                    .map(|c| usize::try_from(i64::from_le_bytes(c.try_into().unwrap())).unwrap())
                    .collect();
                groups = Some(ids);
            }
            other => panic!("unexpected {name}: {other:?}"),
        }
    }
    Reference {
        f32s,
        groups: groups.expect("no groups"),
    }
}

impl Reference {
    fn get(&self, key: &str) -> &(Vec<f32>, Vec<usize>) {
        self.f32s
            .get(key)
            .unwrap_or_else(|| panic!("no f32 array {key}"))
    }

    /// Every array named `{prefix}/...`, without the prefix.
    fn under(&self, prefix: &str) -> Vec<(String, Vec<f32>)> {
        let p = format!("{prefix}/");
        self.f32s
            .iter()
            .filter_map(|(k, (v, _))| Some((k.strip_prefix(&p)?.to_string(), v.clone())))
            .collect()
    }
}

/// The reference's inputs as leaves on the autodiff backend.
struct Leaves {
    x: Tensor<2>,
    y: Tensor<2>,
    t: Tensor<1>,
    b: Tensor<1>,
}

impl Leaves {
    fn new(r: &Reference) -> Self {
        let device = Device::flex().autodiff();
        let two = |key: &str| {
            let (v, shape) = r.get(key);
            assert_eq!(shape, &[12, 7], "{key}");
            Tensor::<2>::from_data(TensorData::new(v.clone(), [12, 7]), &device).require_grad()
        };
        let one = |key: &str| {
            let (v, shape) = r.get(key);
            assert_eq!(shape, &[1], "{key}");
            Tensor::<1>::from_data(TensorData::new(v.clone(), [1]), &device).require_grad()
        };
        Self {
            x: two("x"),
            y: two("y"),
            t: one("t"),
            b: one("b"),
        }
    }

    /// The loss and its gradients by the reference's names (`loss`, `grad_x`, ...); a
    /// parameter outside the loss's graph has no entry.
    fn eval(&self, loss: Tensor<1>) -> BTreeMap<String, Vec<f32>> {
        let g = loss.backward();
        let mut out = BTreeMap::new();
        out.insert("loss".to_string(), to_vec(loss).unwrap());
        for (name, grad) in [("x", self.x.grad(&g)), ("y", self.y.grad(&g))] {
            if let Some(grad) = grad {
                out.insert(format!("grad_{name}"), to_vec(grad).unwrap());
            }
        }
        for (name, grad) in [("t", self.t.grad(&g)), ("b", self.b.grad(&g))] {
            if let Some(grad) = grad {
                out.insert(format!("grad_{name}"), to_vec(grad).unwrap());
            }
        }
        out
    }
}

/// Asserts `ours` equals `theirs` within [`TOL`]: the same length, every value finite on
/// both sides. Returns the largest absolute and relative differences.
fn compare(what: &str, ours: &[f32], theirs: &[f32]) -> (f32, f32) {
    assert_eq!(
        ours.len(),
        theirs.len(),
        "{what}: {} values vs {}",
        ours.len(),
        theirs.len()
    );
    assert!(!theirs.is_empty(), "{what}: nothing to compare");
    let (mut abs, mut rel) = (0f32, 0f32);
    for (i, (o, e)) in ours.iter().zip(theirs).enumerate() {
        assert!(
            o.is_finite() && e.is_finite(),
            "{what}[{i}]: {o} vs {e}, not finite"
        );
        let diff = (o - e).abs();
        assert!(diff <= TOL * (1.0 + e.abs()), "{what}[{i}]: {o} vs {e}");
        if diff > abs {
            abs = diff;
        }
        if e.abs() > 0.0 && diff / e.abs() > rel {
            rel = diff / e.abs();
        }
    }
    (abs, rel)
}

/// Compares the loss and every gradient the reference holds under `prefix`; `ours` must hold
/// exactly those.
fn check(tag: &str, ours: &BTreeMap<String, Vec<f32>>, r: &Reference, prefix: &str) {
    let theirs = r.under(prefix);
    let names: Vec<&String> = theirs.iter().map(|(k, _)| k).collect();
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        names,
        "{tag}: arrays differ"
    );
    for (name, e) in &theirs {
        let (abs, rel) = compare(&format!("{tag} {name}"), &ours[name], e);
        println!("{tag:<22} {name:<7} max abs diff {abs:.2e}  max rel diff {rel:.2e}");
    }
}

#[test]
fn grouped_clip_loss_and_gradients_match_pytorch() {
    let r = reference();
    let p = Leaves::new(&r);
    let loss = clip_loss_grouped(p.x.clone(), p.y.clone(), p.t.clone(), &r.groups).unwrap();
    check("clip grouped", &p.eval(loss), &r, "clip");
}

#[test]
fn grouped_siglip_loss_and_gradients_match_pytorch() {
    let r = reference();
    let p = Leaves::new(&r);
    let (x, y, t, b) = (p.x.clone(), p.y.clone(), p.t.clone(), p.b.clone());
    let loss = siglip_loss_grouped(x, y, t, b, &r.groups).unwrap();
    check("siglip grouped", &p.eval(loss), &r, "siglip");
}

#[test]
fn chunked_grouped_siglip_loss_and_gradients_match_pytorch() {
    let r = reference();
    let p = Leaves::new(&r);
    for devices in [2, 3, 4] {
        let (x, y, t, b) = (p.x.clone(), p.y.clone(), p.t.clone(), p.b.clone());
        let loss = siglip_loss_chunked_grouped(x, y, t, b, devices, &r.groups).unwrap();
        let tag = format!("siglip chunked, D = {devices}");
        check(&tag, &p.eval(loss), &r, "siglip");
    }
}

#[test]
#[should_panic(expected = "not finite")]
fn comparison_fails_on_nan() {
    compare("nan", &[1.0, f32::NAN], &[1.0, 2.0]);
}

#[test]
#[should_panic(expected = "values vs")]
fn comparison_fails_on_a_length_mismatch() {
    compare("short", &[1.0], &[1.0, 2.0]);
}
