//! Training CLIP and SigLIP models on captioned images.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::optim::GradientsParams;
use burn::prelude::*;
use serde_json::json;

pub use super::data::{TrainData, batch_indices};
use super::engine::{
    self, Batch, Optim, RunConfig, RunReport, StepContext, StepOutput, StepReport, TrainStep,
};
use crate::data::augment::Augment;
use crate::data::captions::Sample;
use crate::data::processor::{ImageProcessor, batch_tensor};
use crate::hub;
use crate::models::clip::{ClipConfig, ClipModel};
use crate::models::siglip::{SiglipConfig, SiglipModel};
use crate::pipeline::ImageText;
use crate::pipeline::image_text::{Family, Towers};
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
    /// Blocks of the chunked sigmoid loss, as that many devices compute it (1: dense loss).
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
    /// Pairs whose captions are identical are positives of each other (multi-positive softmax
    /// targets, +1 sigmoid labels); false: every pair but its own is a negative.
    pub same_caption_positives: bool,
    /// Zero-shot validation every `val_every` steps.
    pub val: Option<Validation>,
    /// Validate every this many steps (0: never during the run).
    pub val_every: usize,
    /// Where each step's metrics line goes (`metrics.jsonl`).
    pub metrics: Option<PathBuf>,
    /// Set to stop after the current step (with a checkpoint).
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Data-parallel devices, the first the model's own (empty or one: the model's device
    /// alone): each embeds its share of the batch and the loss spans all of them
    /// ([`data_parallel_grads`]).
    pub devices: Vec<Device>,
}

/// Zero-shot validation during training: labelled samples and the prompt templates.
#[derive(Clone, Debug)]
pub struct Validation {
    /// Labelled images.
    pub samples: Vec<Sample>,
    /// The column of a sample's `extra` that holds its label.
    pub label_column: String,
    /// Prompt templates, `{}` for the label.
    pub templates: Vec<String>,
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
            same_caption_positives: true,
            val: None,
            val_every: 0,
            metrics: None,
            stop: None,
            devices: Vec::new(),
        }
    }
}

impl TrainConfig {
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
            val_every: self.val_every,
            metrics: self.metrics.clone(),
            stop: self.stop.clone(),
            constant_lr: false,
            devices: self.devices.clone(),
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
    let _guard = engine::device_rng();
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
        cfg.validate()
            .map_err(|m| Error::InvalidInput(format!("--arch {arch}: {m}")))?;
        let model = ClipModel::new(&cfg, &device);
        hub::save_pretrained_with_scalars(&model, &config, folder, &["logit_scale"])
    } else {
        text["projection_size"] = json!(vd);
        let config = json!({"model_type": "siglip", "architectures": ["SiglipModel"],
            "text_config": text, "vision_config": vision});
        let cfg: SiglipConfig = serde_json::from_value(config.clone()).expect("valid config");
        cfg.validate()
            .map_err(|m| Error::InvalidInput(format!("--arch {arch}: {m}")))?;
        hub::save_pretrained(&SiglipModel::new(&cfg, &device), &config, folder)
    }
}

/// The contrastive losses a run can train with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossKind {
    /// CLIP's symmetric softmax cross-entropy.
    Softmax,
    /// SigLIP's pairwise sigmoid loss.
    Sigmoid,
    /// The sigmoid loss computed in chunks, as across devices.
    SigmoidChunked,
}

impl LossKind {
    /// The family's own loss.
    pub fn default_for(family: Family) -> Self {
        match family {
            Family::Clip => LossKind::Softmax,
            Family::Siglip => LossKind::Sigmoid,
        }
    }

