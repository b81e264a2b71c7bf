//! Training VQGAN's first stage on the shared engine: L1 reconstruction, an optional LPIPS
//! perceptual term, the quantiser's codebook and commitment losses, and a PatchGAN
//! discriminator with hinge loss that joins after `disc_start` steps, its term weighted by the
//! adaptive weight λ = ‖∇L_rec‖ / (‖∇L_G‖ + 10⁻⁴) at the decoder's last layer.
//!
//! **The adaptive weight with a first-order autodiff.** L_rec and L_G reach the autoencoder
//! only through the reconstruction x̂. The step therefore runs the autoencoder once, then takes
//! the gradients g_rec = ∂L_rec/∂x̂ and g_G = ∂L_G/∂x̂ on two small graphs from a detached
//! copy of x̂ (through LPIPS and through the discriminator). The gradient of a loss at the
//! decoder's `conv_out` weight is that of ⟨g, conv_out(h)⟩ with h the layer's input, a third
//! small graph; λ follows. Finally the autoencoder's graph is differentiated once through the
//! surrogate ⟨x̂, g_rec + λ g_G⟩ + L_VQ, whose gradient is exactly that of
//! L_rec + λ L_G + L_VQ (tested against PyTorch's `autograd.grad` in `tests/vq_parity.rs`).

use std::path::Path;

use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::Gradients;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::engine::{self, Batch, Optim, RunReport, StepContext, StepOutput, TrainStep};
use crate::data::processor::ImageProcessor;
use crate::data::shapes::SplitMix64;
use crate::loss::{self, CommitPlacement};
use crate::models::gan::trainable;
use crate::models::lpips::Lpips;
use crate::models::vqgan::{PatchDiscriminator, VqConfig, VqModel, VqOutput};
use crate::{Error, Result};

/// The losses of the autoencoder's step.
#[derive(Clone, Debug)]
pub struct AeLossConfig {
    /// β of the commitment (or, with the legacy placement, the codebook) term.
    pub beta: f64,
    /// Where β goes.
    pub placement: CommitPlacement,
    /// Whether the codebook learns by gradient (false with EMA updates).
    pub codebook_term: bool,
    /// Weight of LPIPS (used only when LPIPS weights are loaded).
    pub perceptual_weight: f64,
    /// `--disc-weight`: the adaptive weight's factor; 0 leaves the adversarial term out.
    pub disc_weight: f64,
}

/// The figures of one autoencoder step.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AeFigures {
    /// mean |x − x̂|.
    pub rec_loss: f32,
    /// mean LPIPS (0 without).
    pub perceptual: f32,
    /// The quantiser's loss.
    pub vq_loss: f32,
    /// −mean D(x̂) (0 before the discriminator starts).
    pub g_loss: f32,
    /// The adaptive weight, `disc_weight` included (0 before the discriminator starts).
    pub lambda: f64,
    /// rec + perceptual + λ g + vq.
    pub total: f32,
}

/// The gradient of Σ g · conv_out(h) with respect to `conv_out`'s weight: the gradient at the
/// decoder's last layer of a loss whose gradient at the output is `g`.
fn last_layer_grad(model: &VqModel, h: Tensor<4>, g: Tensor<4>) -> Result<Tensor<4>> {
    let conv = &model.decoder.conv_out;
    let w = conv.weight.val().detach().require_grad();
    let bias = conv.bias.as_ref().map(|b| b.val().detach());
    let opts = burn::tensor::ops::ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    let y = burn::tensor::module::conv2d(h.detach(), w.clone(), bias, opts);
    let grads = (y * g).sum().backward();
    w.grad(&grads)
        .map(Tensor::from_inner)
        .ok_or_else(|| Error::InvalidInput("no gradient at the decoder's last layer".into()))
}

/// The gradient of `loss` at the leaf `x` (on the autodiff backend, as a constant).
fn input_grad(loss: Tensor<1>, x: &Tensor<4>) -> Result<Tensor<4>> {
    let grads = loss.backward();
    x.grad(&grads)
        .map(Tensor::from_inner)
        .ok_or_else(|| Error::InvalidInput("the loss does not depend on the reconstruction".into()))
}

