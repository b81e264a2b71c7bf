//! `tuwen train mae`: masked-autoencoder pre-training with a progress bar, checkpoints, exact
//! resume, metrics, curves and a picture of reconstructions at the end.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use tuwen::burn::prelude::Device;
use tuwen::data::ImageProcessor;
use tuwen::data::augment::Augment;
use tuwen::data::captions::{CsvSpec, Sample, read_csv};
use tuwen::data::webdataset::{self, ShardStream};
use tuwen::models::vit_mae::{ViTMAEForPreTraining, read_config};
use tuwen::pipeline::mae::MaskedAutoencoder;
use tuwen::train::data::TrainData;
use tuwen::train::mae::{ARCHS, MaeTrainConfig, arch, image_folder, init_folder, train};

use crate::train::Progress;

#[derive(Args)]
pub struct MaeArgs {
    /// Images: a folder (searched recursively), a CSV/TSV with a `filepath` column, or
    /// WebDataset shards (`shards-{0000..0099}.tar`).
    #[arg(long)]
    data: PathBuf,
    /// Output folder: the model in HF layout, metrics.jsonl, curves.png, reconstructions.png.
    #[arg(long)]
    out: PathBuf,
    /// Architecture to train from scratch: tiny (32 px), small (64 px), base, large, huge.
    #[arg(long, default_value = "tiny", conflicts_with = "init")]
    arch: String,
    /// Image side for a model trained from scratch (default: the architecture's).
    #[arg(long)]
    image_size: Option<usize>,
    /// Continue pre-training this ViTMAE checkpoint (folder or HF repo id) instead.
    #[arg(long)]
    init: Option<String>,
    /// Share of patches masked in each image (default: the model's mask_ratio, 0.75).
    #[arg(long)]
    mask_ratio: Option<f64>,
    /// Predict per-patch normalised pixels (a model trained from scratch).
    #[arg(long)]
    norm_pix_loss: bool,
    /// Optimiser steps.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Passes over the images instead of --steps (not for shards).
    #[arg(long)]
    epochs: Option<f64>,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Peak learning rate (AdamW, β = 0.9, 0.95).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Warmup steps.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// Weight decay (none on norms, biases and tokens).
    #[arg(long, default_value_t = 0.05)]
    weight_decay: f64,
    /// Random-resized-crop: the smallest share of the image a crop keeps (the paper: 0.2).
    #[arg(long, default_value_t = 0.2)]
    crop_scale: f64,
    /// Do not mirror half of the images.
    #[arg(long)]
    no_hflip: bool,
    /// Shuffle-buffer size when streaming shards.
    #[arg(long, default_value_t = 1000)]
    shuffle_buffer: usize,
    /// Seed of initialisation, data order, masks and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Save a checkpoint (OUT/checkpoint) every N steps; one is always saved at the end.
    #[arg(long, default_value_t = 200)]
    save_every: usize,
    /// Continue the run saved in OUT/checkpoint (same data and settings).
    #[arg(long)]
    resume: bool,
}

