//! ViT is trainable: gradients equal PyTorch's, dropout acts only in training, and a small model
//! learns a generated task.

mod common;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use common::*;
use tuwen::burn;
use tuwen::models::vit::{ViTConfig, ViTForImageClassification};
use tuwen::pipeline::to_vec;

fn t2(v: Tensor<2>) -> Vec<f32> {
    to_vec(v.transpose()).unwrap()
}

#[test]
fn gradients_match_pytorch() {
    let r = reference();
    let device = Device::flex().autodiff();
    let (vit, _) = ViTForImageClassification::load(&fixtures().join("vit-tiny"), &device).unwrap();
    let (px, s) = f32s(&r, "interp/pixels");
    let px = Tensor::<4>::from_data(TensorData::new(px, [s[0], s[1], s[2], s[3]]), &device);
    let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![3i64, 7], [2]), &device);
    let loss = CrossEntropyLossConfig::new()
        .init(&device)
        .forward(vit.forward(px), labels);
    let (expect_loss, _) = f32s(&r, "grad/loss");
    let got_loss = to_vec(loss.clone()).unwrap();
    assert!(
        (got_loss[0] - expect_loss[0]).abs() < 1e-5,
        "{got_loss:?} vs {expect_loss:?}"
    );
    let grads = loss.backward();

    let layer0 = &vit.vit.encoder.layer[0];
    let layer1 = &vit.vit.encoder.layer[1];
    let emb = &vit.vit.embeddings;
    // Linear weights are stored [in, out] in burn, [out, in] in PyTorch.
    let ours: Vec<(&str, Vec<f32>)> = vec![
        (
            "classifier.weight",
            t2(vit.classifier.weight.grad(&grads).unwrap()),
        ),
        (
            "classifier.bias",
            to_vec(vit.classifier.bias.as_ref().unwrap().grad(&grads).unwrap()).unwrap(),
        ),
        (
            "vit.embeddings.cls_token",
            to_vec(emb.cls_token.grad(&grads).unwrap()).unwrap(),
        ),
        (
            "vit.embeddings.position_embeddings",
            to_vec(emb.position_embeddings.grad(&grads).unwrap()).unwrap(),
        ),
        (
            "vit.embeddings.patch_embeddings.projection.weight",
            to_vec(emb.patch_embeddings.projection.weight.grad(&grads).unwrap()).unwrap(),
        ),
        (
            "vit.layers.0.attention.q_proj.weight",
            t2(layer0
                .attention
                .attention
                .query
                .weight
                .grad(&grads)
                .unwrap()),
        ),
        (
            "vit.layers.0.mlp.fc1.bias",
            to_vec(
                layer0
                    .intermediate
                    .dense
                    .bias
                    .as_ref()
                    .unwrap()
                    .grad(&grads)
                    .unwrap(),
            )
            .unwrap(),
        ),
        (
            "vit.layers.1.layernorm_after.weight",
            to_vec(layer1.layernorm_after.gamma.grad(&grads).unwrap()).unwrap(),
        ),
        (
            "vit.layernorm.bias",
            to_vec(
                vit.vit
                    .layernorm
                    .beta
                    .as_ref()
                    .unwrap()
                    .grad(&grads)
                    .unwrap(),
            )
            .unwrap(),
        ),
    ];
    for (name, g) in ours {
        let (expect, _) = f32s(&r, &format!("grad/{name}"));
        let scale = expect.iter().map(|x| x.abs()).fold(0.0, f32::max);
        assert!(
            scale > 1e-4,
            "{name}: reference gradient is ~0, the check would prove nothing"
        );
        let diff = max_abs_diff(&g, &expect);
        assert!(
            diff < 1e-4 * scale.max(1.0),
            "{name}: max diff {diff} (scale {scale})"
        );
    }
}

fn small_config(dropout: f64) -> ViTConfig {
    ViTConfig {
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 64,
        image_size: 16,
        patch_size: 4,
        hidden_dropout_prob: dropout,
        attention_probs_dropout_prob: dropout,
        id2label: [(0, "horizontal"), (1, "vertical")]
            .into_iter()
            .map(|(i, l)| (i.to_string(), l.to_string()))
            .collect(),
        ..ViTConfig::default()
    }
}

#[test]
fn dropout_acts_only_when_training() {
    let cfg = small_config(0.5);
    let x = |d: &Device| Tensor::<4>::ones([1, 3, 16, 16], d);
    let train = Device::flex().autodiff();
    let model = ViTForImageClassification::new(&cfg, &train);
    let a = to_vec(model.forward(x(&train))).unwrap();
    let b = to_vec(model.forward(x(&train))).unwrap();
    assert!(
        max_abs_diff(&a, &b) > 1e-3,
        "dropout did nothing in training"
    );
    let infer = Device::flex();
    let model = ViTForImageClassification::new(&cfg, &infer);
    let a = to_vec(model.forward(x(&infer))).unwrap();
    let b = to_vec(model.forward(x(&infer))).unwrap();
    assert_eq!(a, b, "inference must be deterministic");
}

/// Striped 16x16 images, horizontal (label 0) or vertical (label 1), with random period, phase,
/// colours and noise.
fn stripes(n: usize, seed: u64) -> (Vec<f32>, Vec<i64>) {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut rand = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f32) / (1u64 << 31) as f32
    };
    let mut pixels = Vec::with_capacity(n * 3 * 256);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let label = (rand() < 0.5) as i64;
        let period = 2 + (rand() * 4.0) as usize;
        let phase = (rand() * period as f32) as usize;
        let (fg, bg): (Vec<f32>, Vec<f32>) = (
            (0..3).map(|_| rand()).collect(),
            (0..3).map(|_| rand()).collect(),
        );
        for c in 0..3 {
            for y in 0..16 {
                for x in 0..16 {
                    let t = if label == 0 { y } else { x };
                    let on = (t + phase) % period < period / 2;
                    let v = if on { fg[c] } else { bg[c] } + 0.1 * (rand() - 0.5);
                    pixels.push(v * 2.0 - 1.0);
                }
            }
        }
        labels.push(label);
    }
    (pixels, labels)
}

#[test]
fn learns_stripe_orientation() {
    let device = Device::flex().autodiff();
    device.seed(7);
    let cfg = small_config(0.1);
    let mut model = ViTForImageClassification::new(&cfg, &device);
    let mut optim = AdamWConfig::new().with_weight_decay(0.01).init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let batch = 32;
    for step in 0..300u64 {
        let (px, y) = stripes(batch, step);
        let px = Tensor::<4>::from_data(TensorData::new(px, [batch, 3, 16, 16]), &device);
        let y = Tensor::<1, Int>::from_data(TensorData::new(y, [batch]), &device);
        let loss = loss_fn.forward(model.forward(px), y);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, grads);
    }
    // Held-out images, inference mode (no autodiff, so no dropout).
    let infer = Device::flex();
    let model = model.to_device(&infer);
    let n = 200;
    let (px, y) = stripes(n, 10_000);
    let px = Tensor::<4>::from_data(TensorData::new(px, [n, 3, 16, 16]), &infer);
    let logits = to_vec(model.forward(px)).unwrap();
    let correct = logits
        .chunks(2)
        .zip(&y)
        .filter(|(l, y)| ((l[1] > l[0]) as i64) == **y)
        .count();
    let acc = correct as f64 / n as f64;
    eprintln!("held-out accuracy {acc}");
    assert!(acc >= 0.9, "held-out accuracy {acc}");
}
