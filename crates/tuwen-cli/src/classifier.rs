//! `tuwen train classifier`: a ViT image classifier from scratch, fine-tuned from a checkpoint
//! (a classifier, a ViT, an MAE run), or as a linear probe of a frozen encoder.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;
use tuwen::burn::prelude::Device;
use tuwen::data::ImageProcessor;
use tuwen::data::augment::Augment;
use tuwen::pipeline::ImageClassification;
use tuwen::train::classifier::{
    Classifier, ClassifierNet, ClassifierStart, ClassifierTrainConfig, build, linear_probe, train,
};

use crate::train::Progress;
use tuwen::data::labelled::labelled;

#[derive(Args)]
pub struct ClassifierArgs {
    /// Labelled training images: a CSV/TSV with filepath and --label-column, or class subfolders.
    #[arg(long)]
    data: PathBuf,
    /// Labelled validation images, scored at the end (top-1 and confusion.png).
    #[arg(long)]
    val: Option<PathBuf>,
    /// Column holding the class label.
    #[arg(long, default_value = "label")]
    label_column: String,
    /// Output folder: the classifier in HF layout, metrics.jsonl, curves.png.
    #[arg(long)]
    out: PathBuf,
    /// Start from this checkpoint's encoder: a ViT classifier or ViTModel, or an MAE run.
    #[arg(long)]
    init: Option<String>,
    /// Architecture (efficientnet-b0..b7, vit-ti16, vit-s16, vit-b16, ...): trained from
    /// scratch, or, with --init, checked against the checkpoint's.
    #[arg(long)]
    arch: Option<String>,
    /// Image side for --arch (default 224).
    #[arg(long)]
    image_size: Option<usize>,
    /// Freeze the encoder and fit a batch-normed linear head on its class token (MAE's
    /// linear probing), folded into a plain classifier head.
    #[arg(long, requires = "init")]
    linear_probe: bool,
    /// Full-batch optimiser steps of the linear probe.
    #[arg(long, default_value_t = 500)]
    probe_epochs: usize,
    /// Optimiser steps (fine-tuning).
    #[arg(long, default_value_t = 500)]
    steps: usize,
    /// Passes over the data instead of --steps.
    #[arg(long)]
    epochs: Option<f64>,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 5e-4)]
    lr: f64,
    /// Warmup steps.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.05)]
    weight_decay: f64,
    /// Random-resized-crop: smallest share of the image kept (1: none).
    #[arg(long, default_value_t = 1.0)]
    crop_scale: f64,
    /// Mirror half of the images.
    #[arg(long)]
    hflip: bool,
    /// Label smoothing of the cross-entropy.
    #[arg(long, default_value_t = 0.1)]
    label_smoothing: f64,
    /// Mixup with this α (0: none; 0.2 is usual).
    #[arg(long, default_value_t = 0.0)]
    mixup: f64,
    /// Seed of initialisation, data order and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Save a checkpoint every N steps; one is always saved at the end.
    #[arg(long, default_value_t = 200)]
    save_every: usize,
    /// Continue the run saved in OUT/checkpoint.
    #[arg(long)]
    resume: bool,
    /// Data-parallel training on these devices, e.g. cpu,cpu or cuda:0,cuda:1: each runs its
    /// share of every batch and the gradients are summed. The model lives on the first
    /// (--device is then not used). ViT only (EfficientNet's batch norm is per device).
    #[arg(long, conflicts_with = "linear_probe")]
    devices: Option<String>,
}

