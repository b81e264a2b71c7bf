//! `tuwen classify`: top-k labels (or full logits and probabilities) for images.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tuwen::burn::prelude::Device;
use tuwen::pipeline::image_text::{DEFAULT_TEMPLATE, IMAGENET_TEMPLATES};
use tuwen::pipeline::{ImageClassification, ImageText, softmax};

#[derive(Args)]
pub struct ClassifyArgs {
    /// Checkpoint folder or HF repo id.
    #[arg(long)]
    model: String,
    /// Image files (PNG, JPEG, WebP, GIF, BMP, TIFF): one or more after each --image, which
    /// may repeat (`--image photos/*.jpg`).
    #[arg(long = "image", required = true, num_args = 1..)]
    images: Vec<PathBuf>,
    /// How many labels to show per image.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Print `{"labels", "logits", "probs"}` as JSON (zero-shot: `{"labels",
    /// "logits_per_image", "probs"}`).
    #[arg(long)]
    json: bool,
    /// Zero-shot with a CLIP or SigLIP model: the class names, comma-separated.
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Zero-shot prompt, `{}` standing for the label (default "a photo of a {}."; "{}" alone
    /// is the bare label).
    #[arg(long, requires = "labels", conflicts_with = "templates")]
    template: Option<String>,
    /// A named prompt ensemble: `imagenet` (the CLIP paper's 80 prompts).
    #[arg(long, requires = "labels")]
    templates: Option<String>,
}

pub fn run(args: ClassifyArgs, device: &Device) -> Result<()> {
    if args.top_k == 0 {
        bail!("--top-k must be at least 1");
    }
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if !args.labels.is_empty() {
        return zero_shot(args, device);
    }
    let classifier = ImageClassification::load(&args.model, device)?;
    let bar = progress_bar(args.images.len(), args.batch_size);
    let logits = classifier.logits(&args.images, args.batch_size, |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    let probs: Vec<Vec<f32>> = logits.iter().map(|l| softmax(l)).collect();

    if args.json {
        let out = json!({ "labels": classifier.labels, "logits": logits, "probs": probs });
        println!("{out}");
        return Ok(());
    }
    print_top_k(&args.images, &probs, &classifier.labels, args.top_k);
    Ok(())
}

fn progress_bar(n: usize, batch: usize) -> ProgressBar {
    if n > batch {
        ProgressBar::new(n as u64).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} images {elapsed}<{eta}")
                .expect("valid template"),
        )
    } else {
        ProgressBar::hidden()
    }
}

fn print_top_k(images: &[PathBuf], probs: &[Vec<f32>], labels: &[String], k: usize) {
    for (path, p) in images.iter().zip(probs) {
        println!("{}", path.display());
        let mut order: Vec<usize> = (0..p.len()).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
        for &i in order.iter().take(k) {
            println!("  {:6.2}%  {}", p[i] * 100.0, labels[i]);
        }
    }
}

fn zero_shot(args: ClassifyArgs, device: &Device) -> Result<()> {
    let labels: Vec<String> = args.labels.iter().map(|l| l.trim().to_string()).collect();
    if let Some(empty) = labels.iter().position(String::is_empty) {
        bail!("--labels: label {} is empty", empty + 1);
    }
    let templates: Vec<String> = match (&args.template, args.templates.as_deref()) {
        (Some(t), _) => vec![t.clone()],
        (None, Some("imagenet")) => IMAGENET_TEMPLATES.iter().map(|t| t.to_string()).collect(),
        (None, Some(other)) => bail!("--templates {other:?}: known ensembles: imagenet"),
        (None, None) => vec![DEFAULT_TEMPLATE.to_string()],
    };
    let model = ImageText::load(&args.model, device)?;
    let classifier = model.zero_shot(&labels, &templates)?;
    let bar = progress_bar(args.images.len(), args.batch_size);
    let mut embeds = Vec::with_capacity(args.images.len());
    for chunk in args.images.chunks(args.batch_size) {
        embeds.extend(model.encode_images(chunk, args.batch_size)?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let (logits, probs) = classifier.classify(&embeds);
    if args.json {
        println!(
            "{}",
            json!({ "labels": labels, "logits_per_image": logits, "probs": probs })
        );
        return Ok(());
    }
    print_top_k(&args.images, &probs, &labels, args.top_k);
    Ok(())
}
