//! tuwen (图文, "image and text"): vision and vision-language models in Rust, on burn.
//!
//! - [`hub`]: checkpoint folders in the HuggingFace layout, local or by repo id.
//! - [`data`]: image decoding and transformers' image-processor semantics.
//! - [`nn`]: blocks shared by the families (attention, activations, position embeddings).
//! - [`models`]: the families, one module each ([`models::vit`], ...).
//! - [`device`]: choosing the compute device at run time.
//! - [`water`]: the container-with-most-water problem.

pub mod data;
pub mod device;
pub mod draw;
pub mod error;
pub mod eval;
pub mod generate;
pub mod hub;
pub mod loss;
pub mod memory;
pub mod models;
pub mod nn;
pub mod pipeline;
pub mod search;
pub mod text;
pub mod train;
pub mod water;
pub mod wdist;

pub use burn;
pub use error::{Error, Result};
pub use image;
