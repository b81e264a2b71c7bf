//! `tuwen train vqgan`: VQGAN's first stage on a folder of images.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;
use tuwen::burn::module::Module;
use tuwen::burn::prelude::Device;
use tuwen::loss::CommitPlacement;
use tuwen::models::lpips::Lpips;
use tuwen::models::vqgan::{VqConfig, VqModel};
use tuwen::nn::activation::Activation;
use tuwen::pipeline::vqgan::{VqAutoencoder, pairs_png};
use tuwen::train::RunConfig;
use tuwen::train::data::TrainData;
use tuwen::train::vqgan::{VqGan, VqTrainConfig, train};

use crate::train::{Progress, refuse_input_as_out, resume_dir};

#[derive(Args)]
pub struct TrainVqganArgs {
    /// A folder of images (searched recursively).
    #[arg(long)]
    data: PathBuf,
    /// Output folder: the model in diffusers' VQModel layout (config.json,
    /// diffusion_pytorch_model.safetensors), metrics.jsonl, curves.png, reconstructions.png.
    #[arg(long)]
    out: PathBuf,
    /// Codebook entries.
    #[arg(long, default_value_t = 256)]
    codebook_size: usize,
    /// Width of a code.
    #[arg(long, default_value_t = 8)]
    code_dim: usize,
    /// Side reduction from image to code grid: 1, 2, 4, 8, 16 (a power of two).
    #[arg(long, default_value_t = 4)]
    downsample: usize,
    /// Image side (images are resized to it).
    #[arg(long, default_value_t = 32)]
    image_size: usize,
    /// Image channels: 1 (grey) or 3.
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// Channels of the finest level (doubled once at the next, then kept).
    #[arg(long, default_value_t = 32)]
    width: usize,
    /// ResNet blocks per encoder level (the decoder has one more).
    #[arg(long, default_value_t = 1)]
    layers_per_block: usize,
    /// Self-attention in the coarsest level's blocks (the middle blocks always have it).
    #[arg(long)]
    attention: bool,
    /// Steps.
    #[arg(long, default_value_t = 2000)]
    steps: usize,
    /// Images per step.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Adam's learning rate (both networks).
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// β of the quantiser's commitment term.
    #[arg(long, default_value_t = 0.25)]
    beta: f64,
    /// Put β on the codebook term instead, as taming-transformers' code does.
    #[arg(long)]
    legacy_beta: bool,
    /// Update the codebook by exponential moving averages with this decay (e.g. 0.99) instead
    /// of by gradient.
    #[arg(long)]
    ema_decay: Option<f64>,
    /// Restart a code unused for this many steps at a random encoder output (0: never).
    #[arg(long, default_value_t = 0)]
    restart_after: usize,
    /// l2-normalise codes and encoder outputs before the lookup (diffusers ignores this).
    #[arg(long)]
    l2_codes: bool,
    /// LPIPS weights (safetensors with the lpips package's names; see
    /// python/export_lpips.py). Without them the perceptual term is off.
    #[arg(long)]
    lpips: Option<PathBuf>,
    /// Weight of the perceptual term.
    #[arg(long, default_value_t = 1.0)]
    perceptual_weight: f64,
    /// The step the PatchGAN discriminator joins at (default: half of --steps).
    #[arg(long)]
    disc_start: Option<usize>,
    /// Factor of the adaptive weight of the adversarial term (0: no discriminator).
    #[arg(long, default_value_t = 0.8)]
    disc_weight: f64,
    /// The discriminator's stride-2 layers.
    #[arg(long, default_value_t = 2)]
    disc_layers: usize,
    /// The discriminator's first width.
    #[arg(long, default_value_t = 32)]
    disc_filters: usize,
    /// Held-out images for validation (taken out of training).
    #[arg(long, default_value_t = 64)]
    val_images: usize,
    /// An image classifier trained on the same kind of images (`tuwen train classifier`): each
    /// validation also logs a Fréchet distance on its features between the held-out images
    /// and their reconstructions (`val_fid`, fid.png).
    #[arg(long)]
    classifier: Option<String>,
    /// Seed of the initialisation, the data order and every draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write a checkpoint every N steps (0: at the end).
    #[arg(long, default_value_t = 500)]
    save_every: usize,
    /// Measure the held-out reconstructions every N steps (0: only at the end).
    #[arg(long, default_value_t = 250)]
    val_every: usize,
    /// Continue from the checkpoint in --out.
    #[arg(long)]
    resume: bool,
}

