//! Training: the pieces shared by every family's training loop.

pub mod grads;

pub use grads::named_grads;
