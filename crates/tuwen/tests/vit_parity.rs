//! ViT logits against transformers, on checkpoints transformers made.

mod common;

use burn::prelude::*;
use common::*;
use tuwen::burn;
use tuwen::models::vit::{ViTForImageClassification, ViTModel};
use tuwen::pipeline::{ImageClassification, to_vec};

fn tensor4(v: Vec<f32>, s: &[usize], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(v, [s[0], s[1], s[2], s[3]]), device)
}

#[test]
fn classifier_logits_match_on_transformers_pixels() {
    let r = reference();
    let device = Device::flex();
    for model in ["vit-tiny", "vit-odd"] {
        let (vit, _) = ViTForImageClassification::load(&fixtures().join(model), &device).unwrap();
        for name in image_names() {
            let (px, s) = f32s(&r, &format!("pixels/{model}/{name}"));
            let logits = to_vec(vit.forward(tensor4(px, &[1, s[0], s[1], s[2]], &device))).unwrap();
            let (expect, _) = f32s(&r, &format!("logits/{model}/{name}"));
            let diff = max_abs_diff(&logits, &expect);
            eprintln!("{model} {name} (transformers' pixels): max |logit diff| {diff:.2e}");
            assert!(diff < 1e-4, "{model} {name}: {diff}");
        }
    }
}

#[test]
fn end_to_end_from_image_files() {
    let r = reference();
    let device = Device::flex();
    for model in ["vit-tiny", "vit-odd"] {
        let clf =
            ImageClassification::load(fixtures().join(model).to_str().unwrap(), &device).unwrap();
        let names = image_names();
        let paths: Vec<_> = names
            .iter()
            .map(|n| fixtures().join("images").join(n))
            .collect();
        let logits = clf.logits(&paths, 5, |_| {}).unwrap();
        assert_eq!(logits.len(), names.len());
        for (name, ours) in names.iter().zip(&logits) {
            let (expect, _) = f32s(&r, &format!("logits/{model}/{name}"));
            let diff = max_abs_diff(ours, &expect);
            // JPEG decoders differ by a level or two; everything else is exact.
            let tol = if name.ends_with(".jpg") { 0.05 } else { 1e-4 };
            eprintln!("{model} {name}: max |logit diff| {diff:.2e}");
            assert!(diff < tol, "{model} {name}: {diff}");
        }
    }
}

#[test]
fn position_embeddings_interpolate_like_transformers() {
    let r = reference();
    let device = Device::flex();
    let (vit, _) = ViTForImageClassification::load(&fixtures().join("vit-tiny"), &device).unwrap();
    let (px, s) = f32s(&r, "interp/pixels");
    let logits = to_vec(vit.forward(tensor4(px, &s, &device))).unwrap();
    let (expect, _) = f32s(&r, "interp/logits");
    let diff = max_abs_diff(&logits, &expect);
    assert!(diff < 1e-4, "{diff}");
}

#[test]
fn bare_model_with_pooler_and_transformers5_names() {
    let r = reference();
    let device = Device::flex();
    let (vit, _) = ViTModel::load(&fixtures().join("vit-base-newnames"), &device).unwrap();
    assert!(vit.pooler.is_some());
    let (px, s) = f32s(&r, "base/pixels");
    let out = vit.forward(tensor4(px, &s, &device));
    let (h, _) = f32s(&r, "base/last_hidden_state");
    let (p, _) = f32s(&r, "base/pooler_output");
    let dh = max_abs_diff(&to_vec(out.last_hidden_state).unwrap(), &h);
    let dp = max_abs_diff(&to_vec(out.pooler_output.unwrap()).unwrap(), &p);
    assert!(dh < 1e-4 && dp < 1e-4, "{dh} {dp}");
}

#[test]
fn sharded_checkpoint_loads_the_same_weights() {
    let device = Device::flex();
    let (a, _) = ViTForImageClassification::load(&fixtures().join("vit-tiny"), &device).unwrap();
    let (b, _) = ViTForImageClassification::load(&fixtures().join("vit-sharded"), &device).unwrap();
    let x = Tensor::<4>::random(
        [2, 3, 32, 32],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let d = max_abs_diff(
        &to_vec(a.forward(x.clone())).unwrap(),
        &to_vec(b.forward(x)).unwrap(),
    );
    assert_eq!(d, 0.0);
}

#[test]
fn encoder_loads_from_a_classifier_checkpoint() {
    let device = Device::flex();
    let (clf, _) = ViTForImageClassification::load(&fixtures().join("vit-odd"), &device).unwrap();
    let (enc, _) = ViTModel::load(&fixtures().join("vit-odd"), &device).unwrap();
    assert!(enc.pooler.is_none());
    let x = Tensor::<4>::random(
        [1, 3, 40, 40],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let a = to_vec(clf.vit.forward(x.clone()).last_hidden_state).unwrap();
    let b = to_vec(enc.forward(x).last_hidden_state).unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
}

#[test]
fn saved_folder_has_transformers_names_and_reloads() {
    let device = Device::flex();
    let src = fixtures().join("vit-odd");
    let (vit, cfg) = ViTForImageClassification::load(&src, &device).unwrap();
    let out = std::env::temp_dir().join(format!("tuwen-save-{}", std::process::id()));
    vit.save(&cfg, &out).unwrap();
    let theirs = tuwen::hub::safetensors_header(&src.join("model.safetensors")).unwrap();
    let ours = tuwen::hub::safetensors_header(&out.join("model.safetensors")).unwrap();
    assert_eq!(
        ours, theirs,
        "tensor names and shapes must be transformers'"
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "vit");
    assert_eq!(config["architectures"][0], "ViTForImageClassification");
    assert_eq!(config["id2label"]["0"], "tabby cat");
    assert_eq!(config["hidden_act"], "gelu_pytorch_tanh");
    let (again, cfg2) = ViTForImageClassification::load(&out, &device).unwrap();
    assert_eq!(cfg2, cfg);
    let x = Tensor::<4>::random(
        [1, 3, 40, 40],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let d = max_abs_diff(
        &to_vec(vit.forward(x.clone())).unwrap(),
        &to_vec(again.forward(x)).unwrap(),
    );
    assert_eq!(d, 0.0);
    std::fs::remove_dir_all(&out).unwrap();
}