/// One backward pass of the autoencoder's loss on images `x` `[b, c, h, w]` in [-1, 1]: L1,
/// plus `perceptual_weight`·LPIPS, plus λ·(−mean D(x̂)) when `disc` is given and `disc_weight`
/// is positive, plus the quantiser's loss. Returns the gradients (of the autoencoder's
/// parameters; those of LPIPS and the discriminator are not there), the figures and the pass's
/// outputs.
pub fn autoencoder_backward(
    model: &VqModel,
    disc: Option<&PatchDiscriminator>,
    lpips: Option<&Lpips>,
    x: Tensor<4>,
    cfg: &AeLossConfig,
) -> Result<(Gradients, AeFigures, VqOutput)> {
    let out = model.forward(x.clone());
    let mut fig = AeFigures::default();
    // ∂L_rec/∂x̂ on its own graph.
    let xr = out.sample.clone().detach().require_grad();
    let mut rec = (x.clone() - xr.clone()).abs().mean();
    fig.rec_loss = rec.clone().into_scalar::<f32>();
    if let Some(lp) = lpips
        && cfg.perceptual_weight > 0.0
    {
        let p = lp.forward(x.clone(), xr.clone()).mean();
        fig.perceptual = p.clone().into_scalar::<f32>();
        rec = rec + p * cfg.perceptual_weight;
    }
    let g_rec = input_grad(rec, &xr)?;
    let mut g_out = g_rec.clone();
    if let Some(d) = disc
        && cfg.disc_weight > 0.0
    {
        let xg = out.sample.clone().detach().require_grad();
        let g_loss = d.forward(xg.clone()).mean().neg();
        fig.g_loss = g_loss.clone().into_scalar::<f32>();
        let g_gan = input_grad(g_loss, &xg)?;
        let h = out.last_hidden.clone();
        let w_rec = last_layer_grad(model, h.clone(), g_rec)?;
        let w_gan = last_layer_grad(model, h, g_gan.clone())?;
        fig.lambda = loss::adaptive_weight(w_rec, w_gan) * cfg.disc_weight;
        g_out = g_out + g_gan * fig.lambda;
    }
    let q = &out.quantized;
    let vq = loss::vq_loss(
        q.z.clone(),
        q.codes_vectors.clone(),
        cfg.beta,
        cfg.placement,
        cfg.codebook_term,
    );
    fig.vq_loss = vq.clone().into_scalar::<f32>();
    fig.total = fig.rec_loss
        + fig.perceptual * cfg.perceptual_weight as f32
        + fig.g_loss * fig.lambda as f32
        + fig.vq_loss;
    let surrogate = (out.sample.clone() * g_out.detach()).sum() + vq;
    let grads = surrogate.backward();
    Ok((grads, fig, out))
}

/// Code usage of a set of indices: the share of the `k` codes used, and the perplexity
/// exp(−Σ p log p) of their frequencies (k when all are used equally, 1 when one is).
pub fn usage_and_perplexity(indices: &[i64], k: usize) -> (f64, f64) {
    let mut counts = vec![0usize; k];
    for &i in indices {
        if let Some(c) = counts.get_mut(i as usize) {
            *c += 1;
        }
    }
    let n = indices.len().max(1) as f64;
    let used = counts.iter().filter(|&&c| c > 0).count();
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.ln()
        })
        .sum();
    (used as f64 / k as f64, entropy.exp())
}

/// The settings of a VQGAN run.
#[derive(Clone, Debug)]
pub struct VqTrainConfig {
    /// Steps, batch, seed, checkpoints, …
    pub run: engine::RunConfig,
    /// Adam's learning rate, both networks.
    pub lr: f64,
    /// Adam's β (taming: 0.5, 0.9).
    pub betas: (f64, f64),
    /// The autoencoder's losses (`disc_weight` applies from `disc_start`).
    pub losses: AeLossConfig,
    /// EMA codebook updates with this decay (`None`: the codebook learns by gradient).
    pub ema_decay: Option<f64>,
    /// Restart a code unused for this many steps at a random encoder output (0: never).
    pub restart_after: usize,
    /// The step the discriminator starts at (taming's `disc_start`).
    pub disc_start: usize,
    /// The discriminator's stride-2 layers.
    pub disc_layers: usize,
    /// The discriminator's first width.
    pub disc_filters: usize,
}

