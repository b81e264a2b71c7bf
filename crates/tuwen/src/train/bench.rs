//! The performance harness: inference and training steps of any checkpoint folder tuwen loads,
//! on random inputs of the model's size, timed the way `python/bench_hf.py` times the same
//! folder through transformers (BENCHMARKS.md).

use std::path::Path;
use std::time::Instant;

use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::Distribution;

use super::classifier::Classifier;
use crate::hub::ModelConfig;
use crate::models::vit_mae::{Masking, ViTMAEForPreTraining};
use crate::pipeline::ImageText;
use crate::{Error, Result};

/// What is timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// The forward pass `classify`/`embed` runs: classifier logits, CLIP/SigLIP image
    /// embeddings, the MAE encoder on the unmasked patches.
    Infer,
    /// CLIP/SigLIP text embeddings at the model's text length.
    InferText,
    /// Forward, the family's loss, backward, global-norm clipping to 1 and AdamW.
    Train,
}

/// One timed workload.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Timing {
    /// Median milliseconds per batch.
    pub ms: f64,
    /// Every timed batch, in milliseconds.
    pub runs: Vec<f64>,
    /// The process's peak resident memory so far (MiB), load included.
    pub peak_rss_mb: f64,
    /// Milliseconds to load the folder.
    pub load_ms: f64,
    /// Inference in bfloat16 ([`crate::device::set_precision`]): the smallest cosine
    /// similarity, over the batch, between an output row and the same row in `f32`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cosine_to_fp32: Option<f64>,
}

