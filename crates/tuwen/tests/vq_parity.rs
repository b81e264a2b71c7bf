//! VQGAN's first stage against diffusers' `VQModel` on a random-weight model with odd sizes
//! (python/make_vq_fixtures.py): latents, codes and reconstructions of three real photos;
//! the quantiser's loss and every parameter's gradient in both β placements; the adaptive
//! weight of the adversarial term and the gradients it makes, against `torch.autograd.grad`;
//! save and reload.

mod common;

use std::collections::BTreeMap;

use burn::prelude::*;
use common::*;
use tuwen::burn;
use tuwen::loss::CommitPlacement;
use tuwen::models::vqgan::{PatchDiscriminator, VqModel};
use tuwen::pipeline::to_vec;
use tuwen::train::vqgan::{AeLossConfig, autoencoder_backward};

fn pixels(r: &BTreeMap<String, Array>, device: &Device) -> Tensor<4> {
    let (px, shape) = f32s(r, "pixel_values");
    Tensor::from_data(TensorData::new(px, shape), device)
}

fn model(device: &Device) -> VqModel {
    VqModel::load(&fixtures().join("vq-odd"), device).unwrap().0
}

#[test]
fn codes_and_reconstructions_match_diffusers() {
    let r = read_reference("vq_reference.safetensors");
    let device = Device::flex();
    let (m, cfg) = VqModel::load(&fixtures().join("vq-odd"), &device).unwrap();
    assert_eq!((cfg.code_dim(), cfg.grid()), (7, 6));
    let x = pixels(&r, &device);
    let latents = to_vec(m.encode(x.clone())).unwrap();
    let d = max_abs_diff(&latents, &f32s(&r, "latents").0);
    assert!(d < 1e-4, "latents: {d}");
    let out = m.forward(x);
    let codes: Vec<i64> = out
        .quantized
        .indices
        .clone()
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .unwrap();
    let (theirs, shape) = i64s(&r, "codes");
    assert_eq!(shape, vec![3, 36]);
    assert_eq!(codes, theirs);
    let distinct: std::collections::BTreeSet<_> = theirs.iter().collect();
    assert!(distinct.len() > 15, "{} codes used", distinct.len());
    let (sample, shape) = f32s(&r, "sample");
    assert_eq!(out.sample.dims().to_vec(), shape);
    let ours = to_vec(out.sample.clone()).unwrap();
    let d = max_abs_diff(&ours, &sample);
    let spread = sample.iter().fold(0f32, |m, v| m.max(v.abs()));
    eprintln!("sample: max difference {d:.2e} (values up to {spread:.2})");
    assert!(d < 1e-4 && spread > 0.5, "{d}");
    // diffusers' commit_loss: the legacy placement of β.
    let q = &out.quantized;
    let loss = tuwen::loss::vq_loss(
        q.z.clone(),
        q.codes_vectors.clone(),
        0.25,
        CommitPlacement::Legacy,
        true,
    );
    let (ours, theirs) = (to_vec(loss).unwrap()[0], f32s(&r, "commit_loss").0[0]);
    assert!(
        (ours - theirs).abs() < 1e-5 * theirs.abs().max(1.0),
        "{ours} vs {theirs}"
    );
}

fn compare_grads(
    r: &BTreeMap<String, Array>,
    prefix: &str,
    named: &BTreeMap<String, (Vec<f32>, Vec<usize>)>,
) {
    let refs: Vec<&String> = r.keys().filter(|k| k.starts_with(prefix)).collect();
    assert!(refs.len() > 150, "{} reference gradients", refs.len());
    let mut worst = (0f32, String::new());
    for key in &refs {
        let name = &key[prefix.len()..];
        let (theirs, shape) = f32s(r, key);
        let (ours, our_shape) = named
            .get(name)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_eq!(our_shape, &shape, "{name}");
        // Keys' biases get a gradient of zero in exact arithmetic (softmax ignores a constant
        // per query): both sides hold rounding noise there, compared absolutely.
        let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-5);
        let rel = max_abs_diff(ours, &theirs) / scale;
        if rel > worst.0 || rel.is_nan() {
            worst = (rel, name.to_string());
        }
        assert!(rel < 1e-3, "{prefix}{name}: relative difference {rel}");
    }
    assert_eq!(named.len(), refs.len());
    eprintln!(
        "{prefix}: {} gradients, worst relative difference {:.1e} ({})",
        refs.len(),
        worst.0,
        worst.1
    );
}

#[test]
fn quantiser_gradients_match_pytorch_in_both_placements() {
    let r = read_reference("vq_reference.safetensors");
    let device = Device::flex().autodiff();
    let m = model(&device);
    for (tag, placement) in [
        ("paper", CommitPlacement::Paper),
        ("legacy", CommitPlacement::Legacy),
    ] {
        let x = pixels(&r, &device);
        let out = m.forward(x.clone());
        let q = &out.quantized;
        let loss = (x - out.sample.clone()).abs().mean()
            + tuwen::loss::vq_loss(q.z.clone(), q.codes_vectors.clone(), 0.25, placement, true);
        let value = to_vec(loss.clone()).unwrap()[0];
        let expect = f32s(&r, &format!("loss.{tag}")).0[0];
        assert!((value - expect).abs() < 1e-5, "{tag}: {value} vs {expect}");
        let grads = loss.backward();
        let named = tuwen::train::named_grads(&m, &grads);
        compare_grads(&r, &format!("grad.{tag}."), &named);
    }
}

