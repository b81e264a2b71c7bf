//! The model families, one module each, named and structured as the papers (and transformers)
//! name and structure them.

pub mod blip;
pub mod clip;
pub mod efficientnet;
pub mod gan;
pub mod gpt2;
pub mod lpips;
pub mod siglip;
pub mod vit;
pub mod vit_mae;
pub mod vqgan;

/// Upper bounds on the sizes a config.json or a flag may ask for, checked before any module is
/// built, far past every published model (ViT-22B: 48 layers, width 6144, MLP 24576) yet short
/// of what would exhaust memory while building or exhaust `u64` while counting.
pub mod bounds {
    /// Transformer layers (or EfficientNet blocks).
    pub const LAYERS: usize = 1024;
    /// Hidden, intermediate, projection and channel widths.
    pub const WIDTH: usize = 1 << 17;
    /// Attention heads.
    pub const HEADS: usize = 4096;
    /// Image side in pixels.
    pub const IMAGE_SIZE: usize = 16_384;
    /// Image patches (tokens) per image.
    pub const PATCHES: usize = 1 << 20;
    /// Vocabulary entries.
    pub const VOCAB: usize = 1 << 22;
    /// Text positions.
    pub const POSITIONS: usize = 1 << 20;
    /// Classes of a classifier.
    pub const LABELS: usize = 1 << 20;
    /// Input channels.
    pub const CHANNELS: usize = 1024;
}

/// Checks that every named size in a config is positive; the error names the first that is not.
pub(crate) fn require_positive(fields: &[(&str, usize)]) -> Result<(), String> {
    match fields.iter().find(|(_, v)| *v == 0) {
        Some((name, _)) => Err(format!("{name} must be positive")),
        None => Ok(()),
    }
}

/// Checks that every named size is positive and at most its bound.
pub(crate) fn require_sizes(fields: &[(&str, usize, usize)]) -> Result<(), String> {
    let positive: Vec<(&str, usize)> = fields.iter().map(|&(n, v, _)| (n, v)).collect();
    require_positive(&positive)?;
    match fields.iter().find(|(_, v, max)| v > max) {
        Some((name, v, max)) => Err(format!(
            "{name} {v} is more than {max}, beyond any model this can build"
        )),
        None => Ok(()),
    }
}

/// Checks the sizes of one transformer tower; `prefix` (e.g. `"vision_config."`) names it.
pub(crate) fn check_tower(
    prefix: &str,
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
) -> Result<(), String> {
    use bounds::*;
    let name = |field: &str| format!("{prefix}{field}");
    let names = [
        name("hidden_size"),
        name("intermediate_size"),
        name("num_hidden_layers"),
        name("num_attention_heads"),
    ];
    require_sizes(&[
        (&names[0], hidden, WIDTH),
        (&names[1], intermediate, WIDTH),
        (&names[2], layers, LAYERS),
        (&names[3], heads, HEADS),
    ])?;
    if !hidden.is_multiple_of(heads) {
        return Err(format!(
            "{prefix}hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
        ));
    }
    Ok(())
}

/// Checks the text side of a tower: vocabulary and positions in bounds.
pub(crate) fn check_text(prefix: &str, vocab_size: usize, positions: usize) -> Result<(), String> {
    let names = [
        format!("{prefix}vocab_size"),
        format!("{prefix}max_position_embeddings"),
    ];
    require_sizes(&[
        (&names[0], vocab_size, bounds::VOCAB),
        (&names[1], positions, bounds::POSITIONS),
    ])
}

/// Checks a classifier's class count against [`bounds::LABELS`] (before a label map is made).
pub fn check_num_labels(n: usize) -> Result<(), String> {
    if n > bounds::LABELS {
        return Err(format!(
            "{n} classes is more than {}, beyond any classifier this can build",
            bounds::LABELS
        ));
    }
    Ok(())
}

/// Checks the image side of a tower: channels, patch and image sizes in bounds, a patch no
/// larger than the image, and at most [`bounds::PATCHES`] patches.
pub(crate) fn check_image(
    prefix: &str,
    num_channels: usize,
    patch_size: usize,
    image_size: usize,
) -> Result<(), String> {
    use bounds::*;
    let name = |field: &str| format!("{prefix}{field}");
    let names = [name("num_channels"), name("patch_size"), name("image_size")];
    require_sizes(&[
        (&names[0], num_channels, CHANNELS),
        (&names[1], patch_size, IMAGE_SIZE),
        (&names[2], image_size, IMAGE_SIZE),
    ])?;
    if patch_size > image_size {
        return Err(format!(
            "{prefix}patch_size {patch_size} exceeds image_size {image_size}"
        ));
    }
    let grid = image_size / patch_size.max(1);
    if grid.saturating_mul(grid) > bounds::PATCHES {
        return Err(format!(
            "{prefix}image_size {image_size} with patch_size {patch_size} makes {grid}x{grid} \
             patches, more than {}",
            bounds::PATCHES
        ));
    }
    Ok(())
}
