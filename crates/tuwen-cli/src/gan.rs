//! `tuwen train gan` and `tuwen sample`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;
use tuwen::burn::prelude::Device;
use tuwen::data::captions::Sample;
use tuwen::data::shapes::SplitMix64;
use tuwen::data::toy::{self, Toy};
use tuwen::models::gan::{
    Activation, CriticNorm, DcganConfig, Gan, GanConfig, MlpGanConfig, read_config,
};
use tuwen::pipeline::gan::{GanSampler, samples_png};
use tuwen::train::RunConfig;
use tuwen::train::data::TrainData;
use tuwen::train::gan::{GanTrainConfig, LOSSES, RealData, train};

use crate::train::{Progress, refuse_input_as_out, resume_dir};

#[derive(Args)]
pub struct TrainGanArgs {
    /// Real samples: a folder of images, a .csv or .npy of points, or toy:8gaussians,
    /// toy:25gaussians, toy:swissroll, toy:1d-mixture.
    #[arg(long)]
    data: String,
    /// Output folder: the GAN (config.json, model.safetensors), metrics.jsonl, pictures.
    #[arg(long)]
    out: PathBuf,
    /// Objective: minimax, nonsaturating, hinge, wgan (clipping, RMSProp), wgan-gp.
    #[arg(long, default_value = "wgan-gp")]
    loss: String,
    /// Generator updates.
    #[arg(long)]
    steps: Option<usize>,
    /// Samples per batch (default 256 for points, 64 for images).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Critic updates per generator update (default: 5 for wgan and wgan-gp, 1 otherwise).
    #[arg(long)]
    n_critic: Option<usize>,
    /// Learning rate of both players (default: the objective's paper value).
    #[arg(long)]
    lr: Option<f64>,
    /// Adam's β₁ (default 0.5).
    #[arg(long)]
    beta1: Option<f32>,
    /// Adam's β₂ (default 0.9 for wgan-gp, 0.999 otherwise).
    #[arg(long)]
    beta2: Option<f32>,
    /// Weight clipping bound of the critic (wgan: 0.01).
    #[arg(long)]
    clip: Option<f64>,
    /// Gradient-penalty weight λ (wgan-gp: 10 for images, 0.1 for toy data).
    #[arg(long)]
    gp_lambda: Option<f64>,
    /// R1 penalty γ on real samples (0: off).
    #[arg(long, default_value_t = 0.0)]
    r1_gamma: f64,
    /// Spectral normalisation of the critic's weights.
    #[arg(long)]
    spectral_norm: bool,
    /// The critic's normalisation: none, layer, batch (default: layer for images with a
    /// penalty, batch for images otherwise, none for points).
    #[arg(long)]
    critic_norm: Option<String>,
    /// Hidden width of the MLPs (points). WGAN-GP's gan_toy.py uses 512, 4x slower per step
    /// on 2 CPU cores; 128 covers the toy sets within the default steps.
    #[arg(long, default_value_t = 128)]
    hidden_size: usize,
    /// Hidden layers of each MLP (points).
    #[arg(long, default_value_t = 3)]
    layers: usize,
    /// Noise size (default: the data's width for points, 100 for images).
    #[arg(long)]
    latent_dim: Option<usize>,
    /// Image size: 16, 32 or 64.
    #[arg(long, default_value_t = 32)]
    image_size: usize,
    /// Image channels: 1 (grey) or 3.
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// DCGAN width (channels of the outermost layers).
    #[arg(long, default_value_t = 64)]
    width: usize,
    /// Seed of the initialisation, the data order and every draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write a checkpoint every N steps (0: at the end).
    #[arg(long, default_value_t = 500)]
    save_every: usize,
    /// Write a picture of samples every N steps (0: only at the end).
    #[arg(long, default_value_t = 500)]
    sample_every: usize,
    /// Compare the critic's W estimate with the measured W1 every N steps (0: never).
    #[arg(long, default_value_t = 250)]
    val_every: usize,
    /// Continue from the checkpoint in --out.
    #[arg(long)]
    resume: bool,
}

