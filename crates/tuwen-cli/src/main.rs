//! `tuwen`: the command-line face of the tuwen library. It parses arguments, calls the library
//! and prints; the work happens in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use tuwen::burn::prelude::Device;

mod blip;
mod classifier;
mod classify;
mod embed;
mod gan;
mod info;
mod mae;
mod quickstart;
mod reconstruct;
mod search;
mod train;
mod vqgan;
mod wdist;

#[derive(Parser)]
#[command(
    name = "tuwen",
    version,
    about = "Vision and vision-language models: run, train, evaluate"
)]
struct Cli {
    /// Compute device: cpu, cuda, cuda:N, wgpu (GPU backends need the matching cargo feature).
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    /// CPU threads for decoding, preprocessing and the CPU backend (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Refuse images that declare more pixels (width x height) than this, before decoding
    /// them (default 89478485, Pillow's limit; a guard against decompression bombs).
    #[arg(long, global = true)]
    max_image_pixels: Option<u64>,
    /// Precision of the linear layers at inference on the CPU: fp32, or bf16 (weights and
    /// inputs rounded to bfloat16, products summed in fp32 on the AMX unit; needs a CPU with
    /// AMX-BF16). `train` refuses bf16: training runs in fp32.
    #[arg(long, global = true, default_value = "fp32")]
    precision: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Draw a shapes dataset, train a small SigLIP on it in minutes, evaluate, write a report.
    Quickstart(quickstart::QuickstartArgs),
    /// Mask images and let a masked autoencoder (ViTMAE) reconstruct them.
    Reconstruct(reconstruct::ReconstructArgs),
    /// Classify images: with a classifier checkpoint, or zero-shot with CLIP/SigLIP and --labels.
    Classify(classify::ClassifyArgs),
    /// Unit-length image and text embeddings of a CLIP or SigLIP model.
    Embed(embed::EmbedArgs),
    /// The image x text similarity matrix of a CLIP or SigLIP model.
    Similarity(embed::SimilarityArgs),
    /// Captions of images with a BLIP model (greedy, beam search or sampling; an optional prompt).
    Caption(blip::CaptionArgs),
    /// How well texts match images, with a BLIP retrieval model (ITM probability, ITC cosine).
    Match(blip::MatchArgs),
    /// CapFilt: synthetic captions for a noisy captioned set, and ITM filtering of all of them.
    Capfilt(blip::CapFiltArgs),
    /// The Wasserstein-1 distance between two sample sets (.npy/.csv): exact in 1-D, exact
    /// optimal transport, or sliced; --dual adds a critic's Kantorovich-Rubinstein estimate.
    Wdist(wdist::WdistArgs),
    /// Samples of a trained GAN: a grid or plot (.png), or the raw values (.npy).
    Sample(gan::SampleArgs),
    /// Parameter count and compute of a checkpoint or a standard architecture.
    Info(info::InfoArgs),
    /// Train a model: CLIP or SigLIP (image-text), MAE (masked-autoencoder pre-training).
    #[command(subcommand)]
    Train(train::TrainCommand),
    /// Measure a model.
    #[command(subcommand)]
    Eval(train::EvalCommand),
    /// Make data sets.
    #[command(subcommand)]
    Data(train::DataCommand),
    /// Time training steps (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(train::BenchCommand),
    /// Index image folders for search (CLIP or SigLIP embeddings in one SQLite file).
    Index(search::IndexArgs),
    /// Search an index by text, by image (--image), or both.
    Search(search::SearchArgs),
    /// Serve an index as a web page and a JSON API (loopback by default).
    Serve(search::ServeArgs),
    /// Re-save a checkpoint as one model.safetensors with transformers' names (merges shards),
    /// or a taming-transformers VQGAN as a diffusers VQModel (--taming).
    Convert(ConvertArgs),
    /// The container-with-most-water answer for a list of heights (LeetCode 11).
    Water(WaterArgs),
}

#[derive(Args)]
struct ConvertArgs {
    /// Checkpoint folder or HF repo id; with --taming, a taming-transformers VQGAN's state dict
    /// as one .safetensors file.
    #[arg(long)]
    model: String,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// --model is a taming-transformers VQGAN: write diffusers' VQModel layout.
    #[arg(long)]
    taming: bool,
    /// With --taming: the image side the VQGAN was trained at (its config's `resolution`).
    #[arg(long, default_value_t = 256)]
    resolution: usize,
}

