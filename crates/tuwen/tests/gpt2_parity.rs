//! GPT-2 (VQGAN's prior) against transformers' GPT2LMHeadModel on a random-weight model with
//! odd sizes (python/make_gpt2_fixtures.py): logits, the shifted next-token loss, every
//! parameter's gradient; the key/value cache against the full pass; save and reload.

mod common;

use burn::prelude::*;
use common::*;
use tuwen::burn;
use tuwen::models::gpt2::Gpt2LMHeadModel;
use tuwen::pipeline::to_vec;

fn ids(device: &Device) -> (Tensor<2, Int>, Vec<Vec<i64>>) {
    let r = read_reference("gpt2_reference.safetensors");
    let (v, shape) = i64s(&r, "ids");
    let rows = v.chunks(shape[1]).map(<[i64]>::to_vec).collect();
    (
        Tensor::<1, Int>::from_ints(v.as_slice(), device).reshape([shape[0], shape[1]]),
        rows,
    )
}

#[test]
fn logits_loss_and_gradients_match_transformers() {
    let r = read_reference("gpt2_reference.safetensors");
    let device = Device::flex().autodiff();
    let (m, cfg, _) = Gpt2LMHeadModel::load(&fixtures().join("gpt2-odd"), &device).unwrap();
    assert_eq!((cfg.n_embd, cfg.n_head, cfg.inner()), (18, 3, 26));
    let (x, rows) = ids(&device);
    let logits = m.forward(x);
    let (theirs, shape) = f32s(&r, "logits");
    assert_eq!(logits.dims().to_vec(), shape);
    let d = max_abs_diff(&to_vec(logits.clone()).unwrap(), &theirs);
    let spread = theirs.iter().fold(0f32, |a, v| a.max(v.abs()));
    eprintln!("logits: max difference {d:.2e} (values up to {spread:.2})");
    assert!(d < 1e-4 && spread > 1.0, "{d}");
    let loss = tuwen::loss::lm_loss(logits, &rows, 0.0).unwrap();
    let (ours, expect) = (to_vec(loss.clone()).unwrap()[0], f32s(&r, "loss").0[0]);
    assert!((ours - expect).abs() < 1e-5, "loss {ours} vs {expect}");
    let grads = loss.backward();
    let named = tuwen::train::named_grads(&m, &grads);
    let refs: Vec<&String> = r.keys().filter(|k| k.starts_with("grad.")).collect();
    assert_eq!(refs.len(), 28);
    let mut worst = 0f32;
    for key in &refs {
        let name = &key["grad.".len()..];
        let (theirs, shape) = f32s(&r, key);
        let (ours, our_shape) = named
            .get(name)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_eq!(our_shape, &shape, "{name}");
        let scale = theirs.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-5);
        let rel = max_abs_diff(ours, &theirs) / scale;
        worst = worst.max(rel);
        assert!(rel < 1e-3, "{name}: relative difference {rel}");
    }
    assert_eq!(named.len(), refs.len());
    eprintln!("28 gradients, worst relative difference {worst:.1e}");
}

#[test]
fn cached_steps_equal_the_full_pass_and_save_reloads() {
    let device = Device::flex();
    let (m, cfg, json) = Gpt2LMHeadModel::load(&fixtures().join("gpt2-odd"), &device).unwrap();
    let (x, _) = ids(&device);
    let full = to_vec(m.forward(x.clone())).unwrap();
    // A prompt of 5, then one token at a time.
    let mut cache = vec![None; cfg.n_layer];
    let mut steps =
        vec![to_vec(m.forward_cached(x.clone().slice([0..2, 0..5]), Some(&mut cache))).unwrap()];
    for t in 5..17 {
        steps.push(
            to_vec(m.forward_cached(x.clone().slice([0..2, t..t + 1]), Some(&mut cache))).unwrap(),
        );
    }
    let v = 41;
    for row in 0..2 {
        for t in 0..17 {
            let ours = if t < 5 {
                &steps[0][(row * 5 + t) * v..(row * 5 + t + 1) * v]
            } else {
                &steps[t - 4][row * v..(row + 1) * v]
            };
            let theirs = &full[(row * 17 + t) * v..(row * 17 + t + 1) * v];
            let d = max_abs_diff(ours, theirs);
            assert!(d < 1e-5, "row {row} position {t}: {d}");
        }
    }
    let out = std::env::temp_dir().join(format!("tuwen-gpt2-save-{}", std::process::id()));
    m.save(&cfg, &serde_json::json!({"extra_key": 7}), &out)
        .unwrap();
    let (back, cfg2, json2) = Gpt2LMHeadModel::load(&out, &device).unwrap();
    assert_eq!(cfg, cfg2);
    assert_eq!(json2["extra_key"], 7);
    assert_eq!(json2["model_type"], json["model_type"]);
    assert_eq!(to_vec(back.forward(x)).unwrap(), full);
    let ours = tuwen::hub::safetensors_header(&out.join("model.safetensors")).unwrap();
    let theirs =
        tuwen::hub::safetensors_header(&fixtures().join("gpt2-odd/model.safetensors")).unwrap();
    assert_eq!(ours, theirs);
    std::fs::remove_dir_all(&out).unwrap();
}
