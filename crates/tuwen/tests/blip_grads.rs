//! The three BLIP losses (language modelling with label smoothing, image-text contrast,
//! image-text matching) and every parameter's gradient against PyTorch on the tiny checkpoints
//! of python/make_blip_fixtures.py.

mod common;

use std::collections::BTreeMap;

use burn::prelude::*;
use common::*;
use tuwen::burn;
use tuwen::loss::{cross_entropy, itc_loss, lm_loss};
use tuwen::models::blip::{BlipForConditionalGeneration, BlipForImageTextRetrieval};
use tuwen::train::named_grads;

/// python/make_blip_fixtures.py's matching pairs.
const ITM_IMAGES: [i64; 9] = [0, 1, 2, 0, 1, 2, 1, 2, 0];
const ITM_TEXTS: [i64; 9] = [0, 1, 2, 1, 2, 0, 0, 1, 2];
const ITM_LABELS: [i64; 9] = [1, 1, 1, 0, 0, 0, 0, 0, 0];

type Device = burn::prelude::Device;

fn int2(
    r: &BTreeMap<String, Array>,
    key: &str,
    device: &Device,
) -> (Tensor<2, Int>, Vec<Vec<i64>>) {
    let (v, s) = i64s(r, key);
    let rows = v.chunks(s[1]).map(<[i64]>::to_vec).collect();
    (
        Tensor::<1, Int>::from_ints(v.as_slice(), device).reshape([s[0], s[1]]),
        rows,
    )
}

fn float_mask(r: &BTreeMap<String, Array>, key: &str, device: &Device) -> Tensor<2> {
    let (v, s) = i64s(r, key);
    let v: Vec<f32> = v.iter().map(|&m| m as f32).collect();
    Tensor::<1>::from_floats(v.as_slice(), device).reshape([s[0], s[1]])
}

fn scalar(t: Tensor<1>) -> f32 {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()[0]
}

/// Every reference gradient under `prefix` against ours, by transformers' name.
fn compare(
    prefix: &str,
    g: &BTreeMap<String, Array>,
    ours: &BTreeMap<String, (Vec<f32>, Vec<usize>)>,
) {
    let names: Vec<&String> = g.keys().filter(|k| k.starts_with(prefix)).collect();
    assert!(names.len() > 40, "{prefix}: only {} gradients", names.len());
    let mut worst = (0.0f32, String::new());
    for key in &names {
        let name = key[prefix.len()..]
            .replace("attention.self.", "attention.attn.")
            .replace(".LayerNorm.", ".layer_norm.");
        if name == "temp" {
            continue;
        }
        let (mine, shape) = ours
            .get(&name)
            .unwrap_or_else(|| panic!("{prefix}: no gradient for {name}"));
        let (theirs, tshape) = f32s(g, key);
        assert_eq!(shape, &tshape, "{name}");
        if name.ends_with("attn.key.bias") {
            // A key bias adds one constant to all of a query's scores, which softmax ignores:
            // its gradient is zero, and both sides hold rounding noise only.
            let most = |v: &[f32]| v.iter().map(|x| x.abs()).fold(0.0, f32::max);
            assert!(
                most(mine) < 1e-5 && most(&theirs) < 1e-5,
                "{name} is not zero"
            );
            continue;
        }
        let scale = theirs.iter().map(|x| x.abs()).fold(0.0, f32::max).max(1e-3);
        let rel = max_abs_diff(mine, &theirs) / scale;
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
        assert!(rel < 1e-4, "{prefix} {name}: relative difference {rel}");
    }
    eprintln!(
        "{prefix}: {} gradients, worst relative difference {:.1e} ({})",
        names.len(),
        worst.0,
        worst.1
    );
}

#[test]
fn language_modelling_loss_and_gradients_match_pytorch() {
    let device = Device::flex().autodiff();
    let r = read_reference("blip_reference.safetensors");
    let g = read_reference("blip_grads.safetensors");
    let (model, _) =
        BlipForConditionalGeneration::load(&fixtures().join("blip-caption-odd"), &device).unwrap();
    let (v, s) = f32s(&r, "pixel_values");
    let pixels = Tensor::<1>::from_floats(v.as_slice(), &device).reshape([s[0], s[1], s[2], s[3]]);
    let (ids, _) = int2(&g, "lm/input_ids", &device);
    let mask = float_mask(&g, "lm/attention_mask", &device);
    let (_, labels) = int2(&g, "lm/labels", &device);
    let image = model.vision_model.forward(pixels);
    let logits = model.text_decoder.forward(ids, Some(mask), image);
    let loss = lm_loss(logits, &labels, 0.1).unwrap();
    let want = f32s(&g, "lm/loss").0[0];
    let got = scalar(loss.clone());
    assert!(
        (got - want).abs() < 1e-4 * want.abs(),
        "loss {got} vs {want}"
    );
    compare("lm/grad/", &g, &named_grads(&model, &loss.backward()));
}

#[test]
fn contrastive_and_matching_losses_and_gradients_match_pytorch() {
    let device = Device::flex().autodiff();
    let r = read_reference("blip_reference.safetensors");
    let g = read_reference("blip_grads.safetensors");
    let (model, _) =
        BlipForImageTextRetrieval::load(&fixtures().join("blip-itm-odd"), &device).unwrap();
    let (v, s) = f32s(&r, "pixel_values");
    let pixels = Tensor::<1>::from_floats(v.as_slice(), &device).reshape([s[0], s[1], s[2], s[3]]);
    let (ids, _) = int2(&r, "texts_ids", &device);
    let mask = float_mask(&r, "texts_mask", &device);

    // ITC, with the temperature's gradient.
    let temp = Tensor::<1>::from_floats([0.07], &device).require_grad();
    let image = model.vision_model.forward(pixels.clone());
    let img = model.image_features(image);
    let txt = model.text_features(ids.clone(), Some(mask.clone()));
    let loss = itc_loss(img, txt, temp.clone());
    let (got, want) = (scalar(loss.clone()), f32s(&g, "itc/loss").0[0]);
    assert!(
        (got - want).abs() < 1e-4 * want.abs(),
        "ITC loss {got} vs {want}"
    );
    let grads = loss.backward();
    let dt = scalar(temp.grad(&grads).unwrap());
    let want_dt = f32s(&g, "itc/grad/temp").0[0];
    assert!(
        (dt - want_dt).abs() < 1e-4 * want_dt.abs(),
        "temperature gradient {dt} vs {want_dt}"
    );
    compare("itc/grad/", &g, &named_grads(&model, &grads));

    // ITM on fixed pairs.
    let image = model.vision_model.forward(pixels);
    let pick = |idx: &[i64]| Tensor::<1, Int>::from_ints(idx, &device);
    let logits = model.itm_logits(
        image.select(0, pick(&ITM_IMAGES)),
        ids.select(0, pick(&ITM_TEXTS)),
        Some(mask.select(0, pick(&ITM_TEXTS))),
    );
    let loss = cross_entropy(logits, &ITM_LABELS, 0.0).unwrap();
    let (got, want) = (scalar(loss.clone()), f32s(&g, "itm/loss").0[0]);
    assert!(
        (got - want).abs() < 1e-4 * want.abs(),
        "ITM loss {got} vs {want}"
    );
    compare("itm/grad/", &g, &named_grads(&model, &loss.backward()));
}
