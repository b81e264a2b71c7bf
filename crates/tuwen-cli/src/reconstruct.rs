//! `tuwen reconstruct`: what a masked autoencoder makes of masked images, as a picture or JSON.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use serde_json::json;
use tuwen::burn::prelude::Device;
use tuwen::data::files::refuse_overwrite;
use tuwen::pipeline::mae::MaskedAutoencoder;

#[derive(Args)]
pub struct ReconstructArgs {
    /// A ViTMAE checkpoint (folder or HF repo id, e.g. facebook/vit-mae-base).
    #[arg(long)]
    model: String,
    /// Images: one or more after each --image, which may repeat.
    #[arg(long = "image", required = true, num_args = 1..)]
    images: Vec<PathBuf>,
    /// Share of patches to mask (default: the checkpoint's mask_ratio).
    #[arg(long)]
    mask_ratio: Option<f64>,
    /// Seed of the masking.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The picture: per image, original | masked | reconstruction | reconstruction + visible
    /// (default: reconstruction.png; with --json, only when given).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print `{"logits", "mask", "loss"}` (transformers' names and layouts) as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ReconstructArgs, device: &Device) -> Result<()> {
    let folder = tuwen::hub::resolve(&args.model)?;
    let out = match (&args.out, args.json) {
        (Some(p), _) => Some(p.clone()),
        (None, false) => Some(PathBuf::from("reconstruction.png")),
        (None, true) => None,
    };
    if let Some(out) = &out {
        let inputs: Vec<&Path> = args.images.iter().map(PathBuf::as_path).collect();
        refuse_overwrite("--out", out, &inputs, &[&folder])?;
    }
    let mae = MaskedAutoencoder::load_folder(&folder, device)?;
    let ratio = args.mask_ratio.unwrap_or(mae.config.mask_ratio);
    let r = mae.reconstruct(&args.images, ratio, args.seed)?;
    if let Some(out) = &out {
        r.png(&mae.processor, mae.config.norm_pix_loss, out)?;
    }
    if args.json {
        println!(
            "{}",
            json!({"logits": r.logits, "mask": r.mask, "loss": r.loss})
        );
    } else {
        let masked: f32 = r.mask.iter().flatten().sum();
        let total = r.mask.iter().map(Vec::len).sum::<usize>();
        println!(
            "masked {masked} of {total} patches; loss on them {}; picture in {}",
            r.loss.map_or("-".to_string(), |l| format!("{l:.4}")),
            out.as_deref()
                .map_or(String::new(), |p| p.display().to_string())
        );
    }
    Ok(())
}