    /// The number of loss chunks ([`TrainConfig::loss_chunks`]) of this loss for `family`
    /// in `blocks` blocks (as that many devices compute it) and batches of `batch_size`; an
    /// error when the loss does not fit the family or the batch does not split into the blocks.
    pub fn chunks(self, family: Family, blocks: usize, batch_size: usize) -> Result<usize> {
        let chunks = match (family, self) {
            (Family::Clip, LossKind::Softmax) | (Family::Siglip, LossKind::Sigmoid) => 1,
            (Family::Siglip, LossKind::SigmoidChunked) if blocks == 0 => {
                return Err(Error::InvalidInput("--loss-chunks must be at least 1".into()));
            }
            (Family::Siglip, LossKind::SigmoidChunked) => blocks,
            _ => return Err(Error::InvalidInput(
                "--loss does not fit the model: CLIP trains with softmax, SigLIP with sigmoid or sigmoid-chunked".into(),
            )),
        };
        check_chunks(batch_size, chunks)?;
        Ok(chunks)
    }
}

/// Each block of the chunked loss holds an equal share of the batch.
fn check_chunks(batch_size: usize, chunks: usize) -> Result<()> {
    if chunks > 1 && !batch_size.is_multiple_of(chunks) {
        return Err(Error::InvalidInput(format!(
            "--batch-size {batch_size} is not a multiple of --loss-chunks {chunks}"
        )));
    }
    Ok(())
}

/// The default peak learning rate of a family trained from scratch on small data: 2e-3 for
/// CLIP, 1e-3 for SigLIP.
pub fn default_lr(family: Family) -> f64 {
    match family {
        Family::Clip => 2e-3,
        Family::Siglip => 1e-3,
    }
}

/// The captions a new tokenizer learns its words from: those of `samples`, or the first
/// 10,000 of the WebDataset shards `shards` when streaming.
pub fn tokenizer_captions(
    samples: &[Sample],
    shards: Option<&Path>,
    seed: u64,
) -> Result<Vec<String>> {
    match shards {
        Some(pattern) => {
            let mut first = crate::data::webdataset::ShardStream::open(pattern, 1, seed)?;
            (0..10_000)
                .map(|_| first.next_sample().map(|s| s.caption))
                .collect()
        }
        None => Ok(samples.iter().map(|s| s.caption.clone()).collect()),
    }
}

