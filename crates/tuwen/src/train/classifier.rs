//! Supervised image classification with a ViT: from scratch, fine-tuned from a checkpoint
//! (a classifier, a bare ViT or an MAE encoder), or as a linear probe of a frozen encoder.

use std::path::{Path, PathBuf};

use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::GradientsParams;
use burn::prelude::*;
use serde_json::json;

use super::data::TrainData;
use super::engine::{
    self, Batch, Optim, RunConfig, StepContext, StepOutput, StepReport, TrainStep,
};
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
    /// Where each step's metrics line goes (`metrics.jsonl`).
    pub metrics: Option<PathBuf>,
    /// Set to stop after the current step (with a checkpoint).
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Data-parallel devices (`--devices cpu,cpu`; the model on the first), or none: each
    /// device runs its share of every batch and the gradients are summed. Not for networks
    /// with batch norm ([`Classifier::DATA_PARALLEL`]).
    pub devices: Vec<Device>,
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
            metrics: None,
            stop: None,
            devices: Vec::new(),
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
    cfg.id2label = id2label(labels);
    // Keep only ViT keys of the encoder (an MAE checkpoint's decoder is dropped, a bare ViT
    // has no `vit.` prefix); the head stays as initialised unless the classes are the same.
    let files = hub::weight_files(folder)?;
    let first = files
        .first()
        .ok_or_else(|| Error::InvalidInput(format!("{}: no weights", folder.display())))?;
    let names = hub::safetensors_header(first)?;
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

/// `id2label` for class names in id order.
pub fn id2label(labels: &[String]) -> std::collections::BTreeMap<String, String> {
    labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), l.clone()))
        .collect()
}

/// An EfficientNet classifier for `labels` from checkpoint `folder`: its head stays when the
/// classes are the checkpoint's; otherwise a new head for these classes replaces it.
pub fn efficientnet_from_checkpoint(
    folder: &Path,
    labels: &[String],
    device: &Device,
) -> Result<EfficientNetClassifier> {
    let (mut model, mut config) = EfficientNetForImageClassification::load(folder, device)?;
    if config.labels().ok().as_deref() != Some(labels) {
        config.id2label = id2label(labels);
        model.classifier = crate::nn::encoder::linear(
            config.hidden_dim,
            labels.len(),
            true,
            config.initializer_range,
            device,
        );
    }
    Ok(EfficientNetClassifier { model, config })
}

/// A classifier of either kind, ready to train.
pub enum ClassifierNet {
    /// A ViT.
    Vit(Box<VitClassifier>),
    /// An EfficientNet.
    EfficientNet(Box<EfficientNetClassifier>),
}

/// Where a classifier run's network comes from.
#[derive(Clone, Copy, Debug)]
pub enum ClassifierStart<'a> {
    /// This run's checkpoint folder (a resumed run).
    Resume(&'a Path),
    /// Fine-tune a checkpoint folder: an EfficientNet or ViT classifier, a bare ViT or an MAE
    /// run (a new head when its classes are not the data's). `arch`, when given, must name the
    /// checkpoint's sizes.
    Init {
        /// The checkpoint folder.
        folder: &'a Path,
        /// An architecture name to check the checkpoint against.
        arch: Option<&'a str>,
    },
    /// A new network of a named architecture (`efficientnet-bN`, `vit-...`).
    Arch {
        /// The architecture.
        name: &'a str,
        /// Image side (default: the architecture's).
        image_size: Option<usize>,
        /// Seed of the initial weights.
        seed: u64,
    },
}

