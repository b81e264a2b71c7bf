//! The gradient penalty of WGAN-GP through tuwen's explicit input gradient, against PyTorch's
//! `autograd.grad(create_graph=True)` on the tiny MLP and convolutional critics of
//! python/make_gan_fixtures.py: D(x), ∇ₓD, the penalty, R1, and every critic parameter's
//! gradient of the penalty and of the whole critic loss, within 1e-4 relative.

mod common;

use std::collections::BTreeMap;

use burn::prelude::*;
use common::*;
use tuwen::burn;
use tuwen::loss::{GanObjective, discriminator_loss, gradient_penalty, r1_penalty};
use tuwen::models::gan::{Gan, read_config};
use tuwen::train::named_grads;

fn tensor2(r: &BTreeMap<String, Array>, key: &str, device: &Device) -> Tensor<2> {
    let (v, s) = f32s(r, key);
    Tensor::<1>::from_floats(v.as_slice(), device).reshape([s[0], s[1]])
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

/// `ours` against `theirs` relative to the larger of theirs' largest magnitude and `floor`.
fn close(what: &str, ours: &[f32], theirs: &[f32], floor: f32) -> f32 {
    let scale = theirs
        .iter()
        .map(|x| x.abs())
        .fold(0.0, f32::max)
        .max(floor);
    let rel = max_abs_diff(ours, theirs) / scale;
    assert!(rel < 1e-4, "{what}: relative difference {rel}");
    rel
}

/// Our names without the enum variant (`Mlp.`, `Dcgan.`), as the saved tensors are named.
fn strip_variant(
    g: BTreeMap<String, (Vec<f32>, Vec<usize>)>,
) -> BTreeMap<String, (Vec<f32>, Vec<usize>)> {
    g.into_iter()
        .map(|(k, v)| {
            (
                k.split_once('.')
                    .map_or(k.clone(), |(_, rest)| rest.to_string()),
                v,
            )
        })
        .collect()
}

fn check(prefix: &str, folder: &str) {
    let device = Device::flex().autodiff();
    let r = read_reference("gan_gp_reference.safetensors");
    let path = fixtures().join(folder);
    let cfg = read_config(&path).unwrap();
    // The fixture holds the critic only; the generator stays as initialised.
    let gan =
        tuwen::hub::load_weights_skipping_variants(Gan::new(&cfg, &device), &path, &["generator"])
            .unwrap();
    let critic = gan.discriminator;
    let x = tensor2(&r, &format!("{prefix}.x"), &device).require_grad();

    let (out, grad) = critic.input_grad(&cfg, x.clone()).unwrap();
    close(
        "D(x)",
        &values(out),
        &f32s(&r, &format!("{prefix}.out")).0,
        1e-3,
    );
    close(
        "input gradient",
        &values(grad.clone()),
        &f32s(&r, &format!("{prefix}.input_grad")).0,
        1e-3,
    );
    let r1 = values(r1_penalty(grad.clone()));
    close("R1", &r1, &f32s(&r, &format!("{prefix}.r1")).0, 1e-3);
    let penalty = gradient_penalty(grad);
    close(
        "penalty",
        &values(penalty.clone()),
        &f32s(&r, &format!("{prefix}.penalty")).0,
        1e-3,
    );

    // Every critic parameter's gradient of the penalty: the second-order term, through
    // first-order autodiff of the explicit input gradient.
    let ours = strip_variant(named_grads(&critic, &penalty.backward()));
    let grads_of = |kind: &str| -> Vec<(String, Vec<f32>)> {
        let head = format!("{prefix}.{kind}.discriminator.");
        r.keys()
            .filter(|k| k.starts_with(&head))
            .map(|k| (k[head.len()..].to_string(), f32s(&r, k).0))
            .collect()
    };
    let theirs = grads_of("grad");
    assert!(
        theirs.len() >= 8,
        "{prefix}: only {} gradients",
        theirs.len()
    );
    let mut worst = 0.0f32;
    for (name, want) in &theirs {
        let got = match ours.get(name) {
            Some((g, _)) => g.clone(),
            // A parameter that only moves a piecewise-constant mask (the output bias, a norm's
            // offset) has no path to the input gradient: zero on PyTorch's side too.
            None if name.ends_with("bias") => vec![0.0; want.len()],
            None => panic!("{prefix}: no gradient for {name} (have {:?})", ours.keys()),
        };
        worst = worst.max(close(
            &format!("{prefix} d penalty / d {name}"),
            &got,
            want,
            1e-3,
        ));
    }
    eprintln!(
        "{prefix}: penalty and {} parameter gradients, worst relative difference {worst:.1e}",
        theirs.len()
    );

    // The whole critic loss of a WGAN-GP step: mean D(fake) − mean D(real) + 10 · penalty at
    // the interpolates.
    let real = tensor2(&r, &format!("{prefix}.real"), &device);
    let fake = tensor2(&r, &format!("{prefix}.fake"), &device);
    let eps = tensor2(&r, &format!("{prefix}.eps"), &device);
    let mixed = real.clone() * eps.clone() + fake.clone() * (eps.ones_like() - eps);
    let (_, grad) = critic.input_grad(&cfg, mixed).unwrap();
    let loss = discriminator_loss(
        GanObjective::Wasserstein,
        critic.forward(&cfg, real),
        critic.forward(&cfg, fake),
    ) + gradient_penalty(grad) * 10.0;
    close(
        "critic loss",
        &values(loss.clone()),
        &f32s(&r, &format!("{prefix}.loss")).0,
        1e-3,
    );
    let ours = strip_variant(named_grads(&critic, &loss.backward()));
    for (name, want) in grads_of("loss_grad") {
        let got = &ours.get(&name).expect("every parameter has a gradient").0;
        close(&format!("{prefix} d loss / d {name}"), got, &want, 1e-3);
    }
}

#[test]
fn mlp_critic_gradient_penalty_matches_pytorch_double_backward() {
    check("mlp", "gan-gp-mlp");
}

#[test]
fn conv_critic_gradient_penalty_matches_pytorch_double_backward() {
    check("conv", "gan-gp-conv");
}

/// Batch norm couples a batch's samples: no per-sample input gradient, a clear error.
#[test]
fn batch_norm_critic_refuses_an_input_gradient() {
    let device = Device::flex().autodiff();
    let path = fixtures().join("gan-gp-conv");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path.join("config.json")).unwrap()).unwrap();
    json["critic_norm"] = "batch".into();
    let cfg = tuwen::models::gan::GanConfig::from_json(&json).unwrap();
    let gan = Gan::new(&cfg, &device);
    let x = Tensor::<2>::zeros([2, cfg.features()], &device);
    let err = gan.discriminator.input_grad(&cfg, x).unwrap_err();
    assert!(err.to_string().contains("batch norm"), "{err}");
}

/// The Fréchet distance of two feature sets against pytorch-fid's formula with
/// scipy.linalg.sqrtm (python/make_gan_fixtures.py).
#[test]
fn frechet_distance_matches_scipy() {
    let r = read_reference("fid_reference.safetensors");
    let (a, sa) = f32s(&r, "a");
    let (b, _) = f32s(&r, "b");
    let want = f64::from(f32s(&r, "fid").0[0]);
    let got = tuwen::eval::frechet_distance(&a, &b, sa[1]).unwrap();
    assert!(
        (got - want).abs() <= 1e-5 * want.abs(),
        "Fréchet distance {got} vs scipy {want}"
    );
    // A set against itself: zero (up to rounding).
    let same = tuwen::eval::frechet_distance(&a, &a, sa[1]).unwrap();
    assert!(same.abs() < 1e-6 * want, "{same}");
    assert!(tuwen::eval::frechet_distance(&a, &b[..5], sa[1]).is_err());
}