impl VqTrainConfig {
    /// taming's defaults: Adam β (0.5, 0.9), β = 0.25 placed as the paper says, disc weight
    /// 0.8, a 3-layer 64-filter PatchGAN, LPIPS weight 1.
    pub fn new(run: engine::RunConfig) -> Self {
        VqTrainConfig {
            run,
            lr: 2e-4,
            betas: (0.5, 0.9),
            losses: AeLossConfig {
                beta: 0.25,
                placement: CommitPlacement::Paper,
                codebook_term: true,
                perceptual_weight: 1.0,
                disc_weight: 0.8,
            },
            ema_decay: None,
            restart_after: 0,
            disc_start: 0,
            disc_layers: 3,
            disc_filters: 64,
        }
    }
}

/// The two networks of a VQGAN run.
#[derive(Module, Debug)]
pub struct VqGan {
    /// The autoencoder (what is saved as the model).
    pub model: VqModel,
    /// The PatchGAN discriminator.
    pub disc: PatchDiscriminator,
}

impl VqGan {
    /// A fresh discriminator for `model`.
    pub fn new(model: VqModel, cfg: &VqConfig, train: &VqTrainConfig) -> Self {
        let device = model.device();
        let disc = PatchDiscriminator::new(
            cfg.out_channels,
            train.disc_filters,
            train.disc_layers,
            &device,
        );
        VqGan { model, disc }
    }
}

/// EMA codebook state and dead-code counters, kept in the checkpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct CodeState {
    /// EMA of each code's count.
    cluster_size: Vec<f32>,
    /// EMA of the sum of the vectors assigned to each code `[k·d]`.
    embed_sum: Vec<f32>,
    /// Steps since each code was last chosen.
    idle: Vec<u32>,
}

struct VqFamily<'a> {
    cfg: &'a VqTrainConfig,
    model_cfg: &'a VqConfig,
    processor: ImageProcessor,
    lpips: Option<&'a Lpips>,
    codes: CodeState,
    /// Held-out images `[n, c, h, w]` values for validation.
    val: Vec<f32>,
    /// The FID-style score's classifier and its features of the held-out images.
    scorer: Option<Scorer<'a>>,
}

/// A Fréchet distance on a tuwen-trained classifier's features (FID's formula, not its
/// network) between held-out images and their reconstructions.
pub struct Scorer<'a> {
    /// The classifier.
    pub classifier: &'a crate::pipeline::ImageClassification,
    features: Vec<f32>,
    dims: usize,
}

impl<'a> Scorer<'a> {
    /// Computes the classifier's features of the held-out images once.
    pub fn new(
        classifier: &'a crate::pipeline::ImageClassification,
        val: &[f32],
        shape: [usize; 3],
    ) -> Result<Self> {
        let (features, dims) = crate::eval::classifier_features(classifier, val, shape)?;
        Ok(Scorer {
            classifier,
            features,
            dims,
        })
    }

    /// The distance of `images` (same layout) to the held-out images.
    pub fn score(&self, images: &[f32], shape: [usize; 3]) -> Result<f64> {
        let (f, _) = crate::eval::classifier_features(self.classifier, images, shape)?;
        crate::eval::frechet_distance(&self.features, &f, self.dims)
    }
}

fn read_floats<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| Error::InvalidInput(format!("cannot read a tensor: {e:?}")))
}

fn read_ints<const D: usize>(t: Tensor<D, Int>) -> Result<Vec<i64>> {
    t.into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .map_err(|e| Error::InvalidInput(format!("cannot read a tensor: {e:?}")))
}

/// Replaces the codebook's values, keeping its parameter id (the optimiser's state).
fn set_codebook(model: VqModel, values: Vec<f32>, k: usize, d: usize) -> VqModel {
    let mut model = model;
    let device = model.device();
    let w = model.quantize.embedding.weight;
    let t = Tensor::<1>::from_floats(values.as_slice(), &device).reshape([k, d]);
    model.quantize.embedding.weight = Param::initialized(w.id, trainable(t));
    model
}

