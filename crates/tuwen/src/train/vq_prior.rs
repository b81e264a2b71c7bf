//! Training VQGAN's second stage: GPT-2 over the code grids of a dataset's images (row-major),
//! each sequence starting with its class token (class-conditional) or the start token, with
//! the next-token cross-entropy on the codes. The codes are computed once, before training.

use std::path::Path;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use serde_json::{Value, json};

use super::engine::{self, Batch, Optim, RunReport, StepContext, StepOutput, TrainStep};
use crate::data::processor::ImageProcessor;
use crate::models::gpt2::{Gpt2Config, Gpt2LMHeadModel};
use crate::pipeline::vqgan::{PriorSpec, VqAutoencoder};
use crate::{Error, Result};

/// The settings of a prior's run.
#[derive(Clone, Debug)]
pub struct PriorTrainConfig {
    /// Steps, batch, seed, checkpoints, …
    pub run: engine::RunConfig,
    /// AdamW's peak learning rate (warmup + cosine).
    pub lr: f64,
    /// AdamW's weight decay.
    pub weight_decay: f64,
}

/// The GPT-2 config of a prior for `spec`: `n_embd` wide, `n_layer` blocks of `n_head` heads,
/// as many positions as a sequence has.
pub fn prior_config(
    spec: &PriorSpec,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    dropout: f64,
) -> Result<Gpt2Config> {
    let cfg = Gpt2Config {
        vocab_size: spec.vocab_size(),
        n_positions: 1 + spec.grid * spec.grid,
        n_embd,
        n_layer,
        n_head,
        resid_pdrop: dropout,
        embd_pdrop: dropout,
        attn_pdrop: dropout,
        bos_token_id: spec.start_token(),
        eos_token_id: spec.start_token(),
        ..Gpt2Config::default()
    };
    cfg.validate().map_err(Error::InvalidInput)?;
    Ok(cfg)
}

/// The code grid of every image (row-major) as the VQGAN encodes it, in batches of 16;
/// unreadable images are skipped and their indices returned.
pub fn encode_images(
    vq: &VqAutoencoder,
    paths: &[std::path::PathBuf],
) -> Result<(Vec<Vec<i64>>, Vec<usize>)> {
    let mut codes = Vec::new();
    let mut skipped = Vec::new();
    for (start, chunk) in paths.chunks(16).enumerate() {
        let mut inputs = Vec::new();
        for (j, p) in chunk.iter().enumerate() {
            match vq.image_values(p) {
                Ok((v, _)) => inputs.push(v),
                Err(_) => skipped.push(start * 16 + j),
            }
        }
        if !inputs.is_empty() {
            codes.extend(vq.reconstruct_values(inputs)?.codes);
        }
    }
    Ok((codes, skipped))
}

/// Sequences as rows of the engine's data: the first token, then the codes.
pub fn sequences(spec: &PriorSpec, codes: &[Vec<i64>], classes: &[Option<usize>]) -> Vec<f32> {
    let mut rows = Vec::with_capacity(codes.len() * (1 + spec.grid * spec.grid));
    for (c, class) in codes.iter().zip(classes) {
        rows.push(spec.first_token(*class) as f32);
        rows.extend(c.iter().map(|&i| i as f32));
    }
    rows
}

struct PriorFamily<'a> {
    cfg: &'a PriorTrainConfig,
    model_cfg: &'a Gpt2Config,
    spec: &'a PriorSpec,
    processor: ImageProcessor,
    /// Held-out sequences for validation.
    val: Vec<Vec<i64>>,
}

fn mean_loss(model: &Gpt2LMHeadModel, rows: &[Vec<i64>]) -> Result<f64> {
    let device = model.device();
    let mut total = 0.0;
    for chunk in rows.chunks(64) {
        let n = chunk[0].len();
        let flat: Vec<i64> = chunk.concat();
        let ids = Tensor::<1, Int>::from_ints(flat.as_slice(), &device).reshape([chunk.len(), n]);
        let loss = crate::loss::lm_loss(model.forward(ids), chunk, 0.0)?;
        total += f64::from(loss.into_scalar::<f32>()) * chunk.len() as f64;
    }
    Ok(total / rows.len().max(1) as f64)
}

