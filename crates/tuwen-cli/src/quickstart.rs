//! `tuwen quickstart`: draw a captioned shapes dataset, train a small SigLIP on it, measure
//! zero-shot classification and retrieval on held-out colour-shape pairings, write a report.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;
use tuwen::burn::prelude::Device;
use tuwen::data::captions::{CsvSpec, open};
use tuwen::data::shapes::{COLORS, HELD_OUT, SHAPES};
use tuwen::eval::{retrieval_eval, retrieval_grid_png, zero_shot};
use tuwen::pipeline::ImageText;

use crate::train::{TrainArgs, fit};

#[derive(Args)]
pub struct QuickstartArgs {
    /// Report folder: data/, model/, metrics.json, curves.png, retrieval.png.
    #[arg(long, default_value = "tuwen-quickstart")]
    out: PathBuf,
    /// Training pictures to draw.
    #[arg(long, default_value_t = 2000)]
    n: usize,
    /// Training steps (batches of 64). 1,500 left shapes barely learnt (zero-shot 29.5%, "a red
    /// circle" precision@10 0.1); 3,000 reach 67.8% and 0.7.
    #[arg(long, default_value_t = 3000)]
    steps: usize,
    /// Seed of the data, the initialisation and the data order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(args: QuickstartArgs, device: &Device) -> Result<()> {
    let t0 = Instant::now();
    let data = args.out.join("data");
    let model_dir = args.out.join("model");
    let s = tuwen::data::shapes::generate(&data, args.n, 32, args.seed)?;
    eprintln!(
        "1/3 drew {} training and {} test pictures of shapes ({} test pictures show colour-shape pairings never seen in training) in {}",
        s.train,
        s.test,
        s.test_held_out,
        data.display()
    );
    eprintln!(
        "2/3 training a tiny SigLIP ({} steps of 64 pairs)",
        args.steps
    );
    let train_args = TrainArgs::quickstart(
        data.join("train.csv"),
        data.join("test.csv"),
        model_dir.clone(),
        args.steps,
        args.seed,
    );
    let outcome = fit(&train_args, device)?;
    let train_s = t0.elapsed().as_secs_f64();

    eprintln!("3/3 evaluating on the test pictures");
    let model = ImageText::load_folder(&model_dir, device)?;
    let test = open(&data.join("test.csv"), &CsvSpec::default(), "{}")?;
    let zs = zero_shot(&model, &test, "label", &["a {}".to_string()], 64)?;
    let held = |i: usize| test[i].extra.get("held_out").is_some_and(|h| h == "true");
    let all = zs.summary(|_| true);
    let held_out = zs.summary(held);
    let seen = zs.summary(|i| !held(i));
    let retrieval = retrieval_eval(&model, &test, 64)?;
    // Text queries: the four held-out pairings, then four seen ones.
    let mut pairs: Vec<(usize, usize)> = HELD_OUT.to_vec();
    pairs.extend(
        (0..COLORS.len())
            .flat_map(|c| (0..SHAPES.len()).map(move |s| (c, s)))
            .filter(|p| !HELD_OUT.contains(p))
            .step_by(5)
            .take(4),
    );
    let phrases: Vec<String> = pairs
        .iter()
        .map(|&(c, s)| format!("{} {}", COLORS[c].0, SHAPES[s]))
        .collect();
    let queries: Vec<String> = phrases.iter().map(|p| format!("a {p}")).collect();
    let grid = args.out.join("retrieval.png");
    let precision = retrieval_grid_png(
        &model,
        &queries,
        &test,
        6,
        |q, s| s.caption.contains(&phrases[q]),
        &grid,
    )?;
    let curves = args.out.join("curves.png");
    if outcome.losses.len() >= 2 {
        tuwen::train::plot::loss_curve_png(&outcome.losses, &curves)?;
    }
    let chance = 1.0 / zs.labels.len() as f64;
    let metrics = json!({
        "zero_shot": all,
        "zero_shot_held_out": held_out,
        "zero_shot_seen": seen,
        "zero_shot_chance": chance,
        "retrieval": retrieval,
        "retrieval_grid": {"queries": queries, "precision@6": precision},
        "train": {"steps": outcome.steps, "final_loss": outcome.loss,
                  "samples_per_s": outcome.samples_per_s, "seconds": train_s},
    });
    tuwen::hub::write_atomic(
        &args.out.join("metrics.json"),
        serde_json::to_string_pretty(&metrics)
            .context("metrics")?
            .as_bytes(),
    )?;
    let pct = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0) * 100.0;
    println!(
        "trained a tiny SigLIP for {} steps in {:.0} s ({:.0} samples/s), final loss {:.3}",
        outcome.steps, train_s, outcome.samples_per_s, outcome.loss
    );
    println!(
        "zero-shot top-1 among {} colour-shape classes (chance {:.1}%): {:.1}% on all {} test pictures, {:.1}% on {} with held-out pairings, {:.1}% on seen ones",
        zs.labels.len(),
        chance * 100.0,
        pct(&all["top1"]),
        all["n"],
        pct(&held_out["top1"]),
        held_out["n"],
        pct(&seen["top1"]),
    );
    println!(
        "retrieval on {} test pairs: image->text R@10 {:.1}%, text->image R@10 {:.1}%; grid precision@6 {:.1}%",
        retrieval["n"],
        pct(&retrieval["image_to_text"]["R@10"]),
        pct(&retrieval["text_to_image"]["R@10"]),
        precision * 100.0
    );
    println!(
        "report in {}: metrics.json, curves.png, retrieval.png (text queries and their top images), model/ (loads in transformers)",
        args.out.display()
    );
    Ok(())
}
