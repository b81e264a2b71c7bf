//! Supervised image classification with a ViT: from scratch, fine-tuned from a checkpoint
//! (a classifier, a bare ViT or an MAE encoder), or as a linear probe of a frozen encoder.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::prelude::*;
use serde_json::json;

use super::checkpoint::{self, RunState};
use super::data::{TrainData, next_batch};
use crate::data::augment::Augment;
use crate::data::captions::Sample;
use crate::data::processor::{ImageProcessor, batch_tensor};
use crate::hub::{self, ModelConfig};
use crate::models::efficientnet::{EfficientNetConfig, EfficientNetForImageClassification};
use crate::models::vit::{NEW_TO_LEGACY, ViTConfig, ViTForImageClassification};
use crate::{Error, Result};

/// Settings of a classifier training run.
#[derive(Clone, Debug)]
pub struct ClassifierTrainConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warmup steps.
    pub warmup: usize,
    /// AdamW weight decay (none on norms, biases, tokens, positions).
    pub weight_decay: f64,
    /// Global gradient-norm clip.
    pub max_grad_norm: f64,
    /// Seed of data order and augmentation.
    pub seed: u64,
    /// Random crops and flips.
    pub augment: Augment,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Where checkpoints go.
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue from this checkpoint folder (the model must be loaded from it).
    pub resume_from: Option<PathBuf>,
    /// Label smoothing of the cross-entropy (0: none).
    pub label_smoothing: f64,
    /// Mixup's α (0: none): each batch is blended with itself reversed, with weight λ ~
    /// Beta(α, α), and the loss blends the two labels' losses the same way.
    pub mixup: f64,
}

impl Default for ClassifierTrainConfig {
    fn default() -> Self {
        ClassifierTrainConfig {
            steps: 500,
            batch_size: 64,
            lr: 5e-4,
            warmup: 50,
            weight_decay: 0.05,
            max_grad_norm: 1.0,
            seed: 0,
            augment: Augment::default(),
            checkpoint_every: 0,
            checkpoint_dir: None,
            resume_from: None,
            label_smoothing: 0.1,
            mixup: 0.0,
        }
    }
}

/// A ViT classifier for `labels` built on checkpoint `folder`: a `vit_mae` or `vit` checkpoint's
/// encoder, with a new head (a classifier with the same classes keeps its head). Returns the
/// model and its config (with `id2label` from `labels`).
pub fn from_checkpoint(
    folder: &Path,
    labels: &[String],
    device: &Device,
) -> Result<(ViTForImageClassification, ViTConfig)> {
    let mc = ModelConfig::read(folder)?;
    let mut cfg: ViTConfig = match mc.model_type.as_str() {
        "vit_mae" => crate::models::vit_mae::read_config(folder)?.1.vit,
        "vit" => crate::models::vit::read_config(folder)?.1,
        other => {
            return Err(Error::Unsupported(format!(
                "{}: --init needs a vit or vit_mae checkpoint, not {other:?}",
                mc.path.display()
            )));
        }
    };
    let same_head = cfg.labels().ok().as_deref() == Some(labels);
    cfg.id2label = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), l.clone()))
        .collect();
    // Keep only ViT keys of the encoder (an MAE checkpoint's decoder is dropped, a bare ViT
    // has no `vit.` prefix); the head stays as initialised unless the classes are the same.
    let names = hub::safetensors_header(&hub::weight_files(folder)?[0])?;
    let prefixed = names.keys().any(|k| k.starts_with("vit."));
    let mut renames: Vec<(&str, &str)> = Vec::new();
    if !prefixed {
        renames.push((r"^", "vit."));
    }
    renames.extend(NEW_TO_LEGACY.iter().copied());
    if !same_head {
        renames.push((r"^classifier\.", "unused_classifier."));
    }
    let model = hub::load_weights(
        ViTForImageClassification::new(&cfg, device),
        folder,
        &renames,
        &["classifier"],
    )?;
    Ok((model, cfg))
}

/// The class-token features (after the encoder's final norm) of preprocessed images.
fn features(model: &ViTForImageClassification, pixels: Tensor<4>) -> Tensor<2> {
    let x = model.vit.forward(pixels).last_hidden_state;
    let [b, _, d] = x.dims();
    x.slice(s![.., 0..1, ..]).reshape([b, d])
}

/// The class index of each sample's label (its caption) in `labels`.
fn class_of(labels: &[String], label: &str) -> Result<usize> {
    labels
        .iter()
        .position(|l| l == label)
        .ok_or_else(|| Error::InvalidInput(format!("label {label:?} is not among the classes")))
}

