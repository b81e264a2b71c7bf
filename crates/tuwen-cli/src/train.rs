//! `tuwen train`, `tuwen eval` and `tuwen data`: contrastive training and its measurements.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tuwen::burn::prelude::Device;
use tuwen::data::augment::Augment;
use tuwen::data::captions::{CsvSpec, open};
use tuwen::data::webdataset::{self, ShardStream};
use tuwen::eval::{retrieval_eval, zero_shot_eval};
use tuwen::hub;
use tuwen::pipeline::ImageText;
use tuwen::pipeline::image_text::{DEFAULT_TEMPLATE, Family, IMAGENET_TEMPLATES};
use tuwen::train::StepReport;
use tuwen::train::checkpoint;
use tuwen::train::contrastive::{
    ContrastiveStart, LossKind, TrainConfig, TrainData, Validation, default_lr, prepare,
    tokenizer_captions, train,
};
use tuwen::train::engine::epochs_to_steps;

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    /// CLIP: softmax contrastive loss.
    Clip,
    /// SigLIP: pairwise sigmoid loss.
    Siglip,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum LossArg {
    /// CLIP's symmetric softmax cross-entropy.
    Softmax,
    /// SigLIP's pairwise sigmoid loss.
    Sigmoid,
    /// The sigmoid loss computed in --loss-chunks blocks, as across devices.
    SigmoidChunked,
}

impl From<LossArg> for LossKind {
    fn from(l: LossArg) -> Self {
        match l {
            LossArg::Softmax => LossKind::Softmax,
            LossArg::Sigmoid => LossKind::Sigmoid,
            LossArg::SigmoidChunked => LossKind::SigmoidChunked,
        }
    }
}

/// `tuwen train clip|siglip|mae`.
#[derive(Subcommand)]
pub enum TrainCommand {
    /// CLIP: image and text towers with the softmax contrastive loss.
    Clip(Box<TrainArgs>),
    /// SigLIP: image and text towers with the pairwise sigmoid loss.
    Siglip(Box<TrainArgs>),
    /// MAE: masked-autoencoder pre-training of a ViT on images.
    Mae(Box<crate::mae::MaeArgs>),
    /// A ViT image classifier: from scratch, fine-tuned, or a linear probe (--linear-probe).
    Classifier(Box<crate::classifier::ClassifierArgs>),
    /// BLIP pre-training: image-text contrast, matching on hard negatives, captioning.
    Blip(Box<crate::blip::TrainBlipArgs>),
    /// A GAN (minimax, non-saturating, hinge, WGAN, WGAN-GP): MLPs for points, DCGAN for images.
    Gan(Box<crate::gan::TrainGanArgs>),
    /// VQGAN's first stage: a quantised autoencoder with L1, LPIPS and PatchGAN losses.
    Vqgan(Box<crate::vqgan::TrainVqganArgs>),
    /// VQGAN's second stage: a GPT-2 prior over a VQGAN's code grids.
    VqPrior(Box<crate::vqgan::TrainPriorArgs>),
}

pub fn run(cmd: TrainCommand, device: &Device) -> Result<()> {
    match cmd {
        TrainCommand::Clip(mut a) => {
            a.kind = Kind::Clip;
            run_train(*a, device)
        }
        TrainCommand::Siglip(mut a) => {
            a.kind = Kind::Siglip;
            run_train(*a, device)
        }
        TrainCommand::Mae(a) => crate::mae::run(*a, device),
        TrainCommand::Classifier(a) => crate::classifier::run(*a, device),
        TrainCommand::Blip(a) => crate::blip::train_blip(*a, device),
        TrainCommand::Gan(a) => crate::gan::train_gan(*a, device),
        TrainCommand::Vqgan(a) => crate::vqgan::train_vqgan(*a, device),
        TrainCommand::VqPrior(a) => crate::vqgan::train_prior(*a, device),
    }
}