impl VqFamily<'_> {
    /// Images of a batch as one tensor, checked against the model's size and channels.
    fn images(&self, batch: &mut Batch, device: &Device) -> Result<Tensor<4>> {
        let c = self.model_cfg.in_channels;
        let s = self.model_cfg.sample_size;
        let n = batch.images.len();
        let mut v = Vec::with_capacity(n * c * s * s);
        for (pixels, [pc, h, w]) in batch.images.drain(..) {
            if (h, w) != (s, s) {
                return Err(Error::InvalidInput(format!(
                    "an image came out {h}x{w}, the model takes {s}x{s}"
                )));
            }
            match (pc, c) {
                (a, b) if a == b => v.extend_from_slice(&pixels),
                (3, 1) => crate::pipeline::gan::push_channels(&pixels, 1, h * w, &mut v),
                _ => {
                    return Err(Error::InvalidInput(format!(
                        "images have {pc} channels, the model {c}"
                    )));
                }
            }
        }
        Ok(Tensor::<1>::from_floats(v.as_slice(), device).reshape([n, c, s, s]))
    }

    /// EMA updates and dead-code restarts after the optimiser's step.
    fn update_codes(
        &mut self,
        model: VqModel,
        out: &VqOutput,
        seed: u64,
    ) -> Result<(VqModel, usize)> {
        let k = self.model_cfg.num_vq_embeddings;
        let d = self.model_cfg.code_dim();
        let ema = self.cfg.ema_decay;
        let restart = self.cfg.restart_after;
        if ema.is_none() && restart == 0 {
            return Ok((model, 0));
        }
        let idx = read_ints(out.quantized.indices.clone())?;
        let z = read_floats(out.quantized.z.clone().permute([0, 2, 3, 1]))?;
        let mut book = read_floats(model.quantize.embedding.weight.val())?;
        let st = &mut self.codes;
        if st.idle.len() != k {
            st.idle = vec![0; k];
        }
        let mut counts = vec![0f32; k];
        let mut sums = vec![0f32; k * d];
        for (row, &i) in idx.iter().enumerate() {
            let i = i as usize;
            counts[i] += 1.0;
            for j in 0..d {
                sums[i * d + j] += z[row * d + j];
            }
        }
        if let Some(decay) = ema {
            let decay = decay as f32;
            if st.cluster_size.len() != k {
                // Start from the codebook as it is, each code counted once.
                st.cluster_size = vec![1.0; k];
                st.embed_sum = book.clone();
            }
            for i in 0..k {
                st.cluster_size[i] = decay * st.cluster_size[i] + (1.0 - decay) * counts[i];
                for j in 0..d {
                    st.embed_sum[i * d + j] =
                        decay * st.embed_sum[i * d + j] + (1.0 - decay) * sums[i * d + j];
                }
            }
            // Laplace smoothing of the counts, as in VQ-VAE-2's code.
            let total: f32 = st.cluster_size.iter().sum();
            let eps = 1e-5f32;
            for i in 0..k {
                let n = (st.cluster_size[i] + eps) / (total + k as f32 * eps) * total;
                for j in 0..d {
                    book[i * d + j] = st.embed_sum[i * d + j] / n;
                }
            }
        }
        let mut restarted = 0;
        if restart > 0 {
            let mut rng = SplitMix64::new(seed);
            let rows = idx.len();
            for i in 0..k {
                st.idle[i] = if counts[i] > 0.0 { 0 } else { st.idle[i] + 1 };
                if st.idle[i] as usize >= restart && rows > 0 {
                    let r = (rng.next_u64() % rows as u64) as usize;
                    book[i * d..(i + 1) * d].copy_from_slice(&z[r * d..(r + 1) * d]);
                    if ema.is_some() {
                        st.cluster_size[i] = 1.0;
                        st.embed_sum[i * d..(i + 1) * d].copy_from_slice(&z[r * d..(r + 1) * d]);
                    }
                    st.idle[i] = 0;
                    restarted += 1;
                }
            }
        }
        Ok((set_codebook(model, book, k, d), restarted))
    }
}

