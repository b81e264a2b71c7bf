//! The one training loop every family runs on.
//!
//! A family plugs in a [`TrainStep`]: what its networks are, which optimisers move them, and
//! what one step does with a batch (its losses, and which optimiser each gradient goes to).
//! [`run`] owns everything around that: the data stream and its position, the learning-rate
//! schedule, gradient clipping and accumulation, the random draws of each step, validation
//! every N steps, `metrics.jsonl`, progress callbacks, stopping (a callback or a flag such as
//! Ctrl-C), the NaN stop, and checkpoints that hold every named optimiser and the family's
//! extra state, from which a run resumes exactly.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use serde_json::{Value, json};

use super::checkpoint;
use super::data::{Pixels, TrainData, next_batch, step_seed};
use crate::data::augment::Augment;
use crate::data::processor::ImageProcessor;
use crate::{Error, Result};

/// The settings every run has, whatever it trains.
#[derive(Clone, Debug, Default)]
pub struct RunConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Samples per step.
    pub batch_size: usize,
    /// Warmup steps of the warmup + cosine schedule.
    pub warmup: usize,
    /// Global gradient-norm clip of each optimiser's gradients (0: none).
    pub max_grad_norm: f64,
    /// Micro-batches per optimiser step (1: none): the step runs on each in turn and the
    /// gradients are averaged before the optimisers move.
    pub accumulate: usize,
    /// Seed of the data order and every random draw (a function of the seed and the step).
    pub seed: u64,
    /// Random crops and flips of the training images.
    pub augment: Augment,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Where checkpoints go (`None`: none).
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue from this checkpoint folder (the networks must be loaded from it).
    pub resume_from: Option<PathBuf>,
    /// Validate every this many steps (0: never during the run).
    pub val_every: usize,
    /// Write one JSON line per step here (kept up to the checkpoint's step on a resume).
    pub metrics: Option<PathBuf>,
    /// Set (e.g. by a Ctrl-C handler) to save a checkpoint and stop after the current step.
    pub stop: Option<Arc<AtomicBool>>,
    /// Keep every optimiser at its peak learning rate (no warmup, no decay), as GANs train.
    pub constant_lr: bool,
    /// Data-parallel devices (autodiff devices), the first the networks' own; empty or one:
    /// the networks' device alone. Families that support it split each batch across them
    /// ([`super::parallel`]); the others refuse more than one.
    pub devices: Vec<Device>,
}

/// A named optimiser of a run and its peak learning rate.
pub struct Optim {
    /// Its name: steps address it by name, and its state is saved under it.
    pub name: String,
    /// The optimiser.
    pub optim: ModuleOptimizer,
    /// Peak learning rate (the schedule scales it).
    pub lr: f64,
}

impl Optim {
    /// An optimiser called `name` with peak learning rate `lr`.
    pub fn new(name: &str, optim: ModuleOptimizer, lr: f64) -> Self {
        Optim {
            name: name.to_string(),
            optim,
            lr,
        }
    }
}

/// The samples of one (micro-)batch that could be read: preprocessed, augmented images and
/// each image's text (caption or label; empty for image-only data).
pub struct Batch {
    /// Channel-first pixels of each image.
    pub images: Vec<Pixels>,
    /// The text of each image.
    pub texts: Vec<String>,
    /// Rows of numbers ([`TrainData::Rows`]).
    pub rows: Vec<Vec<f32>>,
    /// Samples the step draws itself ([`TrainData::Drawn`]).
    pub drawn: usize,
}

impl Batch {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.images.len() + self.rows.len() + self.drawn
    }

    /// Whether it holds no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a step reports: its loss and any other figures for `metrics.jsonl`.
pub struct StepOutput {
    /// The loss to watch (the NaN stop and the loss curve use it).
    pub loss: f32,
    /// More figures, by name.
    pub metrics: serde_json::Map<String, Value>,
}

impl StepOutput {
    /// A loss and no other figures.
    pub fn loss(loss: f32) -> Self {
        StepOutput {
            loss,
            metrics: Default::default(),
        }
    }
}