fn new_config(a: &TrainVqganArgs) -> Result<VqConfig> {
    if !a.downsample.is_power_of_two() || a.downsample > 64 {
        bail!(
            "--downsample {} must be a power of two up to 64",
            a.downsample
        );
    }
    let levels = a.downsample.trailing_zeros() as usize + 1;
    let widths: Vec<usize> = (0..levels)
        .map(|i| if i == 0 { a.width } else { 2 * a.width })
        .collect();
    let groups = [32, 16, 8, 4, 2, 1]
        .into_iter()
        .find(|g| widths.iter().all(|w| w % g == 0) && a.width >= 2 * g)
        .unwrap_or(1);
    let mut down = vec!["DownEncoderBlock2D".to_string(); levels];
    let mut up = vec!["UpDecoderBlock2D".to_string(); levels];
    if a.attention {
        down[levels - 1] = "AttnDownEncoderBlock2D".into();
        up[0] = "AttnUpDecoderBlock2D".into();
    }
    let cfg = VqConfig {
        in_channels: a.channels,
        out_channels: a.channels,
        down_block_types: down,
        up_block_types: up,
        block_out_channels: widths,
        layers_per_block: a.layers_per_block,
        act_fn: Activation::Silu,
        latent_channels: a.code_dim,
        sample_size: a.image_size,
        num_vq_embeddings: a.codebook_size,
        norm_num_groups: groups,
        vq_embed_dim: Some(a.code_dim),
        l2_normalized_codes: a.l2_codes,
        ..VqConfig::default()
    };
    cfg.validate().map_err(|m| anyhow::anyhow!("{m}"))?;
    Ok(cfg)
}