impl TrainStep for VqFamily<'_> {
    type Models = VqGan;

    fn settings(&self) -> Value {
        let c = self.cfg;
        json!({"batch_size": c.run.batch_size, "lr": c.lr, "betas": [c.betas.0, c.betas.1],
            "beta": c.losses.beta, "legacy": c.losses.placement == CommitPlacement::Legacy,
            "perceptual_weight": c.losses.perceptual_weight, "lpips": self.lpips.is_some(),
            "disc_weight": c.losses.disc_weight, "disc_start": c.disc_start,
            "ema_decay": c.ema_decay, "restart_after": c.restart_after})
    }

    fn optimizers(&self, _m: &VqGan) -> Vec<Optim> {
        let make = || {
            AdamConfig::new()
                .with_beta_1(self.cfg.betas.0 as f32)
                .with_beta_2(self.cfg.betas.1 as f32)
                .with_epsilon(1e-8)
                .init()
        };
        vec![
            Optim::new("autoencoder", make(), self.cfg.lr),
            Optim::new("discriminator", make(), self.cfg.lr),
        ]
    }

    fn device(&self, m: &VqGan) -> Device {
        m.model.device()
    }

    fn processor(&self) -> &ImageProcessor {
        &self.processor
    }

    fn device_draws(&self, _m: &VqGan) -> bool {
        false
    }

    fn step_bytes(&self, m: &VqGan, batch: usize) -> u128 {
        // Parameters, gradients and two moments; the activations kept for the backward pass
        // (a rough lower bound: the widest level's maps, a few per ResNet block).
        let c = self.model_cfg;
        let s = c.sample_size as u128;
        let w = c.block_out_channels[0] as u128;
        let blocks = (c.layers_per_block as u128 + 1) * 2 * 4;
        engine::params_bytes(m.num_params()) + 4 * batch as u128 * s * s * w * blocks
    }

    fn step(
        &mut self,
        models: VqGan,
        mut batch: Batch,
        ctx: &mut StepContext,
    ) -> Result<(VqGan, StepOutput)> {
        let device = ctx.device.clone();
        let x = self.images(&mut batch, &device)?;
        let VqGan { model, mut disc } = models;
        let gan_on = ctx.step >= self.cfg.disc_start && self.cfg.losses.disc_weight > 0.0;
        let mut losses = self.cfg.losses.clone();
        losses.codebook_term = self.cfg.ema_decay.is_none();
        if !gan_on {
            losses.disc_weight = 0.0;
        }
        let frozen = disc.clone().no_grad();
        let (grads, fig, out) = autoencoder_backward(
            &model,
            gan_on.then_some(&frozen),
            self.lpips,
            x.clone(),
            &losses,
        )?;
        let grads = GradientsParams::from_grads(grads, &model);
        let model = ctx.update("autoencoder", model, grads)?;
        let (model, restarted) = self.update_codes(model, &out, ctx.seed(1))?;
        let mut figures = serde_json::Map::new();
        if gan_on {
            let real = disc.forward(x.clone());
            let fake = disc.forward(out.sample.clone().detach());
            let logits_real = real.clone().mean().into_scalar::<f32>();
            let logits_fake = fake.clone().mean().into_scalar::<f32>();
            let d_loss = loss::hinge_d_loss(real, fake);
            figures.insert("d_loss".into(), json!(d_loss.clone().into_scalar::<f32>()));
            figures.insert("logits_real".into(), json!(logits_real));
            figures.insert("logits_fake".into(), json!(logits_fake));
            let grads = GradientsParams::from_grads(d_loss.backward(), &disc);
            disc = ctx.update("discriminator", disc, grads)?;
        }
        let idx = read_ints(out.quantized.indices.clone())?;
        let (usage, perplexity) = usage_and_perplexity(&idx, self.model_cfg.num_vq_embeddings);
        let psnr = crate::eval::psnr(&read_floats(x)?, &read_floats(out.sample.detach())?);
        for (name, v) in [
            ("rec_loss", json!(fig.rec_loss)),
            ("perceptual", json!(fig.perceptual)),
            ("vq_loss", json!(fig.vq_loss)),
            ("g_loss", json!(fig.g_loss)),
            ("lambda", json!(fig.lambda)),
            ("usage", json!(usage)),
            ("perplexity", json!(perplexity)),
            ("psnr", json!(psnr)),
        ] {
            figures.insert(name.into(), v);
        }
        if restarted > 0 {
            figures.insert("restarted".into(), json!(restarted));
        }
        Ok((
            VqGan { model, disc },
            StepOutput {
                loss: fig.total,
                metrics: figures,
            },
        ))
    }

    fn validate(&mut self, m: &VqGan) -> Result<Option<Value>> {
        if self.val.is_empty() {
            return Ok(None);
        }
        let model = m.model.valid();
        let c = self.model_cfg;
        let per = c.in_channels * c.sample_size * c.sample_size;
        let r = reconstruct_values(&model, c, &self.val, per)?;
        let mut v = json!({"psnr": r.psnr, "ssim": r.ssim, "usage": r.usage,
            "perplexity": r.perplexity});
        if let Some(s) = &self.scorer {
            let shape = [c.out_channels, c.sample_size, c.sample_size];
            v["fid"] = json!(s.score(&r.reconstructions, shape)?);
        }
        Ok(Some(v))
    }

    fn state(&self) -> Value {
        serde_json::to_value(&self.codes).expect("code state serialises")
    }

    fn restore(&mut self, state: &Value) -> Result<()> {
        if !state.is_null() {
            self.codes = serde_json::from_value(state.clone())
                .map_err(|e| Error::InvalidInput(format!("checkpoint's code state: {e}")))?;
        }
        Ok(())
    }

    fn save(&self, m: &VqGan, dir: &Path) -> Result<()> {
        let inner = m.valid();
        inner.model.save(self.model_cfg, dir)?;
        crate::hub::save_pretrained(&inner.disc, &json!({}), &dir.join("discriminator"))
    }
}

