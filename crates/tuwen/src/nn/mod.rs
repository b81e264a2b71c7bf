//! Blocks shared by the model families: activations, attention, convolutions, position-embedding
//! resizing.

pub mod activation;
pub mod attention;
pub mod conv;
pub mod cpu;
pub mod encoder;
pub mod pos_embed;

pub use activation::Activation;
pub use attention::scaled_dot_product_attention;