pub fn train_vqgan(a: TrainVqganArgs, device: &Device) -> Result<()> {
    refuse_input_as_out(&a.out, &[&a.data], None)?;
    if !(a.channels == 1 || a.channels == 3) {
        bail!("--channels {} must be 1 or 3", a.channels);
    }
    // Every flag is checked before anything is read or printed.
    let fresh_cfg = if a.resume {
        None
    } else {
        Some(new_config(&a)?)
    };
    if let Some(d) = a.ema_decay
        && !(d > 0.0 && d < 1.0)
    {
        bail!("--ema-decay {d} must be in (0, 1)");
    }
    if a.disc_layers == 0 || a.disc_layers > 6 || a.disc_filters == 0 || a.disc_filters > 1024 {
        bail!("--disc-layers must be 1 to 6 and --disc-filters 1 to 1024");
    }
    let lpips = match &a.lpips {
        Some(p) => Some(Lpips::load(p, &device.clone().autodiff())?),
        None => None,
    };
    let mut samples = tuwen::train::mae::image_folder(&a.data)?;
    // A fixed, spread-out held-out set: every k-th image, at most --val-images.
    let n_val = a.val_images.min(samples.len() / 5);
    let val_samples: Vec<_> = if let Some(k) = samples.len().checked_div(n_val) {
        let picked: Vec<usize> = (0..n_val).map(|i| i * k).collect();
        let val = picked.iter().map(|&i| samples[i].clone()).collect();
        let mut i = 0;
        samples.retain(|_| {
            let keep = !picked.contains(&i);
            i += 1;
            keep
        });
        val
    } else {
        vec![]
    };
    eprintln!(
        "{} training images, {} held out, under {}",
        samples.len(),
        val_samples.len(),
        a.data.display()
    );
    if lpips.is_none() {
        eprintln!(
            "no --lpips weights: the perceptual term is off (L1 + codebook + adversarial only)"
        );
    }
    let disc_start = a.disc_start.unwrap_or(a.steps / 2);
    let run = RunConfig {
        steps: a.steps,
        batch_size: a.batch_size,
        seed: a.seed,
        checkpoint_every: a.save_every,
        checkpoint_dir: Some(a.out.join("checkpoint")),
        val_every: a.val_every,
        metrics: Some(a.out.join("metrics.jsonl")),
        constant_lr: true,
        ..RunConfig::default()
    };
    let mut cfg = VqTrainConfig::new(run);
    cfg.lr = a.lr;
    cfg.losses.beta = a.beta;
    cfg.losses.placement = if a.legacy_beta {
        CommitPlacement::Legacy
    } else {
        CommitPlacement::Paper
    };
    cfg.losses.perceptual_weight = a.perceptual_weight;
    cfg.losses.disc_weight = a.disc_weight;
    cfg.ema_decay = a.ema_decay;
    cfg.restart_after = a.restart_after;
    cfg.disc_start = disc_start;
    cfg.disc_layers = a.disc_layers;
    cfg.disc_filters = a.disc_filters;
    let ad = device.clone().autodiff();
    let (models, model_cfg, resume_from) = if a.resume {
        let dir = resume_dir(&a.out.join("checkpoint"))?;
        let (model, model_cfg) = VqModel::load(&dir, &ad)?;
        let disc = tuwen::models::vqgan::PatchDiscriminator::new(
            model_cfg.out_channels,
            cfg.disc_filters,
            cfg.disc_layers,
            &ad,
        );
        let disc = tuwen::hub::load_weights(disc, &dir.join("discriminator"), &[], &[])?;
        (VqGan { model, disc }, model_cfg, Some(dir))
    } else {
        let model_cfg = fresh_cfg.expect("made above");
        tuwen::memory::check(
            device,
            16 * model_cfg.num_params() as u128,
            "the autoencoder with its optimiser state",
            "--width, --codebook-size or --layers-per-block",
        )?;
        let models = tuwen::train::engine::init_seeded(&ad, a.seed, |d| {
            VqGan::new(VqModel::new(&model_cfg, d), &model_cfg, &cfg)
        });
        (models, model_cfg, None)
    };
    if model_cfg.sample_size < 8 * (1 << cfg.disc_layers) / 2 && a.disc_weight > 0.0 {
        bail!(
            "--disc-layers {} is too deep for {}px images (each layer halves the side)",
            cfg.disc_layers,
            model_cfg.sample_size
        );
    }
    cfg.run.resume_from = resume_from.clone();
    eprintln!(
        "VQGAN: {} parameters, {}x{} codes of {} entries ({} wide); discriminator from step {}",
        model_cfg.num_params(),
        model_cfg.grid(),
        model_cfg.grid(),
        model_cfg.num_vq_embeddings,
        model_cfg.code_dim(),
        disc_start
    );
    // Held-out images as the model takes them.
    let val_paths: Vec<PathBuf> = val_samples.iter().map(|s| s.image.clone()).collect();
    let val_values = {
        let probe = VqAutoencoder {
            model: VqModel::new(&model_cfg, device),
            config: model_cfg.clone(),
        };
        let mut v = Vec::new();
        for p in &val_paths {
            match probe.image_values(p) {
                Ok((x, _)) => v.extend(x),
                Err(e) => eprintln!("{}: skipped ({e})", p.display()),
            }
        }
        v
    };
    let classifier = a
        .classifier
        .as_deref()
        .map(|c| tuwen::pipeline::ImageClassification::load(c, device))
        .transpose()?;
    let shape = [
        model_cfg.out_channels,
        model_cfg.sample_size,
        model_cfg.sample_size,
    ];
    let scorer = match &classifier {
        Some(c) if val_values.len() >= 2 * shape.iter().product::<usize>() => {
            Some(tuwen::train::vqgan::Scorer::new(c, &val_values, shape)?)
        }
        Some(_) => bail!("--classifier needs at least two held-out images (--val-images)"),
        None => None,
    };
    let mut progress = Progress::start(a.steps, resume_from.as_deref())?;
    cfg.run.stop = Some(progress.stop_flag());
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let (models, report) = train(
        models,
        &model_cfg,
        TrainData::Samples(&samples),
        lpips.as_ref(),
        val_values.clone(),
        scorer,
        &cfg,
        |s, _| {
            if let Some(p) = s.metrics["val_psnr"].as_f64() {
                let fid = s.metrics["val_fid"]
                    .as_f64()
                    .map_or(String::new(), |f| format!(", Fréchet distance {f:.3}"));
                eprintln!(
                    "step {}: held-out PSNR {p:.2} dB, SSIM {:.3}, codes used {:.1}%{fid}",
                    s.step + 1,
                    s.metrics["val_ssim"].as_f64().unwrap_or(f64::NAN),
                    s.metrics["val_usage"].as_f64().unwrap_or(f64::NAN) * 100.0
                );
            }
            progress.step(s)
        },
    )?;
    progress.finish();
    let model = models.model.valid();
    model.save(&model_cfg, &a.out)?;
    // Pictures and the final measures, from the saved folder.
    let vq = VqAutoencoder::load(&a.out, device)?;
    let mut summary = json!({"steps": report.losses.len(), "disc_start": disc_start,
        "lpips": a.lpips.is_some()});
    if !val_paths.is_empty() {
        let per = model_cfg.in_channels * model_cfg.sample_size * model_cfg.sample_size;
        let inputs: Vec<Vec<f32>> = val_values.chunks(per).map(<[f32]>::to_vec).collect();
        let r = vq.reconstruct_values(inputs)?;
        let mut shown = r.clone();
        shown.inputs.truncate(16);
        shown.reconstructions.truncate(16);
        let shape = [
            model_cfg.out_channels,
            model_cfg.sample_size,
            model_cfg.sample_size,
        ];
        pairs_png(&shown, shape, 8, &a.out.join("reconstructions.png"))?;
        let all: Vec<i64> = r.codes.iter().flatten().copied().collect();
        let (usage, perplexity) =
            tuwen::train::vqgan::usage_and_perplexity(&all, model_cfg.num_vq_embeddings);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let (psnr, ssim) = (mean(&r.psnr), mean(&r.ssim));
        eprintln!(
            "held-out ({} images): PSNR {psnr:.2} dB, SSIM {ssim:.3}, {:.1}% of codes used, \
             perplexity {perplexity:.1}",
            r.inputs.len(),
            usage * 100.0
        );
        summary["held_out"] = json!({"images": r.inputs.len(), "psnr": psnr, "ssim": ssim,
            "usage": usage, "perplexity": perplexity});
        if let Some(c) = &classifier {
            let recs: Vec<f32> = r.reconstructions.concat();
            let fid =
                tuwen::train::vqgan::Scorer::new(c, &val_values, shape)?.score(&recs, shape)?;
            eprintln!("held-out Fréchet distance of the reconstructions: {fid:.3}");
            summary["held_out"]["fid"] = json!(fid);
        }
    }
    curves(&a.out)?;
    crate::train::finish_report(
        &a.out,
        &summary,
        &report,
        "steps; model (diffusers VQModel), reconstructions.png, curves.png",
    )
}