#[derive(Args)]
pub struct TrainArgs {
    /// Which model family to train (set by the subcommand).
    #[arg(skip = Kind::Clip)]
    kind: Kind,
    /// Training pairs: a CSV/TSV (filepath,caption), a folder with .txt sidecars, class
    /// subfolders, or WebDataset shards (`shards-{0000..0099}.tar`: image + .txt/.json).
    #[arg(long)]
    data: PathBuf,
    /// Labelled validation CSV for a zero-shot score at the end (needs --label-column).
    #[arg(long)]
    val: Option<PathBuf>,
    /// Column of --val holding the class label.
    #[arg(long, default_value = "label")]
    label_column: String,
    /// Output folder: the model in HF layout, metrics.jsonl.
    #[arg(long)]
    out: PathBuf,
    /// Architecture to train from scratch: tiny, small, b32, b16.
    #[arg(long, default_value = "tiny", conflicts_with = "init")]
    arch: String,
    /// Fine-tune this checkpoint (folder or HF repo id) instead.
    #[arg(long)]
    init: Option<String>,
    /// Optimiser steps.
    #[arg(long, default_value_t = 500)]
    steps: usize,
    /// Passes over the training pairs instead of --steps (not for streamed shards).
    #[arg(long)]
    epochs: Option<f64>,
    /// CSV/TSV column with the image path.
    #[arg(long, default_value = "filepath")]
    image_column: String,
    /// CSV/TSV column with the caption.
    #[arg(long, default_value = "caption")]
    caption_column: String,
    /// CSV separator (default: tab for .tsv, comma otherwise).
    #[arg(long)]
    separator: Option<char>,
    /// Pairs per step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Peak learning rate (default: 2e-3 for CLIP, 1e-3 for SigLIP).
    #[arg(long)]
    lr: Option<f64>,
    /// Warmup steps.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// AdamW weight decay (not on norms, biases, embeddings, temperature).
    #[arg(long, default_value_t = 0.05)]
    weight_decay: f64,
    /// Image side for a model trained from scratch.
    #[arg(long, default_value_t = 32)]
    image_size: usize,
    /// The loss (default: the family's own).
    #[arg(long)]
    loss: Option<LossArg>,
    /// Blocks of the chunked sigmoid loss, as that many devices compute it (default: the
    /// number of --devices, or 4).
    #[arg(long)]
    loss_chunks: Option<usize>,
    /// Data-parallel training on these devices, e.g. cpu,cpu or cuda:0,cuda:1: each embeds its
    /// share of every batch, the loss spans them all and the gradients are summed. The model
    /// lives on the first (--device is then not used).
    #[arg(long)]
    devices: Option<String>,
    /// LiT: keep the image tower (from --init) as it is and train the rest.
    #[arg(long)]
    lock_image: bool,
    /// Keep the text tower as it is.
    #[arg(long)]
    lock_text: bool,
    /// FLIP: the share of image patches dropped in each training step (none at evaluation).
    #[arg(long, default_value_t = 0.0)]
    patch_dropout: f64,
    /// Seed of initialisation and data order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// GradCache: compute each step's loss over the whole batch in K micro-batches (less
    /// memory, the same gradients).
    #[arg(long, default_value_t = 1)]
    accum_freq: usize,
    /// Save a checkpoint (OUT/checkpoint) every N steps; one is always saved at the end.
    #[arg(long, default_value_t = 100)]
    save_every: usize,
    /// Continue the run saved in OUT/checkpoint (same data and settings).
    #[arg(long)]
    resume: bool,
    /// Zero-shot score on --val every N steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    val_every: usize,
    /// Prompt template of the zero-shot validation, {} for the label.
    #[arg(long, default_value = "a {}")]
    val_template: String,
    /// Shuffle-buffer size when streaming WebDataset shards.
    #[arg(long, default_value_t = 1000)]
    shuffle_buffer: usize,
    /// Random-resized-crop augmentation: the smallest share of the image a crop keeps (1: none).
    #[arg(long, default_value_t = 1.0)]
    crop_scale: f64,
    /// Mirror half of the training images (not for captions that say left or right).
    #[arg(long)]
    hflip: bool,
    /// Caption template for class-subfolder data.
    #[arg(long, default_value = "a photo of a {}.")]
    caption_template: String,
    /// Score identical captions in a batch as negatives of each other (the standard losses);
    /// by default pairs with identical captions are positives.
    #[arg(long)]
    duplicates_as_negatives: bool,
}