/// What a family plugs into [`run`].
pub trait TrainStep {
    /// The networks trained together (e.g. a generator and a critic).
    type Models;

    /// Settings that must be the same when a run resumes.
    fn settings(&self) -> Value;
    /// The optimisers, fresh (a resumed run loads their state into them). Their state is kept
    /// by parameter id: give the networks [`super::stable_param_ids`] so that networks loaded
    /// from a checkpoint find it.
    fn optimizers(&self, models: &Self::Models) -> Vec<Optim>;
    /// The device the networks live on (an autodiff device).
    fn device(&self, models: &Self::Models) -> Device;
    /// The preprocessing of the training images.
    fn processor(&self) -> &ImageProcessor;
    /// Whether a step draws from the device's random generator (dropout, drop-path): the
    /// engine then seeds it each step and holds [`device_rng`] while the step runs.
    fn device_draws(&self, _models: &Self::Models) -> bool {
        true
    }
    /// Whether [`Self::step`] splits its batch across [`StepContext::devices`]; the engine
    /// refuses several devices for a family that does not.
    fn data_parallel(&self) -> bool {
        false
    }
    /// The smallest batch a step can use: smaller ones are skipped.
    fn min_batch(&self) -> usize {
        1
    }
    /// How many batches step `step` takes (e.g. a critic's several updates per generator
    /// update): the engine hands them over as one batch of `k · batch_size` samples, read in
    /// order, and the order of the data follows the batches drawn, not the steps.
    fn batches(&self, _step: usize) -> usize {
        1
    }
    /// A lower bound on the bytes a step on `batch` samples needs: parameters, gradients and
    /// optimiser state, and the activations kept for the backward pass (see
    /// [`crate::memory`]). The engine refuses a batch that cannot fit before the first step;
    /// 0 (the default) checks nothing.
    fn step_bytes(&self, _models: &Self::Models, _batch: usize) -> u128 {
        0
    }
    /// One step (or micro-batch) on `batch`: compute the losses, hand each gradient to
    /// [`StepContext::update`] with the optimiser's name, return the networks.
    fn step(
        &mut self,
        models: Self::Models,
        batch: Batch,
        ctx: &mut StepContext,
    ) -> Result<(Self::Models, StepOutput)>;
    /// Writes the networks (and anything else a resumed run needs) into a checkpoint folder.
    fn save(&self, models: &Self::Models, dir: &Path) -> Result<()>;
    /// Validation figures, every `val_every` steps.
    fn validate(&mut self, _models: &Self::Models) -> Result<Option<Value>> {
        Ok(None)
    }
    /// Extra state to keep in the checkpoint (restored with [`Self::restore`]).
    fn state(&self) -> Value {
        Value::Null
    }
    /// Takes back the extra state of a checkpoint.
    fn restore(&mut self, _state: &Value) -> Result<()> {
        Ok(())
    }
}

/// What a step is given besides its batch: where the run stands, its random seeds and the
/// optimisers.
pub struct StepContext<'a> {
    /// The step's index, from 0.
    pub step: usize,
    /// The micro-batch within the step, from 0.
    pub micro: usize,
    /// Micro-batches of the step.
    pub micros: usize,
    /// This micro-batch's share of the step's samples (its gradients' weight).
    pub weight: f32,
    /// The networks' device.
    pub device: &'a Device,
    /// The data-parallel devices ([`RunConfig::devices`]): at least the networks' device.
    pub devices: &'a [Device],
    seed: u64,
    factor: f64,
    max_grad_norm: f64,
    optims: &'a mut [Optim],
    pending: Vec<Option<GradientsParams>>,
    norms: Vec<f64>,
}

