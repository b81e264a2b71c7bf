//! `tuwen train classifier`: a ViT image classifier from scratch, fine-tuned from a checkpoint
//! (a classifier, a ViT, an MAE run), or as a linear probe of a frozen encoder.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;
use tuwen::burn::prelude::Device;
use tuwen::data::augment::Augment;
use tuwen::models::vit::{self, ViTForImageClassification};
use tuwen::pipeline::ImageClassification;
use tuwen::train::checkpoint;
use tuwen::train::classifier::{
    ClassifierTrainConfig, from_checkpoint, linear_probe, processor_json, train,
};

use crate::train::{Progress, labelled};

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
    /// Architecture (vit-ti16, vit-s16, vit-b16, ...): trained from scratch, or, with --init,
    /// checked against the checkpoint's.
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
    /// Seed of initialisation, data order and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Save a checkpoint every N steps; one is always saved at the end.
    #[arg(long, default_value_t = 200)]
    save_every: usize,
    /// Continue the run saved in OUT/checkpoint.
    #[arg(long)]
    resume: bool,
}

pub fn run(args: ClassifierArgs) -> Result<()> {
    let samples = labelled(&args.data, &args.label_column)?;
    let mut labels: Vec<String> = samples.iter().map(|s| s.caption.clone()).collect();
    labels.sort();
    labels.dedup();
    if labels.len() < 2 {
        bail!(
            "{}: need at least two classes, found {}",
            args.data.display(),
            labels.len()
        );
    }
    eprintln!(
        "{} labelled images of {} classes from {}",
        samples.len(),
        labels.len(),
        args.data.display()
    );
    if !(0.05..=1.0).contains(&args.crop_scale) {
        bail!("--crop-scale {} must be in [0.05, 1]", args.crop_scale);
    }
    let device = Device::flex().autodiff();
    device.seed(args.seed);
    let ckpt_dir = args.out.join("checkpoint");
    let resume_from = if args.resume {
        Some(checkpoint::find(&ckpt_dir).with_context(|| {
            format!(
                "--resume: no checkpoint in {} (start without --resume)",
                ckpt_dir.display()
            )
        })?)
    } else {
        None
    };
    let (model, config, processor) = match (&resume_from, &args.init, &args.arch) {
        (Some(dir), _, _) => {
            let (m, c) = ViTForImageClassification::load(dir, &device)?;
            (
                m,
                c,
                tuwen::pipeline::image_processor(dir, "ViTImageProcessor")?,
            )
        }
        (None, Some(init), arch) => {
            let folder = tuwen::hub::resolve(init)?;
            let (m, c) = from_checkpoint(&folder, &labels, &device)?;
            if let Some(name) = arch {
                let a = vit::arch(name, labels.len()).with_context(|| {
                    format!("unknown --arch {name:?} (known: {})", vit::ARCHS.join(", "))
                })?;
                let sizes = |c: &vit::ViTConfig| {
                    (
                        c.hidden_size,
                        c.num_hidden_layers,
                        c.num_attention_heads,
                        c.patch_size,
                    )
                };
                if sizes(&a) != sizes(&c) {
                    bail!(
                        "--arch {name} (width, layers, heads, patch {:?}) does not match --init (width, layers, heads, patch {:?})",
                        sizes(&a),
                        sizes(&c)
                    );
                }
            }
            (
                m,
                c,
                tuwen::pipeline::image_processor(&folder, "ViTImageProcessor")?,
            )
        }
        (None, None, Some(name)) => {
            let mut c = vit::arch(name, labels.len()).with_context(|| {
                format!("unknown --arch {name:?} (known: {})", vit::ARCHS.join(", "))
            })?;
            if let Some(s) = args.image_size {
                c.image_size = s;
            }
            c.id2label = labels
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), l.clone()))
                .collect();
            c.validate()
                .map_err(|m| anyhow::anyhow!("--arch {name}: {m}"))?;
            let p = tuwen::train::mae::preprocessor_json(c.image_size);
            let p = tuwen::data::ImageProcessor::from_json(&p.to_string())
                .map_err(|m| anyhow::anyhow!(m))?;
            (ViTForImageClassification::new(&c, &device), c, p)
        }
        (None, None, None) => bail!("give --init CHECKPOINT or --arch NAME"),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let processor_bytes = serde_json::to_vec(&processor_json(&processor))?;
    let model = if args.linear_probe {
        let (m, acc) = linear_probe(
            model,
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
        m
    } else {
        let steps = match args.epochs {
            Some(e) if e > 0.0 && e.is_finite() => {
                ((e * samples.len() as f64 / args.batch_size as f64).ceil() as usize).max(1)
            }
            Some(e) => bail!("--epochs {e} must be positive"),
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
        };
        let mut progress = Progress::start(&args.out, steps, resume_from.as_deref())?;
        let (m, losses) = train(
            model,
            &config,
            &processor,
            &samples,
            &labels,
            &cfg,
            |s, _| {
                progress.step(json!({"step": s.step, "loss": s.loss, "lr": s.lr,
                                 "samples_per_s": s.samples_per_s}))
            },
        )?;
        progress.finish();
        if losses.len() >= 2 {
            tuwen::train::plot::loss_curve_png(&losses, &args.out.join("curves.png"))?;
        }
        let last = losses.last().map_or(f32::NAN, |l| l.1);
        eprintln!("trained {} steps: final loss {last:.3}", losses.len());
        m
    };
    model.save(&config, &args.out)?;
    tuwen::hub::write_atomic(&args.out.join("preprocessor_config.json"), &processor_bytes)?;
    if let Some(val) = &args.val {
        let clf = ImageClassification::load(
            args.out.to_str().context("non-UTF-8 path")?,
            &Device::flex(),
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
