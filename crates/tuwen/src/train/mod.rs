//! Training: the pieces shared by every family's training loop.

pub mod bench;
pub mod blip;
pub mod checkpoint;
pub mod classifier;
pub mod contrastive;
pub mod data;
pub mod engine;
pub mod gan;
pub mod grads;
pub mod mae;
pub mod optim;
pub mod parallel;
pub mod plot;
pub mod probe;
pub mod vq_prior;
pub mod vqgan;

pub use checkpoint::stable_param_ids;
pub use engine::{
    Batch, Optim, RunConfig, RunReport, StepContext, StepOutput, StepReport, TrainStep,
};
pub use grads::named_grads;
pub use optim::{adamw, clip_global_norm, no_decay_params, warmup_cosine};
