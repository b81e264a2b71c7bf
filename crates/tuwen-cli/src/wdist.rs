//! `tuwen wdist`: the Wasserstein-1 distance between two sample sets (.npy or .csv files).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use tuwen::data::arrays::read_points;
use tuwen::wdist;

#[derive(Args)]
pub struct WdistArgs {
    /// First set: .npy (float32 or float64; the first axis is the sample axis, the others are
    /// flattened) or .csv (one sample per line, comma-separated, an optional header line).
    pub a: PathBuf,
    /// Second set, with as many coordinates per sample as the first.
    pub b: PathBuf,
    /// The sliced distance over N random directions instead of exact optimal transport (for
    /// sets past 5000 points). It is at most W1, and usually less. 1-D sets are always exact.
    #[arg(long, value_name = "N")]
    pub sliced: Option<usize>,
    /// Seed of the random directions of --sliced.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also estimate W1 by its dual: train a 1-Lipschitz critic to separate the sets.
    #[arg(long)]
    pub dual: bool,
    /// How --dual keeps the critic 1-Lipschitz: weight clipping, gradient penalty or spectral
    /// normalisation.
    #[arg(long, value_parser = ["clip", "gp", "sn"], default_value = "gp")]
    pub lipschitz: String,
    /// Critic updates of --dual (batches of up to 256 points of each set).
    #[arg(long, default_value_t = 3000)]
    pub dual_steps: usize,
    /// Print `{"w1": ..., "method": "exact-1d|exact-ot|sliced"}`.
    #[arg(long)]
    pub json: bool,
}

/// Reads both sets, prints their W1 distance.
pub fn run(args: WdistArgs, device: &tuwen::burn::prelude::Device) -> Result<()> {
    if args.sliced == Some(0) {
        bail!("--sliced needs at least 1 direction");
    }
    let a = read_points(&args.a)?;
    let b = read_points(&args.b)?;
    if a.dims != b.dims {
        bail!(
            "{} has {} coordinates per sample, {} has {}",
            args.a.display(),
            a.dims,
            args.b.display(),
            b.dims
        );
    }
    let report = wdist::distance(&a, &b, args.sliced, args.seed)?;
    // The Kantorovich-Rubinstein dual: sup over 1-Lipschitz f of E_a f − E_b f.
    let dual = if args.dual {
        let how = tuwen::train::gan::Lipschitz::parse(&args.lipschitz)?;
        Some(tuwen::train::gan::kr_dual(
            &a,
            &b,
            how,
            args.dual_steps,
            args.seed,
            device,
        )?)
    } else {
        None
    };
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        if let Some(d) = dual {
            v["dual_estimate"] = serde_json::json!(d);
            v["lipschitz"] = serde_json::json!(args.lipschitz);
        }
        println!("{v}");
    } else {
        let sizes = format!("{} vs {} points", a.rows, b.rows);
        let how = match (report.method, args.sliced) {
            ("exact-1d", _) => format!("exact, 1-D, {sizes}"),
            ("sliced", Some(n)) => format!(
                "sliced over {n} random directions, seed {}, {sizes} in {}-D; at most the exact W1",
                args.seed, a.dims
            ),
            _ => format!("exact optimal transport, {sizes} in {}-D", a.dims),
        };
        println!("W1 = {} ({how})", number(report.w1));
    }
    if let Some(d) = dual
        && !args.json
    {
        println!(
            "dual estimate = {} (a critic trained {} steps, Lipschitz by {}: mean f(A) - mean f(B))",
            number(d),
            args.dual_steps,
            args.lipschitz
        );
    }
    Ok(())
}

/// Six decimals, or six significant digits for distances below 0.001.
fn number(x: f64) -> String {
    if x == 0.0 || x.abs() >= 1e-3 {
        format!("{x:.6}")
    } else {
        format!("{x:.5e}")
    }
}