impl TrainArgs {
    /// The quickstart's run: a tiny SigLIP from scratch on `data`, scored on `val` as it goes.
    pub fn quickstart(data: PathBuf, val: PathBuf, out: PathBuf, steps: usize, seed: u64) -> Self {
        TrainArgs {
            kind: Kind::Siglip,
            data,
            val: Some(val),
            label_column: "label".into(),
            out,
            arch: "tiny".into(),
            init: None,
            steps,
            epochs: None,
            image_column: "filepath".into(),
            caption_column: "caption".into(),
            separator: None,
            batch_size: 64,
            lr: Some(1e-3),
            warmup: 100,
            weight_decay: 0.05,
            image_size: 32,
            loss: None,
            loss_chunks: None,
            devices: None,
            lock_image: false,
            lock_text: false,
            patch_dropout: 0.0,
            seed,
            accum_freq: 1,
            save_every: 500,
            resume: false,
            val_every: (steps / 5).max(1),
            val_template: "a {}".into(),
            shuffle_buffer: 1000,
            crop_scale: 1.0,
            hflip: false,
            caption_template: "a photo of a {}.".into(),
            duplicates_as_negatives: false,
        }
    }
}

pub fn run_train(args: TrainArgs, device: &Device) -> Result<()> {
    let outcome = fit(&args, device)?;
    if let Some(r) = outcome.zero_shot {
        println!(
            "{}",
            json!({"steps": outcome.steps, "loss": outcome.loss, "zero_shot": r})
        );
    }
    Ok(())
}

/// What a training run ended with.
pub struct Outcome {
    /// Steps done.
    pub steps: usize,
    /// The last step's loss.
    pub loss: f32,
    /// Every step's loss.
    pub losses: Vec<(usize, f32)>,
    /// Median training samples per second.
    pub samples_per_s: f64,
    /// The final zero-shot score on --val.
    pub zero_shot: Option<serde_json::Value>,
}

