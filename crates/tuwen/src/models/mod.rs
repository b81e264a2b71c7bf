//! The model families, one module each, named and structured as the papers (and transformers)
//! name and structure them.

pub mod clip;
pub mod siglip;
pub mod vit;