pub fn run(args: MaeArgs, device: &Device) -> Result<()> {
    if !(0.05..=1.0).contains(&args.crop_scale) {
        bail!("--crop-scale {} must be in [0.05, 1]", args.crop_scale);
    }
    let shards = webdataset::is_shards(&args.data);
    let (samples, stream): (Vec<Sample>, Option<ShardStream>) = if shards {
        let mut s = ShardStream::open(&args.data, args.shuffle_buffer, args.seed)?;
        s.images_only = true;
        eprintln!("streaming WebDataset shards {}", args.data.display());
        (Vec::new(), Some(s))
    } else if args.data.is_dir() {
        let s = image_folder(&args.data)?;
        eprintln!("{} images under {}", s.len(), args.data.display());
        (s, None)
    } else {
        // Only the image column matters.
        let spec = CsvSpec {
            caption_column: "filepath".into(),
            ..CsvSpec::default()
        };
        let s = read_csv(&args.data, &spec)?;
        eprintln!("{} images listed in {}", s.len(), args.data.display());
        (s, None)
    };
    let steps = match args.epochs {
        None => args.steps,
        Some(_) if shards => {
            bail!("--epochs needs a known number of images: use --steps with shards")
        }
        Some(e) => tuwen::train::engine::epochs_to_steps(e, samples.len(), args.batch_size)?,
    };
    let init = args.init.as_deref().map(tuwen::hub::resolve).transpose()?;
    crate::train::refuse_input_as_out(&args.out, &[&args.data], init.as_deref())?;
    let ckpt_dir = args.out.join("checkpoint");
    // A new model is made in a scratch folder: nothing is written to --out before training.
    let staging = if args.resume {
        None
    } else {
        Some(tuwen::hub::scratch_dir(&args.out)?)
    };
    let staged = || staging.as_ref().expect("made when not resuming").path();
    let resume_from = if args.resume {
        Some(crate::train::resume_dir(&ckpt_dir)?)
    } else {
        match &args.init {
            Some(m) => {
                let folder = tuwen::hub::resolve(m)?;
                read_config(&folder)?;
                tuwen::pipeline::convert(
                    folder.to_str().context("non-UTF-8 path")?,
                    staged(),
                    &Device::flex(),
                )?;
            }
            None => {
                let mut cfg = arch(&args.arch, args.image_size).with_context(|| {
                    format!(
                        "unknown --arch {:?} (known: {})",
                        args.arch,
                        ARCHS.join(", ")
                    )
                })?;
                cfg.norm_pix_loss = args.norm_pix_loss;
                if let Some(r) = args.mask_ratio {
                    cfg.mask_ratio = r;
                }
                init_folder(staged(), &cfg, args.seed)?;
            }
        }
        None
    };
    let folder = resume_from
        .clone()
        .unwrap_or_else(|| staged().to_path_buf());
    let (model, config) = ViTMAEForPreTraining::load(&folder, &device.clone().autodiff())?;
    let processor = tuwen::pipeline::image_processor(&folder, "ViTImageProcessor")?;
    check_size(&processor, config.vit.image_size)?;
    let mut cfg = MaeTrainConfig {
        steps,
        batch_size: args.batch_size,
        lr: args.lr,
        warmup: args.warmup,
        weight_decay: args.weight_decay,
        max_grad_norm: 0.0,
        mask_ratio: args.mask_ratio.unwrap_or(config.mask_ratio),
        seed: args.seed,
        augment: Augment {
            min_scale: args.crop_scale,
            hflip: !args.no_hflip,
        },
        checkpoint_every: args.save_every,
        checkpoint_dir: Some(ckpt_dir),
        resume_from: resume_from.clone(),
        ..MaeTrainConfig::default()
    };
    let mut progress = Progress::start(steps, resume_from.as_deref())?;
    cfg.metrics = Some(args.out.join("metrics.jsonl"));
    cfg.stop = Some(progress.stop_flag());
    let data = match stream {
        Some(s) => TrainData::Shards(s),
        None => TrainData::Samples(&samples),
    };
    let (model, report) = train(model, &config, &processor, data, &cfg, |s| progress.step(s))?;
    progress.finish();
    model.save(&config, &args.out)?;
    processor.save(&args.out)?;
    let done = report.losses.len();
    if done >= 2 {
        tuwen::train::plot::loss_curve_png(&report.losses, &args.out.join("curves.png"))?;
    }
    // What the model makes of a few training images.
    if !samples.is_empty() {
        let mae = MaskedAutoencoder::load_folder(&args.out, device)?;
        let some: Vec<PathBuf> = samples.iter().take(4).map(|s| s.image.clone()).collect();
        let r = mae.reconstruct(&some, cfg.mask_ratio, args.seed)?;
        r.png(
            &mae.processor,
            config.norm_pix_loss,
            &args.out.join("reconstructions.png"),
        )?;
    }
    if report.stopped {
        eprintln!(
            "interrupted after {done} steps; saved the model to {} (continue with --resume)",
            args.out.display()
        );
    }
    let first = report.losses.first().map_or(f32::NAN, |l| l.1);
    let last = report.losses.last().map_or(f32::NAN, |l| l.1);
    eprintln!(
        "trained {done} steps: masked-patch loss {first:.3} -> {last:.3}, {:.0} images/s, {} unreadable images skipped; model in {}",
        report.samples_per_s,
        report.skipped,
        args.out.display()
    );
    Ok(())
}