/// `curves.png`: the reconstruction loss per step, and the held-out PSNR and code usage.
fn curves(out: &Path) -> Result<()> {
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let series = |key: &str| -> Vec<(usize, f32)> {
        lines
            .iter()
            .filter_map(|v| Some((v["step"].as_u64()? as usize + 1, v[key].as_f64()? as f32)))
            .collect()
    };
    let rec = series("rec_loss");
    if rec.len() < 2 {
        return Ok(());
    }
    tuwen::train::plot::series_png(
        "training: L1 reconstruction loss and codebook usage",
        &[
            ("L1 |x - x_rec| (batch)", &rec, [200, 60, 50]),
            (
                "share of codes used (batch)",
                &series("usage"),
                [20, 60, 160],
            ),
        ],
        &out.join("curves.png"),
    )?;
    for (key, title, file) in [
        ("val_psnr", "held-out PSNR (dB)", "psnr.png"),
        (
            "val_fid",
            "Frechet distance, held-out reconstructions",
            "fid.png",
        ),
    ] {
        let v = series(key);
        if v.len() >= 2 {
            tuwen::train::plot::series_png(title, &[(key, &v, [20, 120, 60])], &out.join(file))?;
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct TrainPriorArgs {
    /// The VQGAN whose codes the prior models (`tuwen train vqgan`, or any diffusers VQModel).
    #[arg(long)]
    vqgan: String,
    /// Images: a folder, or a CSV (filepath column; with --conditional, a label column).
    #[arg(long)]
    data: PathBuf,
    /// Held-out images for the validation loss (as --data; default: 5% of --data).
    #[arg(long)]
    val: Option<PathBuf>,
    /// Output folder: a transformers GPT-2 checkpoint, metrics.jsonl, curves.png.
    #[arg(long)]
    out: PathBuf,
    /// Class-conditional: the CSV's --label-column, or a folder's class subfolders.
    #[arg(long)]
    conditional: bool,
    /// The CSV's label column.
    #[arg(long, default_value = "label")]
    label_column: String,
    /// Width.
    #[arg(long, default_value_t = 128)]
    n_embd: usize,
    /// Blocks.
    #[arg(long, default_value_t = 4)]
    n_layer: usize,
    /// Heads.
    #[arg(long, default_value_t = 4)]
    n_head: usize,
    /// Dropout (embeddings, attention, residuals).
    #[arg(long, default_value_t = 0.1)]
    dropout: f64,
    /// Steps.
    #[arg(long, default_value_t = 3000)]
    steps: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// AdamW's peak learning rate (warmup, then cosine).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// AdamW's weight decay.
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Warmup steps.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write a checkpoint every N steps (0: at the end).
    #[arg(long, default_value_t = 1000)]
    save_every: usize,
    /// Held-out loss every N steps (0: never).
    #[arg(long, default_value_t = 250)]
    val_every: usize,
    /// Continue from the checkpoint in --out.
    #[arg(long)]
    resume: bool,
}

/// Images and their class names (None: unconditional).
fn prior_images(
    path: &Path,
    conditional: bool,
    label_column: &str,
) -> Result<(Vec<PathBuf>, Vec<Option<String>>)> {
    let samples = if conditional {
        tuwen::data::labelled::labelled(path, label_column)?
    } else if path.is_dir() {
        tuwen::train::mae::image_folder(path)?
    } else {
        tuwen::data::captions::open(path, &Default::default(), "{}")?
    };
    let labels = samples
        .iter()
        .map(|s| conditional.then(|| s.extra.get(label_column).cloned().unwrap_or_default()))
        .collect();
    Ok((samples.into_iter().map(|s| s.image).collect(), labels))
}

pub fn train_prior(a: TrainPriorArgs, device: &Device) -> Result<()> {
    use tuwen::pipeline::vqgan::PriorSpec;
    use tuwen::train::vq_prior::{PriorTrainConfig, encode_images, prior_config, sequences};
    let vq_folder = tuwen::hub::resolve(&a.vqgan)?;
    refuse_input_as_out(&a.out, &[&a.data, &vq_folder], None)?;
    let vq = VqAutoencoder::load(&vq_folder, device)?;
    let (paths, labels) = prior_images(&a.data, a.conditional, &a.label_column)?;
    let mut classes: Vec<String> = labels.iter().flatten().cloned().collect();
    classes.sort();
    classes.dedup();
    if a.conditional && classes.len() < 2 {
        bail!(
            "--conditional: {} has fewer than two classes",
            a.data.display()
        );
    }
    let spec = PriorSpec {
        codebook_size: vq.config.num_vq_embeddings,
        grid: vq.config.grid(),
        classes: classes.clone(),
    };
    let class_of =
        |l: &Option<String>| l.as_ref().and_then(|l| classes.iter().position(|c| c == l));
    eprintln!(
        "encoding {} images into {g}x{g} codes with {} ...",
        paths.len(),
        vq_folder.display(),
        g = spec.grid
    );
    let (codes, skipped) = encode_images(&vq, &paths)?;
    let kept: Vec<Option<usize>> = labels
        .iter()
        .enumerate()
        .filter(|(i, _)| !skipped.contains(i))
        .map(|(_, l)| class_of(l))
        .collect();
    if !skipped.is_empty() {
        eprintln!("{} unreadable images skipped", skipped.len());
    }
    // Held-out sequences: --val, or every 20th image.
    let (train_codes, train_classes, val_rows) = match &a.val {
        Some(v) => {
            let (vp, vl) = prior_images(v, a.conditional, &a.label_column)?;
            let (vc, vs) = encode_images(&vq, &vp)?;
            let vk: Vec<Option<usize>> = vl
                .iter()
                .enumerate()
                .filter(|(i, _)| !vs.contains(i))
                .map(|(_, l)| class_of(l))
                .collect();
            (codes, kept, rows_of(&spec, &vc, &vk))
        }
        None => {
            let (mut tc, mut tk, mut vc, mut vk) = (vec![], vec![], vec![], vec![]);
            for (i, (c, k)) in codes.into_iter().zip(kept).enumerate() {
                if i % 20 == 19 {
                    vc.push(c);
                    vk.push(k);
                } else {
                    tc.push(c);
                    tk.push(k);
                }
            }
            let val = rows_of(&spec, &vc, &vk);
            (tc, tk, val)
        }
    };
    let rows = sequences(&spec, &train_codes, &train_classes);
    let all: Vec<i64> = train_codes.iter().flatten().copied().collect();
    let (usage, _) = tuwen::train::vqgan::usage_and_perplexity(&all, spec.codebook_size);
    eprintln!(
        "{} training and {} held-out sequences of {} codes ({:.1}% of the codebook in use){}",
        train_codes.len(),
        val_rows.len(),
        spec.grid * spec.grid,
        usage * 100.0,
        if classes.is_empty() {
            String::new()
        } else {
            format!(", {} classes", classes.len())
        }
    );
    let run = RunConfig {
        steps: a.steps,
        batch_size: a.batch_size,
        warmup: a.warmup,
        seed: a.seed,
        checkpoint_every: a.save_every,
        checkpoint_dir: Some(a.out.join("checkpoint")),
        val_every: a.val_every,
        metrics: Some(a.out.join("metrics.jsonl")),
        ..RunConfig::default()
    };
    let mut cfg = PriorTrainConfig {
        run,
        lr: a.lr,
        weight_decay: a.weight_decay,
    };
    let ad = device.clone().autodiff();
    let (model, model_cfg, resume_from) = if a.resume {
        let dir = resume_dir(&a.out.join("checkpoint"))?;
        let prior = tuwen::pipeline::vqgan::VqPrior::load(&dir, &ad)?;
        if prior.spec != spec {
            bail!("--resume: the checkpoint models other codes or classes than --vqgan and --data");
        }
        (prior.model, prior.config, Some(dir))
    } else {
        let model_cfg = prior_config(&spec, a.n_embd, a.n_layer, a.n_head, a.dropout)?;
        let model = tuwen::train::engine::init_seeded(&ad, a.seed, |d| {
            tuwen::models::gpt2::Gpt2LMHeadModel::new(&model_cfg, d)
        });
        (model, model_cfg, None)
    };
    cfg.run.resume_from = resume_from.clone();
    let mut progress = Progress::start(a.steps, resume_from.as_deref())?;
    cfg.run.stop = Some(progress.stop_flag());
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let (model, report) =
        tuwen::train::vq_prior::train(model, &model_cfg, &spec, &rows, val_rows, &cfg, |s, _| {
            if let Some(nll) = s.metrics["val_nll"].as_f64() {
                eprintln!(
                    "step {}: held-out loss {nll:.3} nats per code (perplexity {:.1})",
                    s.step + 1,
                    nll.exp()
                );
            }
            progress.step(s)
        })?;
    progress.finish();
    tuwen::train::vq_prior::save_prior(&model.valid(), &model_cfg, &spec, &a.out)?;
    if report.losses.len() >= 2 {
        tuwen::train::plot::loss_curve_png(&report.losses, &a.out.join("curves.png"))?;
    }
    eprintln!(
        "trained {} steps; the prior (a transformers GPT-2 folder) is in {}; sample with \
         tuwen sample --model {} --vqgan {}",
        report.losses.len(),
        a.out.display(),
        a.out.display(),
        a.vqgan
    );
    Ok(())
}

fn rows_of(
    spec: &tuwen::pipeline::vqgan::PriorSpec,
    codes: &[Vec<i64>],
    classes: &[Option<usize>],
) -> Vec<Vec<i64>> {
    codes
        .iter()
        .zip(classes)
        .map(|(c, k)| {
            let mut r = vec![spec.first_token(*k)];
            r.extend(c);
            r
        })
        .collect()
}

/// A prior's sampling flags.
#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// A prior's sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// A prior's top-k (0: all codes).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// A prior's top-p (1: all codes).
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
}

impl SamplingArgs {
    /// The generation module's settings with `seed`.
    pub fn with_seed(&self, seed: u64) -> tuwen::generate::Sampling {
        tuwen::generate::Sampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed,
        }
    }
}

/// `tuwen sample --vqgan`: codes from the prior, decoded.
pub struct PriorSampleArgs<'a> {
    pub model: &'a str,
    pub vqgan: &'a str,
    pub n: usize,
    pub out: &'a Path,
    pub class: Option<&'a str>,
    pub sampling: tuwen::generate::Sampling,
}