/// The network a classifier run trains, for `labels`, and the preprocessing it trains with:
/// the checkpoint's own, or (a new network) resizing to its side with ImageNet's mean and
/// standard deviation.
pub fn build(
    start: ClassifierStart,
    labels: &[String],
    device: &Device,
) -> Result<(ClassifierNet, ImageProcessor)> {
    let processor_of = crate::pipeline::image_processor;
    let (folder, arch, resume) = match start {
        ClassifierStart::Resume(folder) => (folder, None, true),
        ClassifierStart::Init { folder, arch } => (folder, arch, false),
        ClassifierStart::Arch {
            name,
            image_size,
            seed,
        } => return build_arch(name, image_size, seed, labels, device),
    };
    if ModelConfig::read(folder)?.model_type == "efficientnet" {
        if let Some(name) = arch {
            check_arch(name, None)?;
        }
        let net = efficientnet_from_checkpoint(folder, labels, device)?;
        let p = processor_of(folder, "EfficientNetImageProcessor")?;
        return Ok((ClassifierNet::EfficientNet(Box::new(net)), p));
    }
    let (model, config) = if resume {
        ViTForImageClassification::load(folder, device)?
    } else {
        from_checkpoint(folder, labels, device)?
    };
    if let Some(name) = arch {
        check_arch(name, Some(&config))?;
    }
    let p = processor_of(folder, "ViTImageProcessor")?;
    Ok((
        ClassifierNet::Vit(Box::new(VitClassifier { model, config })),
        p,
    ))
}

/// A new classifier of architecture `name` for `labels`, seeded.
fn build_arch(
    name: &str,
    image_size: Option<usize>,
    seed: u64,
    labels: &[String],
    device: &Device,
) -> Result<(ClassifierNet, ImageProcessor)> {
    use crate::models::{efficientnet, vit};
    let bad = |m: String| Error::InvalidInput(format!("--arch {name}: {m}"));
    let processor = |size: usize| {
        ImageProcessor::from_json(&super::mae::preprocessor_json(size).to_string())
            .map_err(Error::InvalidInput)
    };
    if let Some(mut config) = efficientnet::arch(name, labels.len()) {
        config.image_size = image_size.unwrap_or(config.image_size);
        config.id2label = id2label(labels);
        config.validate().map_err(bad)?;
        let model = super::engine::init_seeded(device, seed, |d| {
            EfficientNetForImageClassification::new(&config, d)
        });
        let p = processor(config.image_size)?;
        let net = EfficientNetClassifier { model, config };
        return Ok((ClassifierNet::EfficientNet(Box::new(net)), p));
    }
    let mut config = vit::arch(name, labels.len()).ok_or_else(|| {
        Error::InvalidInput(format!(
            "unknown --arch {name:?} (known: {}, {})",
            vit::ARCHS.join(", "),
            efficientnet::ARCHS.join(", ")
        ))
    })?;
    config.image_size = image_size.unwrap_or(config.image_size);
    config.id2label = id2label(labels);
    config.validate().map_err(bad)?;
    let model =
        super::engine::init_seeded(device, seed, |d| ViTForImageClassification::new(&config, d));
    let p = processor(config.image_size)?;
    Ok((
        ClassifierNet::Vit(Box::new(VitClassifier { model, config })),
        p,
    ))
}

