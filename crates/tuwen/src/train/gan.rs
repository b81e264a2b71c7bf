//! Adversarial training on the shared engine: a critic (discriminator) and a generator, two
//! optimisers, alternating updates.
//!
//! Each engine step is one generator update preceded by `n_critic` critic updates, each on a
//! fresh real batch (the engine hands the step `n_critic` batches). The objectives:
//!
//! - `minimax`, `nonsaturating`, `hinge`: Adam 2e-4, β = (0.5, 0.999) (DCGAN's), one critic
//!   update per generator update.
//! - `wgan` exactly as Arjovsky et al.: no sigmoid, every critic parameter clipped to
//!   [−0.01, 0.01] after each update, RMSProp 5e-5, n_critic = 5, and 100 critic updates for
//!   the first 25 generator updates and every 500th.
//! - `wgan-gp` as Gulrajani et al.: the penalty λ·E[(‖∇D(x̂)‖₂ − 1)²] on random interpolates
//!   x̂ = εx + (1 − ε)G(z), ε ~ U[0, 1] per sample, Adam 1e-4, β = (0.5, 0.9), n_critic = 5.
//!
//! Spectral normalisation (a config option of the critic) and R1 on real samples are options
//! for every objective. The critic's estimate of W1, mean D(x) − mean D(G(z)), is logged every
//! step (`w_estimate`); validation compares it with the exact (or sliced) W1 between held-out
//! real and generated samples: the Kantorovich-Rubinstein duality, seen in training.

use std::path::Path;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, RmsPropConfig};
use burn::prelude::*;
use serde_json::{Value, json};

use super::engine::{self, Batch, Optim, RunConfig, RunReport, StepContext, StepOutput, TrainStep};
use crate::data::arrays::Points;
use crate::data::processor::ImageProcessor;
use crate::data::shapes::SplitMix64;
use crate::data::toy::Toy;
use crate::loss::{self, GanObjective};
use crate::models::gan::{Critic, Gan, GanConfig, noise};
use crate::{Error, Result};

/// The objectives `--loss` names.
pub const LOSSES: &[&str] = &["minimax", "nonsaturating", "hinge", "wgan", "wgan-gp"];

/// Settings of a GAN run.
#[derive(Clone, Debug)]
pub struct GanTrainConfig {
    /// Steps (generator updates), batch size, seed, checkpoints: the engine's settings.
    pub run: RunConfig,
    /// `--loss`: one of [`LOSSES`].
    pub loss: String,
    /// Critic updates per generator update.
    pub n_critic: usize,
    /// WGAN's schedule: 100 critic updates for the first 25 generator updates and every
    /// 500th.
    pub wgan_schedule: bool,
    /// Learning rate of both optimisers.
    pub lr: f64,
    /// Adam's β₁, β₂ (ignored by RMSProp).
    pub betas: (f32, f32),
    /// RMSProp instead of Adam.
    pub rmsprop: bool,
    /// Clip every critic parameter to [−c, c] after each update (0: no clipping).
    pub clip: f64,
    /// Weight λ of the gradient penalty (0: none).
    pub gp_lambda: f64,
    /// Weight γ of R1 (the penalty is γ/2 · E‖∇D(x)‖²; 0: none).
    pub r1_gamma: f64,
    /// Samples of each validation (exact W1 up to 1024 per side, sliced beyond).
    pub val_samples: usize,
}

impl GanTrainConfig {
    /// The paper's settings of `loss` (see the module's documentation) on top of `run`;
    /// `toy` data takes WGAN-GP's toy λ = 0.1 instead of the images' 10.
    pub fn for_loss(loss: &str, run: RunConfig, toy: bool) -> Result<Self> {
        let base = GanTrainConfig {
            run: RunConfig {
                constant_lr: true,
                ..run
            },
            loss: loss.to_string(),
            n_critic: 1,
            wgan_schedule: false,
            lr: 2e-4,
            betas: (0.5, 0.999),
            rmsprop: false,
            clip: 0.0,
            gp_lambda: 0.0,
            r1_gamma: 0.0,
            val_samples: 512,
        };
        Ok(match loss {
            "minimax" | "nonsaturating" | "hinge" => base,
            "wgan" => GanTrainConfig {
                n_critic: 5,
                wgan_schedule: true,
                lr: 5e-5,
                rmsprop: true,
                clip: 0.01,
                ..base
            },
            "wgan-gp" => GanTrainConfig {
                n_critic: 5,
                lr: 1e-4,
                betas: (0.5, 0.9),
                gp_lambda: if toy { 0.1 } else { 10.0 },
                ..base
            },
            _ => {
                return Err(Error::InvalidInput(format!(
                    "unknown --loss {loss:?}; choose one of {}",
                    LOSSES.join(", ")
                )));
            }
        })
    }

