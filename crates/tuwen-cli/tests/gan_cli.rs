//! `tuwen train gan`, `tuwen sample` and `tuwen wdist` end to end: a short toy run writes a
//! model that `sample` reads back (.npy of the documented shape, a .png), `wdist` agrees with
//! scipy and its `--dual` estimate lands within 10% of the exact W1, and bad input gets one
//! clear line.

#[path = "../../tuwen/tests/common/mod.rs"]
mod common;
mod support;

use std::path::PathBuf;

use common::*;
use support::{fails, ok, tuwen};

fn scratch(name: &str) -> PathBuf {
    support::scratch("gancli", name)
}

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn train_sample_and_resume_a_toy_gan() {
    let dir = scratch("toy");
    let out = dir.join("gan");
    let run = |steps: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "gan",
            "--data",
            "toy:8gaussians",
            "--out",
            s(&out),
            "--steps",
            steps,
            "--hidden-size",
            "16",
            "--layers",
            "2",
            "--batch-size",
            "32",
            "--val-every",
            "3",
            "--sample-every",
            "3",
            "--save-every",
            "3",
        ];
        args.extend_from_slice(extra);
        tuwen(&args)
    };
    ok(&run("3", &[]));
    ok(&run("6", &["--resume"]));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "tuwen_gan_mlp");
    for f in [
        "model.safetensors",
        "curves.png",
        "kr.png",
        "report.json",
        "samples/final.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 6, "{metrics}");
    assert!(metrics.contains("\"val_w1\"") && metrics.contains("\"w_estimate\""));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["coverage"]["modes"], 8);

    // .npy: [n, 2] float32, the same for the same seed, another for another seed.
    let npy = dir.join("s.npy");
    ok(&tuwen(&[
        "sample",
        "--model",
        s(&out),
        "--n",
        "50",
        "--out",
        s(&npy),
        "--seed",
        "4",
    ]));
    let (v, shape) = tuwen::data::arrays::parse_npy(&std::fs::read(&npy).unwrap()).unwrap();
    assert_eq!(shape, [50, 2]);
    assert!(v.iter().all(|x| x.is_finite()));
    let again = dir.join("t.npy");
    ok(&tuwen(&[
        "sample",
        "--model",
        s(&out),
        "--n",
        "50",
        "--out",
        s(&again),
        "--seed",
        "4",
    ]));
    assert_eq!(std::fs::read(&npy).unwrap(), std::fs::read(&again).unwrap());
    ok(&tuwen(&[
        "sample",
        "--model",
        s(&out),
        "--n",
        "50",
        "--out",
        s(&again),
        "--seed",
        "5",
    ]));
    assert_ne!(std::fs::read(&npy).unwrap(), std::fs::read(&again).unwrap());
    let png = dir.join("s.png");
    ok(&tuwen(&[
        "sample",
        "--model",
        s(&out),
        "--n",
        "200",
        "--out",
        s(&png),
    ]));
    assert!(tuwen::data::open_rgb(&png).is_ok());

    // The samples are a point set wdist reads.
    let w = ok(&tuwen(&["wdist", s(&npy), s(&again), "--json"]));
    let w: serde_json::Value = serde_json::from_str(&w).unwrap();
    assert_eq!(w["method"], "exact-ot");
    assert!(w["w1"].as_f64().unwrap() > 0.0);

    fails(
        &tuwen(&["sample", "--model", s(&out), "--out", s(&dir.join("x.txt"))]),
        ".png or .npy",
    );
    fails(
        &tuwen(&["sample", "--model", s(&out), "--n", "0", "--out", s(&npy)]),
        "--n 0",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dcgan_samples_are_images_in_the_documented_shape() {
    let dir = scratch("dcgan");
    let out = dir.join("gan");
    let images = fixtures().join("images");
    ok(&tuwen(&[
        "train",
        "gan",
        "--data",
        s(&images),
        "--out",
        s(&out),
        "--steps",
        "2",
        "--image-size",
        "16",
        "--channels",
        "3",
        "--width",
        "4",
        "--batch-size",
        "4",
        "--val-every",
        "0",
        "--sample-every",
        "0",
        "--latent-dim",
        "8",
    ]));
    let npy = dir.join("s.npy");
    ok(&tuwen(&[
        "sample",
        "--model",
        s(&out),
        "--n",
        "3",
        "--out",
        s(&npy),
    ]));
    let (v, shape) = tuwen::data::arrays::parse_npy(&std::fs::read(&npy).unwrap()).unwrap();
    assert_eq!(shape, [3, 3, 16, 16]);
    assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)));
    let grid = dir.join("g.png");
    ok(&tuwen(&[
        "sample",
        "--model",
        s(&out),
        "--n",
        "5",
        "--out",
        s(&grid),
    ]));
    let img = tuwen::data::open_rgb(&grid).unwrap();
    assert!(img.width() > 16 * 5);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn wdist_matches_scipy_and_its_dual_estimate_lands_within_ten_percent() {
    let dir = fixtures().join("wdist");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let pair = &expected["pairs"][0];
    let (a, b) = (
        dir.join(pair["a"].as_str().unwrap()),
        dir.join(pair["b"].as_str().unwrap()),
    );
    let out = ok(&tuwen(&[
        "wdist",
        s(&a),
        s(&b),
        "--json",
        "--dual",
        "--lipschitz",
        "gp",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (w1, want) = (v["w1"].as_f64().unwrap(), pair["w1"].as_f64().unwrap());
    assert_eq!(v["method"], "exact-1d");
    assert!((w1 - want).abs() <= 1e-6, "{w1} vs scipy {want}");
    let dual = v["dual_estimate"].as_f64().unwrap();
    assert!((dual - want).abs() < 0.1 * want, "dual {dual} vs W1 {want}");
    let text = ok(&tuwen(&["wdist", s(&a), s(&b)]));
    assert!(text.starts_with("W1 = "), "{text}");
    // A 2-D pair and a 1-D set: one line naming both.
    let two = dir.join("a2_64.npy");
    fails(&tuwen(&["wdist", s(&a), s(&two)]), "coordinates");
    fails(
        &tuwen(&["wdist", s(&two), s(&two), "--sliced", "0"]),
        "--sliced",
    );
}

#[test]
fn train_gan_refuses_bad_settings_in_one_line() {
    let dir = scratch("bad");
    let out = dir.join("gan");
    let images = fixtures().join("images");
    fails(
        &tuwen(&[
            "train",
            "gan",
            "--data",
            "toy:8gaussians",
            "--out",
            s(&out),
            "--loss",
            "lsgan",
        ]),
        "unknown --loss",
    );
    fails(
        &tuwen(&["train", "gan", "--data", "toy:9gaussians", "--out", s(&out)]),
        "unknown toy set",
    );
    fails(
        &tuwen(&[
            "train",
            "gan",
            "--data",
            s(&images),
            "--out",
            s(&out),
            "--loss",
            "wgan-gp",
            "--critic-norm",
            "batch",
            "--steps",
            "1",
        ]),
        "batch norm",
    );
    fails(
        &tuwen(&[
            "train",
            "gan",
            "--data",
            "toy:8gaussians",
            "--out",
            s(&out),
            "--n-critic",
            "0",
        ]),
        "--n-critic",
    );
    fails(
        &tuwen(&[
            "train",
            "gan",
            "--data",
            "toy:8gaussians",
            "--out",
            s(&out),
            "--resume",
        ]),
        "--resume",
    );
    // A width that cannot fit is refused before anything is allocated.
    fails(
        &tuwen(&[
            "train",
            "gan",
            "--data",
            "toy:8gaussians",
            "--out",
            s(&out),
            "--hidden-size",
            "100000",
        ]),
        "memory",
    );
    assert!(!out.join("model.safetensors").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