/// `--arch` given with `--init` must name the checkpoint's own sizes (an EfficientNet
/// checkpoint takes no ViT architecture check).
fn check_arch(name: &str, init: Option<&ViTConfig>) -> Result<()> {
    use crate::models::vit;
    let Some(c) = init else {
        return Ok(());
    };
    let a = vit::arch(name, 1).ok_or_else(|| {
        Error::InvalidInput(format!(
            "unknown --arch {name:?} (known: {})",
            vit::ARCHS.join(", ")
        ))
    })?;
    let sizes = |c: &ViTConfig| {
        (
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.patch_size,
        )
    };
    if sizes(&a) != sizes(c) {
        return Err(Error::InvalidInput(format!(
            "--arch {name} (width, layers, heads, patch {:?}) does not match --init (width, layers, heads, patch {:?})",
            sizes(&a),
            sizes(c)
        )));
    }
    Ok(())
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
pub type ClassifierStep = StepReport;

/// A network [`train`] can train: its logits and how it saves itself (in the HF layout).
pub trait Classifier: burn::module::Module + Sized {
    /// `[b, c, h, w]` pixels to `[b, classes]` logits.
    fn logits(&self, pixels: Tensor<4>) -> Tensor<2>;
    /// Writes the model (config.json and weights) to `folder`.
    fn save_to(&self, folder: &Path) -> Result<()>;
    /// The device its parameters live on.
    fn device(&self) -> Device;
    /// `f32` activations per image a training step keeps for the backward pass (a lower
    /// bound, see [`crate::memory`]).
    fn training_floats(&self) -> u128;
    /// Whether a batch split across devices gives the whole batch's gradients. Not with batch
    /// norm: each device would normalise by its own shard's statistics.
    const DATA_PARALLEL: bool;
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

/// Supervised classification's step: cross-entropy with label smoothing, optionally on mixed
/// images (mixup).
struct ClassifierFamily<'a, M> {
    processor: &'a ImageProcessor,
    labels: &'a [String],
    cfg: &'a ClassifierTrainConfig,
    loss: CrossEntropyLoss,
    model: std::marker::PhantomData<fn() -> M>,
}

impl<M: Classifier> TrainStep for ClassifierFamily<'_, M> {
    type Models = M;

    fn settings(&self) -> serde_json::Value {
        let cfg = self.cfg;
        json!({"steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr,
            "warmup": cfg.warmup, "weight_decay": cfg.weight_decay, "max_grad_norm": cfg.max_grad_norm,
            "label_smoothing": cfg.label_smoothing, "mixup": cfg.mixup,
            "crop_scale": cfg.augment.min_scale, "hflip": cfg.augment.hflip,
            "labels": self.labels})
    }

    fn optimizers(&self, model: &M) -> Vec<Optim> {
        let cfg = self.cfg;
        vec![Optim::new(
            "model",
            super::adamw(model, cfg.weight_decay),
            cfg.lr,
        )]
    }

    fn device(&self, model: &M) -> Device {
        model.device()
    }

    fn step_bytes(&self, model: &M, batch: usize) -> u128 {
        super::engine::params_bytes(model.num_params())
            + crate::memory::f32_bytes(model.training_floats().saturating_mul(batch as u128))
    }

    fn processor(&self) -> &ImageProcessor {
        self.processor
    }

    fn data_parallel(&self) -> bool {
        M::DATA_PARALLEL
    }

    fn step(&mut self, model: M, batch: Batch, ctx: &mut StepContext) -> Result<(M, StepOutput)> {
        let f = &*self;
        let n = batch.len();
        let ys = batch
            .texts
            .iter()
            .map(|label| Ok(class_of(f.labels, label)? as i64))
            .collect::<Result<Vec<i64>>>()?;
        let pixels = batch_tensor(batch.images, ctx.device)?;
        let reversed: Vec<i64> = ys.iter().rev().copied().collect();
        // Mixup blends the whole batch with itself reversed, before any split across devices.
        let (pixels, lam) = if f.cfg.mixup > 0.0 && n > 1 {
            let mut rng = crate::data::shapes::SplitMix64::new(ctx.seed(999));
            let lam = crate::data::augment::beta_symmetric(f.cfg.mixup, &mut rng);
            (pixels.clone() * lam + pixels.flip([0]) * (1.0 - lam), lam)
        } else {
            (pixels, 1.0)
        };
        // The loss of samples a .. b of the batch, on `model`'s device, as their share of the
        // batch's mean (so that the shares' gradients sum to the batch's).
        let shard_loss = |model: &M, (a, b): (usize, usize), device: &Device| {
            let px = pixels.clone().slice(a..b).to_device(device);
            let label = |v: &[i64]| {
                Tensor::<1, Int>::from_data(TensorData::new(v[a..b].to_vec(), [b - a]), device)
            };
            let logits = model.logits(px);
            let loss = if lam < 1.0 {
                f.loss.forward(logits.clone(), label(&ys)) * lam
                    + f.loss.forward(logits, label(&reversed)) * (1.0 - lam)
            } else {
                f.loss.forward(logits, label(&ys))
            };
            loss * ((b - a) as f64 / n as f64)
        };
        let (value, grads) = if ctx.devices.len() > 1 {
            use super::parallel::{run_replicas, shards, sum_grads};
            let parts = shards(n, ctx.devices.len());
            let inputs: Vec<_> = parts
                .into_iter()
                .zip(ctx.devices)
                .map(|(part, device)| (model.clone().fork(device), part, device.clone()))
                .collect();
            let out = run_replicas(ctx.devices, inputs, |(replica, part, device), _| {
                let loss = shard_loss(&replica, part, &device);
                let value: f32 = loss.clone().into_scalar();
                Ok((
                    value,
                    GradientsParams::from_grads(loss.backward(), &replica),
                ))
            })?;
            let value = out.iter().map(|(v, _)| v).sum();
            (
                value,
                sum_grads(&model, out.into_iter().map(|o| o.1).collect()),
            )
        } else {
            let loss = shard_loss(&model, (0, n), ctx.device);
            let value: f32 = loss.clone().into_scalar();
            (value, GradientsParams::from_grads(loss.backward(), &model))
        };
        let model = ctx.update("model", model, grads)?;
        Ok((model, StepOutput::loss(value)))
    }

    fn save(&self, model: &M, dir: &Path) -> Result<()> {
        model.save_to(dir)?;
        self.processor.save(dir)
    }
}