/// Trains as `tuwen train` says, with a progress bar, metrics.jsonl, curves.png, checkpoints.
pub fn fit(args: &TrainArgs, device: &Device) -> Result<Outcome> {
    let family = match args.kind {
        Kind::Clip => Family::Clip,
        Kind::Siglip => Family::Siglip,
    };
    let loss = args
        .loss
        .map_or(LossKind::default_for(family), LossKind::from);
    let devices = match &args.devices {
        Some(list) => tuwen::train::parallel::parse_devices(list)?,
        None => Vec::new(),
    };
    let chunks = loss.chunks(
        family,
        args.loss_chunks
            .unwrap_or(if devices.len() > 1 { devices.len() } else { 4 }),
        args.batch_size,
    )?;
    if args.init.is_none() && tuwen::train::contrastive::arch_spec(&args.arch).is_none() {
        bail!(
            "unknown --arch {:?} (known: {})",
            args.arch,
            tuwen::train::contrastive::ARCHS.join(", ")
        );
    }
    if !(0.05..=1.0).contains(&args.crop_scale) {
        bail!("--crop-scale {} must be in [0.05, 1]", args.crop_scale);
    }
    let shards = webdataset::is_shards(&args.data);
    let (samples, stream) = if shards {
        let stream = ShardStream::open(&args.data, args.shuffle_buffer, args.seed)?;
        eprintln!("streaming WebDataset shards {}", args.data.display());
        (Vec::new(), Some(stream))
    } else {
        let spec = CsvSpec {
            image_column: args.image_column.clone(),
            caption_column: args.caption_column.clone(),
            separator: args.separator,
        };
        let samples = open(&args.data, &spec, &args.caption_template)?;
        eprintln!(
            "{} training pairs from {}",
            samples.len(),
            args.data.display()
        );
        (samples, None)
    };
    let steps = match args.epochs {
        None => args.steps,
        Some(_) if shards => {
            bail!("--epochs needs a known number of pairs: use --steps with shards")
        }
        Some(e) => epochs_to_steps(e, samples.len(), args.batch_size)?,
    };
    let device = devices.first().unwrap_or(device).clone().autodiff();
    let ckpt_dir = args.out.join("checkpoint");
    let resume_from = if args.resume {
        Some(crate::train::resume_dir(&ckpt_dir)?)
    } else {
        None
    };
    let init = match &args.init {
        Some(m) => Some(hub::resolve(m)?),
        None => None,
    };
    refuse_input_as_out(&args.out, &[&args.data], init.as_deref())?;
    let captions;
    let start = match (&resume_from, &init) {
        (Some(dir), _) => ContrastiveStart::Resume(dir),
        (None, Some(folder)) => ContrastiveStart::Init(folder),
        (None, None) => {
            captions =
                tokenizer_captions(&samples, shards.then_some(args.data.as_path()), args.seed)?;
            ContrastiveStart::Arch {
                name: &args.arch,
                image_size: args.image_size,
                captions: &captions,
                seed: args.seed,
            }
        }
    };
    let model = prepare(&args.out, start, family, &device)?;
    let mut cfg = TrainConfig {
        steps,
        batch_size: args.batch_size,
        lr: args.lr.unwrap_or(default_lr(family)),
        warmup: args.warmup,
        weight_decay: args.weight_decay,
        max_grad_norm: 1.0,
        seed: args.seed,
        loss_chunks: chunks,
        lock_image: args.lock_image,
        lock_text: args.lock_text,
        patch_dropout: args.patch_dropout,
        accum_freq: args.accum_freq,
        checkpoint_every: args.save_every,
        checkpoint_dir: Some(ckpt_dir.clone()),
        resume_from: resume_from.clone(),
        augment: Augment {
            min_scale: args.crop_scale,
            hflip: args.hflip,
        },
        val: match &args.val {
            Some(v) => Some(Validation {
                samples: open(v, &CsvSpec::default(), &args.caption_template)?,
                label_column: args.label_column.clone(),
                templates: vec![args.val_template.clone()],
            }),
            None => None,
        },
        val_every: args.val_every,
        same_caption_positives: !args.duplicates_as_negatives,
        devices,
        ..TrainConfig::default()
    };
    let mut progress = Progress::start(steps, resume_from.as_deref())?;
    cfg.metrics = Some(args.out.join("metrics.jsonl"));
    cfg.stop = Some(progress.stop_flag());
    let data = match stream {
        Some(s) => TrainData::Shards(s),
        None => TrainData::Samples(&samples),
    };
    let (model, report) = train(model, data, &cfg, |s, _| progress.step(s))?;
    progress.finish();
    model.save(&args.out)?;
    let done = report.losses.len();
    if done >= 2 {
        tuwen::train::plot::loss_curve_png(&report.losses, &args.out.join("curves.png"))?;
    }
    if report.stopped {
        eprintln!(
            "interrupted after {done} steps; saved the model to {} (continue with --resume)",
            args.out.display()
        );
    }
    let last = report.losses.last().map_or(f32::NAN, |l| l.1);
    eprintln!(
        "trained {done} steps: final loss {last:.3}, {:.0} samples/s, {} unreadable images skipped; model in {}",
        report.samples_per_s,
        report.skipped,
        args.out.display()
    );
    let zero_shot = match &cfg.val {
        Some(val) => Some(zero_shot_eval(
            &model.valid(),
            &val.samples,
            &val.label_column,
            &val.templates,
            64,
        )?),
        None => None,
    };
    Ok(Outcome {
        steps: done,
        loss: last,
        losses: report.losses,
        samples_per_s: report.samples_per_s,
        zero_shot,
    })
}

/// Refuses a training `--out` that is one of the run's inputs: its data or the checkpoint it
/// starts from (whose files the trained model would replace).
pub fn refuse_input_as_out(out: &Path, data: &[&Path], init: Option<&Path>) -> Result<()> {
    let folders: Vec<&Path> = init.into_iter().collect();
    Ok(tuwen::data::files::refuse_overwrite(
        "--out", out, data, &folders,
    )?)
}

/// Writes `report.json` into `out` and says how the run ended: interrupted (and how to go on),
/// then "trained N {what} in OUT".
pub fn finish_report(
    out: &Path,
    summary: &serde_json::Value,
    report: &tuwen::train::RunReport,
    what: &str,
) -> Result<()> {
    hub::write_atomic(
        &out.join("report.json"),
        serde_json::to_string_pretty(summary)?.as_bytes(),
    )?;
    if report.stopped {
        eprintln!(
            "interrupted after {} steps; saved to {} (continue with --resume)",
            report.losses.len(),
            out.display()
        );
    }
    eprintln!(
        "trained {} {what} in {}",
        report.losses.len(),
        out.display()
    );
    Ok(())
}

/// The checkpoint folder `--resume` continues from; a one-line error when there is none.
pub fn resume_dir(ckpt_dir: &Path) -> Result<PathBuf> {
    checkpoint::find(ckpt_dir).with_context(|| {
        format!(
            "--resume: no checkpoint in {} (start without --resume)",
            ckpt_dir.display()
        )
    })
}