impl TrainStep for PriorFamily<'_> {
    type Models = Gpt2LMHeadModel;

    fn settings(&self) -> Value {
        json!({"batch_size": self.cfg.run.batch_size, "lr": self.cfg.lr,
            "weight_decay": self.cfg.weight_decay, "spec": self.spec})
    }

    fn optimizers(&self, m: &Gpt2LMHeadModel) -> Vec<Optim> {
        vec![Optim::new(
            "prior",
            super::optim::adamw_betas(m, self.cfg.weight_decay, 0.95, 1e-8),
            self.cfg.lr,
        )]
    }

    fn device(&self, m: &Gpt2LMHeadModel) -> Device {
        m.device()
    }

    fn processor(&self) -> &ImageProcessor {
        &self.processor
    }

    fn step_bytes(&self, m: &Gpt2LMHeadModel, batch: usize) -> u128 {
        let c = self.model_cfg;
        let n = c.n_positions as u128;
        let acts = batch as u128 * n * (c.n_embd as u128 * 16 + c.vocab_size as u128) * 4;
        engine::params_bytes(m.num_params()) + acts * c.n_layer as u128
    }

    fn step(
        &mut self,
        model: Gpt2LMHeadModel,
        batch: Batch,
        ctx: &mut StepContext,
    ) -> Result<(Gpt2LMHeadModel, StepOutput)> {
        let rows: Vec<Vec<i64>> = batch
            .rows
            .iter()
            .map(|r| r.iter().map(|&x| x as i64).collect())
            .collect();
        let n = rows[0].len();
        let flat: Vec<i64> = rows.concat();
        let ids = Tensor::<1, Int>::from_ints(flat.as_slice(), ctx.device).reshape([rows.len(), n]);
        let loss = crate::loss::lm_loss(model.forward(ids), &rows, 0.0)?;
        let value = loss.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let model = ctx.update("prior", model, grads)?;
        Ok((model, StepOutput::loss(value)))
    }

    fn validate(&mut self, m: &Gpt2LMHeadModel) -> Result<Option<Value>> {
        if self.val.is_empty() {
            return Ok(None);
        }
        let nll = mean_loss(&m.valid(), &self.val)?;
        Ok(Some(json!({"nll": nll, "perplexity": nll.exp()})))
    }

    fn save(&self, m: &Gpt2LMHeadModel, dir: &Path) -> Result<()> {
        save_prior(&m.valid(), self.model_cfg, self.spec, dir)
    }
}

/// Writes a prior folder: a transformers GPT-2 checkpoint whose config.json also holds
/// `tuwen_vq_prior`.
pub fn save_prior(
    model: &Gpt2LMHeadModel,
    cfg: &Gpt2Config,
    spec: &PriorSpec,
    dir: &Path,
) -> Result<()> {
    let extra = json!({ PriorSpec::KEY: spec });
    model.save(cfg, &extra, dir)
}

/// Trains `model` (on an autodiff device) on `rows` (flat sequences of `1 + grid²` tokens,
/// see [`sequences`]); `val` are held-out sequences for the validation loss.
pub fn train(
    model: Gpt2LMHeadModel,
    model_cfg: &Gpt2Config,
    spec: &PriorSpec,
    rows: &[f32],
    val: Vec<Vec<i64>>,
    cfg: &PriorTrainConfig,
    on_step: impl FnMut(&engine::StepReport, &Gpt2LMHeadModel) -> bool,
) -> Result<(Gpt2LMHeadModel, RunReport)> {
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return Err(Error::InvalidInput(format!(
            "--lr {} must be positive",
            cfg.lr
        )));
    }
    let dims = 1 + spec.grid * spec.grid;
    let mut family = PriorFamily {
        cfg,
        model_cfg,
        spec,
        processor: crate::pipeline::gan::gan_processor(16),
        val,
    };
    let model = super::stable_param_ids(model);
    engine::run(
        &mut family,
        model,
        super::data::TrainData::Rows { data: rows, dims },
        &cfg.run,
        on_step,
    )
}
