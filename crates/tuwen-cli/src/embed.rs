//! `tuwen embed` and `tuwen similarity`: image and text embeddings of CLIP and SigLIP models.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tuwen::burn::prelude::Device;
use tuwen::data::files::{refuse_overwrite, walk_images, write_npy, write_safetensors};
use tuwen::pipeline::ImageText;
use tuwen::pipeline::image_text::dot;

#[derive(Args)]
pub struct EmbedArgs {
    /// Checkpoint folder or HF repo id (CLIP or SigLIP).
    #[arg(long)]
    model: String,
    /// Image files: one or more after each --image, which may repeat.
    #[arg(long = "image", num_args = 1..)]
    images: Vec<PathBuf>,
    /// A folder of images, walked recursively; unreadable files are skipped with a warning.
    #[arg(long = "images")]
    dir: Option<PathBuf>,
    /// Texts; repeat for several.
    #[arg(long = "text")]
    texts: Vec<String>,
    /// Inputs per forward pass.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Print `{"image_embeds", "text_embeds"}` as JSON.
    #[arg(long)]
    json: bool,
    /// Write the embeddings to FILE.npy (one kind of input) or FILE.safetensors
    /// (`image_embeds`, `text_embeds`; image paths in the metadata).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn progress(n: usize, what: &str) -> ProgressBar {
    if n == 0 {
        return ProgressBar::hidden();
    }
    ProgressBar::new(n as u64).with_style(
        ProgressStyle::with_template(&format!(
            "{{bar:40}} {{pos}}/{{len}} {what} {{elapsed}}<{{eta}}"
        ))
        .expect("valid template"),
    )
}

pub fn run(args: EmbedArgs, device: &Device) -> Result<()> {
    if args.images.is_empty() && args.dir.is_none() && args.texts.is_empty() {
        bail!("nothing to embed: give --image, --images DIR or --text");
    }
    let out_kind = match &args.out {
        None => None,
        Some(p) => match p.extension().and_then(|e| e.to_str()) {
            Some("npy") => Some("npy"),
            Some("safetensors") => Some("safetensors"),
            _ => bail!(
                "--out {}: the file must end in .npy or .safetensors",
                p.display()
            ),
        },
    };
    let folder = tuwen::hub::resolve(&args.model)?;
    let files = match &args.dir {
        Some(dir) => walk_images(dir)?,
        None => Vec::new(),
    };
    if let Some(dir) = &args.dir
        && files.is_empty()
    {
        bail!(
            "--images {}: no image files found (looked for {})",
            dir.display(),
            tuwen::data::files::IMAGE_EXTENSIONS.join(", ")
        );
    }
    if let Some(out) = &args.out {
        let inputs: Vec<&std::path::Path> = args
            .images
            .iter()
            .chain(&files)
            .map(|p| p.as_path())
            .collect();
        refuse_overwrite("--out", out, &inputs, &[&folder])?;
    }
    let model = ImageText::load_folder(&folder, device)?;

    // Explicit images must all be readable: an error names the first bad one.
    let mut image_paths = Vec::new();
    let mut image_embeds = model.encode_images(&args.images, args.batch_size)?;
    image_paths.extend(args.images.iter().cloned());
    if let Some(dir) = &args.dir {
        let bar = progress(files.len(), "images");
        let mut skipped = 0usize;
        let (kept, embeds) = model.encode_images_lenient(
            &files,
            args.batch_size,
            |path, err| {
                skipped += 1;
                bar.suspend(|| eprintln!("warning: skipping {}: {err}", path.display()));
            },
            |n| bar.inc(n as u64),
        )?;
        bar.finish_and_clear();
        if kept.is_empty() {
            bail!(
                "none of the {} image files in {} could be read",
                files.len(),
                dir.display()
            );
        }
        eprintln!(
            "embedded {} of {} images in {}{}",
            kept.len(),
            files.len(),
            dir.display(),
            if skipped > 0 {
                format!(" ({skipped} skipped)")
            } else {
                String::new()
            }
        );
        image_paths.extend(kept.into_iter().map(|i| files[i].clone()));
        image_embeds.extend(embeds);
    }
    let text_embeds = model.encode_texts(&args.texts, args.batch_size)?;

    if let (Some(path), Some(kind)) = (&args.out, out_kind) {
        if kind == "npy" {
            let rows = match (image_embeds.is_empty(), text_embeds.is_empty()) {
                (false, true) => &image_embeds,
                (true, false) => &text_embeds,
                _ => {
                    bail!("--out .npy holds one array: embed images or texts, or use .safetensors")
                }
            };
            write_npy(path, rows)?;
        } else {
            let names: Vec<String> = image_paths
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            let mut arrays: Vec<(&str, &[Vec<f32>])> = Vec::new();
            if !image_embeds.is_empty() {
                arrays.push(("image_embeds", &image_embeds));
            }
            if !text_embeds.is_empty() {
                arrays.push(("text_embeds", &text_embeds));
            }
            let meta = [
                ("image_paths", serde_json::to_string(&names)?),
                ("texts", serde_json::to_string(&args.texts)?),
                ("model", args.model.clone()),
            ];
            write_safetensors(path, &arrays, &meta)?;
        }
        eprintln!(
            "wrote {} image and {} text embeddings to {}",
            image_embeds.len(),
            text_embeds.len(),
            path.display()
        );
        return Ok(());
    }
    if args.json {
        let mut out = json!({ "image_embeds": image_embeds, "text_embeds": text_embeds });
        if args.dir.is_some() {
            out["image_paths"] = json!(image_paths);
        }
        println!("{out}");
        return Ok(());
    }
    let preview = |v: &[f32]| {
        let head: Vec<String> = v.iter().take(4).map(|x| format!("{x:+.4}")).collect();
        format!("[{}, ...] ({} dims)", head.join(", "), v.len())
    };
    for (p, e) in image_paths.iter().zip(&image_embeds) {
        println!("{}  {}", p.display(), preview(e));
    }
    for (t, e) in args.texts.iter().zip(&text_embeds) {
        println!("{t:?}  {}", preview(e));
    }
    Ok(())
}

