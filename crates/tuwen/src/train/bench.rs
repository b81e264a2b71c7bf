//! Timing a training step on synthetic inputs, for BENCHMARKS.md (the same step as
//! python/bench_torch.py runs in PyTorch).

use std::time::Instant;

use burn::prelude::*;

use super::contrastive::init_folder;
use crate::Result;
use crate::pipeline::ImageText;
use crate::pipeline::image_text::Family;

/// Seconds per optimiser step (forward, backward, AdamW) of a freshly initialised model on
/// random pixels and captions, after `warmup` untimed steps.
pub fn contrastive_step_times(
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
    let device = Device::flex().autodiff();
    let mut model = ImageText::load_folder(&dir, &device)?;
    let _ = std::fs::remove_dir_all(&dir);
    let mut optim = model.optimizer(0.1);
    let pixels = Tensor::<4>::random(
        [batch, 3, image_size, image_size],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let ids = model.tokenize(&captions)?;
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        let loss = model.contrastive_loss(pixels.clone(), ids.clone(), 1);
        let grads = model.grads_of(loss);
        let (next, _) = model.step(&mut optim, 1e-4, grads, 1.0);
        model = next;
        // Wait for the update to finish before stopping the clock.
        let _ = model.scale_and_bias()?;
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(times)
}
