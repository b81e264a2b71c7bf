//! The model families, one module each, named and structured as the papers (and transformers)
//! name and structure them.

pub mod clip;
pub mod efficientnet;
pub mod siglip;
pub mod vit;
pub mod vit_mae;

/// Checks that every named size in a config is positive; the error names the first that is not.
pub(crate) fn require_positive(fields: &[(&str, usize)]) -> Result<(), String> {
    match fields.iter().find(|(_, v)| *v == 0) {
        Some((name, _)) => Err(format!("{name} must be positive")),
        None => Ok(()),
    }
}