#[derive(Args)]
struct WaterArgs {
    /// Heights: non-negative integers.
    #[arg(allow_negative_numbers = true, allow_hyphen_values = true)]
    heights: Vec<String>,
    /// Read heights from a file (whitespace- or comma-separated) instead.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Print `{"max_area": N}`.
    #[arg(long)]
    json: bool,
}

fn water(args: WaterArgs) -> Result<()> {
    let heights = match (&args.file, args.heights.is_empty()) {
        (Some(_), false) => bail!("give heights either as arguments or with --file, not both"),
        (Some(path), true) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            tuwen::water::parse_heights(&text)?
        }
        (None, _) => args
            .heights
            .iter()
            .map(|h| tuwen::water::parse_height(h))
            .collect::<Result<Vec<_>, _>>()?,
    };
    let area = tuwen::water::max_area(&heights)?;
    if args.json {
        // Written by hand: serde_json's numbers stop at u64, and an area may pass it. JSON
        // numbers have no size limit; Python's json reads this exactly.
        println!("{{\"max_area\":{area}}}");
    } else {
        println!("{area}");
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    tuwen::device::reuse_freed_memory();
    // The pool is made here even without --threads, so that its threads flush denormals.
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    tuwen::device::set_threads(cli.threads.unwrap_or(cores))?;
    let precision = tuwen::device::parse_precision(&cli.precision)?;
    if precision != tuwen::device::Precision::F32 && matches!(cli.command, Command::Train(_)) {
        bail!(
            "--precision {} applies to inference; training runs in fp32",
            cli.precision
        );
    }
    tuwen::device::set_precision(precision)?;
    if let Some(n) = cli.max_image_pixels {
        tuwen::data::decode::set_max_image_pixels(n)?;
    }
    let device = || -> Result<Device> { Ok(tuwen::device::parse(&cli.device)?) };
    match cli.command {
        Command::Classify(args) => classify::run(args, &device()?),
        Command::Info(args) => info::run(args),
        Command::Caption(args) => blip::caption(args, &device()?),
        Command::Match(args) => blip::matching(args, &device()?),
        Command::Capfilt(args) => blip::capfilt(args, &device()?),
        Command::Embed(args) => embed::run(args, &device()?),
        Command::Similarity(args) => embed::similarity(args, &device()?),
        Command::Convert(args) if args.taming => {
            let file = PathBuf::from(&args.model);
            tuwen::data::files::refuse_overwrite("--out", &args.out, &[&file], &[])?;
            let cfg = tuwen::pipeline::vqgan::convert_taming(&file, args.resolution, &args.out)?;
            eprintln!(
                "wrote {} (diffusers VQModel: {} levels {:?}, {} codes of {})",
                args.out.display(),
                cfg.block_out_channels.len(),
                cfg.block_out_channels,
                cfg.num_vq_embeddings,
                cfg.code_dim()
            );
            Ok(())
        }
        Command::Convert(args) => {
            tuwen::pipeline::convert(&args.model, &args.out, &device()?)?;
            eprintln!("wrote {}", args.out.display());
            Ok(())
        }
        Command::Water(args) => water(args),
        Command::Index(args) => search::index(args, &device()?),
        Command::Search(args) => search::search(args, &device()?),
        Command::Serve(args) => search::serve(args, &device()?),
        Command::Sample(args) => gan::sample(args, &device()?),
        Command::Wdist(args) => wdist::run(args, &device()?),
        Command::Train(cmd) => train::run(cmd, &device()?),
        Command::Quickstart(args) => quickstart::run(args, &device()?),
        Command::Reconstruct(args) => reconstruct::run(args, &device()?),
        Command::Eval(cmd) => train::run_eval(cmd, &device()?),
        Command::Data(cmd) => train::run_data(cmd),
        Command::Bench(cmd) => train::run_bench(cmd, &device()?),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("TUWEN_LOG"))
        .with_writer(std::io::stderr)
        .init();
    // Never show a user a backtrace: a panic is our bug, reported as one line.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let msg = msg.lines().next().unwrap_or("").to_string();
        // `tuwen ... | head`: the reader is gone, so stop quietly as other tools do.
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        eprintln!("error: internal error (please report): {msg}");
        // Developers ask for the trace explicitly.
        if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
            eprintln!("{}", std::backtrace::Backtrace::force_capture());
        }
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // clap spreads its message over lines; keep what precedes the usage, on one line.
            let text = e.render().to_string();
            let msg: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("{} (see --help)", msg.join(" "));
            return ExitCode::from(2);
        }
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli))) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
        Err(_) => ExitCode::FAILURE,
    }
}