/// Where a contrastive run's model comes from.
#[derive(Clone, Copy, Debug)]
pub enum ContrastiveStart<'a> {
    /// This run's checkpoint folder (a resumed run).
    Resume(&'a Path),
    /// Fine-tune a checkpoint folder: it is converted in a scratch folder first.
    Init(&'a Path),
    /// A new model of a named architecture ([`ARCHS`]) whose tokenizer learns the captions.
    Arch {
        /// The architecture.
        name: &'a str,
        /// Image side.
        image_size: usize,
        /// The captions the tokenizer learns its words from ([`tokenizer_captions`]).
        captions: &'a [String],
        /// Seed of the initial weights.
        seed: u64,
    },
}

/// The model a contrastive run of `family` trains, on `device` (an autodiff device): loaded
/// from the checkpoint it resumes, or from `out` after converting the `--init` checkpoint or
/// writing a new model there. An error when the model is not of `family`.
pub fn prepare(
    out: &Path,
    start: ContrastiveStart,
    family: Family,
    device: &Device,
) -> Result<ImageText> {
    // A new model is made in a scratch folder beside `out` and loaded from there: nothing is
    // written to `out` before the run has trained a step.
    let staging;
    let folder = match start {
        ContrastiveStart::Resume(dir) => dir,
        ContrastiveStart::Init(folder) => {
            let name = folder.to_str().ok_or_else(|| {
                Error::InvalidInput(format!("{}: not a UTF-8 path", folder.display()))
            })?;
            staging = hub::scratch_dir(out)?;
            crate::pipeline::convert(name, staging.path(), &Device::flex())?;
            staging.path()
        }
        ContrastiveStart::Arch {
            name,
            image_size,
            captions,
            seed,
        } => {
            staging = hub::scratch_dir(out)?;
            init_folder(staging.path(), family, name, image_size, captions, seed)?;
            staging.path()
        }
    };
    let model = ImageText::load_folder(folder, device)?;
    if model.family() != family {
        return Err(Error::InvalidInput(format!(
            "{} is not a {} model",
            folder.display(),
            match family {
                Family::Clip => "CLIP",
                Family::Siglip => "SigLIP",
            }
        )));
    }
    Ok(model)
}

/// What a training run measured.
pub type TrainReport = RunReport;

/// Per-step callback information.
pub type StepInfo = StepReport;

/// The family's loss of unit-length embeddings of matching pairs; `live_scale` false detaches
/// the temperature (and bias) so that they get no gradient from this loss.
fn embeds_loss(
    towers: &Towers,
    img: Tensor<2>,
    txt: Tensor<2>,
    chunks: usize,
    live_scale: bool,
    groups: &[usize],
) -> Result<Tensor<1>> {
    use crate::loss::{clip_loss_grouped, siglip_loss_chunked_grouped, siglip_loss_grouped};
    let live = |p: Tensor<1>| if live_scale { p } else { p.detach() };
    match towers {
        Towers::Clip(m) => clip_loss_grouped(img, txt, live(m.logit_scale.val()), groups),
        Towers::Siglip(m) => {
            let (scale, bias) = (live(m.logit_scale.val()), live(m.logit_bias.val()));
            if chunks > 1 {
                siglip_loss_chunked_grouped(img, txt, scale, bias, chunks, groups)
            } else {
                siglip_loss_grouped(img, txt, scale, bias, groups)
            }
        }
    }
}

/// The loss groups of a batch's captions: identical captions share a group when
/// `same_caption_positives`, otherwise every pair is its own.
pub fn caption_groups(captions: &[String], same_caption_positives: bool) -> Vec<usize> {
    if same_caption_positives {
        crate::loss::text_groups(captions)
    } else {
        (0..captions.len()).collect()
    }
}

/// The family's training loss on a batch of matching pairs, every other pair a negative:
/// CLIP's symmetric softmax cross-entropy or SigLIP's pairwise sigmoid loss (`chunks` > 1: its
/// chunked form).
pub fn contrastive_loss(
    model: &ImageText,
    pixels: Tensor<4>,
    ids: Tensor<2, Int>,
    chunks: usize,
) -> Result<Tensor<1>> {
    let groups: Vec<usize> = (0..pixels.dims()[0]).collect();
    let img = model.image_embeds(pixels);
    let txt = model.text_embeds(ids);
    embeds_loss(&model.towers, img, txt, chunks, true, &groups)
}

/// How [`accumulated_grads`] computes a batch's loss.
#[derive(Clone, Copy, Debug)]
pub struct LossSpec<'a> {
    /// GradCache micro-batches.
    pub micro: usize,
    /// Chunks of the chunked sigmoid loss (1: dense).
    pub chunks: usize,
    /// LiT: the image tower's embeddings are detached (it stays as it is).
    pub lock_image: bool,
    /// The text tower's embeddings are detached.
    pub lock_text: bool,
    /// Each pair's group: pairs of one group are positives of each other.
    pub groups: &'a [usize],
}

