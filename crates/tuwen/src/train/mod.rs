//! Training: the pieces shared by every family's training loop.

pub mod bench;
pub mod contrastive;
pub mod grads;
pub mod optim;
pub mod plot;

pub use grads::named_grads;
pub use optim::{adamw, clip_global_norm, no_decay_params, warmup_cosine};