/// Fine-tunes (or trains from scratch) `model` on labelled samples (the caption is the label),
/// with label smoothing, checkpoints and exact resume as the other training loops. The
/// checkpoints carry `processor`, the preprocessing the model is trained with.
pub fn train<'a, M: Classifier>(
    model: M,
    processor: &ImageProcessor,
    data: impl Into<TrainData<'a>>,
    labels: &[String],
    cfg: &ClassifierTrainConfig,
    mut on_step: impl FnMut(&ClassifierStep, &M) -> bool,
) -> Result<(M, Vec<(usize, f32)>)> {
    let loss = CrossEntropyLossConfig::new()
        .with_smoothing((cfg.label_smoothing > 0.0).then_some(cfg.label_smoothing as f32))
        .init(&model.device());
    let mut family = ClassifierFamily {
        processor,
        labels,
        cfg,
        loss,
        model: std::marker::PhantomData,
    };
    if cfg.devices.len() > 1 && !M::DATA_PARALLEL {
        return Err(Error::InvalidInput(
            "--devices: this network has batch norm, whose statistics tuwen does not share \
             across devices (each would normalise by its own shard); train it on one device"
                .into(),
        ));
    }
    let model = super::stable_param_ids(model);
    let (model, report) = engine::run(&mut family, model, data, &cfg.run(), &mut on_step)?;
    Ok((model, report.losses))
}

impl ClassifierTrainConfig {
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
            devices: self.devices.clone(),
            ..RunConfig::default()
        }
    }
}

impl Classifier for VitClassifier {
    const DATA_PARALLEL: bool = true;

    fn logits(&self, pixels: Tensor<4>) -> Tensor<2> {
        self.model.forward(pixels)
    }

    fn device(&self) -> Device {
        self.model.classifier.weight.val().device()
    }

    fn save_to(&self, folder: &Path) -> Result<()> {
        // `valid()` folds the last batch-norm update into the running statistics; a module
        // saved as it is would write them one training step stale.
        self.model.valid().save(&self.config, folder)
    }

    fn training_floats(&self) -> u128 {
        let c = &self.config;
        crate::memory::Encoder {
            layers: c.num_hidden_layers,
            tokens: c.grid() * c.grid() + 1,
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            heads: c.num_attention_heads,
        }
        .training_floats()
    }
}

impl Classifier for EfficientNetClassifier {
    const DATA_PARALLEL: bool = false;

    fn logits(&self, pixels: Tensor<4>) -> Tensor<2> {
        self.model.forward(pixels)
    }

    fn device(&self) -> Device {
        self.model.classifier.weight.val().device()
    }

    fn save_to(&self, folder: &Path) -> Result<()> {
        // `valid()` folds the last batch-norm update into the running statistics; a module
        // saved as it is would write them one training step stale.
        self.model.valid().save(&self.config, folder)
    }

    fn training_floats(&self) -> u128 {
        self.config.training_floats()
    }
}
