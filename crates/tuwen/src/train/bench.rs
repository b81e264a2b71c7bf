//! Timing a training step on synthetic inputs, for BENCHMARKS.md (the same step as
//! python/bench_torch.py runs in PyTorch).

use std::time::Instant;

use burn::optim::GradientsParams;
use burn::prelude::*;

use super::contrastive::init_folder;
use crate::pipeline::ImageText;
use crate::pipeline::image_text::Family;
use crate::{Error, Result};

/// Seconds per optimiser step (forward, backward, AdamW) of a freshly initialised model on
/// random pixels and captions, after `warmup` untimed steps.
pub fn contrastive_step_times(
    device: &Device,
    family: Family,
    arch: &str,
    image_size: usize,
    batch: usize,
    warmup: usize,
    steps: usize,
) -> Result<Vec<f64>> {
    let dir = std::env::temp_dir().join(format!("tuwen-bench-{}", std::process::id()));
    let captions: Vec<String> = (0..batch)
        .map(|i| format!("a photo of object number {i} on a table"))
        .collect();
    init_folder(&dir, family, arch, image_size, &captions, 0)?;
    let device = device.clone().autodiff();
    let mut model = ImageText::load_folder(&dir, &device)?;
    let _ = std::fs::remove_dir_all(&dir);
    let mut optim = super::adamw(&model.towers, 0.1);
    let pixels = Tensor::<4>::random(
        [batch, 3, image_size, image_size],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let ids = model.tokenize(&captions)?;
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        let loss = super::contrastive::contrastive_loss(&model, pixels.clone(), ids.clone(), 1)?;
        let mut grads = GradientsParams::from_grads(loss.backward(), &model.towers);
        super::clip_global_norm(&model.towers, &mut grads, 1.0);
        model.towers = optim.step(1e-4, model.towers, grads);
        // Wait for the update to finish before stopping the clock.
        let _ = model.scale_and_bias()?;
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(times)
}

/// Seconds of inference (forward on the plain device) and of a training step (forward,
/// backward, AdamW on an autodiff device) of an image classifier (`efficientnet-bN` or a ViT
/// architecture) with 1000 classes, on random images: `(inference, training)`, one per timed
/// step.
pub fn classifier_step_times(
    device: &Device,
    arch: &str,
    image_size: Option<usize>,
    batch: usize,
    warmup: usize,
    steps: usize,
) -> Result<(Vec<f64>, Vec<f64>, usize)> {
    use crate::models::efficientnet::{self, EfficientNetForImageClassification};
    use crate::models::vit::{self, ViTForImageClassification};
    use crate::train::classifier::{Classifier, EfficientNetClassifier, VitClassifier};
    fn time<M: Classifier>(
        plain: &Device,
        build: impl Fn(&Device) -> M,
        size: usize,
        batch: usize,
        warmup: usize,
        steps: usize,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        let plain = plain.clone();
        plain.seed(0);
        let model = build(&plain);
        let px = Tensor::<4>::random(
            [batch, 3, size, size],
            burn::tensor::Distribution::Default,
            &plain,
        );
        let mut infer = Vec::new();
        for i in 0..warmup + steps {
            let t0 = Instant::now();
            let _ = crate::pipeline::to_vec(model.logits(px.clone()))?;
            if i >= warmup {
                infer.push(t0.elapsed().as_secs_f64());
            }
        }
        let ad = plain.clone().autodiff();
        let mut model = build(&ad);
        let mut optim = crate::train::adamw(&model, 0.05);
        let px = Tensor::<4>::random(
            [batch, 3, size, size],
            burn::tensor::Distribution::Default,
            &ad,
        );
        let y = Tensor::<1, Int>::from_data(
            TensorData::new(
                (0..batch as i64).map(|i| i % 1000).collect::<Vec<_>>(),
                [batch],
            ),
            &ad,
        );
        let loss_fn = burn::nn::loss::CrossEntropyLossConfig::new().init(&ad);
        let mut train = Vec::new();
        for i in 0..warmup + steps {
            let t0 = Instant::now();
            let loss = loss_fn.forward(model.logits(px.clone()), y.clone());
            let grads = burn::optim::GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-4, model, grads);
            let _: f32 = loss.into_scalar();
            if i >= warmup {
                train.push(t0.elapsed().as_secs_f64());
            }
        }
        Ok((infer, train))
    }
    if let Some(mut c) = efficientnet::arch(arch, 1000) {
        if let Some(s) = image_size {
            c.image_size = s;
        }
        let size = c.image_size;
        let (i, t) = time(
            device,
            |d| EfficientNetClassifier {
                model: EfficientNetForImageClassification::new(&c, d),
                config: c.clone(),
            },
            size,
            batch,
            warmup,
            steps,
        )?;
        return Ok((i, t, size));
    }
    let mut c = vit::arch(arch, 1000).ok_or_else(|| {
        Error::InvalidInput(format!(
            "unknown --arch {arch:?} (known: {}, {})",
            vit::ARCHS.join(", "),
            efficientnet::ARCHS.join(", ")
        ))
    })?;
    if let Some(s) = image_size {
        c.image_size = s;
    }
    let size = c.image_size;
    let (i, t) = time(
        device,
        |d| VitClassifier {
            model: ViTForImageClassification::new(&c, d),
            config: c.clone(),
        },
        size,
        batch,
        warmup,
        steps,
    )?;
    Ok((i, t, size))
}
