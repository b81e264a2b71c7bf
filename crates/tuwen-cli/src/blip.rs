//! `tuwen caption` and `tuwen match`: BLIP's captions and image-text matching.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tuwen::burn::prelude::Device;
use tuwen::data::files::walk_images;
use tuwen::generate::{Sampling, Settings};
use tuwen::pipeline::blip::{ImageCaptioning, ImageTextMatching};

#[derive(Args)]
pub struct CaptionArgs {
    /// A BLIP captioning checkpoint (folder or HF repo id, e.g.
    /// Salesforce/blip-image-captioning-base).
    #[arg(long)]
    model: String,
    /// Image files: one or more after each --image, which may repeat.
    #[arg(long = "image", num_args = 1..)]
    images: Vec<PathBuf>,
    /// A folder of images, walked recursively; unreadable files are skipped with a warning.
    #[arg(long = "images")]
    dir: Option<PathBuf>,
    /// Text the caption starts with (conditional captioning), e.g. "a picture of".
    #[arg(long)]
    prompt: Option<String>,
    /// Beam search with K beams (1: greedy).
    #[arg(long, default_value_t = 1)]
    beams: usize,
    /// Beam scores are divided by length^P.
    #[arg(long, default_value_t = 1.0)]
    length_penalty: f64,
    /// Sample instead of searching (nucleus sampling with --top-p, --top-k, --temperature).
    #[arg(long, conflicts_with = "beams")]
    sample: bool,
    /// Sampling: keep the smallest set of tokens whose probability reaches P.
    #[arg(long, default_value_t = 1.0, requires = "sample")]
    top_p: f64,
    /// Sampling: keep the K most likely tokens (0: all).
    #[arg(long, default_value_t = 50, requires = "sample")]
    top_k: usize,
    /// Sampling: divide the logits by T.
    #[arg(long, default_value_t = 1.0, requires = "sample")]
    temperature: f64,
    /// Sampling: seed of the draws.
    #[arg(long, default_value_t = 0, requires = "sample")]
    seed: u64,
    /// Tokens to add at most.
    #[arg(long, default_value_t = 20)]
    max_new_tokens: usize,
    /// The end token is suppressed until this many tokens are new.
    #[arg(long, default_value_t = 0)]
    min_new_tokens: usize,
    /// Penalise tokens already in the sequence (transformers' repetition_penalty; 1: none).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f64,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Print `{"captions", "token_ids"}` (with a folder, also `"image_paths"`).
    #[arg(long)]
    json: bool,
}

pub fn caption(args: CaptionArgs, device: &Device) -> Result<()> {
    if args.images.is_empty() && args.dir.is_none() {
        bail!("nothing to caption: give --image or --images DIR");
    }
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let settings = Settings {
        max_new_tokens: args.max_new_tokens,
        min_new_tokens: args.min_new_tokens,
        num_beams: args.beams,
        length_penalty: args.length_penalty,
        repetition_penalty: args.repetition_penalty,
        sampling: args.sample.then_some(Sampling {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        }),
        ..Settings::default()
    };
    let files = match &args.dir {
        Some(dir) => {
            let files = walk_images(dir)?;
            if files.is_empty() {
                bail!("--images {}: no image files found", dir.display());
            }
            files
        }
        None => Vec::new(),
    };
    let model = ImageCaptioning::load(&args.model, device)?;
    let prompt = args.prompt.as_deref();
    // Explicit images must all be readable: an error names the first bad one.
    let mut out = model.caption(&args.images, prompt, &settings, args.batch_size)?;
    let mut paths = args.images.clone();
    if let Some(dir) = &args.dir {
        let bar = if files.len() > args.batch_size {
            ProgressBar::new(files.len() as u64).with_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} images {elapsed}<{eta}")
                    .expect("valid template"),
            )
        } else {
            ProgressBar::hidden()
        };
        let mut skipped = 0;
        for chunk in files.chunks(args.batch_size) {
            let (kept, pixels) = model.processor.load_batch_lenient(chunk, device, |i, e| {
                skipped += 1;
                bar.suspend(|| eprintln!("warning: skipping {}: {e}", chunk[i].display()));
            })?;
            if let Some(pixels) = pixels {
                let c = model.caption_pixels(pixels, prompt, &settings)?;
                paths.extend(kept.iter().map(|&i| chunk[i].clone()));
                out.captions.extend(c.captions);
                out.token_ids.extend(c.token_ids);
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        if paths.len() == args.images.len() {
            bail!(
                "none of the {} image files in {} could be read",
                files.len(),
                dir.display()
            );
        }
        if skipped > 0 {
            eprintln!(
                "captioned {} images ({skipped} unreadable skipped)",
                files.len() - skipped
            );
        }
    }
    if args.json {
        let mut v = json!({"captions": out.captions, "token_ids": out.token_ids});
        if args.dir.is_some() {
            v["image_paths"] = json!(paths);
        }
        println!("{v}");
        return Ok(());
    }
    for (p, c) in paths.iter().zip(&out.captions) {
        println!("{}: {c}", p.display());
    }
    Ok(())
}