/// What every training command shows: a progress bar (step, loss, LR, samples/s, ETA) and
/// Ctrl-C, which asks the run to save and stop (the library writes `metrics.jsonl`).
pub struct Progress {
    bar: ProgressBar,
    stop: Arc<AtomicBool>,
}

impl Progress {
    /// Starts the bar at the checkpoint's step when resuming from `resume_from`.
    pub fn start(steps: usize, resume_from: Option<&Path>) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
        let start = match resume_from {
            Some(dir) => checkpoint::read_state(dir)?.step,
            None => 0,
        };
        let bar = ProgressBar::new(steps as u64).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} {elapsed}<{eta}")
                .expect("valid template"),
        );
        bar.set_position(start as u64);
        Ok(Progress { bar, stop })
    }

    /// The flag Ctrl-C sets: a run given it saves and stops.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Shows a step; false once Ctrl-C asked to stop.
    pub fn step(&mut self, s: &StepReport) -> bool {
        self.bar.set_position(s.step as u64 + 1);
        self.bar.set_message(format!(
            "loss {:.3} lr {:.1e} {:.0} samples/s",
            s.loss, s.lr, s.samples_per_s
        ));
        if let Some(top1) = s.metrics["val_top1"].as_f64() {
            self.bar.println(format!(
                "step {}: validation top-1 {:.1}%",
                s.step + 1,
                top1 * 100.0
            ));
        }
        !self.stop.load(Ordering::SeqCst)
    }

    /// Clears the bar.
    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Zero-shot top-1/top-5 accuracy on a labelled CSV.
    ZeroShot(ZeroShotArgs),
    /// Image-to-text and text-to-image recall@1/5/10 on captioned pairs.
    Retrieval(RetrievalArgs),
    /// A classifier's top-1 accuracy, per class, and its confusion matrix as a PNG.
    Classify(EvalClassifyArgs),
    /// An image GAN's Fréchet distance to real images on a tuwen-trained classifier's features.
    Gan(crate::gan::EvalGanArgs),
    /// A VQGAN prior's samples: Fréchet distances against random codes and reconstructions.
    VqPrior(crate::vqgan::EvalPriorArgs),
}

#[derive(Args)]
pub struct EvalClassifyArgs {
    /// Classifier checkpoint (folder or HF repo id).
    #[arg(long)]
    model: String,
    /// Labelled images: a CSV/TSV with filepath and --label-column, or class subfolders.
    #[arg(long)]
    data: PathBuf,
    /// Column holding the class label.
    #[arg(long, default_value = "label")]
    label_column: String,
    /// Where the confusion-matrix picture goes (default: confusion.png; with --json, only
    /// when given).
    #[arg(long)]
    confusion: Option<PathBuf>,
    /// Print `{"top1", "top5", "n", "per_class", "confusion"}` as JSON.
    #[arg(long)]
    json: bool,
}

fn eval_classify(a: EvalClassifyArgs, device: &Device) -> Result<()> {
    let folder = hub::resolve(&a.model)?;
    let samples = tuwen::data::labelled::labelled(&a.data, &a.label_column)?;
    let mut inputs: Vec<&Path> = samples.iter().map(|s| s.image.as_path()).collect();
    inputs.push(&a.data);
    let picture = match (&a.confusion, a.json) {
        (Some(p), _) => Some(p.clone()),
        (None, false) => Some(PathBuf::from("confusion.png")),
        (None, true) => None,
    };
    if let Some(p) = &picture {
        tuwen::data::files::refuse_overwrite("--confusion", p, &inputs, &[&folder])?;
    }
    let model = tuwen::pipeline::ImageClassification::load_folder(&folder, device)?;
    let (mut r, confusion) =
        tuwen::eval::classification_eval(&model, &samples, &a.label_column, 32)?;
    if let Some(p) = &picture {
        tuwen::eval::confusion_png(&model.labels, &confusion, p)?;
    }
    if a.json {
        r["confusion"] = json!(confusion);
        println!("{r}");
    } else {
        println!(
            "top-1 {:.1}%, top-5 {:.1}% on {} images; confusion matrix in {}",
            r["top1"].as_f64().unwrap_or(0.0) * 100.0,
            r["top5"].as_f64().unwrap_or(0.0) * 100.0,
            r["n"],
            picture.as_deref().unwrap_or(Path::new("-")).display()
        );
        skipped_note(&r);
    }
    Ok(())
}