/// Reconstruction figures of a set of images.
#[derive(Clone, Debug)]
pub struct ReconstructionReport {
    /// Mean PSNR (dB, images in [0, 1]).
    pub psnr: f64,
    /// Mean SSIM.
    pub ssim: f64,
    /// Share of the codes used.
    pub usage: f64,
    /// Perplexity of the codes used.
    pub perplexity: f64,
    /// The reconstructions, row-major.
    pub reconstructions: Vec<f32>,
}

/// Reconstructs `images` (`per` values each, in [-1, 1]) through [`crate::pipeline::vqgan::VqAutoencoder`] and measures them.
pub fn reconstruct_values(
    model: &VqModel,
    cfg: &VqConfig,
    images: &[f32],
    per: usize,
) -> Result<ReconstructionReport> {
    // The pipeline's reconstruction, measured.
    let vq = crate::pipeline::vqgan::VqAutoencoder {
        model: model.clone(),
        config: cfg.clone(),
    };
    let r = vq.reconstruct_values(images.chunks(per.max(1)).map(<[f32]>::to_vec).collect())?;
    let all: Vec<i64> = r.codes.concat();
    let (usage, perplexity) = usage_and_perplexity(&all, cfg.num_vq_embeddings);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Ok(ReconstructionReport {
        psnr: mean(&r.psnr),
        ssim: mean(&r.ssim),
        usage,
        perplexity,
        reconstructions: r.reconstructions.concat(),
    })
}

/// Trains `models` (on an autodiff device) on `data`; `val` are held-out images (row-major
/// `[n, c, h, w]` in [-1, 1]) for validation every `cfg.run.val_every` steps, scored by
/// `scorer` too when given.
#[allow(clippy::too_many_arguments)]
pub fn train<'a>(
    models: VqGan,
    model_cfg: &VqConfig,
    data: super::data::TrainData<'a>,
    lpips: Option<&Lpips>,
    val: Vec<f32>,
    scorer: Option<Scorer<'_>>,
    cfg: &VqTrainConfig,
    on_step: impl FnMut(&engine::StepReport, &VqGan) -> bool,
) -> Result<(VqGan, RunReport)> {
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return Err(Error::InvalidInput(format!(
            "--lr {} must be positive",
            cfg.lr
        )));
    }
    let l = &cfg.losses;
    for (name, v) in [
        ("--beta", l.beta),
        ("--disc-weight", l.disc_weight),
        ("--perceptual-weight", l.perceptual_weight),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(Error::InvalidInput(format!(
                "{name} {v} must be non-negative"
            )));
        }
    }
    if let Some(d) = cfg.ema_decay
        && !(d > 0.0 && d < 1.0)
    {
        return Err(Error::InvalidInput(format!(
            "--ema-decay {d} must be in (0, 1)"
        )));
    }
    let mut family = VqFamily {
        cfg,
        model_cfg,
        processor: crate::pipeline::gan::gan_processor(model_cfg.sample_size),
        lpips,
        codes: CodeState::default(),
        val,
        scorer,
    };
    let models = super::stable_param_ids(models);
    engine::run(&mut family, models, data, &cfg.run, on_step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_and_perplexity_of_simple_counts() {
        let (u, p) = usage_and_perplexity(&[0, 1, 2, 3], 8);
        assert_eq!(u, 0.5);
        assert!((p - 4.0).abs() < 1e-9);
        let (u, p) = usage_and_perplexity(&[5, 5, 5], 8);
        assert_eq!(u, 0.125);
        assert!((p - 1.0).abs() < 1e-9);
    }
}