impl StepContext<'_> {
    /// The seed of the step's random draw number `k`: a function of the run's seed, the step
    /// and the micro-batch alone, so that a resumed run draws what the uninterrupted one would.
    pub fn seed(&self, k: usize) -> u64 {
        let seed = self.seed ^ (self.micro as u64).wrapping_mul(0xa24b_aed4_963e_e407);
        step_seed(seed, self.step, k)
    }

    /// The learning rate of optimiser `name` at this step.
    pub fn lr(&self, name: &str) -> f64 {
        self.optims
            .iter()
            .find(|o| o.name == name)
            .map_or(0.0, |o| o.lr * self.factor)
    }

    /// Moves `module` with its gradients by optimiser `name`: clipped to the run's global
    /// norm, at the scheduled learning rate. With micro-batches the gradients are averaged
    /// (weighted by each micro-batch's share) and the module moves at the last one. A
    /// non-finite gradient norm is an error: the module is not moved.
    pub fn update<M: Module>(
        &mut self,
        name: &str,
        module: M,
        grads: GradientsParams,
    ) -> Result<M> {
        let i = self
            .optims
            .iter()
            .position(|o| o.name == name)
            .ok_or_else(|| Error::InvalidInput(format!("no optimiser named {name:?}")))?;
        let mut grads = grads;
        if self.micros > 1 {
            super::optim::scale_grads(&module, &mut grads, self.weight);
            grads = super::optim::add_grads(&module, self.pending[i].take(), grads);
            if self.micro + 1 < self.micros {
                self.pending[i] = Some(grads);
                return Ok(module);
            }
        }
        let max = if self.max_grad_norm > 0.0 {
            self.max_grad_norm
        } else {
            f64::INFINITY
        };
        let norm = super::clip_global_norm(&module, &mut grads, max);
        if !norm.is_finite() {
            return Err(Error::InvalidInput(format!(
                "the gradients of {name:?} became {norm} at step {}; lower --lr",
                self.step
            )));
        }
        self.norms[i] = norm;
        let o = &mut self.optims[i];
        Ok(o.optim.step(o.lr * self.factor, module, grads))
    }
}

/// What every step reports to the caller.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// Step index, from 0.
    pub step: usize,
    /// The step's loss.
    pub loss: f32,
    /// Learning rate of the first optimiser.
    pub lr: f64,
    /// Gradient norm (before clipping) of the first optimiser.
    pub grad_norm: f64,
    /// Samples per second of this step.
    pub samples_per_s: f64,
    /// The step's `metrics.jsonl` line (the above, the step's own figures, validation).
    pub metrics: Value,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    /// `(step, loss)` of every step, including those before a resume.
    pub losses: Vec<(usize, f32)>,
    /// Median samples per second (steps after the first).
    pub samples_per_s: f64,
    /// Samples that could not be read.
    pub skipped: usize,
    /// Whether the run stopped before its last step.
    pub stopped: bool,
    /// Steps skipped because too few of their samples could be read.
    pub skipped_steps: usize,
}

/// The number of optimiser steps that `epochs` passes over `samples` make in batches of
/// `batch_size` (at least one).
pub fn epochs_to_steps(epochs: f64, samples: usize, batch_size: usize) -> Result<usize> {
    if !(epochs > 0.0 && epochs.is_finite()) {
        return Err(Error::InvalidInput(format!(
            "--epochs {epochs} must be positive"
        )));
    }
    Ok(((epochs * samples as f64 / batch_size.max(1) as f64).ceil() as usize).max(1))
}

/// The draw number of the device generator's seed in each step (see [`StepContext::seed`]).
const DEVICE_DRAWS: usize = 999_999;

pub use crate::device::rng_lock as device_rng;

/// A network built by `build` from the device's generator seeded with `seed`, its weights
/// drawn at once (burn draws them lazily, on first use) while [`device_rng`] is held: so a
/// seed means one network, whatever else the process draws.
pub fn init_seeded<M: Module>(device: &Device, seed: u64, build: impl FnOnce(&Device) -> M) -> M {
    struct Draw;
    impl burn::module::ModuleVisitor for Draw {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            let _ = p.val();
        }
    }
    let _rng = device_rng();
    device.seed(seed);
    let m = build(device);
    m.visit(&mut Draw);
    m
}