#[test]
fn adaptive_weight_and_its_gradients_match_autograd() {
    let r = read_reference("vq_reference.safetensors");
    let device = Device::flex().autodiff();
    let m = model(&device);
    let disc = tuwen::hub::load_weights(
        PatchDiscriminator::new(3, 5, 2, &device),
        &fixtures().join("vq-disc"),
        &[],
        &[],
    )
    .unwrap()
    .no_grad();
    let cfg = AeLossConfig {
        beta: 0.25,
        placement: CommitPlacement::Paper,
        codebook_term: true,
        perceptual_weight: 0.0,
        disc_weight: 0.8,
    };
    let (grads, fig, _) =
        autoencoder_backward(&m, Some(&disc), None, pixels(&r, &device), &cfg).unwrap();
    let lambda = f64::from(f32s(&r, "adaptive.lambda").0[0]);
    eprintln!("lambda {} vs {lambda}", fig.lambda);
    assert!(
        (fig.lambda - lambda).abs() < 1e-4 * lambda,
        "{} vs {lambda}",
        fig.lambda
    );
    let g = f32s(&r, "adaptive.g_loss").0[0];
    assert!((fig.g_loss - g).abs() < 1e-5, "{} vs {g}", fig.g_loss);
    let total = f32s(&r, "adaptive.total").0[0];
    assert!((fig.total - total).abs() < 1e-5, "{} vs {total}", fig.total);
    let named = tuwen::train::named_grads(&m, &grads);
    compare_grads(&r, "grad.adaptive.", &named);
}

#[test]
fn saved_folder_loads_back_in_diffusers_layout() {
    let r = read_reference("vq_reference.safetensors");
    let device = Device::flex();
    let (m, cfg) = VqModel::load(&fixtures().join("vq-odd"), &device).unwrap();
    let out = std::env::temp_dir().join(format!("tuwen-vq-save-{}", std::process::id()));
    m.save(&cfg, &out).unwrap();
    let (back, cfg2) = VqModel::load(&out, &device).unwrap();
    assert_eq!(cfg, cfg2);
    let a = to_vec(m.forward(pixels(&r, &device)).sample).unwrap();
    let b = to_vec(back.forward(pixels(&r, &device)).sample).unwrap();
    assert_eq!(a, b);
    // The same tensor names and shapes as diffusers wrote, and its config keys.
    let ours =
        tuwen::hub::safetensors_header(&out.join("diffusion_pytorch_model.safetensors")).unwrap();
    let theirs = tuwen::hub::safetensors_header(
        &fixtures().join("vq-odd/diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    assert_eq!(ours, theirs);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(json["_class_name"], "VQModel");
    assert_eq!(json["block_out_channels"], serde_json::json!([12, 18, 24]));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn lpips_distance_and_input_gradient_match_pytorch() {
    let r = read_reference("lpips_reference.safetensors");
    let device = Device::flex().autodiff();
    let file = fixtures().join("lpips-tiny/lpips.safetensors");
    let net = tuwen::models::lpips::Lpips::load(&file, &device).unwrap();
    let t = |k: &str| {
        let (v, shape) = f32s(&r, k);
        Tensor::<4>::from_data(TensorData::new(v, shape), &device)
    };
    let b = t("b").require_grad();
    let d = net.forward(t("a"), b.clone());
    let ours = to_vec(d.clone()).unwrap();
    let theirs = f32s(&r, "lpips").0;
    let diff = max_abs_diff(&ours, &theirs);
    eprintln!("lpips {ours:?} vs {theirs:?}");
    assert!(diff < 1e-5 && theirs.iter().all(|&v| v > 0.1), "{diff}");
    let grads = d.sum().backward();
    let g: Vec<f32> = b
        .grad(&grads)
        .unwrap()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap();
    let (expect, _) = f32s(&r, "lpips_grad_b");
    let scale = expect.iter().fold(0f32, |m, v| m.max(v.abs()));
    let rel = max_abs_diff(&g, &expect) / scale;
    eprintln!("lpips input gradient: relative difference {rel:.1e}");
    assert!(rel < 1e-4, "{rel}");
    // A file that is not LPIPS says so.
    let err = tuwen::models::lpips::Lpips::load(
        &fixtures().join("vq-odd/diffusion_pytorch_model.safetensors"),
        &device,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not an LPIPS"), "{err}");
}

#[test]
fn psnr_and_ssim_match_scikit_image() {
    let r = read_reference("vq_reference.safetensors");
    let m = read_reference("lpips_reference.safetensors");
    let (x, _) = f32s(&r, "pixel_values");
    let (y, _) = f32s(&r, "sample");
    let per = 3 * 24 * 24;
    let (ssim, psnr) = (f64s(&m, "ssim"), f64s(&m, "psnr"));
    assert_eq!(ssim.len(), 3);
    for i in 0..3 {
        let (a, b) = (&x[i * per..(i + 1) * per], &y[i * per..(i + 1) * per]);
        let s = tuwen::eval::ssim(a, b, 3, 24, 24);
        let p = tuwen::eval::psnr(a, b);
        assert!((s - ssim[i]).abs() < 1e-6, "ssim {s} vs {}", ssim[i]);
        assert!((p - psnr[i]).abs() < 1e-4, "psnr {p} vs {}", psnr[i]);
    }
    // Identical images: SSIM 1, PSNR capped at 100 dB.
    assert!((tuwen::eval::ssim(&x[..per], &x[..per], 3, 24, 24) - 1.0).abs() < 1e-12);
    assert_eq!(tuwen::eval::psnr(&x[..per], &x[..per]), 100.0);
}