pub fn run(args: ClassifierArgs, device: &Device) -> Result<()> {
    let samples = labelled(&args.data, &args.label_column)?;
    let labels = tuwen::data::labelled::class_names(&samples, &args.data)?;
    eprintln!(
        "{} labelled images of {} classes from {}",
        samples.len(),
        labels.len(),
        args.data.display()
    );
    if !(0.05..=1.0).contains(&args.crop_scale) {
        bail!("--crop-scale {} must be in [0.05, 1]", args.crop_scale);
    }
    if !(args.mixup >= 0.0 && args.mixup.is_finite() && (0.0..1.0).contains(&args.label_smoothing))
    {
        bail!("--mixup must be >= 0 and --label-smoothing in [0, 1)");
    }
    let devices = match &args.devices {
        Some(list) => tuwen::train::parallel::parse_devices(list)?,
        None => Vec::new(),
    };
    let device = devices.first().unwrap_or(device).clone().autodiff();
    let ckpt_dir = args.out.join("checkpoint");
    let resume_from = if args.resume {
        Some(crate::train::resume_dir(&ckpt_dir)?)
    } else {
        None
    };
    let init = match &args.init {
        Some(m) => Some(tuwen::hub::resolve(m)?),
        None => None,
    };
    crate::train::refuse_input_as_out(&args.out, &[&args.data], init.as_deref())?;
    let start = match (&resume_from, &init, &args.arch) {
        (Some(dir), _, _) => ClassifierStart::Resume(dir),
        (None, Some(folder), arch) => ClassifierStart::Init {
            folder,
            arch: arch.as_deref(),
        },
        (None, None, Some(name)) => ClassifierStart::Arch {
            name,
            image_size: args.image_size,
            seed: args.seed,
        },
        (None, None, None) => bail!("give --init CHECKPOINT or --arch NAME"),
    };
    let (net, processor) = build(start, &labels, &device)?;
    let steps = match args.epochs {
        Some(e) => tuwen::train::engine::epochs_to_steps(e, samples.len(), args.batch_size)?,
        None => args.steps,
    };
    let cfg = ClassifierTrainConfig {
        steps,
        batch_size: args.batch_size,
        lr: args.lr,
        warmup: args.warmup,
        weight_decay: args.weight_decay,
        max_grad_norm: 1.0,
        seed: args.seed,
        augment: Augment {
            min_scale: args.crop_scale,
            hflip: args.hflip,
        },
        checkpoint_every: args.save_every,
        checkpoint_dir: Some(ckpt_dir),
        resume_from: resume_from.clone(),
        label_smoothing: args.label_smoothing,
        mixup: args.mixup,
        devices,
        ..ClassifierTrainConfig::default()
    };
    match net {
        ClassifierNet::Vit(m) if args.linear_probe => {
            let (model, acc) = linear_probe(
                m.model,
                &processor,
                &samples,
                &labels,
                args.probe_epochs,
                args.seed,
            )?;
            eprintln!(
                "linear probe: {:.1}% top-1 on the training images",
                acc * 100.0
            );
            model.save(&m.config, &args.out)?;
        }
        ClassifierNet::EfficientNet(_) if args.linear_probe => {
            bail!("--linear-probe is for ViT encoders")
        }
        ClassifierNet::Vit(m) => fit(
            *m,
            &processor,
            &samples,
            &labels,
            &cfg,
            &args,
            resume_from.as_deref(),
        )?,
        ClassifierNet::EfficientNet(m) => fit(
            *m,
            &processor,
            &samples,
            &labels,
            &cfg,
            &args,
            resume_from.as_deref(),
        )?,
    }
    processor.save(&args.out)?;
    if let Some(val) = &args.val {
        let clf = ImageClassification::load(
            args.out.to_str().context("non-UTF-8 path")?,
            &device.clone().inner(),
        )?;
        let val = labelled(val, &args.label_column)?;
        let (r, confusion) = tuwen::eval::classification_eval(&clf, &val, &args.label_column, 64)?;
        tuwen::eval::confusion_png(&clf.labels, &confusion, &args.out.join("confusion.png"))?;
        println!(
            "{}",
            json!({"top1": r["top1"], "n": r["n"], "per_class": r["per_class"]})
        );
    }
    Ok(())
}

/// Trains with a progress bar, metrics and curves, then saves the model to --out.
fn fit<M: Classifier>(
    model: M,
    processor: &ImageProcessor,
    samples: &[tuwen::data::captions::Sample],
    labels: &[String],
    cfg: &ClassifierTrainConfig,
    args: &ClassifierArgs,
    resume_from: Option<&std::path::Path>,
) -> Result<()> {
    let mut progress = Progress::start(cfg.steps, resume_from)?;
    let cfg = ClassifierTrainConfig {
        metrics: Some(args.out.join("metrics.jsonl")),
        stop: Some(progress.stop_flag()),
        ..cfg.clone()
    };
    let (m, losses) = train(model, processor, samples, labels, &cfg, |s, _| {
        progress.step(s)
    })?;
    progress.finish();
    if losses.len() >= 2 {
        tuwen::train::plot::loss_curve_png(&losses, &args.out.join("curves.png"))?;
    }
    let last = losses.last().map_or(f32::NAN, |l| l.1);
    eprintln!("trained {} steps: final loss {last:.3}", losses.len());
    m.save_to(&args.out)?;
    Ok(())
}
