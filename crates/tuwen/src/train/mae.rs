//! Pre-training a masked autoencoder (MAE) on images: each step masks a fresh random share of
//! every image's patches and lowers the pixel error on the masked ones.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::optim::GradientsParams;
use burn::prelude::*;
use serde_json::json;

use super::data::TrainData;
use super::engine::{
    self, Batch, Optim, RunConfig, RunReport, StepContext, StepOutput, StepReport, TrainStep,
};
use crate::data::augment::Augment;
use crate::data::captions::Sample;
use crate::data::processor::{ImageProcessor, batch_tensor};
use crate::models::vit::ViTConfig;
use crate::models::vit_mae::{Masking, ViTMAEConfig, ViTMAEForPreTraining};
use crate::{Error, Result, hub};

/// Settings of an MAE pre-training run.
#[derive(Clone, Debug)]
pub struct MaeTrainConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warmup steps.
    pub warmup: usize,
    /// AdamW weight decay (none on norms, biases, tokens).
    pub weight_decay: f64,
    /// Global gradient-norm clip (0: none, as the paper trains).
    pub max_grad_norm: f64,
    /// Share of patches masked in each image.
    pub mask_ratio: f64,
    /// Seed of the data order, the masks and the augmentations.
    pub seed: u64,
    /// Random crops and flips (the paper: crops keeping 20–100% of the area, and flips).
    pub augment: Augment,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Where checkpoints go.
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue from this checkpoint folder (the model must be loaded from it).
    pub resume_from: Option<PathBuf>,
    /// Where each step's metrics line goes (`metrics.jsonl`).
    pub metrics: Option<PathBuf>,
    /// Set to stop after the current step (with a checkpoint).
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Default for MaeTrainConfig {
    fn default() -> Self {
        MaeTrainConfig {
            steps: 1000,
            batch_size: 64,
            lr: 1e-3,
            warmup: 100,
            weight_decay: 0.05,
            max_grad_norm: 0.0,
            mask_ratio: 0.75,
            seed: 0,
            augment: Augment {
                min_scale: 0.2,
                hflip: true,
            },
            checkpoint_every: 0,
            checkpoint_dir: None,
            resume_from: None,
            metrics: None,
            stop: None,
        }
    }
}

/// MAE sizes `--arch` names: `tiny` and `small` train on a laptop; `base`, `large` and `huge`
/// are the paper's (224 px, 16 px patches (14 for huge), decoder 512 wide and 8 deep).
pub fn arch(name: &str, image_size: Option<usize>) -> Option<ViTMAEConfig> {
    let (size, patch, (d, l, h), (dd, dl, dh)) = match name {
        "tiny" => (32, 4, (96, 4, 3), (64, 2, 4)),
        "small" => (64, 8, (192, 6, 3), (128, 2, 4)),
        "base" => (224, 16, (768, 12, 12), (512, 8, 16)),
        "large" => (224, 16, (1024, 24, 16), (512, 8, 16)),
        "huge" => (224, 14, (1280, 32, 16), (512, 8, 16)),
        _ => return None,
    };
    Some(ViTMAEConfig {
        decoder_hidden_size: dd,
        decoder_num_hidden_layers: dl,
        decoder_num_attention_heads: dh,
        decoder_intermediate_size: 4 * dd,
        mask_ratio: 0.75,
        norm_pix_loss: false,
        vit: ViTConfig {
            hidden_size: d,
            num_hidden_layers: l,
            num_attention_heads: h,
            intermediate_size: 4 * d,
            image_size: image_size.unwrap_or(size),
            patch_size: patch,
            layer_norm_eps: 1e-12,
            ..ViTConfig::default()
        },
    })
}

/// The architecture names [`arch`] knows.
pub const ARCHS: &[&str] = &["tiny", "small", "base", "large", "huge"];

/// The preprocessing a new MAE model is saved with: resize to the model's size, ImageNet mean
/// and standard deviation (as facebook/vit-mae-base).
pub fn preprocessor_json(image_size: usize) -> serde_json::Value {
    json!({"image_processor_type": "ViTImageProcessor", "do_resize": true,
           "size": {"height": image_size, "width": image_size}, "resample": 2,
           "do_rescale": true, "rescale_factor": 1.0 / 255.0, "do_normalize": true,
           "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]})
}

/// Writes a freshly initialised MAE (seeded) with its preprocessing to `folder`.
pub fn init_folder(folder: &Path, config: &ViTMAEConfig, seed: u64) -> Result<()> {
    config
        .validate()
        .map_err(|m| Error::InvalidInput(format!("MAE architecture: {m}")))?;
    std::fs::create_dir_all(folder).map_err(|e| Error::io(folder, e))?;
    hub::write_atomic(
        &folder.join("preprocessor_config.json"),
        preprocessor_json(config.vit.image_size)
            .to_string()
            .as_bytes(),
    )?;
    let _guard = engine::device_rng();
    let device = Device::flex();
    device.seed(seed);
    ViTMAEForPreTraining::new(config, &device).save(config, folder)
}

/// Every image under `dir` as a sample without a caption.
pub fn image_folder(dir: &Path) -> Result<Vec<Sample>> {
    let images = crate::data::files::walk_images(dir)?;
    if images.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{}: no images found",
            dir.display()
        )));
    }
    Ok(images
        .into_iter()
        .map(|image| Sample {
            image,
            caption: String::new(),
            extra: Default::default(),
        })
        .collect())
}