    /// The objective of the losses.
    pub fn objective(&self) -> GanObjective {
        match self.loss.as_str() {
            "minimax" => GanObjective::Minimax,
            "nonsaturating" => GanObjective::NonSaturating,
            "hinge" => GanObjective::Hinge,
            _ => GanObjective::Wasserstein,
        }
    }

    /// Critic updates before generator update `step`.
    pub fn critic_updates(&self, step: usize) -> usize {
        if self.wgan_schedule && (step < 25 || step.is_multiple_of(500)) {
            100
        } else {
            self.n_critic.max(1)
        }
    }
}

/// Where real samples come from.
pub enum RealData<'a> {
    /// Images (the engine reads and preprocesses them to [-1, 1]).
    Images,
    /// Rows of numbers.
    Rows(&'a [f32]),
    /// A toy distribution, drawn afresh each step.
    Toy(Toy),
}

struct GanFamily<'a> {
    cfg: &'a GanTrainConfig,
    model: &'a GanConfig,
    processor: &'a ImageProcessor,
    /// Held-out real samples for validation `[val_samples, features]`.
    val_real: Vec<f32>,
    toy: Option<Toy>,
}

fn tensor(values: Vec<f32>, features: usize, device: &Device) -> Tensor<2> {
    let n = values.len() / features;
    Tensor::<1>::from_floats(values.as_slice(), device).reshape([n, features])
}

/// A real batch as flat rows: images to the model's channels (grey images are the mean of
/// the three), rows as they are, toy samples drawn with `seed`.
fn real_rows(
    batch: &mut Batch,
    take: usize,
    model: &GanConfig,
    toy: Option<Toy>,
    seed: u64,
) -> Result<Vec<f32>> {
    let features = model.features();
    if let Some(toy) = toy {
        batch.drawn -= take.min(batch.drawn);
        return Ok(toy.draw(take, &mut SplitMix64::new(seed)));
    }
    if !batch.rows.is_empty() {
        let k = take.min(batch.rows.len());
        return Ok(batch.rows.drain(..k).flatten().collect());
    }
    let k = take.min(batch.images.len());
    let mut out = Vec::with_capacity(k * features);
    for (pixels, [c, h, w]) in batch.images.drain(..k) {
        let [mc, mh, mw] = model.image_shape().expect("images need an image model");
        if (h, w) != (mh, mw) {
            return Err(Error::InvalidInput(format!(
                "an image came out {h}x{w}, the model makes {mh}x{mw}"
            )));
        }
        match (c, mc) {
            (a, b) if a == b => out.extend_from_slice(&pixels),
            (3, 1) => crate::pipeline::gan::push_channels(&pixels, 1, h * w, &mut out),
            _ => {
                return Err(Error::InvalidInput(format!(
                    "images have {c} channels, the model {mc}"
                )));
            }
        }
    }
    Ok(out)
}

