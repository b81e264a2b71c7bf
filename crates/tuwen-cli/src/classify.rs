//! `tuwen classify`: top-k labels (or full logits and probabilities) for images.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tuwen::burn::prelude::Device;
use tuwen::pipeline::{ImageClassification, softmax};

#[derive(Args)]
pub struct ClassifyArgs {
    /// Checkpoint folder or HF repo id.
    #[arg(long)]
    model: String,
    /// Image files (PNG, JPEG, WebP, GIF, BMP, TIFF); repeat for several.
    #[arg(long = "image", required = true)]
    images: Vec<PathBuf>,
    /// How many labels to show per image.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Print `{"labels", "logits", "probs"}` as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ClassifyArgs, device: &Device) -> Result<()> {
    if args.top_k == 0 {
        bail!("--top-k must be at least 1");
    }
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let classifier = ImageClassification::load(&args.model, device)?;
    let bar = if args.images.len() > args.batch_size {
        ProgressBar::new(args.images.len() as u64).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} images {elapsed}<{eta}")
                .expect("valid template"),
        )
    } else {
        ProgressBar::hidden()
    };
    let logits = classifier.logits(&args.images, args.batch_size, |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    let probs: Vec<Vec<f32>> = logits.iter().map(|l| softmax(l)).collect();

    if args.json {
        let out = json!({ "labels": classifier.labels, "logits": logits, "probs": probs });
        println!("{out}");
        return Ok(());
    }
    for (path, p) in args.images.iter().zip(&probs) {
        println!("{}", path.display());
        let mut order: Vec<usize> = (0..p.len()).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
        for &i in order.iter().take(args.top_k) {
            println!("  {:6.2}%  {}", p[i] * 100.0, classifier.labels[i]);
        }
    }
    Ok(())
}
