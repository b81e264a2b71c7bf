//! Training CLIP and SigLIP models on captioned images.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use serde_json::json;

use super::checkpoint::{self, RunState};
pub use super::data::{TrainData, batch_indices};
use super::data::{next_batch, step_seed};
use crate::data::augment::Augment;
use crate::data::processor::batch_tensor;
use crate::hub;
use crate::models::clip::{ClipConfig, ClipModel};
use crate::models::siglip::{SiglipConfig, SiglipModel};
use crate::pipeline::ImageText;
use crate::pipeline::image_text::Family;
use crate::text::train_word_tokenizer;
use crate::{Error, Result};

/// Settings of a training run.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Pairs per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warmup steps.
    pub warmup: usize,
    /// AdamW weight decay (not on norms, biases, embeddings, temperature).
    pub weight_decay: f64,
    /// Global gradient-norm clip.
    pub max_grad_norm: f64,
    /// Seed of the data order and the initialisation.
    pub seed: u64,
    /// Simulated devices of the chunked sigmoid loss (1: dense loss).
    pub loss_chunks: usize,
    /// LiT: keep the image tower as it is.
    pub lock_image: bool,
    /// Keep the text tower as it is.
    pub lock_text: bool,
    /// FLIP: share of image patches dropped in each training step.
    pub patch_dropout: f64,
    /// GradCache micro-batches per step (1: the whole batch at once).
    pub accum_freq: usize,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Where checkpoints go (`None`: no checkpoints).
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue from this checkpoint folder: its optimiser state and position. The model
    /// passed to [`train`] must be the one loaded from the same folder.
    pub resume_from: Option<PathBuf>,
    /// Random crops and flips of the training images.
    pub augment: Augment,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 500,
            batch_size: 64,
            lr: 1e-3,
            warmup: 20,
            weight_decay: 0.05,
            max_grad_norm: 1.0,
            seed: 0,
            loss_chunks: 1,
            lock_image: false,
            lock_text: false,
            patch_dropout: 0.0,
            accum_freq: 1,
            checkpoint_every: 0,
            checkpoint_dir: None,
            resume_from: None,
            augment: Augment::default(),
        }
    }
}

/// Sizes of the architectures `--arch` names.
#[derive(Clone, Copy, Debug)]
pub struct ArchSpec {
    /// Vision width, layers, heads, patch.
    pub vision: (usize, usize, usize, usize),
    /// Text width, layers, heads, length.
    pub text: (usize, usize, usize, usize),
    /// Joint embedding width.
    pub embed: usize,
}

/// `tiny` trains in minutes on 2 cores; `small`; `b32` and `b16` are the published sizes.
pub fn arch_spec(name: &str) -> Option<ArchSpec> {
    Some(match name {
        "tiny" => ArchSpec {
            vision: (64, 3, 4, 8),
            text: (64, 2, 4, 24),
            embed: 64,
        },
        "small" => ArchSpec {
            vision: (192, 6, 3, 16),
            text: (192, 6, 3, 32),
            embed: 128,
        },
        "b32" => ArchSpec {
            vision: (768, 12, 12, 32),
            text: (512, 12, 8, 77),
            embed: 512,
        },
        "b16" => ArchSpec {
            vision: (768, 12, 12, 16),
            text: (512, 12, 8, 77),
            embed: 512,
        },
        _ => return None,
    })
}

/// Architecture names [`arch_spec`] knows.
pub const ARCHS: &[&str] = &["tiny", "small", "b32", "b16"];

