//! `tuwen index` and `tuwen search`: semantic search over image folders.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tuwen::burn::prelude::Device;
use tuwen::pipeline::ImageText;
use tuwen::search::{Filter, Index, query_embedding};

#[derive(Args)]
pub struct IndexArgs {
    /// Folders of images (searched recursively).
    #[arg(required_unless_present = "export")]
    dirs: Vec<PathBuf>,
    /// A CLIP or SigLIP checkpoint (folder or HF repo id).
    #[arg(long, required_unless_present = "export")]
    model: Option<String>,
    /// The index file (SQLite); created when missing.
    #[arg(long)]
    db: PathBuf,
    /// Images per batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Write the index's embeddings (embeddings.npy, [n, d] float32) and metadata
    /// (metadata.jsonl, one line per row) into this folder instead of indexing.
    #[arg(long)]
    export: Option<PathBuf>,
    /// Print `{"embedded", "unchanged", "removed", "failed", "reused"}` at the end.
    #[arg(long)]
    json: bool,
    /// Keep an HNSW graph (usearch) beside the index from this many images on; smaller
    /// indexes are searched exactly.
    #[arg(long, default_value_t = tuwen::search::ANN_MIN_IMAGES)]
    ann_min: usize,
}

pub fn index(a: IndexArgs, device: &Device) -> Result<()> {
    if let Some(out) = &a.export {
        return export(&a.db, out);
    }
    let model_arg = a.model.as_deref().expect("clap requires --model");
    let folder = tuwen::hub::resolve(model_arg)?;
    let folder = std::fs::canonicalize(&folder)?;
    for d in &a.dirs {
        if !d.is_dir() {
            bail!("{}: not a folder", d.display());
        }
    }
    let mut index = Index::open(&a.db)?;
    index.set_ann_min(a.ann_min);
    // Refuse another model before loading anything.
    index.check_model(&folder, &tuwen::search::model_fingerprint(&folder)?)?;
    let model = ImageText::load_folder(&folder, device)?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} images {per_sec} {elapsed}<{eta}")
            .expect("valid template"),
    );
    let report = index.update(
        &a.dirs,
        &model,
        &folder,
        a.batch_size,
        |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
        |p, e| bar.println(format!("{}: skipped ({e})", p.display())),
    )?;
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} embedded, {} unchanged, {} reused (renamed or copied), {} removed, {} failed; {} \
             images in {}{}",
            report.embedded,
            report.unchanged,
            report.reused,
            report.removed,
            report.failed,
            index.len()?,
            a.db.display(),
            if index.ann_fresh()? {
                " (with an HNSW graph)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

fn export(db: &Path, out: &Path) -> Result<()> {
    if !db.exists() {
        bail!("{}: no such index", db.display());
    }
    let index = Index::open(db)?;
    let rows = index.all()?;
    std::fs::create_dir_all(out)?;
    let d = rows.first().map_or(0, |r| r.embedding.len());
    let flat: Vec<f32> = rows
        .iter()
        .flat_map(|r| r.embedding.iter().copied())
        .collect();
    tuwen::data::arrays::write_npy(&out.join("embeddings.npy"), &flat, &[rows.len(), d])?;
    let mut lines = String::new();
    for r in &rows {
        lines.push_str(&serde_json::to_string(r)?);
        lines.push('\n');
    }
    tuwen::hub::write_atomic(&out.join("metadata.jsonl"), lines.as_bytes())?;
    eprintln!("wrote {} rows to {}", rows.len(), out.display());
    Ok(())
}

#[derive(Args)]
pub struct SearchArgs {
    /// The index (`tuwen index`).
    #[arg(long)]
    db: PathBuf,
    /// What to look for, in words.
    text: Option<String>,
    /// An image to find more like (with a text: both together).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Results.
    #[arg(long, default_value_t = 10)]
    top_k: usize,
    /// Only some images: folder=DIR, after=YYYY-MM-DD, before=..., min_bytes=N, max_bytes=N
    /// (comma-separated).
    #[arg(long = "where")]
    filter: Option<String>,
    /// The model (default: the one the index was built with; another is refused).
    #[arg(long)]
    model: Option<String>,
    /// Print `{"hits": [{"path", "score"}, ...]}` best first.
    #[arg(long)]
    json: bool,
}

pub fn search(a: SearchArgs, device: &Device) -> Result<()> {
    if a.text.is_none() && a.image.is_none() {
        bail!("give a text to search for, an --image, or both");
    }
    if a.top_k == 0 {
        bail!("--top-k must be at least 1");
    }
    let filter = match &a.filter {
        Some(f) => Filter::parse(f).map_err(anyhow::Error::msg)?,
        None => Filter::default(),
    };
    if !a.db.exists() {
        bail!(
            "{}: no such index (make one with tuwen index)",
            a.db.display()
        );
    }
    let index = Index::open(&a.db)?;
    let folder = match (&a.model, index.meta("model")?) {
        (Some(m), _) => std::fs::canonicalize(tuwen::hub::resolve(m)?)?,
        (None, Some(m)) => PathBuf::from(m),
        (None, None) => bail!("{} is empty: index some folders first", a.db.display()),
    };
    index.check_model(&folder, &tuwen::search::model_fingerprint(&folder)?)?;
    let model = ImageText::load_folder(&folder, device)?;
    let q = query_embedding(&model, a.text.as_deref(), a.image.as_deref())?;
    let hits = index.search(&q, a.top_k, &filter)?;
    if a.json {
        println!("{}", json!({ "hits": hits }));
    } else if hits.is_empty() {
        println!("no images match");
    } else {
        for (i, h) in hits.iter().enumerate() {
            println!("{:>3}. {:.3}  {}", i + 1, h.score, h.path);
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct ServeArgs {
    /// The index (`tuwen index`).
    #[arg(long)]
    db: PathBuf,
    /// Address to listen on; a non-loopback address shows the indexed pictures to the network.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: std::net::SocketAddr,
    /// The model (default: the one the index was built with; another is refused).
    #[arg(long)]
    model: Option<String>,
    /// Largest image upload for image queries, in MiB.
    #[arg(long, default_value_t = 16)]
    max_upload_mib: usize,
    /// Thumbnail cache folder (default: `<db>.thumbs` beside the index).
    #[arg(long)]
    thumbs: Option<PathBuf>,
}

pub fn serve(a: ServeArgs, device: &Device) -> Result<()> {
    if a.max_upload_mib == 0 || a.max_upload_mib > 1024 {
        bail!("--max-upload-mib must be in 1..=1024");
    }
    let config = tuwen_serve::Config {
        db: a.db,
        model: a.model,
        max_upload: a.max_upload_mib << 20,
        thumbs: a.thumbs,
    };
    let server = tuwen_serve::Server::open(&config, device)?;
    let images = server.len()?;
    let public = !a.addr.ip().is_loopback();
    tuwen_serve::run(server, a.addr, |bound| {
        if public {
            eprintln!(
                "warning: listening on {bound}, not loopback: anyone who reaches it sees the indexed pictures"
            );
        }
        // Tests and scripts read the address from this line.
        println!("serving {images} images at http://{bound}/ (Ctrl-C stops)");
    })?;
    Ok(())
}