/// Trains `models` with `family`'s step on `data` as `cfg` says; `on_step` hears every step
/// (with the networks as they are after it) and may stop the run by returning false. A
/// checkpoint is written every `checkpoint_every` steps, at the end and when the run stops.
pub fn run<'a, S: TrainStep>(
    family: &mut S,
    models: S::Models,
    data: impl Into<TrainData<'a>>,
    cfg: &RunConfig,
    mut on_step: impl FnMut(&StepReport, &S::Models) -> bool,
) -> Result<(S::Models, RunReport)> {
    let mut data = data.into();
    let accumulate = cfg.accumulate.max(1);
    if cfg.steps == 0 {
        return Err(Error::InvalidInput(
            "--steps must be at least 1 (a run of 0 steps would save an untrained model)".into(),
        ));
    }
    if cfg.batch_size < family.min_batch().max(1) {
        return Err(Error::InvalidInput(format!(
            "--batch-size must be at least {}",
            family.min_batch().max(1)
        )));
    }
    if accumulate > cfg.batch_size {
        return Err(Error::InvalidInput(format!(
            "{accumulate} micro-batches do not fit a batch of {}",
            cfg.batch_size
        )));
    }
    let empty = match &data {
        TrainData::Samples(samples) => samples.is_empty(),
        TrainData::Rows { data, dims } => *dims == 0 || data.len() < *dims,
        _ => false,
    };
    if empty {
        return Err(Error::InvalidInput("no training samples".into()));
    }
    if cfg.accumulate > 1 && (0..cfg.steps.min(1000)).any(|s| family.batches(s) > 1) {
        return Err(Error::InvalidInput(
            "micro-batches are not supported by a run whose steps take several batches".into(),
        ));
    }
    if cfg.devices.len() > 1 {
        if !family.data_parallel() {
            return Err(Error::InvalidInput(
                "this family trains on one device: drop --devices".into(),
            ));
        }
        if cfg.devices[0].clone().inner() != family.device(&models).inner() {
            return Err(Error::InvalidInput(
                "the networks must be on the first of --devices".into(),
            ));
        }
        if accumulate > 1 {
            return Err(Error::InvalidInput(
                "micro-batches and --devices do not combine yet: use one of them".into(),
            ));
        }
        if cfg.batch_size < cfg.devices.len() {
            return Err(Error::InvalidInput(format!(
                "--batch-size {} is smaller than the {} devices",
                cfg.batch_size,
                cfg.devices.len()
            )));
        }
    }
    let micro = cfg.batch_size.div_ceil(accumulate);
    // Counting parameters materialises lazily initialised ones, which draw from the device's
    // generator: hold it, so that a seeded run elsewhere in the process is not disturbed.
    let bytes = {
        let _rng = device_rng();
        family.step_bytes(&models, micro)
    };
    crate::memory::check(
        &family.device(&models),
        bytes,
        &format!("a training step on {micro} samples"),
        "--batch-size (or the image size; or split the step into micro-batches)",
    )?;
    let mut models = models;
    let device = family.device(&models);
    let (mut state, mut optims) = checkpoint::start(
        cfg.resume_from.as_deref(),
        family.optimizers(&models),
        cfg.seed,
        family.settings(),
    )?;
    family.restore(&state.extra)?;
    if state.step >= cfg.steps {
        return Err(Error::InvalidInput(format!(
            "the checkpoint is at step {} and --steps is {}: nothing left to train (raise --steps)",
            state.step, cfg.steps
        )));
    }
    // metrics.jsonl is opened at the first trained step, so that a run that fails before
    // it leaves the previous file as it was.
    let mut metrics: Option<std::fs::File> = None;
    // A stream resumes where the run stood: at its saved position, or (a checkpoint without
    // one) by reading past what it already used.
    // Batches drawn before this run's first step: the data order follows them.
    let mut draws: usize = (0..state.step).map(|s| family.batches(s)).sum();
    if state.data.is_null() {
        data.skip(draws * cfg.batch_size)?;
    } else {
        data.seek(&state.data)?;
    }
    let first = state.step;
    let first_losses = state.losses.len();
    let mut rates = Vec::new();
    let (mut stopped, mut skipped_steps) = (false, 0);
    while state.step < cfg.steps {
        let step = state.step;
        let t0 = Instant::now();
        let mut batch = Batch {
            images: Vec::new(),
            texts: Vec::new(),
            rows: Vec::new(),
            drawn: 0,
        };
        for _ in 0..family.batches(step).max(1) {
            match &data {
                TrainData::Rows { data: rows, dims } => batch.rows.extend(super::data::row_batch(
                    rows,
                    *dims,
                    draws,
                    cfg.batch_size,
                    cfg.seed,
                )),
                TrainData::Drawn => batch.drawn += cfg.batch_size,
                _ => {
                    let loaded = next_batch(
                        &mut data,
                        draws,
                        cfg.batch_size,
                        cfg.seed,
                        &cfg.augment,
                        family.processor(),
                    )?;
                    state.skipped += loaded.iter().filter(|l| l.is_none()).count();
                    for (image, text) in loaded.into_iter().flatten() {
                        batch.images.push(image);
                        batch.texts.push(text);
                    }
                }
            }
            draws += 1;
        }
        let n = batch.len();
        let mut go_on = true;
        if n < family.min_batch().max(accumulate) {
            // Too few readable samples for a step: it is skipped and counted.
            state.step += 1;
            skipped_steps += 1;
        } else {
            let (next, mut report) =
                one_step(family, models, &mut optims, batch, step, cfg, &device)?;
            models = next;
            // Samples per second of the whole step, reading and decoding included.
            let rate = n as f64 / t0.elapsed().as_secs_f64();
            report.samples_per_s = rate;
            report.metrics["samples_per_s"] = json!(rate);
            let loss = report.loss;
            if step > first {
                rates.push(rate);
            }
            state.losses.push((step, loss));
            state.step += 1;
            if cfg.val_every > 0
                && state.step.is_multiple_of(cfg.val_every)
                && let Some(Value::Object(val)) = family.validate(&models)?
            {
                for (k, v) in val {
                    report.metrics[format!("val_{k}")] = v;
                }
            }
            if let Some(path) = &cfg.metrics {
                if metrics.is_none() {
                    metrics = Some(metrics_file(path, first)?);
                }
                let f = metrics.as_mut().expect("opened above");
                writeln!(f, "{}", report.metrics).map_err(|e| Error::io(path, e))?;
            }
            go_on = on_step(&report, &models);
        }
        go_on = go_on && !cfg.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
        // A checkpoint holds a trained model: none before the first trained step.
        if checkpoint::due(state.step, cfg.steps, cfg.checkpoint_every, !go_on)
            && !state.losses.is_empty()
            && let Some(dir) = &cfg.checkpoint_dir
        {
            state.extra = family.state();
            state.data = data.position();
            checkpoint::save(dir, |tmp| family.save(&models, tmp), &optims, &state)?;
        }
        if !go_on {
            stopped = state.step < cfg.steps;
            break;
        }
    }
    if state.step > first && skipped_steps == state.step - first {
        return Err(Error::InvalidInput(format!(
            "no step had enough readable samples ({} could not be read); nothing was saved",
            state.skipped + data.stream_skipped()
        )));
    }
    if state.losses.len() == first_losses {
        return Err(Error::InvalidInput(
            "stopped before the first step was trained; nothing was saved".into(),
        ));
    }
    rates.sort_by(f64::total_cmp);
    let report = RunReport {
        samples_per_s: rates.get(rates.len() / 2).copied().unwrap_or(0.0),
        skipped: state.skipped + data.stream_skipped(),
        skipped_steps,
        losses: state.losses,
        stopped,
    };
    Ok((models, report))
}