/// Writes a freshly initialised model with a tokenizer trained on `captions` to `folder`, in
/// the HF layout, so that it loads like any checkpoint.
pub fn init_folder(
    folder: &Path,
    family: Family,
    arch: &str,
    image_size: usize,
    captions: &[String],
    seed: u64,
) -> Result<()> {
    let spec = arch_spec(arch).ok_or_else(|| {
        Error::InvalidInput(format!(
            "unknown --arch {arch:?} (known: {})",
            ARCHS.join(", ")
        ))
    })?;
    let (vd, vl, vh, patch) = spec.vision;
    let (td, tl, th, len) = spec.text;
    if image_size < patch || !image_size.is_multiple_of(patch) {
        return Err(Error::InvalidInput(format!(
            "--image-size {image_size} must be a multiple of the patch size {patch}"
        )));
    }
    let clip = family == Family::Clip;
    let (tokenizer, specials) = train_word_tokenizer(captions, clip, 30_000)?;
    let vocab = tokenizer.get_vocab_size(true);
    std::fs::create_dir_all(folder).map_err(|e| Error::io(folder, e))?;
    let tok_json = tokenizer
        .to_string(true)
        .map_err(|e| Error::InvalidInput(format!("cannot serialise the tokenizer: {e}")))?;
    hub::write_atomic(&folder.join("tokenizer.json"), tok_json.as_bytes())?;
    let mut tcfg = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": len,
        "pad_token": specials.pad.0,
        "eos_token": specials.eos.0,
        "unk_token": "<unk>",
    });
    if let Some((bos, _)) = &specials.bos {
        tcfg["bos_token"] = json!(bos);
    }
    hub::write_atomic(
        &folder.join("tokenizer_config.json"),
        tcfg.to_string().as_bytes(),
    )?;
    let processor = if clip {
        json!({"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": image_size},
               "crop_size": {"height": image_size, "width": image_size}, "do_center_crop": true,
               "resample": 3, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]})
    } else {
        json!({"image_processor_type": "SiglipImageProcessor",
               "size": {"height": image_size, "width": image_size}, "resample": 3,
               "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]})
    };
    hub::write_atomic(
        &folder.join("preprocessor_config.json"),
        processor.to_string().as_bytes(),
    )?;

    // The device's generator is shared: hold it while seeding and drawing the initial weights,
    // so that concurrent initialisations cannot interleave and a seed means one model.
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex();
    device.seed(seed);
    let vision = json!({"hidden_size": vd, "intermediate_size": 4 * vd, "num_hidden_layers": vl,
        "num_attention_heads": vh, "image_size": image_size, "patch_size": patch});
    let mut text = json!({"vocab_size": vocab, "hidden_size": td, "intermediate_size": 4 * td,
        "num_hidden_layers": tl, "num_attention_heads": th, "max_position_embeddings": len,
        "pad_token_id": specials.pad.1, "eos_token_id": specials.eos.1});
    if clip {
        text["bos_token_id"] = json!(specials.bos.as_ref().map(|b| b.1));
        let config = json!({"model_type": "clip", "architectures": ["CLIPModel"],
            "text_config": text, "vision_config": vision, "projection_dim": spec.embed});
        let cfg: ClipConfig = serde_json::from_value(config.clone()).expect("valid config");
        let model = ClipModel::new(&cfg, &device);
        hub::save_pretrained_with_scalars(&model, &config, folder, &["logit_scale"])
    } else {
        text["projection_size"] = json!(vd);
        let config = json!({"model_type": "siglip", "architectures": ["SiglipModel"],
            "text_config": text, "vision_config": vision});
        let cfg: SiglipConfig = serde_json::from_value(config.clone()).expect("valid config");
        hub::save_pretrained(&SiglipModel::new(&cfg, &device), &config, folder)
    }
}

/// What a training run measured.
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// `(step, loss)` for every step of the run, including those before a resume.
    pub losses: Vec<(usize, f32)>,
    /// Training samples per second (median over steps after the first).
    pub samples_per_s: f64,
    /// Samples skipped because their image could not be read.
    pub skipped: usize,
}

/// Per-step callback information.
pub struct StepInfo {
    /// Step index, from 0.
    pub step: usize,
    /// Loss of the step.
    pub loss: f32,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Samples per second of this step.
    pub samples_per_s: f64,
}

