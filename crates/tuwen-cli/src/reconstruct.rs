//! `tuwen reconstruct`: what a masked autoencoder makes of masked images, or a VQGAN of
//! images through its codes, as a picture or JSON.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use serde_json::json;
use tuwen::burn::prelude::Device;
use tuwen::data::files::refuse_overwrite;
use tuwen::pipeline::mae::MaskedAutoencoder;

#[derive(Args)]
pub struct ReconstructArgs {
    /// A ViTMAE checkpoint (folder or HF repo id, e.g. facebook/vit-mae-base), or a VQGAN
    /// (a diffusers VQModel folder: config.json + diffusion_pytorch_model.safetensors).
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
    /// (MAE), or originals over reconstructions (VQGAN) (default: reconstruction.png; with
    /// --json, only when given).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print `{"logits", "mask", "loss"}` (MAE, transformers' names and layouts) or
    /// `{"codes", "reconstructions", "psnr", "ssim"}` (VQGAN) as JSON.
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
    if tuwen::models::vqgan::is_vq_folder(&folder) {
        if args.mask_ratio.is_some() {
            anyhow::bail!(
                "--mask-ratio is for masked autoencoders; {} is a VQGAN",
                args.model
            );
        }
        return run_vq(&folder, &args.images, out.as_deref(), args.json, device);
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

fn run_vq(
    folder: &Path,
    images: &[PathBuf],
    out: Option<&Path>,
    json_out: bool,
    device: &Device,
) -> Result<()> {
    let vq = tuwen::pipeline::vqgan::VqAutoencoder::load(folder, device)?;
    let r = vq.reconstruct(images)?;
    let s = vq.config.sample_size;
    for p in &r.resized {
        eprintln!("{}: resized to {s}x{s}, the model's size", p.display());
    }
    if let Some(out) = out {
        let shape = [vq.config.out_channels, s, s];
        tuwen::pipeline::vqgan::pairs_png(&r, shape, 8, out)?;
    }
    let finite =
        |v: &[f64]| -> Vec<Option<f64>> { v.iter().map(|x| x.is_finite().then_some(*x)).collect() };
    if json_out {
        println!(
            "{}",
            json!({"codes": r.codes, "reconstructions": r.reconstructions,
                "psnr": finite(&r.psnr), "ssim": finite(&r.ssim)})
        );
    } else {
        let g = vq.config.grid();
        for (i, p) in images.iter().enumerate() {
            let distinct: std::collections::BTreeSet<_> = r.codes[i].iter().collect();
            println!(
                "{}: {g}x{g} codes ({} distinct of {}), PSNR {:.2} dB, SSIM {:.3}",
                p.display(),
                distinct.len(),
                vq.config.num_vq_embeddings,
                r.psnr[i],
                r.ssim[i]
            );
        }
        if let Some(out) = out {
            println!("picture in {}", out.display());
        }
    }
    Ok(())
}