/// Bytes of a step's parameters, their gradients and AdamW's two moments (4 × `f32` each).
pub fn params_bytes(params: usize) -> u128 {
    16 * params as u128
}

/// Runs one step of `family` on the readable samples of a batch, in `cfg.accumulate`
/// micro-batches: seeds the step's draws, moves the optimisers, stops on a non-finite loss.
/// The report's `samples_per_s` is left to the caller, who times the whole step.
fn one_step<S: TrainStep>(
    family: &mut S,
    mut models: S::Models,
    optims: &mut [Optim],
    mut all: Batch,
    step: usize,
    cfg: &RunConfig,
    device: &Device,
) -> Result<(S::Models, StepReport)> {
    let n = all.len();
    let accumulate = cfg.accumulate.max(1);
    let factor = if cfg.constant_lr {
        1.0
    } else {
        super::warmup_cosine(step, 1.0, cfg.warmup, cfg.steps)
    };
    let devices: Vec<Device> = if cfg.devices.len() > 1 {
        cfg.devices
            .iter()
            .map(|d| d.clone().inner().autodiff())
            .collect()
    } else {
        vec![device.clone()]
    };
    let mut ctx = StepContext {
        step,
        micro: 0,
        micros: accumulate,
        weight: 1.0,
        device,
        devices: &devices,
        seed: cfg.seed,
        factor,
        max_grad_norm: cfg.max_grad_norm,
        pending: (0..optims.len()).map(|_| None).collect(),
        norms: vec![f64::NAN; optims.len()],
        optims,
    };
    let mut loss = 0.0f32;
    let mut figures = serde_json::Map::new();
    {
        // Every draw of the step (dropout, drop-path) follows from the seed and the step.
        let _rng = family.device_draws(&models).then(|| {
            let guard = device_rng();
            device.seed(step_seed(cfg.seed, step, DEVICE_DRAWS));
            guard
        });
        for j in 0..accumulate {
            let take = n / accumulate + usize::from(j < n % accumulate);
            let batch = if accumulate == 1 {
                std::mem::replace(
                    &mut all,
                    Batch {
                        images: Vec::new(),
                        texts: Vec::new(),
                        rows: Vec::new(),
                        drawn: 0,
                    },
                )
            } else {
                let rows = all.rows.len().min(take);
                let drawn = all.drawn.min(take);
                all.drawn -= drawn;
                let images = all.images.len().min(take);
                Batch {
                    images: all.images.drain(..images).collect(),
                    texts: all.texts.drain(..images.min(all.texts.len())).collect(),
                    rows: all.rows.drain(..rows).collect(),
                    drawn,
                }
            };
            ctx.micro = j;
            ctx.weight = take as f32 / n as f32;
            let (next, out) = family.step(models, batch, &mut ctx)?;
            models = next;
            loss += out.loss * ctx.weight;
            figures.extend(out.metrics);
        }
    }
    if !loss.is_finite() {
        return Err(Error::InvalidInput(format!(
            "the loss became {loss} at step {step}; lower --lr"
        )));
    }
    let grad_norm = ctx.norms.first().copied().unwrap_or(f64::NAN);
    let lr = optims.first().map_or(0.0, |o| o.lr * factor);
    let mut line = json!({"step": step, "loss": loss, "lr": lr});
    if grad_norm.is_finite() {
        line["grad_norm"] = json!(grad_norm);
    }
    for (k, v) in figures {
        line[k] = v;
    }
    let report = StepReport {
        step,
        loss,
        lr,
        grad_norm,
        samples_per_s: 0.0,
        metrics: line,
    };
    Ok((models, report))
}

/// `metrics.jsonl` opened for appending, holding only the lines of steps before `start`.
fn metrics_file(path: &Path, start: usize) -> Result<std::fs::File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let mut kept = String::new();
    if start > 0 {
        let old = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io(path, e)),
        };
        for line in old.lines() {
            let v: Value = serde_json::from_str(line).unwrap_or_default();
            if v["step"].as_u64().is_some_and(|s| (s as usize) < start) {
                kept.push_str(line);
                kept.push('\n');
            }
        }
    }
    crate::hub::write_atomic(path, kept.as_bytes())?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}