fn check_size(processor: &ImageProcessor, size: usize) -> Result<()> {
    let probe = tuwen::image::RgbImage::new(size as u32 + 7, size as u32 + 3);
    let (_, shape) = processor.preprocess(&probe);
    if shape[1] != size || shape[2] != size {
        bail!(
            "the preprocessor makes {}x{} images but the model takes {size}x{size}",
            shape[1],
            shape[2]
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct BenchMaeArgs {
    /// Architecture: tiny, small, base, large, huge.
    #[arg(long, default_value = "base")]
    arch: String,
    /// Images per step.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// The mask ratio compared with no masking.
    #[arg(long, default_value_t = 0.75)]
    mask_ratio: f64,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed steps (median).
    #[arg(long, default_value_t = 5)]
    steps: usize,
}

pub fn bench(a: BenchMaeArgs, device: &Device) -> Result<()> {
    let cfg = arch(&a.arch, None)
        .with_context(|| format!("unknown --arch {:?} (known: {})", a.arch, ARCHS.join(", ")))?;
    if a.steps == 0 || a.batch_size == 0 || !(0.0..1.0).contains(&a.mask_ratio) {
        bail!("--steps and --batch-size must be positive and --mask-ratio in [0, 1)");
    }
    // Alternate the two settings, so that the machine's drift touches both alike.
    let (mut e0, mut f0, mut e1, mut f1) = (vec![], vec![], vec![], vec![]);
    for _ in 0..3 {
        let (e, f) =
            tuwen::train::mae::step_times(device, &cfg, a.batch_size, 0.0, a.warmup, a.steps)?;
        e0.push(e);
        f0.push(f);
        let (e, f) = tuwen::train::mae::step_times(
            device,
            &cfg,
            a.batch_size,
            a.mask_ratio,
            a.warmup,
            a.steps,
        )?;
        e1.push(e);
        f1.push(f);
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (e0, f0, e1, f1) = (med(e0), med(f0), med(e1), med(f1));
    println!(
        "MAE {} ({}x{} px, {} patches), batch {}, {} threads, forward + backward, median ms:",
        a.arch,
        cfg.vit.image_size,
        cfg.vit.image_size,
        cfg.num_patches(),
        a.batch_size,
        tuwen::device::threads()
    );
    println!(
        "  encoder: {:.1} (no masking) vs {:.1} (mask {}): {:.2}x faster",
        e0 * 1e3,
        e1 * 1e3,
        a.mask_ratio,
        e0 / e1
    );
    println!(
        "  encoder + decoder + loss: {:.1} vs {:.1}: {:.2}x faster",
        f0 * 1e3,
        f1 * 1e3,
        f0 / f1
    );
    Ok(())
}

#[derive(Args)]
pub struct RatioStudyArgs {
    /// Labelled training images (CSV with filepath and --label-column): pre-training uses the
    /// images, the linear probe the labels.
    #[arg(long)]
    data: PathBuf,
    /// Labelled test images for the probe's score.
    #[arg(long)]
    test: PathBuf,
    /// The label column.
    #[arg(long, default_value = "label")]
    label_column: String,
    /// Mask ratios to compare.
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,0.75,0.9")]
    ratios: Vec<f64>,
    /// Architecture.
    #[arg(long, default_value = "tiny")]
    arch: String,
    /// Pre-training steps per ratio.
    #[arg(long, default_value_t = 800)]
    steps: usize,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder: ratio_study.json, ratio_study.md, ratio_study.png and the runs.
    #[arg(long)]
    out: PathBuf,
    /// Only draw the table and chart again from OUT/ratio_study.json.
    #[arg(long)]
    replot: bool,
}

pub fn ratio_study(a: RatioStudyArgs, device: &Device) -> Result<()> {
    if a.replot {
        let path = a.out.join("ratio_study.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("--replot: cannot read {}", path.display()))?;
        let rows: Vec<tuwen::train::mae::RatioRow> = serde_json::from_str(&text)
            .with_context(|| format!("--replot: {} is not a study", path.display()))?;
        return report(&rows, &a.out);
    }
    let cfg = arch(&a.arch, None)
        .with_context(|| format!("unknown --arch {:?} (known: {})", a.arch, ARCHS.join(", ")))?;
    let spec = CsvSpec {
        caption_column: a.label_column.clone(),
        ..CsvSpec::default()
    };
    let train_set = read_csv(&a.data, &spec)?;
    let test = read_csv(&a.test, &spec)?;
    // The label also lives in `extra` for the probe.
    let with_label = |v: Vec<Sample>| -> Vec<Sample> {
        v.into_iter()
            .map(|mut s| {
                s.extra.insert(a.label_column.clone(), s.caption.clone());
                s
            })
            .collect()
    };
    let (train_set, test) = (with_label(train_set), with_label(test));
    let run = MaeTrainConfig {
        steps: a.steps,
        batch_size: a.batch_size,
        lr: a.lr,
        seed: a.seed,
        ..MaeTrainConfig::default()
    };
    eprintln!(
        "{} training and {} test images; {} steps of {} per ratio",
        train_set.len(),
        test.len(),
        a.steps,
        a.batch_size
    );
    let rows = tuwen::train::mae::ratio_study(
        device,
        &cfg,
        &train_set,
        &test,
        &a.label_column,
        &a.ratios,
        &run,
        &a.out,
        |r| {
            eprintln!(
                "{}: linear probe {:.1}%{}",
                r.mask_ratio
                    .map_or("random init".to_string(), |m| format!("mask {m}")),
                r.probe_top1 * 100.0,
                r.final_loss.map_or(String::new(), |l| format!(
                    ", final loss {l:.3}, {:.0} s",
                    r.seconds
                ))
            )
        },
    )?;
    report(&rows, &a.out)
}

/// Writes the study's table (Markdown), rows (JSON) and chart (PNG) to `out`, and prints the table.
fn report(rows: &[tuwen::train::mae::RatioRow], out: &std::path::Path) -> Result<()> {
    let mut md = String::from(
        "| pre-training | final masked-patch loss | linear probe top-1 |\n|---|---|---|\n",
    );
    for r in rows {
        md.push_str(&format!(
            "| {} | {} | {:.1}% |\n",
            r.mask_ratio
                .map_or("none (random init)".to_string(), |m| format!(
                    "mask ratio {m}"
                )),
            r.final_loss.map_or("-".to_string(), |l| format!("{l:.3}")),
            r.probe_top1 * 100.0
        ));
    }
    tuwen::hub::write_atomic(&out.join("ratio_study.md"), md.as_bytes())?;
    tuwen::hub::write_atomic(
        &out.join("ratio_study.json"),
        serde_json::to_string_pretty(&rows)?.as_bytes(),
    )?;
    let bars: Vec<(String, f64)> = rows
        .iter()
        .filter_map(|r| r.mask_ratio.map(|m| (format!("{m}"), r.probe_top1)))
        .collect();
    let Some(init) = rows.first() else {
        bail!("the ratio study holds no rows");
    };
    tuwen::train::plot::bar_chart_png(
        &bars,
        Some(("random init", init.probe_top1)),
        "linear-probe top-1 after MAE pre-training, by mask ratio",
        &out.join("ratio_study.png"),
    )?;
    print!("{md}");
    Ok(())
}
