//! Image decoding and transformers' image-processor semantics.

pub mod arrays;
pub mod augment;
pub mod captions;
pub mod decode;
pub mod files;
pub mod labelled;
pub mod processor;
pub mod resize;
pub mod shapes;
pub mod toy;
pub mod webdataset;

pub use decode::{decode_rgb, open_rgb, to_rgb8_like_pil};
pub use processor::{ImageProcessor, Size};
pub use resize::{Resample, resize};