impl TrainStep for GanFamily<'_> {
    type Models = Gan;

    fn settings(&self) -> Value {
        let c = self.cfg;
        json!({"batch_size": c.run.batch_size, "loss": c.loss, "n_critic": c.n_critic,
            "wgan_schedule": c.wgan_schedule, "lr": c.lr, "betas": [c.betas.0, c.betas.1],
            "rmsprop": c.rmsprop, "clip": c.clip, "gp_lambda": c.gp_lambda,
            "r1_gamma": c.r1_gamma})
    }

    fn optimizers(&self, _gan: &Gan) -> Vec<Optim> {
        let c = self.cfg;
        let make = || {
            if c.rmsprop {
                // PyTorch's RMSprop defaults, as the WGAN code uses them: no momentum.
                RmsPropConfig::new()
                    .with_alpha(0.99)
                    .with_momentum(0.0)
                    .with_epsilon(1e-8)
                    .init()
            } else {
                AdamConfig::new()
                    .with_beta_1(c.betas.0)
                    .with_beta_2(c.betas.1)
                    .with_epsilon(1e-8)
                    .init()
            }
        };
        vec![
            Optim::new("generator", make(), c.lr),
            Optim::new("critic", make(), c.lr),
        ]
    }

    fn device(&self, gan: &Gan) -> Device {
        gan.device()
    }

    fn processor(&self) -> &ImageProcessor {
        self.processor
    }

    fn device_draws(&self, _gan: &Gan) -> bool {
        // Noise, interpolation weights and toy data are drawn on the CPU from the step's
        // seeds.
        false
    }

    fn batches(&self, step: usize) -> usize {
        self.cfg.critic_updates(step)
    }

    fn step_bytes(&self, gan: &Gan, batch: usize) -> u128 {
        // Parameters, gradients and two moments; the activations of a few passes of the
        // critic and the generator on the batch (a rough lower bound).
        let features = self.model.features() as u128;
        engine::params_bytes(gan.num_params()) + 4 * 8 * features * batch as u128
    }

    fn step(
        &mut self,
        gan: Gan,
        mut batch: Batch,
        ctx: &mut StepContext,
    ) -> Result<(Gan, StepOutput)> {
        let c = self.cfg;
        let model = self.model;
        let objective = c.objective();
        let features = model.features();
        let latent = model.latent_dim();
        let updates = c.critic_updates(ctx.step);
        let per = (batch.len() / updates).max(1);
        let Gan {
            mut generator,
            discriminator: mut critic,
        } = gan;
        let device = ctx.device.clone();
        let mut figures = serde_json::Map::new();
        let (mut d_loss, mut w_estimate, mut penalty) = (0.0f32, 0.0f32, 0.0f32);
        for j in 0..updates {
            let real = real_rows(&mut batch, per, model, self.toy, ctx.seed(3 * j + 2))?;
            let n = real.len() / features;
            if n == 0 {
                break;
            }
            let real = tensor(real, features, &device);
            let z = noise(n, latent, ctx.seed(3 * j), &device);
            let fake = generator.forward(z).detach();
            let d_real = critic.forward(model, real.clone());
            let d_fake = critic.forward(model, fake.clone());
            let w = (d_real.clone().mean() - d_fake.clone().mean()).into_scalar::<f32>();
            let mut loss = loss::discriminator_loss(objective, d_real, d_fake);
            if c.gp_lambda > 0.0 {
                let mut rng = SplitMix64::new(ctx.seed(3 * j + 1));
                let eps: Vec<f32> = (0..n).map(|_| rng.unit()).collect();
                let eps = Tensor::<1>::from_floats(eps.as_slice(), &device).reshape([n, 1]);
                let mixed = real.clone() * eps.clone() + fake * (eps.ones_like() - eps);
                let (_, grad) = critic.input_grad(model, mixed)?;
                let gp = loss::gradient_penalty(grad);
                penalty = gp.clone().into_scalar::<f32>();
                loss = loss + gp * c.gp_lambda;
            }
            if c.r1_gamma > 0.0 {
                let (_, grad) = critic.input_grad(model, real)?;
                let r1 = loss::r1_penalty(grad);
                penalty = r1.clone().into_scalar::<f32>();
                loss = loss + r1 * (c.r1_gamma / 2.0);
            }
            d_loss = loss.clone().into_scalar::<f32>();
            w_estimate = w;
            let grads = GradientsParams::from_grads(loss.backward(), &critic);
            critic = ctx.update("critic", critic, grads)?;
            if c.clip > 0.0 {
                critic = critic.clip_weights(c.clip);
            }
        }
        // The generator's update, through a critic that takes no gradient.
        let z = noise(per, latent, ctx.seed(999), &device);
        let frozen: Critic = critic.clone().no_grad();
        let g_loss = loss::generator_loss(objective, frozen.forward(model, generator.forward(z)));
        let g = g_loss.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(g_loss.backward(), &generator);
        generator = ctx.update("generator", generator, grads)?;
        figures.insert("d_loss".into(), json!(d_loss));
        figures.insert("g_loss".into(), json!(g));
        figures.insert("w_estimate".into(), json!(w_estimate));
        figures.insert("critic_updates".into(), json!(updates));
        if c.gp_lambda > 0.0 || c.r1_gamma > 0.0 {
            figures.insert("penalty".into(), json!(penalty));
        }
        let gan = Gan {
            generator,
            discriminator: critic,
        };
        Ok((
            gan,
            StepOutput {
                loss: d_loss,
                metrics: figures,
            },
        ))
    }

    fn validate(&mut self, gan: &Gan) -> Result<Option<Value>> {
        if self.val_real.is_empty() {
            return Ok(None);
        }
        let features = self.model.features();
        let n = self.val_real.len() / features;
        let inner = gan.valid();
        let device = inner.device();
        let fake = inner.sample(self.model, n, 0x5eed_f7a1);
        let real = tensor(self.val_real.clone(), features, &device);
        let critic_w = (inner.discriminator.forward(self.model, real).mean()
            - inner.discriminator.forward(self.model, fake.clone()).mean())
        .into_scalar::<f32>();
        let fake: Vec<f32> = fake
            .into_data()
            .convert::<f32>()
            .try_into_vec()
            .map_err(|e| Error::InvalidInput(format!("cannot read the samples: {e:?}")))?;
        let points = |v: &[f32]| Points {
            data: v.iter().map(|&x| f64::from(x)).collect(),
            rows: n,
            dims: features,
        };
        // Exact optimal transport up to 1024 samples a side, whatever the dimension.
        let sliced = (features > 1 && n > 1024).then_some(256);
        let report = crate::wdist::distance(&points(&self.val_real), &points(&fake), sliced, 7)?;
        let mut v = json!({"critic_w": critic_w, "w1": report.w1, "w1_method": report.method});
        if let Some((modes, sigma)) = self.toy.and_then(Toy::modes) {
            let cov = crate::data::toy::mode_coverage(&fake, &modes, sigma);
            v["modes_covered"] = json!(cov.modes_covered);
            v["high_quality"] = json!(cov.high_quality);
        }
        Ok(Some(v))
    }

    fn save(&self, gan: &Gan, dir: &Path) -> Result<()> {
        // `valid()` folds the running statistics' last update into their value (saving reads
        // the value, which may trail by one update), so that a resumed run starts from what
        // the uninterrupted one has.
        gan.valid().save(self.model, dir)
    }
}