/// Per-step information.
pub type MaeStep = StepReport;

/// What a run measured.
pub type MaeReport = RunReport;

/// MAE's step: mask a fresh share of each image's patches, lower the masked-patch loss.
struct MaeFamily<'a> {
    config: &'a ViTMAEConfig,
    processor: &'a ImageProcessor,
    cfg: &'a MaeTrainConfig,
}

impl TrainStep for MaeFamily<'_> {
    type Models = ViTMAEForPreTraining;

    fn settings(&self) -> serde_json::Value {
        let cfg = self.cfg;
        json!({"steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr,
            "warmup": cfg.warmup, "weight_decay": cfg.weight_decay, "mask_ratio": cfg.mask_ratio,
            "max_grad_norm": cfg.max_grad_norm, "crop_scale": cfg.augment.min_scale,
            "hflip": cfg.augment.hflip, "norm_pix_loss": self.config.norm_pix_loss})
    }

    fn step_bytes(&self, model: &ViTMAEForPreTraining, batch: usize) -> u128 {
        use burn::module::Module;
        let (v, patches) = (&self.config.vit, self.config.num_patches());
        let visible = (patches as f64 * (1.0 - self.cfg.mask_ratio)).ceil() as usize;
        let encoder = crate::memory::Encoder {
            layers: v.num_hidden_layers,
            tokens: visible + 1,
            hidden: v.hidden_size,
            intermediate: v.intermediate_size,
            heads: v.num_attention_heads,
        };
        let d = self.config.decoder_vit();
        let decoder = crate::memory::Encoder {
            layers: d.num_hidden_layers,
            tokens: patches + 1,
            hidden: d.hidden_size,
            intermediate: d.intermediate_size,
            heads: d.num_attention_heads,
        };
        let floats = encoder.training_floats() + decoder.training_floats();
        engine::params_bytes(model.num_params())
            + crate::memory::f32_bytes(floats.saturating_mul(batch as u128))
    }

    fn optimizers(&self, model: &ViTMAEForPreTraining) -> Vec<Optim> {
        let adamw = super::optim::adamw_betas(model, self.cfg.weight_decay, 0.95, 1e-8);
        vec![Optim::new("model", adamw, self.cfg.lr)]
    }

    fn device(&self, model: &ViTMAEForPreTraining) -> Device {
        model.vit.layernorm.gamma.val().device()
    }

    fn processor(&self) -> &ImageProcessor {
        self.processor
    }

    fn device_draws(&self, _model: &ViTMAEForPreTraining) -> bool {
        let vit = &self.config.vit;
        vit.hidden_dropout_prob > 0.0 || vit.attention_probs_dropout_prob > 0.0
    }

    fn step(
        &mut self,
        model: ViTMAEForPreTraining,
        batch: Batch,
        ctx: &mut StepContext,
    ) -> Result<(ViTMAEForPreTraining, StepOutput)> {
        let n = batch.len();
        let pixels = batch_tensor(batch.images, ctx.device)?;
        let patches = self.config.num_patches();
        let masking = Masking::random(n, patches, self.cfg.mask_ratio, ctx.seed(0));
        let out = model.forward(pixels, &masking);
        let loss: f32 = out.loss.clone().into_scalar();
        let grads = GradientsParams::from_grads(out.loss.backward(), &model);
        let model = ctx.update("model", model, grads)?;
        Ok((model, StepOutput::loss(loss)))
    }

    fn save(&self, model: &ViTMAEForPreTraining, dir: &Path) -> Result<()> {
        model.save(self.config, dir)?;
        self.processor.save(dir)
    }
}

/// Pre-trains `model` (on an autodiff device); `on_step` hears every step and may stop the run.
/// Checkpoints (model, preprocessing, optimiser, position) go to `cfg.checkpoint_dir`.
pub fn train<'a>(
    model: ViTMAEForPreTraining,
    config: &ViTMAEConfig,
    processor: &ImageProcessor,
    data: impl Into<TrainData<'a>>,
    cfg: &MaeTrainConfig,
    mut on_step: impl FnMut(&MaeStep) -> bool,
) -> Result<(ViTMAEForPreTraining, MaeReport)> {
    config.check_mask_ratio(cfg.mask_ratio)?;
    let mut family = MaeFamily {
        config,
        processor,
        cfg,
    };
    let model = super::stable_param_ids(model);
    engine::run(&mut family, model, data, &cfg.run(), |s, _| on_step(s))
}

impl MaeTrainConfig {
    /// The run's settings for the engine.
    pub fn run(&self) -> RunConfig {
        RunConfig {
            steps: self.steps,
            batch_size: self.batch_size,
            warmup: self.warmup,
            max_grad_norm: self.max_grad_norm,
            accumulate: 1,
            seed: self.seed,
            augment: self.augment,
            checkpoint_every: self.checkpoint_every,
            checkpoint_dir: self.checkpoint_dir.clone(),
            resume_from: self.resume_from.clone(),
            metrics: self.metrics.clone(),
            stop: self.stop.clone(),
            ..RunConfig::default()
        }
    }
}