/// Where the real samples come from, read once.
enum Source {
    Images(Vec<Sample>),
    Rows(Vec<f32>, usize),
    Toy(Toy),
}

fn read_source(data: &str) -> Result<Source> {
    if let Some(name) = data.strip_prefix("toy:") {
        return Ok(Source::Toy(Toy::parse(name)?));
    }
    let path = Path::new(data);
    if path.is_dir() {
        let s = tuwen::train::mae::image_folder(path)?;
        eprintln!("{} images under {}", s.len(), path.display());
        return Ok(Source::Images(s));
    }
    let p = tuwen::data::arrays::read_points(path)?;
    if p.dims > 64 {
        bail!(
            "{}: rows of {} values; point data for the MLP GAN has at most 64 (images go in a folder)",
            path.display(),
            p.dims
        );
    }
    eprintln!(
        "{} points of {} dimensions in {}",
        p.rows,
        p.dims,
        path.display()
    );
    Ok(Source::Rows(
        p.data.iter().map(|&x| x as f32).collect(),
        p.dims,
    ))
}

fn parse_norm(s: &str) -> Result<CriticNorm> {
    Ok(match s {
        "none" => CriticNorm::None,
        "layer" => CriticNorm::Layer,
        "batch" => CriticNorm::Batch,
        _ => bail!("--critic-norm {s:?}: choose none, layer or batch"),
    })
}

fn new_config(a: &TrainGanArgs, source: &Source, penalty: bool) -> Result<GanConfig> {
    let cfg = match source {
        Source::Images(_) => GanConfig::Dcgan(DcganConfig {
            image_size: a.image_size,
            num_channels: a.channels,
            latent_dim: a.latent_dim.unwrap_or(100),
            generator_width: a.width,
            critic_width: a.width,
            critic_activation: Activation::LeakyRelu,
            leaky_slope: 0.2,
            critic_norm: match &a.critic_norm {
                Some(s) => parse_norm(s)?,
                None if penalty => CriticNorm::Layer,
                None => CriticNorm::Batch,
            },
            norm_eps: 1e-5,
            spectral_norm: a.spectral_norm,
        }),
        _ => {
            let dims = match source {
                Source::Rows(_, d) => *d,
                Source::Toy(t) => t.dims(),
                Source::Images(_) => unreachable!(),
            };
            let mut c = MlpGanConfig::toy(dims);
            c.hidden_size = a.hidden_size;
            c.num_hidden_layers = a.layers;
            c.latent_dim = a.latent_dim.unwrap_or(dims.max(2));
            c.critic_norm = match &a.critic_norm {
                Some(s) => parse_norm(s)?,
                None => CriticNorm::None,
            };
            c.spectral_norm = a.spectral_norm;
            GanConfig::Mlp(c)
        }
    };
    cfg.validate().map_err(|m| anyhow::anyhow!("{m}"))?;
    Ok(cfg)
}

/// Held-out real samples (row-major) for validation and pictures: 512 toy draws from a
/// fixed seed, 512 rows, or the first 256 images.
fn held_out(source: &Source, cfg: &GanConfig) -> Result<Vec<f32>> {
    Ok(match source {
        Source::Toy(t) => t.draw(512, &mut SplitMix64::new(0xda7a)),
        Source::Rows(rows, dims) => rows[..rows.len().min(512 * dims)].to_vec(),
        Source::Images(samples) => {
            let paths: Vec<PathBuf> = samples.iter().take(256).map(|s| s.image.clone()).collect();
            tuwen::pipeline::gan::image_rows(&paths, cfg)?.0
        }
    })
}