/// The loss of a batch and its gradients computed in `micro` micro-batches, the GradCache way
/// open_clip's `--accum-freq` works: the embeddings of the whole batch are computed first
/// without a graph; then each micro-batch is embedded again with one, and the loss over the
/// whole batch (all negatives) is back-propagated through that micro-batch only. The
/// temperature and bias take their gradient from the first pass alone, so the summed
/// gradients equal the full batch's. `reseed(j)` is called before each embedding of
/// micro-batch `j`, so that random draws (patch dropout) are the same both times.
pub fn accumulated_grads(
    model: &ImageText,
    pixels: Tensor<4>,
    ids: Tensor<2, Int>,
    spec: &LossSpec,
    reseed: impl Fn(usize),
) -> Result<(f32, GradientsParams)> {
    let LossSpec {
        chunks,
        lock_image,
        lock_text,
        groups,
        ..
    } = *spec;
    let n = pixels.dims()[0];
    let micro = spec.micro.clamp(1, n.max(1));
    let bounds: Vec<(usize, usize)> = (0..micro)
        .map(|j| (j * n / micro, (j + 1) * n / micro))
        .filter(|(a, b)| b > a)
        .collect();
    if bounds.len() == 1 {
        // One micro-batch: no cache to build, a single forward and backward.
        reseed(0);
        let (mut img, mut txt) = (model.image_embeds(pixels), model.text_embeds(ids));
        if lock_image {
            img = img.detach();
        }
        if lock_text {
            txt = txt.detach();
        }
        let loss = embeds_loss(&model.towers, img, txt, chunks, true, groups)?;
        let loss_value = loss.clone().into_scalar();
        return Ok((
            loss_value,
            GradientsParams::from_grads(loss.backward(), &model.towers),
        ));
    }
    let part4 = |t: &Tensor<4>, (a, b): (usize, usize)| t.clone().slice(a..b);
    let part2 = |t: &Tensor<2, Int>, (a, b): (usize, usize)| t.clone().slice(a..b);
    let mut cached_img = Vec::new();
    let mut cached_txt = Vec::new();
    for (j, &r) in bounds.iter().enumerate() {
        reseed(j);
        cached_img.push(model.image_embeds(part4(&pixels, r)).detach());
        cached_txt.push(model.text_embeds(part2(&ids, r)).detach());
    }
    let mut total: Option<GradientsParams> = None;
    let mut loss_value = f32::NAN;
    for (j, &r) in bounds.iter().enumerate() {
        reseed(j);
        let mut img = cached_img.clone();
        let mut txt = cached_txt.clone();
        if !lock_image {
            img[j] = model.image_embeds(part4(&pixels, r));
        }
        if !lock_text {
            txt[j] = model.text_embeds(part2(&ids, r));
        }
        let loss = embeds_loss(
            &model.towers,
            Tensor::cat(img, 0),
            Tensor::cat(txt, 0),
            chunks,
            j == 0,
            groups,
        )?;
        if j == 0 {
            loss_value = loss.clone().into_scalar();
        }
        let g = GradientsParams::from_grads(loss.backward(), &model.towers);
        total = Some(super::optim::add_grads(&model.towers, total, g));
    }
    Ok((loss_value, total.unwrap_or_default()))
}

/// The loss of a batch and its gradients computed on several devices, as open_clip trains
/// with `--gather-with-grad` off: each device embeds its shard of the pairs (shards of
/// [`super::parallel::shards`]), the embeddings are gathered from every device
/// ([`super::parallel::Peer::all_gather`]), and each device computes the family's loss over
/// the whole batch with only its own shard live (and the temperature and bias on the first
/// device alone). The loss is the same on every device, so the gradients summed over the
/// devices ([`super::parallel::sum_grads`]) are those of the whole batch on one device. The
/// chunked sigmoid loss keeps its `spec.chunks` blocks. `seeds[j]` seeds device `j`'s patch
/// dropout. GradCache micro-batches (`spec.micro` > 1) are refused.
pub fn data_parallel_grads(
    model: &ImageText,
    pixels: Tensor<4>,
    ids: Tensor<2, Int>,
    spec: &LossSpec,
    devices: &[Device],
    seeds: &[u64],
) -> Result<(f32, GradientsParams)> {
    use super::parallel::{run_replicas, shards, sum_grads};
    if spec.micro > 1 {
        return Err(Error::InvalidInput(
            "GradCache micro-batches (--accum-freq) and --devices do not combine yet".into(),
        ));
    }
    let n = pixels.dims()[0];
    let k = devices.len();
    if n < k || seeds.len() != k {
        return Err(Error::InvalidInput(format!(
            "a batch of {n} pairs cannot be split across {k} devices"
        )));
    }
    let inputs: Vec<_> = shards(n, k)
        .into_iter()
        .zip(devices)
        .zip(seeds)
        .map(|(((a, b), device), &seed)| {
            let replica = model.fork(device);
            let px = pixels.clone().slice(a..b).to_device(device);
            let ids = ids.clone().slice(a..b).to_device(device);
            (replica, px, ids, seed)
        })
        .collect();
    let out = run_replicas(devices, inputs, |(replica, px, ids, seed), peer| {
        set_draw_seed(&replica.towers, seed);
        let mut img = replica.image_embeds(px);
        let mut txt = replica.text_embeds(ids);
        if spec.lock_image {
            img = img.detach();
        }
        if spec.lock_text {
            txt = txt.detach();
        }
        // Every device's embeddings, this device's own still on the graph.
        let live = |mut all: Vec<Tensor<2>>, own: Tensor<2>| {
            all[peer.rank] = own;
            Tensor::cat(all, 0)
        };
        let all_img = live(peer.all_gather(img.clone())?, img);
        let all_txt = live(peer.all_gather(txt.clone())?, txt);
        let loss = embeds_loss(
            &replica.towers,
            all_img,
            all_txt,
            spec.chunks,
            peer.rank == 0,
            spec.groups,
        )?;
        let value = loss.clone().into_scalar();
        let grads = GradientsParams::from_grads(loss.backward(), &replica.towers);
        Ok((value, grads))
    })?;
    let loss = out[0].0;
    let grads = sum_grads(&model.towers, out.into_iter().map(|(_, g)| g).collect());
    Ok((loss, grads))
}