/// Times `workload` of the checkpoint in `folder`: `warmup` untimed batches of `batch`, then
/// `steps` timed ones. Training runs on `device`'s autodiff twin.
pub fn time_folder(
    folder: &Path,
    workload: Workload,
    batch: usize,
    warmup: usize,
    steps: usize,
    device: &Device,
) -> Result<Timing> {
    if batch == 0 || steps == 0 {
        return Err(Error::InvalidInput(
            "--batch-size and --steps must be at least 1".into(),
        ));
    }
    let kind = ModelConfig::read(folder)?.model_type;
    if workload == Workload::InferText && !matches!(kind.as_str(), "clip" | "siglip") {
        return Err(Error::InvalidInput(format!(
            "--text needs a CLIP or SigLIP model, not {kind:?}"
        )));
    }
    // The random inputs alone must fit (an absurd --batch-size is an error, not an abort).
    let per_input = ModelConfig::read(folder)?.json;
    let side = per_input["image_size"]
        .as_u64()
        .or(per_input["vision_config"]["image_size"].as_u64())
        .unwrap_or(224) as u128;
    crate::memory::check(
        device,
        crate::memory::f32_bytes((batch as u128).saturating_mul(3 * side * side)),
        &format!("random inputs for a batch of {batch}"),
        "--batch-size",
    )?;
    device.seed(0);
    let t0 = Instant::now();
    let mut cosine_to_fp32 = None;
    let mut step: Box<dyn FnMut() -> Result<()>> = match workload {
        Workload::Train => train_step(folder, &kind, batch, &device.clone().autodiff())?,
        _ => {
            let mut infer = infer_step(
                folder,
                &kind,
                batch,
                workload == Workload::InferText,
                device,
            )?;
            let precision = crate::device::Precision::default();
            if crate::nn::cpu::sgemm::precision() != precision {
                // The same batch in f32 and in the precision asked for.
                let asked = crate::nn::cpu::sgemm::precision();
                crate::device::set_precision(precision)?;
                let reference = infer();
                crate::device::set_precision(asked)?;
                let (reference, reduced) = (reference?, infer()?);
                cosine_to_fp32 = Some(min_row_cosine(&reference, &reduced, batch));
            }
            Box::new(move || infer().map(drop))
        }
    };
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut runs = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        step()?;
        if i >= warmup {
            runs.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(Timing {
        ms: median(&runs),
        runs,
        peak_rss_mb: peak_rss_mb(),
        load_ms,
        cosine_to_fp32,
    })
}

/// The smallest cosine similarity between matching rows of `a` and `b` (each `rows` equal
/// rows; two zero rows count as equal); NaN when the lengths differ or a value is not
/// finite.
pub fn min_row_cosine(a: &[f32], b: &[f32], rows: usize) -> f64 {
    if a.len() != b.len() || rows == 0 || !a.len().is_multiple_of(rows) {
        return f64::NAN;
    }
    let width = a.len() / rows;
    a.chunks(width.max(1))
        .zip(b.chunks(width.max(1)))
        .map(|(x, y)| {
            let dot: f64 = x.iter().zip(y).map(|(&p, &q)| p as f64 * q as f64).sum();
            let norm = |v: &[f32]| v.iter().map(|&p| p as f64 * p as f64).sum::<f64>().sqrt();
            match (norm(x), norm(y)) {
                // Two zero rows are the same row; one zero row is nothing like the other.
                (0.0, 0.0) => 1.0,
                (0.0, _) | (_, 0.0) => 0.0,
                (nx, ny) => dot / (nx * ny),
            }
        })
        .fold(f64::INFINITY, |m, c| {
            if c.is_nan() || m.is_nan() {
                f64::NAN
            } else {
                m.min(c)
            }
        })
}

/// The median of `v` (the upper one of an even count, as `statistics.median_high`).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The process's peak resident memory in MiB (Linux; 0 elsewhere).
pub fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Milliseconds of an `n × n` by `n × n` matrix product on `device`: `(median, runs)`. Its
/// `2n³` floating-point operations over the median give the machine's SGEMM ceiling.
pub fn time_gemm(n: usize, warmup: usize, steps: usize, device: &Device) -> Result<Vec<f64>> {
    let n2 = (n as u128).saturating_mul(n as u128);
    crate::memory::check(
        device,
        crate::memory::f32_bytes(n2.saturating_mul(3)),
        &format!("three {n} x {n} matrices"),
        "--size",
    )?;
    let a = Tensor::<2>::random([n, n], Distribution::Default, device);
    let b = Tensor::<2>::random([n, n], Distribution::Default, device);
    let mut runs = Vec::new();
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        let c = a.clone().matmul(b.clone());
        // Reading one element waits for the product (on an asynchronous device).
        let _ = c.slice([0..1, 0..1]).into_data();
        if i >= warmup {
            runs.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(runs)
}

fn pixels(batch: usize, size: usize, device: &Device) -> Tensor<4> {
    Tensor::random(
        [batch, 3, size, size],
        Distribution::Normal(0.0, 1.0),
        device,
    )
}

/// Random token ids `[batch, length]` in `3..vocab`, ending in `end` when given (CLIP's end
/// token, whose position pools the text).
fn token_ids(
    batch: usize,
    length: usize,
    vocab: usize,
    end: Option<i64>,
    dev: &Device,
) -> Tensor<2, Int> {
    let mut rng = crate::data::shapes::SplitMix64::new(0);
    let span = vocab.saturating_sub(3).max(1) as u64;
    let ids: Vec<i64> = (0..batch * length)
        .map(|i| match end {
            Some(e) if i % length == length - 1 => e,
            _ => 3 + (rng.next_u64() % span) as i64,
        })
        .collect();
    Tensor::from_data(TensorData::new(ids, [batch, length]), dev)
}

/// The text length, vocabulary and end token of a CLIP or SigLIP model's text tower.
fn text_shape(model: &ImageText) -> (usize, usize, Option<i64>) {
    let t = &model.config()["text_config"];
    let get = |k: &str, d: u64| t[k].as_u64().unwrap_or(d) as usize;
    match model.family() {
        crate::pipeline::image_text::Family::Clip => (
            get("max_position_embeddings", 77),
            get("vocab_size", 49408),
            Some(t["eos_token_id"].as_i64().unwrap_or(2)),
        ),
        crate::pipeline::image_text::Family::Siglip => (
            get("max_position_embeddings", 64),
            get("vocab_size", 32000),
            None,
        ),
    }
}

fn image_size(model: &ImageText) -> usize {
    model.config()["vision_config"]["image_size"]
        .as_u64()
        .unwrap_or(224) as usize
}

type Step = Box<dyn FnMut() -> Result<()>>;

/// An inference step: its output, flattened.
type InferStep = Box<dyn FnMut() -> Result<Vec<f32>>>;

fn infer_step(
    folder: &Path,
    kind: &str,
    batch: usize,
    text: bool,
    dev: &Device,
) -> Result<InferStep> {
    use crate::pipeline::{ImageClassification, to_vec};
    Ok(match kind {
        "clip" | "siglip" => {
            let model = ImageText::load_folder(folder, dev)?;
            if text {
                let (len, vocab, end) = text_shape(&model);
                let ids = token_ids(batch, len, vocab, end, dev);
                Box::new(move || to_vec(model.text_embeds(ids.clone())))
            } else {
                let px = pixels(batch, image_size(&model), dev);
                Box::new(move || to_vec(model.image_embeds(px.clone())))
            }
        }
        "vit_mae" => {
            let (model, config) = ViTMAEForPreTraining::load(folder, dev)?;
            let px = pixels(batch, config.vit.image_size, dev);
            let masking = Masking::random(batch, config.num_patches(), config.mask_ratio, 0);
            Box::new(move || to_vec(model.encode(px.clone(), &masking)))
        }
        _ => {
            let model = ImageClassification::load_folder(folder, dev)?;
            let size = ModelConfig::read(folder)?.json["image_size"]
                .as_u64()
                .unwrap_or(224) as usize;
            let px = pixels(batch, size, dev);
            Box::new(move || to_vec(model.forward(px.clone())))
        }
    })
}

fn train_step(folder: &Path, kind: &str, batch: usize, dev: &Device) -> Result<Step> {
    use super::classifier::{EfficientNetClassifier, VitClassifier};
    use crate::models::efficientnet::EfficientNetForImageClassification;
    use crate::models::vit::ViTForImageClassification;
    let ce = burn::nn::loss::CrossEntropyLossConfig::new().init(dev);
    let labels = |n: usize| {
        let y: Vec<i64> = (0..batch as i64).map(|i| i % n.max(1) as i64).collect();
        Tensor::<1, Int>::from_data(TensorData::new(y, [batch]), dev)
    };
    Ok(match kind {
        "clip" | "siglip" => {
            let mut model = ImageText::load_folder(folder, dev)?;
            let (len, vocab, end) = text_shape(&model);
            let ids = token_ids(batch, len, vocab, end, dev);
            let px = pixels(batch, image_size(&model), dev);
            let mut optim = super::adamw(&model.towers, 0.05);
            Box::new(move || {
                let loss =
                    super::contrastive::contrastive_loss(&model, px.clone(), ids.clone(), 1)?;
                let value = loss.clone();
                model.towers = update_towers(&mut optim, model.towers.clone(), loss);
                finite(value)
            })
        }
        "vit_mae" => {
            let (model, config) = ViTMAEForPreTraining::load(folder, dev)?;
            let px = pixels(batch, config.vit.image_size, dev);
            let mut optim = super::adamw(&model, 0.05);
            let mut model = Some(model);
            let mut seed = 0;
            Box::new(move || {
                seed += 1;
                let m = model.take().expect("put back after each step");
                let masking = Masking::random(batch, config.num_patches(), config.mask_ratio, seed);
                let loss = m.forward(px.clone(), &masking).loss;
                let value = loss.clone();
                model = Some(update_module(&mut optim, m, loss));
                finite(value)
            })
        }
        "efficientnet" => {
            let (net, config) = EfficientNetForImageClassification::load(folder, dev)?;
            let classes = config.labels().map_or(1000, |l| l.len());
            let size = config.image_size;
            let model = EfficientNetClassifier { model: net, config };
            classifier_step(model, pixels(batch, size, dev), labels(classes), ce)
        }
        "vit" => {
            let (net, config) = ViTForImageClassification::load(folder, dev)?;
            let (size, classes) = (config.image_size, config.num_labels());
            let model = VitClassifier { model: net, config };
            classifier_step(model, pixels(batch, size, dev), labels(classes), ce)
        }
        other => {
            return Err(Error::Unsupported(format!(
                "{}: the harness times vit, efficientnet, clip, siglip and vit_mae, not {other:?}",
                folder.display()
            )));
        }
    })
}

fn classifier_step<M: Classifier + burn::module::Module + 'static>(
    model: M,
    px: Tensor<4>,
    y: Tensor<1, Int>,
    ce: burn::nn::loss::CrossEntropyLoss,
) -> Step {
    let mut optim = super::adamw(&model, 0.05);
    let mut model = Some(model);
    Box::new(move || {
        let m = model.take().expect("put back after each step");
        let loss = ce.forward(m.logits(px.clone()), y.clone());
        let value = loss.clone();
        model = Some(update_module(&mut optim, m, loss));
        finite(value)
    })
}

/// Global-norm clipping to 1, then AdamW at learning rate 1e-4 (weight decay 0.05 when made).
fn update_module<M: burn::module::Module>(
    optim: &mut burn::optim::ModuleOptimizer,
    model: M,
    loss: Tensor<1>,
) -> M {
    let mut grads = GradientsParams::from_grads(loss.backward(), &model);
    super::clip_global_norm(&model, &mut grads, 1.0);
    optim.step(1e-4, model, grads)
}

fn update_towers(
    optim: &mut burn::optim::ModuleOptimizer,
    towers: crate::pipeline::image_text::Towers,
    loss: Tensor<1>,
) -> crate::pipeline::image_text::Towers {
    update_module(optim, towers, loss)
}

/// Waits for the step (reading its loss) and refuses a non-finite one.
fn finite(loss: Tensor<1>) -> Result<()> {
    let v: f32 = loss.into_scalar();
    if v.is_finite() {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!("the loss became {v}")))
    }
}

#[cfg(test)]
mod tests {
    use super::min_row_cosine;

    #[test]
    fn min_row_cosine_takes_the_worst_row_and_fails_on_nan_and_lengths() {
        // Row 0 identical (cosine 1), row 1 at 45 degrees (cosine 1/√2).
        let a = [1.0, 0.0, 1.0, 0.0];
        let b = [2.0, 0.0, 1.0, 1.0];
        let c = min_row_cosine(&a, &b, 2);
        assert!((c - 0.5f64.sqrt()).abs() < 1e-12, "{c}");
        assert_eq!(min_row_cosine(&[0.0, 0.0], &[0.0, 0.0], 1), 1.0);
        assert_eq!(min_row_cosine(&[0.0, 0.0], &[1.0, 0.0], 1), 0.0);
        assert!(min_row_cosine(&[f32::NAN, 1.0], &[1.0, 1.0], 1).is_nan());
        assert!(min_row_cosine(&[1.0, 1.0], &[1.0, 1.0, 1.0], 1).is_nan());
        assert!(min_row_cosine(&[1.0, 1.0, 1.0], &[1.0, 1.0, 1.0], 2).is_nan());
    }
}