#[derive(Args)]
pub struct RetrievalArgs {
    /// Checkpoint folder or HF repo id (CLIP or SigLIP).
    #[arg(long)]
    model: String,
    /// Captioned pairs: CSV/TSV (filepath,caption), sidecar folder or class folders.
    #[arg(long)]
    data: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ZeroShotArgs {
    /// Checkpoint folder or HF repo id (CLIP or SigLIP).
    #[arg(long)]
    model: String,
    /// CSV/TSV with image paths and labels.
    #[arg(long)]
    data: PathBuf,
    /// Column holding the class label.
    #[arg(long, default_value = "label")]
    label_column: String,
    /// Column holding the image path.
    #[arg(long, default_value = "filepath")]
    image_column: String,
    /// Prompt template with {} for the label (or `imagenet` for the 80-prompt ensemble).
    #[arg(long, default_value = DEFAULT_TEMPLATE)]
    template: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run_eval(cmd: EvalCommand, device: &Device) -> Result<()> {
    let args = match cmd {
        EvalCommand::Classify(a) => return eval_classify(a, device),
        EvalCommand::Gan(a) => return crate::gan::eval_gan(a, device),
        EvalCommand::VqPrior(a) => return crate::vqgan::eval_prior(a, device),
        EvalCommand::ZeroShot(args) => args,
        EvalCommand::Retrieval(args) => {
            let model = ImageText::load(&args.model, device)?;
            let samples = open(&args.data, &CsvSpec::default(), "a photo of a {}.")?;
            let r = retrieval_eval(&model, &samples, 64)?;
            if args.json {
                println!("{r}");
            } else {
                for dir in ["image_to_text", "text_to_image"] {
                    println!(
                        "{dir}: R@1 {:.1}%  R@5 {:.1}%  R@10 {:.1}%  ({} pairs)",
                        r[dir]["R@1"].as_f64().unwrap_or(0.0) * 100.0,
                        r[dir]["R@5"].as_f64().unwrap_or(0.0) * 100.0,
                        r[dir]["R@10"].as_f64().unwrap_or(0.0) * 100.0,
                        r["n"]
                    );
                }
                skipped_note(&r);
            }
            return Ok(());
        }
    };
    let model = ImageText::load(&args.model, device)?;
    let spec = CsvSpec {
        image_column: args.image_column.clone(),
        caption_column: args.label_column.clone(),
        separator: None,
    };
    let samples = open(&args.data, &spec, "{}")?;
    let templates: Vec<String> = if args.template == "imagenet" {
        IMAGENET_TEMPLATES.iter().map(|t| t.to_string()).collect()
    } else {
        vec![args.template.clone()]
    };
    let r = zero_shot_eval(&model, &samples, &args.label_column, &templates, 64)?;
    if args.json {
        println!("{r}");
    } else {
        println!(
            "zero-shot on {} images: top-1 {:.1}%, top-5 {:.1}%",
            r["n"],
            r["top1"].as_f64().unwrap_or(0.0) * 100.0,
            r["top5"].as_f64().unwrap_or(0.0) * 100.0
        );
        skipped_note(&r);
    }
    Ok(())
}

/// Says how many images an evaluation could not read (and so left out).
fn skipped_note(r: &serde_json::Value) {
    if let Some(n) = r["skipped"].as_u64().filter(|&n| n > 0) {
        eprintln!("{n} unreadable images were skipped (run with TUWEN_LOG=warn to see which)");
    }
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Time inference of a checkpoint folder on random inputs (python/bench_hf.py is the
    /// PyTorch side).
    Infer(BenchModelArgs),
    /// Time a training step (forward, loss, backward, clipping, AdamW) of a checkpoint folder.
    Train(BenchModelArgs),
    /// This machine's SGEMM ceiling: an N x N matrix product.
    Gemm(BenchGemmArgs),
    /// MAE: time the encoder's and the whole model's training step with and without masking.
    Mae(crate::mae::BenchMaeArgs),
    /// MAE's masking-ratio study in miniature: pre-train at several ratios, linear-probe each.
    MaeRatios(crate::mae::RatioStudyArgs),
    /// A BLIP caption of exactly N tokens, with and without the key/value cache.
    Caption(crate::blip::BenchCaptionArgs),
}

#[derive(Args)]
pub struct BenchModelArgs {
    /// Checkpoint folder or HF repo id (vit, efficientnet, clip, siglip, vit_mae): config.json
    /// and weights suffice.
    #[arg(long)]
    model: String,
    /// Inputs per batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// CLIP/SigLIP inference: time text embeddings (at the model's text length) instead of
    /// image embeddings.
    #[arg(long)]
    text: bool,
    /// Untimed batches first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed batches.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Print {"ms", "runs", "peak_rss_mb", "load_ms"} as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct BenchGemmArgs {
    /// The square matrices' side.
    #[arg(long, default_value_t = 2048)]
    size: usize,
    /// Untimed products first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed products.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Print {"ms", "runs", "gflops"} as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run_bench(cmd: BenchCommand, device: &Device) -> Result<()> {
    use tuwen::train::bench::{Workload, median, time_folder, time_gemm};
    let (a, train) = match cmd {
        BenchCommand::Infer(a) => (a, false),
        BenchCommand::Train(a) => (a, true),
        BenchCommand::Gemm(g) => {
            if g.size == 0 || g.steps == 0 {
                bail!("--size and --steps must be at least 1");
            }
            let runs = time_gemm(g.size, g.warmup, g.steps, device)?;
            let ms = median(&runs);
            let gflops = 2.0 * (g.size as f64).powi(3) / ms / 1e6;
            if g.json {
                println!("{}", json!({"ms": ms, "runs": runs, "gflops": gflops}));
            } else {
                println!(
                    "{n} x {n} SGEMM, {t} threads: median {ms:.1} ms, {gflops:.1} GFLOP/s",
                    n = g.size,
                    t = tuwen::device::threads()
                );
            }
            return Ok(());
        }
        BenchCommand::Mae(a) => return crate::mae::bench(a, device),
        BenchCommand::MaeRatios(a) => return crate::mae::ratio_study(a, device),
        BenchCommand::Caption(a) => return crate::blip::bench_caption(a, device),
    };
    let workload = match (train, a.text) {
        (true, true) => bail!("--text applies to bench infer only"),
        (true, false) => Workload::Train,
        (false, true) => Workload::InferText,
        (false, false) => Workload::Infer,
    };
    let folder = hub::resolve(&a.model)?;
    let t = time_folder(&folder, workload, a.batch_size, a.warmup, a.steps, device)?;
    if a.json {
        println!("{}", serde_json::to_string(&t)?);
    } else {
        println!(
            "{} {}, batch {}, {} threads: median {:.1} ms per batch ({:.1} per second), load {:.0} ms, peak memory {:.0} MiB",
            folder.display(),
            match workload {
                Workload::Infer => "inference",
                Workload::InferText => "text inference",
                Workload::Train => "training step",
            },
            a.batch_size,
            tuwen::device::threads(),
            t.ms,
            a.batch_size as f64 / t.ms * 1e3,
            t.load_ms,
            t.peak_rss_mb
        );
        if let Some(c) = t.cosine_to_fp32 {
            println!("bf16 against fp32 on the same batch: smallest cosine {c:.6}");
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum DataCommand {
    /// Pictures of coloured shapes with captions, and a test split of held-out pairings.
    Shapes(ShapesArgs),
}

#[derive(Args)]
pub struct ShapesArgs {
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Training pictures (the test split gets a fifth as many, at least 24).
    #[arg(long, default_value_t = 2000)]
    n: usize,
    /// Picture side in pixels.
    #[arg(long, default_value_t = 64)]
    size: u32,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also pack the training pairs into this many WebDataset shards (train-0000.tar, ...).
    #[arg(long, default_value_t = 0)]
    shards: usize,
}

pub fn run_data(cmd: DataCommand) -> Result<()> {
    let DataCommand::Shapes(a) = cmd;
    let s = tuwen::data::shapes::generate(&a.out, a.n, a.size, a.seed)?;
    println!(
        "wrote {} training and {} test pictures ({} in held-out pairings) to {}",
        s.train,
        s.test,
        s.test_held_out,
        a.out.display()
    );
    if a.shards > 0 {
        let train = open(&a.out.join("train.csv"), &CsvSpec::default(), "{}")?;
        let pattern = webdataset::write_shards(&a.out, "train", &train, a.shards)?;
        println!("packed them into WebDataset shards {}", pattern.display());
    }
    Ok(())
}