/// A linear probe (MAE's protocol: fixed-statistics batch norm and a linear layer on the frozen
/// encoder's class token), folded into the classifier's head so the result is a plain
/// `ViTForImageClassification`. Returns the model and the probe's training accuracy.
pub fn linear_probe(
    mut model: ViTForImageClassification,
    processor: &ImageProcessor,
    samples: &[Sample],
    labels: &[String],
    epochs: usize,
    seed: u64,
) -> Result<(ViTForImageClassification, f64)> {
    let device = model.classifier.weight.val().device();
    let mut feats = Vec::with_capacity(samples.len());
    let mut ys = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(64) {
        let items = chunk
            .iter()
            .map(|s| Ok(processor.preprocess(&crate::data::open_rgb(&s.image)?)))
            .collect::<Result<Vec<_>>>()?;
        let f = crate::pipeline::to_vec(features(&model, batch_tensor(items, &device)?))?;
        let d = f.len() / chunk.len();
        feats.extend(f.chunks(d).map(<[f32]>::to_vec));
        for s in chunk {
            ys.push(class_of(labels, &s.caption)?);
        }
    }
    let probe = super::probe::LinearProbe::train(&feats, &ys, epochs, 0.05, 1e-4, seed)?;
    let train_acc = probe.accuracy(&feats, &ys);
    let (w, b) = probe.folded(labels.len());
    let d = feats.first().map_or(0, Vec::len);
    model.classifier.weight = burn::module::Param::from_tensor(Tensor::from_data(
        TensorData::new(w, [d, labels.len()]),
        &device,
    ));
    model.classifier.bias = Some(burn::module::Param::from_tensor(Tensor::from_data(
        TensorData::new(b, [labels.len()]),
        &device,
    )));
    Ok((model, train_acc))
}

/// Per-step information.
pub struct ClassifierStep {
    /// Step index, from 0.
    pub step: usize,
    /// Cross-entropy of the step.
    pub loss: f32,
    /// Learning rate used.
    pub lr: f64,
    /// Images per second.
    pub samples_per_s: f64,
}

/// A network [`train`] can train: its logits and how it saves itself (in the HF layout).
pub trait Classifier: burn::module::Module + Sized {
    /// `[b, c, h, w]` pixels to `[b, classes]` logits.
    fn logits(&self, pixels: Tensor<4>) -> Tensor<2>;
    /// Writes the model (config.json and weights) to `folder`.
    fn save_to(&self, folder: &Path) -> Result<()>;
}

/// A ViT classifier with its config.
#[derive(burn::module::Module, Debug)]
pub struct VitClassifier {
    /// The network.
    pub model: ViTForImageClassification,
    /// Its config (for saving).
    #[module(skip)]
    pub config: ViTConfig,
}

/// An EfficientNet classifier with its config.
#[derive(burn::module::Module, Debug)]
pub struct EfficientNetClassifier {
    /// The network.
    pub model: EfficientNetForImageClassification,
    /// Its config (for saving).
    #[module(skip)]
    pub config: EfficientNetConfig,
}