/// Trains `model` (on an autodiff device) on `samples`; `on_step` hears about every step with
/// the model as it is after it, and may stop the run by returning false. Unreadable images are
/// skipped and counted. With a checkpoint folder, checkpoints are written every
/// `checkpoint_every` steps and when the run ends or is stopped.
pub fn train<'a>(
    model: ImageText,
    data: impl Into<TrainData<'a>>,
    cfg: &TrainConfig,
    mut on_step: impl FnMut(&StepInfo, &ImageText) -> bool,
) -> Result<(ImageText, TrainReport)> {
    let mut data = data.into();
    if cfg.batch_size < 2 {
        return Err(Error::InvalidInput(
            "--batch-size must be at least 2 for a contrastive loss".into(),
        ));
    }
    if let TrainData::Samples(samples) = &data
        && samples.len() < cfg.batch_size
    {
        return Err(Error::InvalidInput(format!(
            "{} samples are fewer than one batch of {}",
            samples.len(),
            cfg.batch_size
        )));
    }
    if cfg.lock_image && cfg.lock_text {
        return Err(Error::InvalidInput(
            "locking both towers leaves nothing to train".into(),
        ));
    }
    if !(0.0..1.0).contains(&cfg.patch_dropout) {
        return Err(Error::InvalidInput(format!(
            "patch dropout {} must be in [0, 1)",
            cfg.patch_dropout
        )));
    }
    if cfg.accum_freq == 0 || cfg.accum_freq > cfg.batch_size {
        return Err(Error::InvalidInput(format!(
            "--accum-freq {} must be between 1 and the batch size {}",
            cfg.accum_freq, cfg.batch_size
        )));
    }
    let mut model = model.with_stable_param_ids();
    model.set_patch_dropout(cfg.patch_dropout);
    let device = model.device().clone();
    let settings = json!({
        "steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "warmup": cfg.warmup,
        "weight_decay": cfg.weight_decay, "max_grad_norm": cfg.max_grad_norm,
        "loss_chunks": cfg.loss_chunks, "lock_image": cfg.lock_image, "lock_text": cfg.lock_text,
        "patch_dropout": cfg.patch_dropout, "accum_freq": cfg.accum_freq,
        "crop_scale": cfg.augment.min_scale, "hflip": cfg.augment.hflip,
    });
    let (mut state, mut optim) = checkpoint::start(
        cfg.resume_from.as_deref(),
        model.optimizer(cfg.weight_decay),
        cfg.seed,
        settings,
    )?;
    let save =
        |model: &ImageText, optim: &burn::optim::ModuleOptimizer, state: &RunState| match &cfg
            .checkpoint_dir
        {
            Some(dir) => checkpoint::save(dir, |tmp| model.save(tmp), optim, state),
            None => Ok(()),
        };
    let device_draws = model.draws_from_device();
    let mut rates = Vec::new();
    let first = state.step;
    // A stream resumes where the run stood by reading past what it already used.
    data.skip(first * cfg.batch_size)?;
    let stream_skipped = match &data {
        TrainData::Shards(s) => s.skipped,
        TrainData::Samples(_) => 0,
    };
    while state.step < cfg.steps {
        let step = state.step;
        let t0 = Instant::now();
        let loaded = next_batch(
            &mut data,
            step,
            cfg.batch_size,
            cfg.seed,
            &cfg.augment,
            &model.processor,
        )?;
        state.skipped += loaded.iter().filter(|l| l.is_none()).count();
        let (items, captions): (Vec<_>, Vec<String>) = loaded.into_iter().flatten().unzip();
        // The chunked loss needs a batch divisible by its devices; drop the remainder.
        let keep = items.len() - items.len() % cfg.loss_chunks.max(1);
        if keep < 2 {
            state.step += 1;
            continue;
        }
        let pixels = batch_tensor(items[..keep].to_vec(), &device)?;
        let ids = model.tokenize(&captions[..keep])?;
        let (loss_value, grads) = model.accumulated_grads(
            pixels,
            ids,
            cfg.accum_freq,
            cfg.loss_chunks,
            cfg.lock_image,
            cfg.lock_text,
            |j| {
                let seed = step_seed(cfg.seed, step, j);
                model.set_draw_seed(seed);
                // Attention dropout, when the config asks for it, draws from the device.
                if device_draws {
                    device.seed(seed);
                }
            },
        );
        if !loss_value.is_finite() {
            return Err(Error::InvalidInput(format!(
                "the loss became {loss_value} at step {step}; lower --lr"
            )));
        }
        let lr = super::warmup_cosine(step, cfg.lr, cfg.warmup, cfg.steps);
        let (next, norm) = model.step(&mut optim, lr, grads, cfg.max_grad_norm);
        model = next;
        let rate = keep as f64 / t0.elapsed().as_secs_f64();
        if step > first {
            rates.push(rate);
        }
        state.losses.push((step, loss_value));
        state.step += 1;
        let info = StepInfo {
            step,
            loss: loss_value,
            lr,
            grad_norm: norm,
            samples_per_s: rate,
        };
        let go_on = on_step(&info, &model);
        if checkpoint::due(state.step, cfg.steps, cfg.checkpoint_every, !go_on) {
            model.set_patch_dropout(0.0);
            save(&model, &optim, &state)?;
            model.set_patch_dropout(cfg.patch_dropout);
        }
        if !go_on {
            break;
        }
    }
    model.set_patch_dropout(0.0);
    rates.sort_by(f64::total_cmp);
    let samples_per_s = rates.get(rates.len() / 2).copied().unwrap_or(0.0);
    Ok((
        model,
        TrainReport {
            losses: state.losses,
            samples_per_s,
            skipped: state.skipped
                + match &data {
                    TrainData::Shards(s) => s.skipped - stream_skipped,
                    TrainData::Samples(_) => 0,
                },
        },
    ))
}