/// Decoded samples of a prior `[n][C·H·W]` and the VQGAN's config.
pub fn prior_samples(
    prior_folder: &Path,
    vq_folder: &Path,
    n: usize,
    class: Option<&str>,
    sampling: &tuwen::generate::Sampling,
    device: &Device,
) -> Result<(Vec<Vec<f32>>, VqConfig)> {
    let prior = tuwen::pipeline::vqgan::VqPrior::load(prior_folder, device)?;
    let vq = VqAutoencoder::load(vq_folder, device)?;
    prior.check_matches(&vq.config)?;
    let class = class.map(|c| prior.spec.class_index(c)).transpose()?;
    if n == 0 || n > 100_000 {
        bail!("--n {n} must be between 1 and 100000");
    }
    let codes = prior.sample(n, class, sampling)?;
    Ok((vq.decode(&codes)?, vq.config))
}

pub fn sample_prior(a: PriorSampleArgs, device: &Device) -> Result<()> {
    let prior_folder = tuwen::hub::resolve(a.model)?;
    let vq_folder = tuwen::hub::resolve(a.vqgan)?;
    tuwen::data::files::refuse_overwrite("--out", a.out, &[], &[&prior_folder, &vq_folder])?;
    let (images, cfg) =
        prior_samples(&prior_folder, &vq_folder, a.n, a.class, &a.sampling, device)?;
    let s = cfg.sample_size;
    let shape = [cfg.out_channels, s, s];
    let flat: Vec<f32> = images.concat();
    let ext = a
        .out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if ext.as_deref() == Some("npy") {
        tuwen::data::arrays::write_npy(a.out, &flat, &[a.n, shape[0], s, s])?;
    } else {
        let cols = (a.n as f64).sqrt().ceil() as usize;
        let scale = (64 / s.max(1)).clamp(1, 8) as u32;
        tuwen::pipeline::gan::grid_png(&flat, shape, cols, scale, a.out)?;
    }
    eprintln!("wrote {} samples to {}", a.n, a.out.display());
    Ok(())
}