/// Fine-tunes (or trains from scratch) `model` on labelled samples (the caption is the label),
/// with label smoothing, checkpoints and exact resume as the other training loops.
#[allow(clippy::too_many_arguments)]
pub fn train<'a, M: Classifier>(
    model: M,
    processor: &ImageProcessor,
    data: impl Into<TrainData<'a>>,
    labels: &[String],
    cfg: &ClassifierTrainConfig,
    mut on_step: impl FnMut(&ClassifierStep, &M) -> bool,
) -> Result<(M, Vec<(usize, f32)>)> {
    let mut data = data.into();
    if cfg.batch_size == 0 {
        return Err(Error::InvalidInput("--batch-size must be positive".into()));
    }
    let mut model = super::stable_param_ids(model);
    let settings = json!({"steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr,
        "warmup": cfg.warmup, "weight_decay": cfg.weight_decay, "max_grad_norm": cfg.max_grad_norm,
        "label_smoothing": cfg.label_smoothing, "mixup": cfg.mixup,
        "crop_scale": cfg.augment.min_scale, "hflip": cfg.augment.hflip});
    let (mut state, mut optim) = checkpoint::start(
        cfg.resume_from.as_deref(),
        super::adamw(&model, cfg.weight_decay),
        cfg.seed,
        settings,
    )?;
    let device = first_param_device(&model)
        .ok_or_else(|| Error::InvalidInput("the model has no parameters".into()))?;
    let loss_fn = CrossEntropyLossConfig::new()
        .with_smoothing((cfg.label_smoothing > 0.0).then_some(cfg.label_smoothing as f32))
        .init(&device);
    data.skip(state.step * cfg.batch_size)?;
    let save = |model: &M, optim: &burn::optim::ModuleOptimizer, state: &RunState| match &cfg
        .checkpoint_dir
    {
        Some(dir) => checkpoint::save(
            dir,
            |tmp| {
                model.save_to(tmp)?;
                let bytes =
                    serde_json::to_vec(&processor_json(processor)).expect("processor serialises");
                hub::write_atomic(&tmp.join("preprocessor_config.json"), &bytes)
            },
            optim,
            state,
        ),
        None => Ok(()),
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
            processor,
        )?;
        state.skipped += loaded.iter().filter(|l| l.is_none()).count();
        let mut items = Vec::new();
        let mut ys = Vec::new();
        for (px, label) in loaded.into_iter().flatten() {
            ys.push(class_of(labels, &label)? as i64);
            items.push(px);
        }
        if items.is_empty() {
            state.step += 1;
            continue;
        }
        let n = items.len();
        let pixels = batch_tensor(items, &device)?;
        let reversed: Vec<i64> = ys.iter().rev().copied().collect();
        let y = Tensor::<1, Int>::from_data(TensorData::new(ys, [n]), &device);
        let loss = if cfg.mixup > 0.0 && n > 1 {
            let mut rng =
                crate::data::shapes::SplitMix64::new(super::data::step_seed(cfg.seed, step, 999));
            let lam = crate::data::augment::beta_symmetric(cfg.mixup, &mut rng);
            let mixed = pixels.clone() * lam + pixels.flip([0]) * (1.0 - lam);
            let logits = model.logits(mixed);
            let y2 = Tensor::<1, Int>::from_data(TensorData::new(reversed, [n]), &device);
            loss_fn.forward(logits.clone(), y) * lam + loss_fn.forward(logits, y2) * (1.0 - lam)
        } else {
            loss_fn.forward(model.logits(pixels), y)
        };
        let loss_value: f32 = loss.clone().into_scalar();
        if !loss_value.is_finite() {
            return Err(Error::InvalidInput(format!(
                "the loss became {loss_value} at step {step}; lower --lr"
            )));
        }
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        super::clip_global_norm(&model, &mut grads, cfg.max_grad_norm);
        let lr = super::warmup_cosine(step, cfg.lr, cfg.warmup, cfg.steps);
        model = optim.step(lr, model, grads);
        state.losses.push((step, loss_value));
        state.step += 1;
        let go_on = on_step(
            &ClassifierStep {
                step,
                loss: loss_value,
                lr,
                samples_per_s: n as f64 / t0.elapsed().as_secs_f64(),
            },
            &model,
        );
        if checkpoint::due(state.step, cfg.steps, cfg.checkpoint_every, !go_on) {
            save(&model, &optim, &state)?;
        }
        if !go_on {
            break;
        }
    }
    Ok((model, state.losses))
}

/// The device of a module's first float parameter.
fn first_param_device<M: burn::module::Module>(m: &M) -> Option<Device> {
    struct First(Option<Device>);
    impl burn::module::ModuleVisitor for First {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            if self.0.is_none() {
                self.0 = Some(p.val().device());
            }
        }
    }
    let mut v = First(None);
    m.visit(&mut v);
    v.0
}

impl Classifier for VitClassifier {
    fn logits(&self, pixels: Tensor<4>) -> Tensor<2> {
        self.model.forward(pixels)
    }

    fn save_to(&self, folder: &Path) -> Result<()> {
        self.model.save(&self.config, folder)
    }
}

impl Classifier for EfficientNetClassifier {
    fn logits(&self, pixels: Tensor<4>) -> Tensor<2> {
        self.model.forward(pixels)
    }

    fn save_to(&self, folder: &Path) -> Result<()> {
        self.model.save(&self.config, folder)
    }
}
/// preprocessor_config.json for a processor (as transformers' ViTImageProcessor reads it).
pub fn processor_json(p: &ImageProcessor) -> serde_json::Value {
    let (mean, std) = p.normalize.unwrap_or(([0.0; 3], [1.0; 3]));
    let size = match p.resize {
        Some(crate::data::Size::Exact { height, width }) => {
            json!({"height": height, "width": width})
        }
        Some(crate::data::Size::ShortestEdge(s)) => json!({"shortest_edge": s}),
        None => json!(null),
    };
    json!({"image_processor_type": "ViTImageProcessor", "do_resize": p.resize.is_some(),
           "size": size, "resample": p.resample.pil_code(), "do_rescale": p.rescale.is_some(),
           "rescale_factor": p.rescale.unwrap_or(1.0), "do_normalize": p.normalize.is_some(),
           "image_mean": mean, "image_std": std})
}