/// One row of the masking-ratio study.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RatioRow {
    /// The mask ratio of pre-training; `None` for the randomly initialised encoder.
    pub mask_ratio: Option<f64>,
    /// Masked-patch loss at the last pre-training step.
    pub final_loss: Option<f32>,
    /// Linear-probe top-1 on the test images.
    pub probe_top1: f64,
    /// Seconds of pre-training.
    pub seconds: f64,
}

/// The paper's masking-ratio study in miniature: for each ratio, pre-train the same initial
/// model (`arch`, `seed`) on the training images with `cfg`, then linear-probe its encoder
/// (class labels from `label_column`) and score the probe on `test`. The first row is the same
/// probe on the encoder as initialised.
#[allow(clippy::too_many_arguments)]
pub fn ratio_study(
    device: &Device,
    config: &ViTMAEConfig,
    train_set: &[Sample],
    test: &[Sample],
    label_column: &str,
    ratios: &[f64],
    cfg: &MaeTrainConfig,
    work: &Path,
    mut on_row: impl FnMut(&RatioRow),
) -> Result<Vec<RatioRow>> {
    let labels = |set: &[Sample], names: &mut Vec<String>| -> Result<Vec<usize>> {
        set.iter()
            .map(|s| {
                let l = s.extra.get(label_column).ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "no column {label_column:?} for {}",
                        s.image.display()
                    ))
                })?;
                Ok(match names.iter().position(|n| n == l) {
                    Some(i) => i,
                    None => {
                        names.push(l.clone());
                        names.len() - 1
                    }
                })
            })
            .collect()
    };
    let mut names = Vec::new();
    let y_train = labels(train_set, &mut names)?;
    let y_test = labels(test, &mut names)?;
    let train_paths: Vec<PathBuf> = train_set.iter().map(|s| s.image.clone()).collect();
    let test_paths: Vec<PathBuf> = test.iter().map(|s| s.image.clone()).collect();
    let init = work.join("init");
    init_folder(&init, config, cfg.seed)?;
    let probe = |folder: &Path| -> Result<f64> {
        let mae = crate::pipeline::mae::MaskedAutoencoder::load_folder(folder, device)?;
        let f_train = mae.features(&train_paths, 128)?;
        let f_test = mae.features(&test_paths, 128)?;
        let p = super::probe::LinearProbe::train(&f_train, &y_train, 500, 0.05, 1e-4, cfg.seed)?;
        Ok(p.accuracy(&f_test, &y_test))
    };
    let mut rows = vec![RatioRow {
        mask_ratio: None,
        final_loss: None,
        probe_top1: probe(&init)?,
        seconds: 0.0,
    }];
    on_row(&rows[0]);
    let processor = ImageProcessor::from_file(&init.join("preprocessor_config.json"))?;
    for &ratio in ratios {
        let out = work.join(format!("ratio-{ratio}"));
        let run = MaeTrainConfig {
            mask_ratio: ratio,
            checkpoint_dir: Some(out.clone()),
            resume_from: None,
            ..cfg.clone()
        };
        let (model, _) = ViTMAEForPreTraining::load(&init, &device.clone().autodiff())?;
        let t0 = Instant::now();
        let (_, report) = train(model, config, &processor, train_set, &run, |_| true)?;
        let row = RatioRow {
            mask_ratio: Some(ratio),
            final_loss: report.losses.last().map(|l| l.1),
            probe_top1: probe(&out)?,
            seconds: t0.elapsed().as_secs_f64(),
        };
        on_row(&row);
        rows.push(row);
    }
    Ok(rows)
}

/// Median seconds of one training step of the encoder alone (forward and backward on the
/// visible patches) and of the whole MAE step, at `mask_ratio`, on random images.
pub fn step_times(
    device: &Device,
    config: &ViTMAEConfig,
    batch: usize,
    mask_ratio: f64,
    warmup: usize,
    steps: usize,
) -> Result<(f64, f64)> {
    let device = device.clone().autodiff();
    device.seed(0);
    let model = ViTMAEForPreTraining::new(config, &device);
    let s = config.vit.image_size;
    let pixels = Tensor::<4>::random(
        [batch, config.vit.num_channels, s, s],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let patches = config.num_patches();
    let (mut enc, mut full) = (Vec::new(), Vec::new());
    for i in 0..warmup + steps {
        let masking = Masking::random(batch, patches, mask_ratio, i as u64);
        let t0 = Instant::now();
        let latent = model.encode(pixels.clone(), &masking);
        let g = latent.powi_scalar(2).mean().backward();
        drop(g);
        let t1 = Instant::now();
        let out = model.forward(pixels.clone(), &masking);
        let g = out.loss.backward();
        drop(g);
        let t2 = Instant::now();
        if i >= warmup {
            enc.push((t1 - t0).as_secs_f64());
            full.push((t2 - t1).as_secs_f64());
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    Ok((median(enc), median(full)))
}