pub fn train_gan(a: TrainGanArgs, device: &Device) -> Result<()> {
    if !LOSSES.contains(&a.loss.as_str()) {
        bail!(
            "unknown --loss {:?}; choose one of {}",
            a.loss,
            LOSSES.join(", ")
        );
    }
    let toy = a.data.starts_with("toy:");
    let is_images = !toy && Path::new(&a.data).is_dir();
    if !toy {
        refuse_input_as_out(&a.out, &[Path::new(&a.data)], None)?;
    }
    let steps = a.steps.unwrap_or(3000);
    let run = RunConfig {
        steps,
        batch_size: a.batch_size.unwrap_or(if is_images { 64 } else { 256 }),
        seed: a.seed,
        checkpoint_every: a.save_every,
        checkpoint_dir: Some(a.out.join("checkpoint")),
        val_every: a.val_every,
        metrics: Some(a.out.join("metrics.jsonl")),
        ..RunConfig::default()
    };
    let mut cfg = GanTrainConfig::for_loss(&a.loss, run, toy)?;
    if let Some(k) = a.n_critic {
        cfg.n_critic = k;
    }
    if let Some(lr) = a.lr {
        cfg.lr = lr;
    }
    if let Some(b) = a.beta1 {
        cfg.betas.0 = b;
    }
    if let Some(b) = a.beta2 {
        cfg.betas.1 = b;
    }
    if let Some(c) = a.clip {
        cfg.clip = c;
    }
    if let Some(l) = a.gp_lambda {
        cfg.gp_lambda = l;
    }
    cfg.r1_gamma = a.r1_gamma;
    for (name, b) in [("--beta1", cfg.betas.0), ("--beta2", cfg.betas.1)] {
        if !(0.0..1.0).contains(&b) {
            bail!("{name} {b} must be in [0, 1)");
        }
    }
    let penalty = cfg.gp_lambda > 0.0 || cfg.r1_gamma > 0.0;
    if penalty && is_images && a.critic_norm.as_deref() == Some("batch") {
        bail!("a gradient penalty needs a critic without batch norm (--critic-norm layer or none)");
    }
    if cfg.n_critic == 0 || cfg.n_critic > 1000 {
        bail!("--n-critic must be between 1 and 1000");
    }
    let source = read_source(&a.data)?;
    let ad = device.clone().autodiff();
    let (gan, model, resume_from) = if a.resume {
        let dir = resume_dir(&a.out.join("checkpoint"))?;
        let (gan, model) = Gan::load(&dir, &ad)?;
        (gan, model, Some(dir))
    } else {
        let model = new_config(&a, &source, penalty)?;
        // Parameters, gradients and Adam's two moments, before anything is allocated.
        tuwen::memory::check(
            device,
            16 * model.num_params(),
            "the generator and critic with their optimiser state",
            "--hidden-size, --layers or --width",
        )?;
        let gan = tuwen::train::engine::init_seeded(&ad, a.seed, |d| Gan::new(&model, d));
        (gan, model, None)
    };
    cfg.run.resume_from = resume_from.clone();
    let val_real = held_out(&source, &model)?;
    let mut progress = Progress::start(steps, resume_from.as_deref())?;
    cfg.run.stop = Some(progress.stop_flag());
    std::fs::create_dir_all(a.out.join("samples"))
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let (data, images) = match &source {
        Source::Images(s) => (RealData::Images, Some(TrainData::Samples(s))),
        Source::Rows(rows, _) => (RealData::Rows(rows), None),
        Source::Toy(t) => (RealData::Toy(*t), None),
    };
    let picture = |gan: &Gan, name: &str, title: &str| -> Result<()> {
        let sampler = GanSampler {
            gan: tuwen::burn::module::Module::valid(gan),
            config: model.clone(),
        };
        let n = if is_images { 64 } else { 1000 };
        let s = sampler.sample(n, 1234)?;
        samples_png(
            &model,
            &val_real,
            &s,
            title,
            &a.out.join("samples").join(name),
        )?;
        Ok(())
    };
    let mut failed = None;
    let (gan, report) = train(
        gan,
        &model,
        data,
        images,
        val_real.clone(),
        &cfg,
        |s, gan| {
            let done = s.step + 1;
            if a.sample_every > 0 && done.is_multiple_of(a.sample_every) && failed.is_none() {
                let title = format!("{} step {done}", a.loss);
                if let Err(e) = picture(gan, &format!("step-{done:06}.png"), &title) {
                    failed = Some(e);
                }
            }
            progress.step(s)
        },
    )?;
    progress.finish();
    if let Some(e) = failed {
        return Err(e);
    }
    tuwen::burn::module::Module::valid(&gan).save(&model, &a.out)?;
    let title = format!("{} after {} steps", a.loss, report.losses.len());
    picture(&gan, "final.png", &title)?;
    if report.losses.len() >= 2 {
        tuwen::train::plot::loss_curve_png(&report.losses, &a.out.join("curves.png"))?;
    }
    // The Kantorovich-Rubinstein duality in training: the critic's estimate against W1
    // measured between held-out real and generated samples.
    // metrics.jsonl holds every validation, those before a resume included.
    let validations = validations(&a.out.join("metrics.jsonl"));
    if validations.len() >= 2 {
        let series = |key: &str| -> Vec<(usize, f32)> {
            validations
                .iter()
                .map(|v| {
                    (
                        v["step"].as_u64().unwrap_or(0) as usize + 1,
                        v[key].as_f64().unwrap_or(f64::NAN) as f32,
                    )
                })
                .collect()
        };
        let (critic, w1) = (series("val_critic_w"), series("val_w1"));
        tuwen::train::plot::series_png(
            "critic's W estimate vs measured W1 (held-out samples)",
            &[
                (
                    "critic: mean D(real) - mean D(fake)",
                    &critic,
                    [200, 60, 50],
                ),
                ("W1 between real and generated", &w1, [20, 60, 160]),
            ],
            &a.out.join("kr.png"),
        )?;
    }
    let sampler = GanSampler {
        gan: tuwen::burn::module::Module::valid(&gan),
        config: model.clone(),
    };
    let mut summary = json!({"steps": report.losses.len(), "loss": a.loss});
    if let Source::Toy(t) = &source
        && let Some((modes, sigma)) = t.modes()
    {
        let s = sampler.sample(2500, 99)?;
        let cov = toy::mode_coverage(&s, &modes, sigma);
        eprintln!(
            "{} of {} modes covered, {:.1}% of 2500 samples high quality (within 3 sigma)",
            cov.modes_covered,
            cov.modes,
            cov.high_quality * 100.0
        );
        summary["coverage"] = serde_json::to_value(&cov)?;
    }
    if let Some(last) = validations.last() {
        summary["last_validation"] = last.clone();
    }
    crate::train::finish_report(
        &a.out,
        &summary,
        &report,
        "generator steps; model, samples/, curves.png, kr.png",
    )
}