/// Every parameter's gradient by transformers' name, in PyTorch's layout.
pub fn named_grads(
    model: &ImageText,
    grads: &burn::tensor::Gradients,
) -> BTreeMap<String, (Vec<f32>, Vec<usize>)> {
    match &model.towers {
        Towers::Clip(m) => super::named_grads(m, grads),
        Towers::Siglip(m) => super::named_grads(m, grads),
    }
}

/// [`named_grads`] of gradients gathered by parameter.
pub fn named_param_grads(
    model: &ImageText,
    grads: &GradientsParams,
) -> BTreeMap<String, (Vec<f32>, Vec<usize>)> {
    match &model.towers {
        Towers::Clip(m) => super::grads::named_param_grads(m, grads),
        Towers::Siglip(m) => super::grads::named_param_grads(m, grads),
    }
}

/// Sets FLIP patch dropout: the share of image patches dropped in training steps.
pub fn set_patch_dropout(model: &mut ImageText, p: f64) {
    match &mut model.towers {
        Towers::Clip(m) => m.vision_model.patch_dropout = p,
        Towers::Siglip(m) => m.vision_model.patch_dropout = p,
    }
}

/// Sets the seed of the next random draw of patch dropout (each draw advances it).
fn set_draw_seed(towers: &Towers, seed: u64) {
    match towers {
        Towers::Clip(m) => m.vision_model.draws.set(seed),
        Towers::Siglip(m) => m.vision_model.draws.set(seed),
    }
}

/// Whether the forward pass draws from the device's generator in training (attention dropout
/// set in the config).
fn draws_from_device(model: &ImageText) -> bool {
    ["text_config", "vision_config"].iter().any(|tower| {
        model.config()[tower]["attention_dropout"]
            .as_f64()
            .is_some_and(|p| p > 0.0)
    })
}

/// CLIP's and SigLIP's step: the contrastive loss of a batch (GradCache micro-batches, the
/// chunked sigmoid loss, locked towers, patch dropout), one optimiser over both towers.
struct ContrastiveFamily<'a> {
    cfg: &'a TrainConfig,
    processor: ImageProcessor,
    device_draws: bool,
}