/// Trains `gan` (on an autodiff device) on `data` (images go in `images`, see
/// [`crate::train::data::TrainData`]); `on_step` hears every step with the networks and may
/// stop the run. `val_real` are held-out real samples (row-major) for the validation of
/// `cfg.run.val_every`.
pub fn train<'a>(
    gan: Gan,
    model: &GanConfig,
    data: RealData<'a>,
    images: Option<super::data::TrainData<'a>>,
    val_real: Vec<f32>,
    cfg: &GanTrainConfig,
    on_step: impl FnMut(&engine::StepReport, &Gan) -> bool,
) -> Result<(Gan, RunReport)> {
    use super::data::TrainData;
    let c = cfg;
    if !(c.lr.is_finite() && c.lr > 0.0) {
        return Err(Error::InvalidInput(format!(
            "--lr {} must be positive",
            c.lr
        )));
    }
    for (name, v) in [
        ("--clip", c.clip),
        ("--gp-lambda", c.gp_lambda),
        ("--r1-gamma", c.r1_gamma),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(Error::InvalidInput(format!(
                "{name} {v} must be non-negative"
            )));
        }
    }
    if c.n_critic == 0 || c.n_critic > 1000 {
        return Err(Error::InvalidInput(
            "--n-critic must be between 1 and 1000".into(),
        ));
    }
    if (c.gp_lambda > 0.0 || c.r1_gamma > 0.0)
        && model.critic_norm() == crate::models::gan::CriticNorm::Batch
    {
        return Err(Error::InvalidInput(
            "a gradient penalty needs a critic without batch norm (--critic-norm layer or none)"
                .into(),
        ));
    }
    let processor = crate::pipeline::gan::gan_processor(model.image_shape().map_or(16, |s| s[1]));
    let (train_data, toy) = match data {
        RealData::Images => (
            images.ok_or_else(|| Error::InvalidInput("no images".into()))?,
            None,
        ),
        RealData::Rows(rows) => {
            if !rows.len().is_multiple_of(model.features()) {
                return Err(Error::InvalidInput(format!(
                    "the data's rows do not have {} values",
                    model.features()
                )));
            }
            (
                TrainData::Rows {
                    data: rows,
                    dims: model.features(),
                },
                None,
            )
        }
        RealData::Toy(t) => {
            if t.dims() != model.features() {
                return Err(Error::InvalidInput(format!(
                    "toy:{} has {} dimensions, the model {}",
                    t.name(),
                    t.dims(),
                    model.features()
                )));
            }
            (TrainData::Drawn, Some(t))
        }
    };
    let mut family = GanFamily {
        cfg,
        model,
        processor: &processor,
        val_real,
        toy,
    };
    let gan = super::stable_param_ids(gan);
    engine::run(&mut family, gan, train_data, &cfg.run, on_step)
}

/// How the critic of [`kr_dual`] is kept Lipschitz.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lipschitz {
    /// WGAN's weight clipping to ±0.01 with RMSProp 5e-5: Lipschitz for *some* K, so the
    /// estimate is K·W1 for an unknown K (the WGAN-GP paper's point).
    Clip,
    /// WGAN-GP's penalty λ = 10 on interpolates, Adam 1e-3, β = (0.5, 0.9).
    GradientPenalty,
    /// Spectral normalisation of every layer (1-Lipschitz with ReLU, usually loose), Adam.
    SpectralNorm,
}