#[derive(Args)]
pub struct SimilarityArgs {
    /// Checkpoint folder or HF repo id (CLIP or SigLIP).
    #[arg(long)]
    model: String,
    /// Image files: one or more after each --image, which may repeat.
    #[arg(long = "image", required = true, num_args = 1..)]
    images: Vec<PathBuf>,
    /// Texts; repeat for several.
    #[arg(long = "text", required = true)]
    texts: Vec<String>,
    /// Inputs per forward pass.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Print `{"logits_per_image", "logits_per_text", "probs"}` as JSON.
    #[arg(long)]
    json: bool,
}

pub fn similarity(args: SimilarityArgs, device: &Device) -> Result<()> {
    let model = ImageText::load(&args.model, device)?;
    let images = model.encode_images(&args.images, args.batch_size)?;
    let texts = model.encode_texts(&args.texts, args.batch_size)?;
    let logits = model.logits(&images, &texts)?;
    let probs: Vec<Vec<f32>> = logits.iter().map(|l| model.probs(l)).collect();
    if args.json {
        let per_text: Vec<Vec<f32>> = (0..texts.len())
            .map(|j| logits.iter().map(|row| row[j]).collect())
            .collect();
        println!(
            "{}",
            json!({ "logits_per_image": logits, "logits_per_text": per_text, "probs": probs })
        );
        return Ok(());
    }
    println!("cosine similarity (rows: images, columns: texts)");
    for (j, t) in args.texts.iter().enumerate() {
        println!("  [{j}] {t}");
    }
    for (p, e) in args.images.iter().zip(&images) {
        let row: Vec<String> = texts.iter().map(|t| format!("{:+.3}", dot(e, t))).collect();
        println!("{}  {}", row.join("  "), p.display());
    }
    Ok(())
}