impl TrainStep for ContrastiveFamily<'_> {
    type Models = ImageText;

    fn settings(&self) -> serde_json::Value {
        let cfg = self.cfg;
        json!({
            "steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "warmup": cfg.warmup,
            "weight_decay": cfg.weight_decay, "max_grad_norm": cfg.max_grad_norm,
            "loss_chunks": cfg.loss_chunks, "lock_image": cfg.lock_image, "lock_text": cfg.lock_text,
            "patch_dropout": cfg.patch_dropout, "accum_freq": cfg.accum_freq,
            "crop_scale": cfg.augment.min_scale, "hflip": cfg.augment.hflip,
            "same_caption_positives": cfg.same_caption_positives,
        })
    }

    fn optimizers(&self, model: &ImageText) -> Vec<Optim> {
        let adamw = super::adamw(&model.towers, self.cfg.weight_decay);
        vec![Optim::new("model", adamw, self.cfg.lr)]
    }

    fn device(&self, model: &ImageText) -> Device {
        model.device().clone()
    }

    fn processor(&self) -> &ImageProcessor {
        &self.processor
    }

    fn step_bytes(&self, model: &ImageText, batch: usize) -> u128 {
        use burn::module::Module;
        // GradCache keeps one micro-batch's activations at a time.
        let micro = batch.div_ceil(self.cfg.accum_freq.max(1)) as u128;
        let (vision, text) = model.encoders();
        let floats = vision.training_floats() + text.training_floats();
        engine::params_bytes(model.towers.num_params())
            + crate::memory::f32_bytes(floats.saturating_mul(micro))
    }

    fn min_batch(&self) -> usize {
        self.cfg.loss_chunks.max(2)
    }

    fn data_parallel(&self) -> bool {
        true
    }

    fn device_draws(&self, _model: &ImageText) -> bool {
        // Patch dropout draws from the model's own seed; attention dropout from the device.
        self.device_draws
    }

    fn step(
        &mut self,
        mut model: ImageText,
        batch: Batch,
        ctx: &mut StepContext,
    ) -> Result<(ImageText, StepOutput)> {
        let cfg = self.cfg;
        // The chunked loss needs a batch divisible by its devices; drop the remainder.
        let keep = batch.len() - batch.len() % cfg.loss_chunks.max(1);
        let pixels = batch_tensor(batch.images[..keep].to_vec(), ctx.device)?;
        let ids = model.tokenize(&batch.texts[..keep])?;
        let device_draws = self.device_draws;
        let groups = caption_groups(&batch.texts[..keep], cfg.same_caption_positives);
        let spec = LossSpec {
            micro: cfg.accum_freq,
            chunks: cfg.loss_chunks,
            lock_image: cfg.lock_image,
            lock_text: cfg.lock_text,
            groups: &groups,
        };
        let (loss, grads) = if ctx.devices.len() > 1 {
            let seeds: Vec<u64> = (0..ctx.devices.len()).map(|j| ctx.seed(j)).collect();
            data_parallel_grads(&model, pixels, ids, &spec, ctx.devices, &seeds)?
        } else {
            accumulated_grads(&model, pixels, ids, &spec, |j| {
                set_draw_seed(&model.towers, ctx.seed(j));
                // Attention dropout, when the config asks for it, draws from the device.
                if device_draws {
                    ctx.device.seed(ctx.seed(j));
                }
            })?
        };
        model.towers = ctx.update("model", model.towers, grads)?;
        Ok((model, StepOutput::loss(loss)))
    }

    fn save(&self, model: &ImageText, dir: &Path) -> Result<()> {
        model.save(dir)
    }

    fn validate(&mut self, model: &ImageText) -> Result<Option<serde_json::Value>> {
        let Some(val) = &self.cfg.val else {
            return Ok(None);
        };
        let r = crate::eval::zero_shot_eval(
            &model.valid(),
            &val.samples,
            &val.label_column,
            &val.templates,
            64,
        )?;
        Ok(Some(json!({"top1": r["top1"], "top5": r["top5"]})))
    }
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
    check_chunks(cfg.batch_size, cfg.loss_chunks)?;
    if cfg.devices.len() > 1 && draws_from_device(&model) {
        return Err(Error::InvalidInput(
            "attention dropout draws from one device's generator: set attention_dropout to 0 \
             in config.json to train on several --devices"
                .into(),
        ));
    }
    let data = data.into();
    // A contrastive batch needs distinct pairs: a list shorter than a batch would repeat them.
    if let TrainData::Samples(samples) = &data
        && samples.len() < cfg.batch_size
    {
        return Err(Error::InvalidInput(format!(
            "{} samples are fewer than one batch of {}",
            samples.len(),
            cfg.batch_size
        )));
    }
    let mut model = model;
    model.towers = super::stable_param_ids(model.towers);
    set_patch_dropout(&mut model, cfg.patch_dropout);
    let mut family = ContrastiveFamily {
        cfg,
        processor: model.processor.clone(),
        device_draws: draws_from_device(&model),
    };
    let (mut model, report) = engine::run(&mut family, model, data, &cfg.run(), &mut on_step)?;
    set_patch_dropout(&mut model, 0.0);
    Ok((model, report))
}
