//! The training engine on a family of its own: two networks with two named optimisers, extra
//! state, draws from the device and micro-batches. A run stopped and resumed from its
//! checkpoint equals the run done in one go, and micro-batches give the whole batch's step.

mod common;

use std::path::Path;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::prelude::*;
use serde_json::json;
use tuwen::burn;
use tuwen::data::ImageProcessor;
use tuwen::data::captions::Sample;
use tuwen::data::processor::batch_tensor;
use tuwen::train::engine::{self, device_rng};
use tuwen::train::{Batch, Optim, RunConfig, StepContext, StepOutput, TrainStep, adamw};

#[derive(Module, Debug)]
struct Pair {
    encoder: Linear,
    critic: Linear,
}

impl Pair {
    fn new(device: &Device) -> Self {
        let _rng = device_rng();
        device.seed(11);
        let pair = Pair {
            encoder: LinearConfig::new(3 * 8 * 8, 4).init(device),
            critic: LinearConfig::new(4, 1).init(device),
        };
        // burn draws initial weights lazily, on first use: draw them all now, while seeded.
        weights(&pair);
        for b in [&pair.encoder.bias, &pair.critic.bias]
            .into_iter()
            .flatten()
        {
            let _ = b.val();
        }
        pair
    }
}

/// The encoder pulls its (randomly masked) features towards 1; the critic, on the detached
/// features, towards -0.5. `seen` counts samples, kept as the family's extra state.
struct Toy {
    processor: ImageProcessor,
    seen: u64,
}

impl TrainStep for Toy {
    type Models = Pair;

    fn settings(&self) -> serde_json::Value {
        json!({"toy": 1})
    }

    fn optimizers(&self, m: &Pair) -> Vec<Optim> {
        vec![
            Optim::new("model", adamw(&m.encoder, 0.01), 1e-2),
            Optim::new("critic", adamw(&m.critic, 0.0), 5e-3),
        ]
    }

    fn device(&self, m: &Pair) -> Device {
        m.encoder.weight.val().device()
    }

    fn processor(&self) -> &ImageProcessor {
        &self.processor
    }

    fn step(
        &mut self,
        mut m: Pair,
        batch: Batch,
        ctx: &mut StepContext,
    ) -> tuwen::Result<(Pair, StepOutput)> {
        let n = batch.len();
        self.seen += n as u64;
        let x = batch_tensor(batch.images, ctx.device)?.reshape([n, 3 * 8 * 8]);
        let h = m.encoder.forward(x);
        let mask = Tensor::<2>::random(
            [n, 4],
            burn::tensor::Distribution::Bernoulli(0.7),
            ctx.device,
        );
        let h = h * mask;
        let loss = (h.clone() - 1.0).powi_scalar(2).mean();
        let critic = (m.critic.forward(h.detach()) + 0.5).powi_scalar(2).mean();
        let value: f32 = loss.clone().into_scalar();
        let grads = GradientsParams::from_grads(loss.backward(), &m.encoder);
        m.encoder = ctx.update("model", m.encoder, grads)?;
        let c: f32 = critic.clone().into_scalar();
        let grads = GradientsParams::from_grads(critic.backward(), &m.critic);
        m.critic = ctx.update("critic", m.critic, grads)?;
        let mut out = StepOutput::loss(value);
        out.metrics.insert("critic".into(), json!(c));
        Ok((m, out))
    }

    fn save(&self, m: &Pair, dir: &Path) -> tuwen::Result<()> {
        tuwen::hub::save_pretrained(m, &json!({"model_type": "toy"}), dir)
    }

    fn state(&self) -> serde_json::Value {
        json!({"seen": self.seen})
    }

    fn restore(&mut self, state: &serde_json::Value) -> tuwen::Result<()> {
        self.seen = state["seen"].as_u64().unwrap_or(0);
        Ok(())
    }
}