impl Lipschitz {
    /// `clip`, `gp` or `sn`.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "clip" => Lipschitz::Clip,
            "gp" => Lipschitz::GradientPenalty,
            "sn" => Lipschitz::SpectralNorm,
            _ => {
                return Err(Error::InvalidInput(format!(
                    "--lipschitz {s:?}: choose clip, gp or sn"
                )));
            }
        })
    }
}

/// The Kantorovich-Rubinstein dual estimate of W1 between two sample sets: a critic trained
/// alone to maximise mean f(a) − mean f(b) over (approximately) 1-Lipschitz f, then that
/// difference on the whole sets. `steps` updates on batches of up to 256 of each set.
pub fn kr_dual(
    a: &Points,
    b: &Points,
    lipschitz: Lipschitz,
    steps: usize,
    seed: u64,
    device: &Device,
) -> Result<f64> {
    use crate::models::gan::{Activation, CriticNorm, MlpGanConfig};
    if a.dims != b.dims {
        return Err(Error::InvalidInput(format!(
            "the sets have {} and {} dimensions",
            a.dims, b.dims
        )));
    }
    if steps == 0 {
        return Err(Error::InvalidInput("--dual needs at least one step".into()));
    }
    let dims = a.dims;
    let cfg = GanConfig::Mlp(MlpGanConfig {
        data_dim: dims,
        latent_dim: 1,
        hidden_size: 128,
        num_hidden_layers: 3,
        critic_activation: Activation::Relu,
        leaky_slope: 0.2,
        critic_norm: CriticNorm::None,
        norm_eps: 1e-5,
        spectral_norm: lipschitz == Lipschitz::SpectralNorm,
    });
    let ad = device.clone().autodiff();
    let mut critic = super::engine::init_seeded(&ad, seed, |d| Gan::new(&cfg, d)).discriminator;
    let mut optim = match lipschitz {
        Lipschitz::Clip => RmsPropConfig::new()
            .with_alpha(0.99)
            .with_momentum(0.0)
            .with_epsilon(1e-8)
            .init(),
        _ => AdamConfig::new()
            .with_beta_1(0.5)
            .with_beta_2(0.9)
            .with_epsilon(1e-8)
            .init(),
    };
    let lr = if lipschitz == Lipschitz::Clip {
        5e-5
    } else {
        1e-3
    };
    let rows = |p: &Points, idx: &[usize]| -> Vec<f32> {
        idx.iter()
            .flat_map(|&i| p.data[i * dims..(i + 1) * dims].iter().map(|&x| x as f32))
            .collect()
    };
    let mut rng = SplitMix64::new(seed ^ 0xd0a1);
    for _ in 0..steps {
        let take = |p: &Points, rng: &mut SplitMix64| -> Vec<usize> {
            (0..p.rows.min(256)).map(|_| rng.below(p.rows)).collect()
        };
        let (ia, ib) = (take(a, &mut rng), take(b, &mut rng));
        let xa = tensor(rows(a, &ia), dims, &ad);
        let xb = tensor(rows(b, &ib), dims, &ad);
        // The critic maximises mean f(a) − mean f(b): minimise the negative.
        let mut loss =
            critic.forward(&cfg, xb.clone()).mean() - critic.forward(&cfg, xa.clone()).mean();
        if lipschitz == Lipschitz::GradientPenalty {
            let n = ia.len().min(ib.len());
            let eps: Vec<f32> = (0..n).map(|_| rng.unit()).collect();
            let eps = Tensor::<1>::from_floats(eps.as_slice(), &ad).reshape([n, 1]);
            let mixed = xa.slice([0..n, 0..dims]) * eps.clone()
                + xb.slice([0..n, 0..dims]) * (eps.ones_like() - eps);
            let (_, grad) = critic.input_grad(&cfg, mixed)?;
            loss = loss + loss::gradient_penalty(grad) * 10.0;
        }
        let grads = GradientsParams::from_grads(loss.backward(), &critic);
        critic = optim.step(lr, critic, grads);
        if lipschitz == Lipschitz::Clip {
            critic = critic.clip_weights(0.01);
        }
    }
    let critic = critic.valid();
    let mean = |p: &Points| -> Result<f64> {
        let mut sum = 0.0f64;
        for chunk in (0..p.rows).collect::<Vec<_>>().chunks(4096) {
            let x = tensor(rows(p, chunk), dims, device);
            let out = crate::pipeline::to_vec(critic.forward(&cfg, x))?;
            sum += out.iter().map(|&v| f64::from(v)).sum::<f64>();
        }
        Ok(sum / p.rows as f64)
    };
    Ok(mean(a)? - mean(b)?)
}