#[derive(Args)]
pub struct EvalPriorArgs {
    /// A prior folder (`tuwen train vq-prior`).
    #[arg(long)]
    model: String,
    /// The VQGAN that decodes its codes.
    #[arg(long)]
    vqgan: String,
    /// An image classifier trained on the same kind of images (`tuwen train classifier`):
    /// its features are the space of the Fréchet distance.
    #[arg(long)]
    classifier: String,
    /// Real images: a folder.
    #[arg(long)]
    data: PathBuf,
    /// Samples to score.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Seed of the samples and of the random codes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Print the scores as JSON.
    #[arg(long)]
    json: bool,
}

/// Fréchet distances on a tuwen-trained classifier's features (FID's formula, not its
/// network) of the prior's decoded samples, of uniformly random codes decoded, of the VQGAN's
/// reconstructions of the real images, and of two halves of the real images; for a
/// class-conditional prior, how often the classifier names the class that was asked for.
pub fn eval_prior(a: EvalPriorArgs, device: &Device) -> Result<()> {
    use tuwen::data::shapes::SplitMix64;
    let prior_folder = tuwen::hub::resolve(&a.model)?;
    let vq_folder = tuwen::hub::resolve(&a.vqgan)?;
    let prior = tuwen::pipeline::vqgan::VqPrior::load(&prior_folder, device)?;
    let vq = VqAutoencoder::load(&vq_folder, device)?;
    prior.check_matches(&vq.config)?;
    if a.n < 4 || a.n > 100_000 {
        bail!("--n {} must be between 4 and 100000", a.n);
    }
    let classifier = tuwen::pipeline::ImageClassification::load(&a.classifier, device)?;
    let s = vq.config.sample_size;
    let shape = [vq.config.out_channels, s, s];
    let paths = tuwen::data::files::walk_images(&a.data)?;
    let mut real = Vec::new();
    let mut skipped = 0;
    for p in &paths {
        match vq.image_values(p) {
            Ok((v, _)) => real.push(v),
            Err(_) => skipped += 1,
        }
    }
    if real.len() < 4 {
        bail!(
            "{}: too few readable images ({})",
            a.data.display(),
            real.len()
        );
    }
    let flat_real: Vec<f32> = real.concat();
    let (f_real, dims) = tuwen::eval::classifier_features(&classifier, &flat_real, shape)?;
    let fid_of = |rows: &[f32]| -> Result<f64> {
        let (f, _) = tuwen::eval::classifier_features(&classifier, rows, shape)?;
        Ok(tuwen::eval::frechet_distance(&f_real, &f, dims)?)
    };
    // The prior's samples: spread evenly over the classes of a conditional prior.
    let sampling = a.sampling.with_seed(a.seed);
    let classes = prior.spec.classes.clone();
    let mut asked = Vec::new();
    let mut codes = Vec::new();
    if classes.is_empty() {
        codes = prior.sample(a.n, None, &sampling)?;
    } else {
        for (c, _) in classes.iter().enumerate() {
            let k = a.n / classes.len() + usize::from(c < a.n % classes.len());
            let sp = tuwen::generate::Sampling {
                seed: a.seed.wrapping_add(1000 * c as u64),
                ..sampling.clone()
            };
            codes.extend(prior.sample(k, Some(c), &sp)?);
            asked.extend(std::iter::repeat_n(c, k));
        }
    }
    let samples = vq.decode(&codes)?.concat();
    let fid = fid_of(&samples)?;
    let mut rng = SplitMix64::new(a.seed ^ 0x0ddc_0de5);
    let cells = prior.spec.grid * prior.spec.grid;
    let k = prior.spec.codebook_size;
    let random: Vec<Vec<i64>> = (0..a.n)
        .map(|_| (0..cells).map(|_| rng.below(k) as i64).collect())
        .collect();
    let fid_random = fid_of(&vq.decode(&random)?.concat())?;
    let take = real.len().min(a.n);
    let recs = vq.reconstruct_values(real[..take].to_vec())?;
    let fid_recs = fid_of(&recs.reconstructions.concat())?;
    let half = real.len() / 2;
    let per = shape.iter().product::<usize>();
    let (f_a, _) = tuwen::eval::classifier_features(&classifier, &flat_real[..half * per], shape)?;
    let (f_b, _) = tuwen::eval::classifier_features(&classifier, &flat_real[half * per..], shape)?;
    let floor = tuwen::eval::frechet_distance(&f_a, &f_b, dims)?;
    let mut out = json!({"fid": fid, "fid_random_codes": fid_random,
        "fid_reconstructions": fid_recs, "fid_real_halves": floor, "n": a.n,
        "real": real.len(), "skipped": skipped, "features": dims,
        "feature_space": format!("{} (a tuwen-trained classifier, not Inception-v3)", a.classifier)});
    // Class-conditional: does the classifier name the class asked for?
    let mut accuracy = None;
    if !classes.is_empty() && classes.iter().all(|c| classifier.labels.contains(c)) {
        let predicted = tuwen::eval::classifier_predictions(&classifier, &samples, shape)?;
        let hits = predicted
            .iter()
            .zip(&asked)
            .filter(|(p, c)| classifier.labels[**p] == classes[**c])
            .count();
        let acc = hits as f64 / asked.len() as f64;
        out["class_accuracy"] = json!(acc);
        accuracy = Some(acc);
    }
    if a.json {
        println!("{out}");
    } else {
        println!(
            "Fréchet distance on {}'s {dims} features ({} samples vs {} real images):\n  prior samples        {fid:.3}\n  random codes         {fid_random:.3}\n  VQGAN reconstructions {fid_recs:.3}\n  real half vs half    {floor:.3}",
            a.classifier,
            a.n,
            real.len()
        );
        if let Some(acc) = accuracy {
            println!(
                "  samples the classifier names as the class asked for: {:.1}%",
                acc * 100.0
            );
        }
    }
    Ok(())
}