#[derive(Args)]
pub struct MatchArgs {
    /// A BLIP retrieval checkpoint (folder or HF repo id, e.g. Salesforce/blip-itm-base-coco).
    #[arg(long)]
    model: String,
    /// Image files: one or more after each --image, which may repeat.
    #[arg(long = "image", required = true, num_args = 1..)]
    images: Vec<PathBuf>,
    /// Texts; repeat for several.
    #[arg(long = "text", required = true)]
    texts: Vec<String>,
    /// Print `{"itm_probs", "itc_scores"}`, each `[image][text]`.
    #[arg(long)]
    json: bool,
}

pub fn matching(args: MatchArgs, device: &Device) -> Result<()> {
    let model = ImageTextMatching::load(&args.model, device)?;
    let s = model.score(&args.images, &args.texts)?;
    if args.json {
        println!(
            "{}",
            json!({"itm_probs": s.itm_probs, "itc_scores": s.itc_scores})
        );
        return Ok(());
    }
    println!("ITM match probability / ITC cosine (rows: images, columns: texts)");
    for (j, t) in args.texts.iter().enumerate() {
        println!("  [{j}] {t}");
    }
    for (i, p) in args.images.iter().enumerate() {
        let row: Vec<String> = (0..args.texts.len())
            .map(|j| {
                format!(
                    "{:5.1}% {:+.3}",
                    s.itm_probs[i][j] * 100.0,
                    s.itc_scores[i][j]
                )
            })
            .collect();
        println!("{}  {}", row.join("   "), p.display());
    }
    Ok(())
}

#[derive(Args)]
pub struct BenchCaptionArgs {
    /// A BLIP captioning checkpoint (folder or HF repo id).
    #[arg(long)]
    model: String,
    /// Tokens to generate (exactly: the end token is suppressed until then).
    #[arg(long, default_value_t = 20)]
    tokens: usize,
    /// Timed runs (after one warm-up).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Decode without the key/value cache (the whole sequence every step).
    #[arg(long)]
    no_cache: bool,
    /// Print `{"ms": median, "runs": [...]}`.
    #[arg(long)]
    json: bool,
}

