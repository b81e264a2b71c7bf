//! ViTMAE against transformers on an odd-sized tiny checkpoint (python/make_mae_fixtures.py):
//! preprocessing of real photos, logits, mask and loss with fixed noise (plain and
//! norm_pix_loss), logits at mask ratio 0, every parameter's gradient, and save/reload.

mod common;

use burn::prelude::*;
use common::*;
use tuwen::burn;
use tuwen::models::vit_mae::{Masking, ViTMAEForPreTraining};
use tuwen::pipeline::to_vec;

fn rows(v: &[f32], width: usize) -> Vec<Vec<f32>> {
    v.chunks(width).map(<[f32]>::to_vec).collect()
}

fn pixels(device: &Device) -> Tensor<4> {
    let r = read_reference("mae_reference.safetensors");
    let (px, shape) = f32s(&r, "pixel_values");
    Tensor::from_data(TensorData::new(px, shape), device)
}

#[test]
fn preprocessing_matches_on_real_photos() {
    let r = read_reference("mae_reference.safetensors");
    let (px, _) = f32s(&r, "pixel_values");
    let processor = tuwen::data::ImageProcessor::from_file(
        &fixtures().join("vit-mae-odd/preprocessor_config.json"),
    )
    .unwrap();
    let per = 3 * 40 * 40;
    for (i, (name, tol)) in [
        ("chelsea.jpg", 0.1),
        ("astronaut.png", 1e-5),
        ("coffee.bmp", 1e-5),
    ]
    .iter()
    .enumerate()
    {
        let img = tuwen::data::open_rgb(&fixtures().join("images").join(name)).unwrap();
        let (ours, shape) = processor.preprocess(&img);
        assert_eq!(shape, [3, 40, 40]);
        let d = max_abs_diff(&ours, &px[i * per..(i + 1) * per]);
        assert!(d <= *tol, "{name}: {d}");
    }
}

#[test]
fn logits_mask_loss_and_gradients_match_transformers() {
    let r = read_reference("mae_reference.safetensors");
    let device = Device::flex().autodiff();
    let (model, cfg) =
        ViTMAEForPreTraining::load(&fixtures().join("vit-mae-odd"), &device).unwrap();
    assert_eq!(cfg.mask_ratio, 0.75);
    let (noise, _) = f32s(&r, "noise");
    let masking = Masking::from_noise(&rows(&noise, 25), cfg.mask_ratio);
    let out = model.forward(pixels(&device), &masking);
    let (logits, shape) = f32s(&r, "logits");
    assert_eq!(out.logits.dims().to_vec(), shape);
    let ours = to_vec(out.logits.clone()).unwrap();
    let d = max_abs_diff(&ours, &logits);
    let spread = logits.iter().fold(0f32, |m, v| m.max(v.abs()));
    eprintln!("logits: max difference {d:.2e} (values up to {spread:.2})");
    assert!(d < 1e-4 && spread > 0.5, "{d}");
    assert_eq!(to_vec(out.mask.clone()).unwrap(), f32s(&r, "mask").0);
    let loss = to_vec(out.loss.clone()).unwrap()[0];
    let expect = f32s(&r, "loss").0[0];
    assert!((loss - expect).abs() < 1e-5, "loss {loss} vs {expect}");

    let grads = burn::optim::GradientsParams::from_grads(out.loss.backward(), &model);
    let named = tuwen::train::grads::named_param_grads(&model, &grads);
    let refs: Vec<&String> = r.keys().filter(|k| k.starts_with("grad/")).collect();
    assert!(refs.len() > 60, "{} reference gradients", refs.len());
    let mut worst = (0f32, String::new());
    for key in &refs {
        let name = &key["grad/".len()..];
        let (theirs, _) = f32s(&r, key);
        let (ours, _) = named
            .get(name)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-4);
        let rel = max_abs_diff(ours, &theirs) / scale;
        if rel > worst.0 {
            worst = (rel, name.to_string());
        }
        assert!(rel < 1e-3, "{name}: relative difference {rel}");
    }
    // The fixed position embeddings get none; every other parameter does.
    assert_eq!(
        named.len(),
        refs.len(),
        "{:?}",
        named.keys().collect::<Vec<_>>()
    );
    eprintln!(
        "{} gradients, worst relative difference {:.1e} ({})",
        refs.len(),
        worst.0,
        worst.1
    );
}

#[test]
fn norm_pix_loss_and_ratio_zero_match_transformers() {
    let r = read_reference("mae_reference.safetensors");
    let device = Device::flex();
    let (mut model, _) =
        ViTMAEForPreTraining::load(&fixtures().join("vit-mae-odd"), &device).unwrap();
    let (noise, _) = f32s(&r, "noise");
    let noise = rows(&noise, 25);
    model.norm_pix_loss = true;
    let out = model.forward(pixels(&device), &Masking::from_noise(&noise, 0.75));
    let (loss, expect) = (to_vec(out.loss).unwrap()[0], f32s(&r, "loss_norm_pix").0[0]);
    assert!(
        (loss - expect).abs() < 1e-4,
        "norm_pix loss {loss} vs {expect}"
    );
    model.norm_pix_loss = false;
    // Mask ratio 0: every patch is seen; the logits do not depend on the noise's order.
    for m in [
        Masking::from_noise(&noise, 0.0),
        Masking::random(3, 25, 0.0, 9),
    ] {
        assert_eq!(m.keep, 25);
        let out = model.forward(pixels(&device), &m);
        let d = max_abs_diff(&to_vec(out.logits).unwrap(), &f32s(&r, "logits_ratio0").0);
        assert!(d < 1e-4, "ratio 0: {d}");
    }
}

#[test]
fn saved_folder_loads_back_with_the_same_logits() {
    let device = Device::flex();
    let (model, cfg) =
        ViTMAEForPreTraining::load(&fixtures().join("vit-mae-odd"), &device).unwrap();
    let out = std::env::temp_dir().join(format!("tuwen-mae-save-{}", std::process::id()));
    model.save(&cfg, &out).unwrap();
    let (back, cfg2) = ViTMAEForPreTraining::load(&out, &device).unwrap();
    assert_eq!(cfg, cfg2);
    let m = Masking::random(3, 25, 0.75, 4);
    let a = to_vec(model.forward(pixels(&device), &m).logits).unwrap();
    let b = to_vec(back.forward(pixels(&device), &m).logits).unwrap();
    assert_eq!(a, b);
    let names = tuwen::hub::safetensors_header(&out.join("model.safetensors")).unwrap();
    assert!(names.contains_key("decoder.decoder_layers.1.attention.attention.query.weight"));
    assert!(names.contains_key("vit.embeddings.position_embeddings"));
    std::fs::remove_dir_all(&out).unwrap();
}
