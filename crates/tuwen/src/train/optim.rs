//! Optimisation pieces on top of burn's: AdamW with the usual no-decay group, a warmup +
//! cosine learning-rate schedule, and clipping by the global gradient norm.

use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;

use super::grads::ModulePath;

/// Parameters that get no weight decay: norms, biases, embeddings and the learned temperature
/// and bias, as open_clip and big_vision exclude them.
#[derive(Default)]
struct NoDecay {
    at: ModulePath,
    ids: Vec<ParamId>,
}

impl ModuleVisitor for NoDecay {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.at.enter(name, container_type);
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.at.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let (module, name) = (self.at.module_type(), self.at.name());
        let no_decay = D < 2
            || matches!(module, "Struct:LayerNorm" | "Struct:Embedding")
            || matches!(
                name,
                "logit_scale"
                    | "logit_bias"
                    | "class_embedding"
                    | "cls_token"
                    | "probe"
                    | "position_embeddings"
                    | "mask_token"
            );
        if no_decay {
            self.ids.push(param.id);
        }
    }
}

/// The ids of the parameters that take no weight decay.
pub fn no_decay_params<M: Module>(module: &M) -> Vec<ParamId> {
    let mut v = NoDecay::default();
    module.visit(&mut v);
    v.ids
}

/// AdamW (β = 0.9, 0.98 as CLIP trains) with `weight_decay` on weights and none on the
/// parameters [`no_decay_params`] names.
pub fn adamw<M: Module>(module: &M, weight_decay: f64) -> ModuleOptimizer {
    adamw_betas(module, weight_decay, 0.98, 1e-6)
}

/// [`adamw`] with another β₂ and ε (MAE trains with β = 0.9, 0.95 and ε = 1e-8).
pub fn adamw_betas<M: Module>(
    module: &M,
    weight_decay: f64,
    beta_2: f32,
    epsilon: f32,
) -> ModuleOptimizer {
    let base = AdamWConfig::new().with_beta_2(beta_2).with_epsilon(epsilon);
    base.clone()
        .with_weight_decay(weight_decay as f32)
        .init()
        .with_group(
            ParamGroup::from_ids(no_decay_params(module)),
            base.with_weight_decay(0.0).build(),
            None,
        )
}

/// Linear warmup over `warmup` steps to `peak`, then cosine decay to 0 at `total` steps.
pub fn warmup_cosine(step: usize, peak: f64, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

struct GlobalNorm<'a> {
    grads: &'a mut GradientsParams,
    sum_sq: f64,
    scale: Option<f32>,
}

impl ModuleVisitor for GlobalNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(g) = self.grads.remove::<D>(param.id) else {
            return;
        };
        match self.scale {
            None => {
                let sq: f32 = g.clone().powi_scalar(2).sum().into_scalar();
                self.sum_sq += f64::from(sq);
                self.grads.register(param.id, g);
            }
            Some(s) => self.grads.register(param.id, g * s),
        }
    }
}

/// Scales all gradients together so their global L2 norm is at most `max_norm`; returns the
/// norm before clipping.
pub fn clip_global_norm<M: Module>(module: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let mut v = GlobalNorm {
        grads,
        sum_sq: 0.0,
        scale: None,
    };
    module.visit(&mut v);
    let norm = v.sum_sq.sqrt();
    if norm > max_norm {
        v.scale = Some((max_norm / (norm + 1e-6)) as f32);
        module.visit(&mut v);
    }
    norm
}

/// `sum + grads`, parameter by parameter (`grads` alone when there is no sum yet).
pub fn add_grads<M: Module>(
    module: &M,
    sum: Option<GradientsParams>,
    grads: GradientsParams,
) -> GradientsParams {
    let Some(sum) = sum else {
        return grads;
    };
    let mut acc = burn::optim::GradientsAccumulator::new();
    acc.accumulate(module, sum);
    acc.accumulate(module, grads);
    acc.grads()
}

/// Multiplies every gradient of `module` by `s`.
pub fn scale_grads<M: Module>(module: &M, grads: &mut GradientsParams, s: f32) {
    module.visit(&mut GlobalNorm {
        grads,
        sum_sq: 0.0,
        scale: Some(s),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert!((warmup_cosine(0, 1.0, 10, 100) - 0.1).abs() < 1e-12);
        assert!((warmup_cosine(9, 1.0, 10, 100) - 1.0).abs() < 1e-12);
        assert!((warmup_cosine(10, 1.0, 10, 100) - 1.0).abs() < 1e-12);
        assert!((warmup_cosine(55, 1.0, 10, 100) - 0.5).abs() < 1e-12);
        assert!(warmup_cosine(100, 1.0, 10, 100).abs() < 1e-12);
    }
}
