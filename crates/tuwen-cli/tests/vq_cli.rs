//! VQGAN end to end: `reconstruct --json` against diffusers on the odd-sized fixture; a short
//! real training run on generated shapes that must reconstruct held-out images far better than
//! the untrained model with most codes in use; exact resume with every option that keeps state
//! (EMA codebook, dead-code restarts, the discriminator and both optimisers); a prior trained on
//! its codes that must beat uniform codes; `sample --vqgan` of a class; and one clear line for
//! bad input.

#[path = "../../tuwen/tests/common/mod.rs"]
mod common;
mod support;

use std::path::{Path, PathBuf};

use common::*;
use support::{fails, ok, tuwen};

fn scratch(name: &str) -> PathBuf {
    support::scratch("vqcli", name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn reconstruct_json_matches_diffusers() {
    let r = read_reference("vq_reference.safetensors");
    let model = fixtures().join("vq-odd");
    let images: Vec<PathBuf> = ["chelsea", "astronaut", "coffee"]
        .iter()
        .map(|n| fixtures().join(format!("vq/{n}.png")))
        .collect();
    let mut args = vec!["reconstruct", "--model", s(&model), "--json", "--image"];
    args.extend(images.iter().map(|p| s(p)));
    let out: serde_json::Value = serde_json::from_str(&ok(&tuwen(&args))).unwrap();
    let codes: Vec<i64> = out["codes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()))
        .collect();
    assert_eq!(codes, i64s(&r, "codes").0);
    let recs: Vec<f32> = out["reconstructions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
        })
        .collect();
    let d = max_abs_diff(&recs, &f32s(&r, "sample").0);
    assert!(d < 1e-4, "reconstructions differ by {d}");
    assert_eq!(out["psnr"].as_array().unwrap().len(), 3);
    // A VQGAN has no masking.
    fails(
        &tuwen(&[
            "reconstruct",
            "--model",
            s(&model),
            "--mask-ratio",
            "0.5",
            "--image",
            s(&images[0]),
        ]),
        "--mask-ratio",
    );
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

const SMALL: &[&str] = &[
    "--image-size",
    "16",
    "--width",
    "8",
    "--codebook-size",
    "32",
    "--code-dim",
    "4",
    "--downsample",
    "4",
    "--batch-size",
    "16",
    "--disc-filters",
    "8",
    "--disc-layers",
    "2",
    "--val-images",
    "32",
];

#[test]
fn trains_reconstructs_and_a_prior_beats_uniform_codes() {
    let dir = scratch("train");
    tuwen::data::shapes::generate(&dir.join("data"), 400, 16, 11).unwrap();
    let images = dir.join("data/images");
    // The untrained model's held-out PSNR: a run of one step at a tiny learning rate.
    let base = dir.join("untrained");
    let mut args = vec![
        "train",
        "vqgan",
        "--data",
        s(&images),
        "--out",
        s(&base),
        "--steps",
        "1",
        "--lr",
        "1e-9",
    ];
    args.extend(SMALL);
    ok(&tuwen(&args));
    let vq = dir.join("vq");
    let mut args = vec![
        "train",
        "vqgan",
        "--data",
        s(&images),
        "--out",
        s(&vq),
        "--steps",
        "300",
        "--disc-start",
        "200",
        "--restart-after",
        "10",
        "--val-every",
        "100",
        "--lr",
        "1e-3",
    ];
    args.extend(SMALL);
    ok(&tuwen(&args));
    let (before, after) = (
        report(&base)["held_out"].clone(),
        report(&vq)["held_out"].clone(),
    );
    let (p0, p1) = (
        before["psnr"].as_f64().unwrap(),
        after["psnr"].as_f64().unwrap(),
    );
    let usage = after["usage"].as_f64().unwrap();
    eprintln!(
        "held-out PSNR {p0:.2} -> {p1:.2} dB, codes used {:.0}%",
        usage * 100.0
    );
    assert!(p1 > 16.0 && p1 > p0 + 8.0, "PSNR {p0} -> {p1}");
    assert!(usage > 0.5, "codes used {usage}");
    for f in [
        "reconstructions.png",
        "curves.png",
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ] {
        assert!(vq.join(f).exists(), "{f}");
    }
    // The prior, class-conditional on the shape.
    let prior = dir.join("prior");
    let train_csv = dir.join("data/train.csv");
    let out = tuwen(&[
        "train",
        "vq-prior",
        "--vqgan",
        s(&vq),
        "--data",
        s(&train_csv),
        "--conditional",
        "--label-column",
        "shape",
        "--out",
        s(&prior),
        "--steps",
        "300",
        "--n-embd",
        "32",
        "--n-layer",
        "2",
        "--n-head",
        "2",
        "--batch-size",
        "32",
        "--val-every",
        "300",
        "--lr",
        "3e-3",
    ]);
    ok(&out);
    let lines = std::fs::read_to_string(prior.join("metrics.jsonl")).unwrap();
    let nll = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["val_nll"].as_f64())
        .next_back()
        .unwrap();
    let uniform = (32f64).ln();
    eprintln!("prior held-out loss {nll:.3} nats per code; uniform codes {uniform:.3}");
    assert!(nll < 0.75 * uniform, "{nll} vs {uniform}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(prior.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "gpt2");
    let classes = cfg["tuwen_vq_prior"]["classes"].as_array().unwrap().clone();
    assert!(classes.len() >= 3, "{classes:?}");
    let grid = dir.join("samples.png");
    let class = classes[0].as_str().unwrap();
    ok(&tuwen(&[
        "sample",
        "--model",
        s(&prior),
        "--vqgan",
        s(&vq),
        "--n",
        "9",
        "--class",
        class,
        "--top-k",
        "8",
        "--out",
        s(&grid),
    ]));
    assert!(grid.exists());
    let npy = dir.join("samples.npy");
    ok(&tuwen(&[
        "sample",
        "--model",
        s(&prior),
        "--vqgan",
        s(&vq),
        "--n",
        "3",
        "--out",
        s(&npy),
        "--class",
        "0",
    ]));
    let (values, shape) = tuwen::data::arrays::parse_npy(&std::fs::read(&npy).unwrap()).unwrap();
    assert_eq!(shape, vec![3, 3, 16, 16]);
    assert!(values.iter().all(|v| v.is_finite()));
    fails(
        &tuwen(&[
            "sample",
            "--model",
            s(&prior),
            "--vqgan",
            s(&vq),
            "--class",
            "hexagon-x",
            "--out",
            s(&dir.join("x.png")),
        ]),
        "--class",
    );
    fails(
        &tuwen(&[
            "sample",
            "--model",
            s(&prior),
            "--out",
            s(&dir.join("y.png")),
            "--vqgan",
            s(&fixtures().join("vq-odd")),
        ]),
        "prior models",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_equals_an_uninterrupted_run() {
    let dir = scratch("resume");
    tuwen::data::shapes::generate(&dir.join("data"), 60, 16, 12).unwrap();
    let images = dir.join("data/images");
    let common: Vec<&str> = [
        "--disc-start",
        "2",
        "--restart-after",
        "2",
        "--ema-decay",
        "0.9",
        "--save-every",
        "3",
        "--val-every",
        "0",
    ]
    .into_iter()
    .chain(SMALL.iter().copied())
    .collect();
    let (a, b) = (dir.join("a"), dir.join("b"));
    let run = |out: &Path, steps: &str, resume: bool| {
        let mut args = vec!["train", "vqgan", "--data", s(&images), "--out", s(out)];
        args.extend(["--steps", steps]);
        if resume {
            args.push("--resume");
        }
        args.extend(&common);
        ok(&tuwen(&args));
    };
    run(&a, "6", false);
    run(&b, "3", false);
    run(&b, "6", true);
    // Tensor by tensor (the file's metadata map has no fixed order).
    let tensors = |dir: &Path| -> Vec<(String, Vec<u8>)> {
        let bytes = std::fs::read(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut v: Vec<(String, Vec<u8>)> = st
            .iter()
            .map(|(n, t)| (n.to_string(), t.data().to_vec()))
            .collect();
        v.sort();
        v
    };
    let (ta, tb) = (tensors(&a), tensors(&b));
    assert_eq!(ta.len(), tb.len());
    for ((na, da), (nb, db)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert!(da == db, "{na}: resumed weights differ");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_gets_one_line() {
    let dir = scratch("bad");
    tuwen::data::shapes::generate(&dir.join("data"), 30, 16, 13).unwrap();
    let images = dir.join("data/images");
    let out = dir.join("o");
    let run = |extra: &[&str]| {
        let mut args = vec!["train", "vqgan", "--data", s(&images), "--out", s(&out)];
        args.extend(extra);
        tuwen(&args)
    };
    fails(&run(&["--downsample", "3"]), "--downsample");
    fails(&run(&["--channels", "2"]), "--channels");
    fails(&run(&["--ema-decay", "1.5", "--steps", "1"]), "--ema-decay");
    fails(
        &run(&[
            "--lpips",
            s(&fixtures().join("vq-odd/diffusion_pytorch_model.safetensors")),
        ]),
        "LPIPS",
    );
    fails(
        &tuwen(&[
            "reconstruct",
            "--model",
            s(&fixtures().join("vq-odd")),
            "--image",
            s(&dir.join("none.png")),
        ]),
        "none.png",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn taming_checkpoint_converts_to_the_same_model() {
    let r = read_reference("taming_reference.safetensors");
    let dir = scratch("taming");
    let out = dir.join("vq");
    let src = fixtures().join("taming-vq.safetensors");
    ok(&tuwen(&[
        "convert",
        "--taming",
        "--model",
        s(&src),
        "--resolution",
        "16",
        "--out",
        s(&out),
    ]));
    let device = tuwen::burn::prelude::Device::flex();
    let (m, cfg) = tuwen::models::vqgan::VqModel::load(&out, &device).unwrap();
    assert_eq!(cfg.block_out_channels, vec![32, 32]);
    assert_eq!(cfg.layers_per_block, 2);
    assert_eq!(cfg.down_block_types[1], "AttnDownEncoderBlock2D");
    assert_eq!(cfg.up_block_types[0], "AttnUpDecoderBlock2D");
    let (px, shape) = f32s(&r, "pixel_values");
    let x = tuwen::burn::prelude::Tensor::<4>::from_data(
        tuwen::burn::tensor::TensorData::new(px, shape),
        &device,
    );
    let ours = tuwen::pipeline::to_vec(m.forward(x).sample).unwrap();
    let d = max_abs_diff(&ours, &f32s(&r, "sample").0);
    assert!(d < 1e-4, "converted model differs from diffusers' by {d}");
    // Not a taming file: one clear line.
    fails(
        &tuwen(&[
            "convert",
            "--taming",
            "--model",
            s(&fixtures().join("vq-odd/diffusion_pytorch_model.safetensors")),
            "--out",
            s(&dir.join("x")),
        ]),
        "taming",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