fn setup(tag: &str) -> (std::path::PathBuf, Vec<Sample>, Toy) {
    let dir = std::env::temp_dir().join(format!("tuwen-engine-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let images = tuwen::data::files::walk_images(&common::fixtures().join("images")).unwrap();
    let samples = images
        .into_iter()
        .map(|image| Sample {
            image,
            caption: String::new(),
            extra: Default::default(),
        })
        .collect();
    let processor = ImageProcessor::from_json(
        r#"{"image_processor_type": "ViTImageProcessor", "size": {"height": 8, "width": 8}}"#,
    )
    .unwrap();
    (dir, samples, Toy { processor, seen: 0 })
}

fn weights(m: &Pair) -> Vec<f32> {
    let mut v = tuwen::pipeline::to_vec(m.encoder.weight.val().inner()).unwrap();
    v.extend(tuwen::pipeline::to_vec(m.critic.weight.val().inner()).unwrap());
    v
}

#[test]
fn two_optimisers_and_extra_state_resume_exactly() {
    let (dir, samples, mut toy) = setup("resume");
    let device = Device::flex().autodiff();
    let cfg = |ckpt: &str| RunConfig {
        steps: 6,
        batch_size: 6,
        warmup: 2,
        max_grad_norm: 1.0,
        accumulate: 2,
        seed: 3,
        checkpoint_dir: Some(dir.join(ckpt)),
        metrics: Some(dir.join(format!("{ckpt}.jsonl"))),
        ..RunConfig::default()
    };
    let fresh = || tuwen::train::stable_param_ids(Pair::new(&device));
    let (whole_model, whole) =
        engine::run(&mut toy, fresh(), &samples, &cfg("a"), |_, _| true).unwrap();
    let seen_whole = toy.seen;
    assert_eq!(seen_whole, 36);
    let first = std::fs::read_to_string(dir.join("a.jsonl")).unwrap();
    assert_eq!(first.lines().count(), 6);
    assert!(first.contains("\"critic\""));

    toy.seen = 0;
    let (_, part) = engine::run(&mut toy, fresh(), &samples, &cfg("b"), |s, _| s.step < 2).unwrap();
    assert!(part.stopped);
    assert_eq!(part.losses.len(), 3);
    let ckpt = tuwen::train::checkpoint::find(&dir.join("b")).unwrap();
    assert!(ckpt.join("optimizer.bpk").is_file());
    assert!(ckpt.join("optimizer.critic.bpk").is_file());
    let state = tuwen::train::checkpoint::read_state(&ckpt).unwrap();
    assert_eq!(state.extra["seen"], 18);

    toy.seen = 0;
    let resumed_model = tuwen::train::stable_param_ids(
        tuwen::hub::load_weights(Pair::new(&device), &ckpt, &[], &[]).unwrap(),
    );
    let resumed = RunConfig {
        resume_from: Some(ckpt),
        ..cfg("b")
    };
    let (rest_model, rest) =
        engine::run(&mut toy, resumed_model, &samples, &resumed, |_, _| true).unwrap();
    assert_eq!(rest.losses, whole.losses, "the resumed loss curve differs");
    assert_eq!(toy.seen, seen_whole, "the extra state was not restored");
    assert_eq!(weights(&rest_model), weights(&whole_model));
    // metrics.jsonl holds each step once, the first three from before the interruption.
    let metrics = std::fs::read_to_string(dir.join("b.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, [0, 1, 2, 3, 4, 5]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Two equal micro-batches make the step of the whole batch: the same losses and weights, to
/// float rounding (no draws from the device here: the mask is all ones).
#[test]
fn micro_batches_give_the_whole_batch_step() {
    let (dir, samples, _) = setup("micro");
    let device = Device::flex().autodiff();
    let run = |accumulate: usize| {
        let (_, _, toy) = setup("micro");
        let cfg = RunConfig {
            steps: 4,
            batch_size: 6,
            warmup: 1,
            accumulate,
            ..RunConfig::default()
        };
        struct NoMask(Toy);
        impl TrainStep for NoMask {
            type Models = Pair;
            fn settings(&self) -> serde_json::Value {
                self.0.settings()
            }
            fn optimizers(&self, m: &Pair) -> Vec<Optim> {
                self.0.optimizers(m)
            }
            fn device(&self, m: &Pair) -> Device {
                self.0.device(m)
            }
            fn processor(&self) -> &ImageProcessor {
                self.0.processor()
            }
            fn device_draws(&self, _: &Pair) -> bool {
                false
            }
            fn step(
                &mut self,
                mut m: Pair,
                batch: Batch,
                ctx: &mut StepContext,
            ) -> tuwen::Result<(Pair, StepOutput)> {
                let n = batch.len();
                let x = batch_tensor(batch.images, ctx.device)?.reshape([n, 3 * 8 * 8]);
                let loss = (m.encoder.forward(x) - 1.0).powi_scalar(2).mean();
                let value: f32 = loss.clone().into_scalar();
                let grads = GradientsParams::from_grads(loss.backward(), &m.encoder);
                m.encoder = ctx.update("model", m.encoder, grads)?;
                Ok((m, StepOutput::loss(value)))
            }
            fn save(&self, m: &Pair, dir: &Path) -> tuwen::Result<()> {
                self.0.save(m, dir)
            }
        }
        let mut family = NoMask(toy);
        engine::run(&mut family, Pair::new(&device), &samples, &cfg, |_, _| true).unwrap()
    };
    let (one, a) = run(1);
    let (two, b) = run(2);
    assert_eq!(a.losses.len(), 4);
    for ((_, x), (_, y)) in a.losses.iter().zip(&b.losses) {
        assert!((x - y).abs() < 1e-5 * x.abs().max(1.0), "{x} vs {y}");
    }
    let d = common::max_abs_diff(&weights(&one), &weights(&two));
    assert!(d < 1e-5, "weights differ by {d}");
    let _ = std::fs::remove_dir_all(&dir);
}