/// Times one greedy caption of exactly `--tokens` tokens of a random image at the model's size
/// (image encoder included), as python/bench_blip.py does with transformers' `generate`.
pub fn bench_caption(a: BenchCaptionArgs, device: &Device) -> Result<()> {
    use std::time::Instant;
    use tuwen::burn::prelude::Tensor;
    use tuwen::burn::tensor::Distribution;
    use tuwen::generate::generate;
    use tuwen::models::blip::{Captioner, UncachedCaptioner};
    if a.runs == 0 || a.tokens == 0 {
        bail!("--runs and --tokens must be at least 1");
    }
    let m = ImageCaptioning::load(&a.model, device)?;
    let t = &m.config.text_config;
    let size = m.config.vision_config.image_size;
    let settings = Settings {
        max_new_tokens: a.tokens,
        min_new_tokens: a.tokens,
        eos_token_id: t.sep_token_id,
        pad_token_id: t.pad_token_id,
        ..Settings::default()
    };
    let prompt = vec![vec![t.bos_token_id]];
    let mut times = Vec::new();
    for run in 0..=a.runs {
        let pixels =
            Tensor::<4>::random([1, 3, size, size], Distribution::Normal(0.0, 1.0), device);
        let t0 = Instant::now();
        let image = m.model.vision_model.forward(pixels);
        let ids = if a.no_cache {
            let d = UncachedCaptioner { model: &m.model };
            generate(&d, d.start(image), &prompt, &settings)?
        } else {
            let d = Captioner { model: &m.model };
            generate(&d, d.start(image), &prompt, &settings)?
        };
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        if ids[0].len() != a.tokens + 1 {
            bail!("generated {} tokens, not {}", ids[0].len() - 1, a.tokens);
        }
        if run > 0 {
            times.push(ms);
        }
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    if a.json {
        println!(
            "{}",
            json!({"ms": median, "runs": times, "tokens": a.tokens, "cache": !a.no_cache})
        );
    } else {
        println!(
            "{}-token caption {} the cache: median {median:.1} ms over {} runs",
            a.tokens,
            if a.no_cache { "without" } else { "with" },
            a.runs
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct TrainBlipArgs {
    /// Captioned images: a CSV/TSV (filepath,caption), a folder with .txt sidecars, or class
    /// subfolders.
    #[arg(long)]
    data: PathBuf,
    /// Output folder: captioning/ and retrieval/ (transformers checkpoints), metrics.jsonl,
    /// curves.png, checkpoint/.
    #[arg(long)]
    out: PathBuf,
    /// Continue pre-training a folder this command wrote (captioning/ and retrieval/).
    #[arg(long, conflicts_with_all = ["captioner", "retrieval"])]
    init: Option<PathBuf>,
    /// Start from a BLIP captioning checkpoint (its decoder's self-attention and head) ...
    #[arg(long, requires = "retrieval")]
    captioner: Option<String>,
    /// ... and a BLIP retrieval checkpoint (image encoder, text encoder, projections, ITM head).
    #[arg(long, requires = "captioner")]
    retrieval: Option<String>,
    /// Train from scratch: tiny (32 px), small (64 px) or base (the paper's, 384 px); the
    /// tokenizer learns the captions' words.
    #[arg(long, conflicts_with_all = ["init", "captioner", "retrieval"])]
    arch: Option<String>,
    /// Image side of a model trained from scratch (default: the architecture's).
    #[arg(long, requires = "arch")]
    image_size: Option<usize>,
    /// Optimiser steps.
    #[arg(long, default_value_t = 500)]
    steps: usize,
    /// Pairs per step (the in-batch negatives).
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Warmup steps.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// Text before every caption that the captioning loss does not predict.
    #[arg(long, default_value = "a picture of ")]
    prompt: String,
    /// Caption template for class-subfolder data.
    #[arg(long, default_value = "a photo of a {}.")]
    caption_template: String,
    /// Seed of data order, augmentation and hard negatives.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Save a checkpoint every N steps; one is always saved at the end.
    #[arg(long, default_value_t = 100)]
    save_every: usize,
    /// Continue the run saved in OUT/checkpoint.
    #[arg(long)]
    resume: bool,
}

/// `tuwen train blip`: ITC, ITM with hard negatives and captioning on the shared trainer.
pub fn train_blip(a: TrainBlipArgs, device: &Device) -> Result<()> {
    use tuwen::data::captions::{CsvSpec, open};
    use tuwen::text::{Padding, TextTokenizer};
    use tuwen::train::blip::{BlipTrainConfig, load_pretrain, save_pretrain, train};
    use tuwen::train::data::TrainData;
    let samples = open(&a.data, &CsvSpec::default(), &a.caption_template)?;
    eprintln!(
        "{} captioned images from {}",
        samples.len(),
        a.data.display()
    );
    let device = device.clone().autodiff();
    let ckpt_dir = a.out.join("checkpoint");
    let resume_from = if a.resume {
        Some(crate::train::resume_dir(&ckpt_dir)?)
    } else {
        None
    };
    // Where the model (and its tokenizer) come from; a new one is made in a scratch folder.
    let staging = tuwen::hub::scratch_dir(&a.out)?;
    let (model, config, tok_dir) = match (&resume_from, &a.init, &a.captioner, &a.retrieval) {
        (Some(dir), _, _, _) => {
            let (m, c) = load_pretrain(dir, &device)?;
            (m, c, dir.join("captioning"))
        }
        (None, Some(dir), _, _) => {
            crate::train::refuse_input_as_out(&a.out, &[&a.data], Some(dir))?;
            let (m, c) = load_pretrain(dir, &device)?;
            (m, c, dir.join("captioning"))
        }
        (None, None, Some(cap), Some(ret)) => {
            let (cap, ret) = (tuwen::hub::resolve(cap)?, tuwen::hub::resolve(ret)?);
            crate::train::refuse_input_as_out(&a.out, &[&a.data], Some(&cap))?;
            crate::train::refuse_input_as_out(&a.out, &[&a.data], Some(&ret))?;
            use tuwen::models::blip::{
                BlipForConditionalGeneration, BlipForImageTextRetrieval, BlipPretrain,
            };
            let (r, c) = BlipForImageTextRetrieval::load(&ret, &device)?;
            let (g, _) = BlipForConditionalGeneration::load(&cap, &device)?;
            (BlipPretrain::from_parts(r, g, 0.07), c, cap)
        }
        (None, None, None, None) => {
            crate::train::refuse_input_as_out(&a.out, &[&a.data], None)?;
            let Some(arch) = &a.arch else {
                bail!(
                    "give --arch NAME (from scratch), --init DIR (a folder this command wrote) \
                     or --captioner M --retrieval M"
                );
            };
            // The tokenizer learns the words of the captions as training sees them.
            let texts: Vec<String> = samples
                .iter()
                .map(|s| format!("{}{}", a.prompt, s.caption))
                .collect();
            let (m, c) = tuwen::train::blip::init_arch(
                arch,
                a.image_size,
                &texts,
                staging.path(),
                a.seed,
                &device,
            )?;
            (m, c, staging.path().to_path_buf())
        }
        _ => bail!("give --captioner and --retrieval together"),
    };
    let t = &config.text_config;
    let tokenizer = TextTokenizer::load(
        &tok_dir,
        t.max_position_embeddings,
        Padding::Longest,
        Some(t.pad_token_id),
    )?;
    let processor = tuwen::pipeline::image_processor(&tok_dir, "BlipImageProcessor")?;
    let mut progress = crate::train::Progress::start(a.steps, resume_from.as_deref())?;
    let defaults = BlipTrainConfig::default();
    let cfg = BlipTrainConfig {
        run: tuwen::train::RunConfig {
            steps: a.steps,
            batch_size: a.batch_size,
            warmup: a.warmup,
            seed: a.seed,
            checkpoint_every: a.save_every,
            checkpoint_dir: Some(ckpt_dir),
            resume_from: resume_from.clone(),
            metrics: Some(a.out.join("metrics.jsonl")),
            stop: Some(progress.stop_flag()),
            ..defaults.run.clone()
        },
        lr: a.lr,
        prompt: a.prompt.clone(),
        ..defaults
    };
    let (model, report) = train(
        model,
        &config,
        &processor,
        &tokenizer,
        Some(&tok_dir),
        TrainData::Samples(&samples),
        &cfg,
        |s| progress.step(s),
    )?;
    progress.finish();
    save_pretrain(&model, &config, &processor, Some(&tok_dir), &a.out)?;
    if report.losses.len() >= 2 {
        tuwen::train::plot::loss_curve_png(&report.losses, &a.out.join("curves.png"))?;
    }
    if report.stopped {
        eprintln!(
            "interrupted after {} steps; saved the model to {} (continue with --resume)",
            report.losses.len(),
            a.out.display()
        );
    }
    let last = report.losses.last().map_or(f32::NAN, |l| l.1);
    eprintln!(
        "trained {} steps: final loss (ITC + ITM + LM) {last:.3}; {} unreadable images skipped; \
         models in {}/captioning and {}/retrieval",
        report.losses.len(),
        report.skipped,
        a.out.display(),
        a.out.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct CapFiltArgs {
    /// The captioner (a BLIP captioning checkpoint).
    #[arg(long)]
    captioner: String,
    /// The filter (a BLIP retrieval checkpoint: its ITM head judges each caption).
    #[arg(long)]
    filter: String,
    /// Noisy captioned images: a CSV/TSV (filepath,caption) or a folder with .txt sidecars.
    #[arg(long)]
    data: PathBuf,
    /// The bootstrapped set: a CSV of the kept (image, caption) pairs; a report
    /// (`*_report.json`) and examples (`*_examples.png`) go beside it.
    #[arg(long)]
    out: PathBuf,
    /// Keep a caption when its match probability reaches this.
    #[arg(long, default_value_t = 0.5)]
    threshold: f32,
    /// Synthetic captions per image.
    #[arg(long, default_value_t = 1)]
    captions_per_image: usize,
    /// Nucleus sampling of the synthetic captions.
    #[arg(long, default_value_t = 0.9)]
    top_p: f64,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Tokens per synthetic caption at most.
    #[arg(long, default_value_t = 20)]
    max_new_tokens: usize,
    /// Tokens per synthetic caption at least.
    #[arg(long, default_value_t = 5)]
    min_new_tokens: usize,
    /// The captioner's prompt (removed from the synthetic captions).
    #[arg(long, default_value = "a picture of ")]
    prompt: String,
}

/// `tuwen capfilt`: synthetic captions and ITM filtering of a noisy set.
pub fn capfilt(a: CapFiltArgs, device: &Device) -> Result<()> {
    use tuwen::data::captions::{CsvSpec, open};
    use tuwen::pipeline::blip::{CapFiltSettings, capfilt};
    let samples = open(&a.data, &CsvSpec::default(), "{}")?;
    let inputs: Vec<&std::path::Path> = std::iter::once(a.data.as_path())
        .chain(samples.iter().map(|s| s.image.as_path()))
        .collect();
    tuwen::data::files::refuse_overwrite("--out", &a.out, &inputs, &[])?;
    let stem = a.out.with_extension("");
    let report_path = PathBuf::from(format!("{}_report.json", stem.display()));
    let png_path = PathBuf::from(format!("{}_examples.png", stem.display()));
    let captioner = ImageCaptioning::load(&a.captioner, device)?;
    let filter = ImageTextMatching::load(&a.filter, device)?;
    let settings = CapFiltSettings {
        captions_per_image: a.captions_per_image,
        threshold: a.threshold,
        sampling: Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: a.top_p,
            seed: a.seed,
        },
        max_new_tokens: a.max_new_tokens,
        min_new_tokens: a.min_new_tokens,
        prompt: a.prompt.clone(),
    };
    let pairs: Vec<(PathBuf, String)> = samples
        .iter()
        .map(|s| (s.image.clone(), s.caption.clone()))
        .collect();
    let bar = ProgressBar::new(pairs.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} images {elapsed}<{eta}")
            .expect("valid template"),
    );
    let rows = capfilt(
        &captioner,
        &filter,
        &pairs,
        &settings,
        |p, e| bar.suspend(|| eprintln!("warning: skipping {}: {e}", p.display())),
        || bar.inc(1),
    )?;
    bar.finish_and_clear();
    if rows.is_empty() {
        bail!("none of the {} images could be read", pairs.len());
    }
    // The bootstrapped set.
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["filepath", "caption", "source", "itm"])?;
    let (mut ok, mut od, mut sk, mut sd) = (0, 0, 0, 0);
    for r in &rows {
        let path = r.image.display().to_string();
        if r.original.2 {
            ok += 1;
            w.write_record([
                &path,
                &r.original.0,
                "original",
                &format!("{:.4}", r.original.1),
            ])?;
        } else {
            od += 1;
        }
        for (c, p, keep) in &r.synthetic {
            if *keep {
                sk += 1;
                w.write_record([&path, c, "synthetic", &format!("{p:.4}")])?;
            } else {
                sd += 1;
            }
        }
    }
    tuwen::hub::write_atomic(&a.out, &w.into_inner()?)?;
    let report = json!({
        "images": rows.len(), "skipped": pairs.len() - rows.len(), "threshold": a.threshold,
        "original_kept": ok, "original_dropped": od,
        "synthetic_kept": sk, "synthetic_dropped": sd,
        "decisions": rows,
    });
    tuwen::hub::write_atomic(
        &report_path,
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    examples_png(&rows, &png_path)?;
    println!(
        "{} images: kept {ok} of {} original and {sk} of {} synthetic captions (ITM >= {}); \
         {} pairs in {}; report {}, examples {}",
        rows.len(),
        ok + od,
        sk + sd,
        a.threshold,
        ok + sk,
        a.out.display(),
        report_path.display(),
        png_path.display()
    );
    Ok(())
}

/// A picture of the first rows: each image with its captions, green kept, red dropped.
fn examples_png(rows: &[tuwen::pipeline::blip::CapFiltRow], path: &std::path::Path) -> Result<()> {
    use tuwen::draw;
    use tuwen::image::{Rgb, RgbImage};
    const CELL: u32 = 64;
    const PAD: u32 = 6;
    let rows = &rows[..rows.len().min(8)];
    let line = |(c, p, _): &(String, f32, bool), tag: &str| format!("{tag} {p:.2} {c}");
    let width = rows
        .iter()
        .flat_map(|r| {
            std::iter::once(line(&r.original, "orig"))
                .chain(r.synthetic.iter().map(|s| line(s, "synth")))
        })
        .map(|l| draw::text_width(&l, 1))
        .max()
        .unwrap_or(0)
        + CELL
        + 3 * PAD;
    let height = rows.len() as u32 * (CELL + PAD) + PAD;
    let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    for (i, r) in rows.iter().enumerate() {
        let y = PAD + i as u32 * (CELL + PAD);
        if let Ok(tile) = tuwen::data::open_rgb(&r.image) {
            draw::paste_fit(&mut img, &tile, PAD, y, CELL);
        }
        let lines = std::iter::once((line(&r.original, "orig"), r.original.2))
            .chain(r.synthetic.iter().map(|s| (line(s, "synth"), s.2)));
        for (j, (l, keep)) in lines.enumerate() {
            let color = if keep { [20, 140, 40] } else { [200, 30, 30] };
            draw::text(
                &mut img,
                (CELL + 2 * PAD) as i64,
                (y + 2 + 10 * j as u32) as i64,
                &l,
                1,
                color,
            );
        }
    }
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        tuwen::image::ImageFormat::Png,
    )?;
    tuwen::hub::write_atomic(path, &bytes)?;
    Ok(())
}