/// The metrics.jsonl lines of the validated steps (none when the file cannot be read).
fn validations(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("val_w1").is_some())
        .collect()
}

#[derive(Args)]
pub struct SampleArgs {
    /// A GAN folder (`tuwen train gan`), or a VQGAN prior (`tuwen train vq-prior`, with
    /// --vqgan).
    #[arg(long)]
    model: String,
    /// The VQGAN that decodes a prior's codes.
    #[arg(long)]
    vqgan: Option<String>,
    /// A class-conditional prior's class (name or index).
    #[arg(long)]
    class: Option<String>,
    #[command(flatten)]
    sampling: crate::vqgan::SamplingArgs,
    /// Samples to draw.
    #[arg(long, default_value_t = 64)]
    n: usize,
    /// .png (a grid of images, or a plot of points) or .npy (the raw samples: [n, d] float32
    /// for points, [n, c, h, w] in [-1, 1] for images).
    #[arg(long)]
    out: PathBuf,
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn sample(a: SampleArgs, device: &Device) -> Result<()> {
    let ext = a
        .out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if !matches!(ext.as_deref(), Some("png" | "npy")) {
        bail!("--out {} must end in .png or .npy", a.out.display());
    }
    if let Some(vqgan) = &a.vqgan {
        return crate::vqgan::sample_prior(
            crate::vqgan::PriorSampleArgs {
                model: &a.model,
                vqgan,
                n: a.n,
                out: &a.out,
                class: a.class.as_deref(),
                sampling: a.sampling.with_seed(a.seed),
            },
            device,
        );
    }
    if a.class.is_some() {
        bail!("--class is for a VQGAN prior (with --vqgan)");
    }
    let folder = tuwen::hub::resolve(&a.model)?;
    read_config(&folder)?;
    tuwen::data::files::refuse_overwrite("--out", &a.out, &[], &[&folder])?;
    let sampler = GanSampler::load(&folder, device)?;
    let s = sampler.sample(a.n, a.seed)?;
    if ext.as_deref() == Some("npy") {
        tuwen::data::arrays::write_npy(&a.out, &s, &sampler.shape(a.n))?;
    } else {
        let title = format!("{} samples, seed {}", a.n, a.seed);
        samples_png(&sampler.config, &[], &s, &title, &a.out)?;
    }
    eprintln!("wrote {} samples to {}", a.n, a.out.display());
    Ok(())
}

#[derive(Args)]
pub struct EvalGanArgs {
    /// A DCGAN folder (`tuwen train gan` on images).
    #[arg(long)]
    model: String,
    /// An image classifier trained on the same kind of images (`tuwen train classifier`):
    /// its features are the space of the Fréchet distance.
    #[arg(long)]
    classifier: String,
    /// Real images: a folder.
    #[arg(long)]
    data: PathBuf,
    /// Generated samples to score.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Seed of the samples and of the untrained generator.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the scores as JSON.
    #[arg(long)]
    json: bool,
}

/// A Fréchet distance on a tuwen-trained classifier's features (FID's formula, not FID's
/// Inception network) for the trained generator, an untrained one of the same architecture,
/// and two halves of the real images (the floor that the sample size leaves).
pub fn eval_gan(a: EvalGanArgs, device: &Device) -> Result<()> {
    let folder = tuwen::hub::resolve(&a.model)?;
    let sampler = GanSampler::load(&folder, device)?;
    let shape = sampler
        .config
        .image_shape()
        .context("eval gan scores image GANs; for points use tuwen sample and tuwen wdist")?;
    let classifier = tuwen::pipeline::ImageClassification::load(&a.classifier, device)?;
    let paths = tuwen::data::files::walk_images(&a.data)?;
    let (real, skipped) = tuwen::pipeline::gan::image_rows(&paths, &sampler.config)?;
    let per = shape.iter().product::<usize>();
    let n_real = real.len() / per;
    if n_real < 4 {
        bail!("{}: too few readable images ({n_real})", a.data.display());
    }
    let (f_real, dims) = tuwen::eval::classifier_features(&classifier, &real, shape)?;
    let fid_of = |rows: &[f32]| -> Result<f64> {
        let (f, _) = tuwen::eval::classifier_features(&classifier, rows, shape)?;
        Ok(tuwen::eval::frechet_distance(&f_real, &f, dims)?)
    };
    let trained = fid_of(&sampler.sample(a.n, a.seed)?)?;
    let untrained = GanSampler {
        gan: tuwen::train::engine::init_seeded(device, a.seed, |d| Gan::new(&sampler.config, d)),
        config: sampler.config.clone(),
    };
    let fid_untrained = fid_of(&untrained.sample(a.n, a.seed)?)?;
    let half = n_real / 2;
    let (f_a, _) = tuwen::eval::classifier_features(&classifier, &real[..half * per], shape)?;
    let (f_b, _) = tuwen::eval::classifier_features(&classifier, &real[half * per..], shape)?;
    let floor = tuwen::eval::frechet_distance(&f_a, &f_b, dims)?;
    let out = json!({"fid": trained, "fid_untrained": fid_untrained, "fid_real_halves": floor,
        "n": a.n, "real": n_real, "skipped": skipped, "features": dims,
        "feature_space": format!("{} (a tuwen-trained classifier, not Inception-v3)", a.classifier)});
    if a.json {
        println!("{out}");
    } else {
        println!(
            "Fréchet distance on {}'s {dims} features ({} generated vs {n_real} real images):\n  trained generator   {trained:.3}\n  untrained generator {fid_untrained:.3}\n  real half vs half   {floor:.3}",
            a.classifier, a.n
        );
    }
    Ok(())
}
