//! `tuwen reconstruct` end to end on the tiny ViTMAE fixture: the JSON mask and logits (equal to
//! transformers' at mask ratio 0 on losslessly stored photos), the four-panel PNG, errors.

#[path = "../../tuwen/tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::max_abs_diff;
use safetensors::SafeTensors;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// A fresh folder for test `tag` with `n` generated 32 px shapes pictures in its `data/`.
fn fresh_shapes(tag: &str, n: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("tuwen-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    let o = tuwen(&[
        "data",
        "shapes",
        "--out",
        data.to_str().unwrap(),
        "--n",
        n,
        "--size",
        "32",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (dir, data)
}

fn tuwen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tuwen"))
        .args(args)
        .output()
        .expect("binary runs")
}

#[test]
fn reconstruct_json_png_and_parity_at_ratio_zero() {
    let model = fixtures().join("vit-mae-odd");
    let images = ["astronaut.png", "coffee.bmp"].map(|n| fixtures().join("images").join(n));
    let png = std::env::temp_dir().join(format!("tuwen-rec-{}.png", std::process::id()));
    let run = |ratio: &str| -> serde_json::Value {
        let o = tuwen(&[
            "reconstruct",
            "--model",
            model.to_str().unwrap(),
            "--image",
            images[0].to_str().unwrap(),
            "--image",
            images[1].to_str().unwrap(),
            "--mask-ratio",
            ratio,
            "--out",
            png.to_str().unwrap(),
            "--json",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    // 0.76: int(25 x 0.24) = 6 patches kept of 25, as transformers rounds.
    let v = run("0.76");
    let mask: Vec<Vec<f64>> = serde_json::from_value(v["mask"].clone()).unwrap();
    assert_eq!(mask.len(), 2);
    for m in &mask {
        assert_eq!(m.len(), 25);
        assert_eq!(m.iter().sum::<f64>(), 19.0);
    }
    assert!(v["loss"].as_f64().unwrap() > 0.0);
    // The PNG: two rows of four 160-pixel panels under a header.
    let bytes = std::fs::read(&png).unwrap();
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    assert_eq!((be(16), be(20)), (4 * 168 + 8, 20 + 2 * 168 + 8));

    let v = run("0");
    assert!(v["loss"].is_null());
    let ours: Vec<f32> = serde_json::from_value::<Vec<Vec<Vec<f32>>>>(v["logits"].clone())
        .unwrap()
        .into_iter()
        .flatten()
        .flatten()
        .collect();
    let file = std::fs::read(fixtures().join("mae_reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&file).unwrap();
    let theirs: Vec<f32> = st
        .tensor("logits_ratio0")
        .unwrap()
        .data()
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    // Images 1 and 2 of the reference batch are these two photos.
    let per = 25 * 192;
    let d = max_abs_diff(&ours, &theirs[per..3 * per]);
    assert!(d < 1e-4, "logits differ by {d}");
    std::fs::remove_file(&png).unwrap();

    let o = tuwen(&[
        "reconstruct",
        "--model",
        model.to_str().unwrap(),
        "--image",
        images[0].to_str().unwrap(),
        "--mask-ratio",
        "1.5",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.trim().lines().count() == 1 && err.contains("--mask-ratio"),
        "{err}"
    );
    let o = tuwen(&[
        "reconstruct",
        "--model",
        fixtures().join("vit-odd").to_str().unwrap(),
        "--image",
        images[0].to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && (err.contains("vit_mae") || err.contains("ViTMAE")),
        "{err}"
    );
}

#[test]
fn train_mae_writes_a_model_that_reconstructs() {
    let out = std::env::temp_dir().join(format!("tuwen-train-mae-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let images = fixtures().join("images");
    let o = tuwen(&[
        "train",
        "mae",
        "--data",
        images.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--mask-ratio",
        "0.5",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "curves.png",
        "reconstructions.png",
        "checkpoint/optimizer.bpk",
    ] {
        assert!(out.join(f).is_file(), "no {f}");
    }
    assert_eq!(
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        4
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "vit_mae");
    assert_eq!(cfg["mask_ratio"], 0.5);
    let o = tuwen(&[
        "reconstruct",
        "--model",
        out.to_str().unwrap(),
        "--image",
        images.join("chelsea.jpg").to_str().unwrap(),
        "--json",
        "--out",
        out.join("r.png").to_str().unwrap(),
        "--mask-ratio",
        "0.75",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // tiny: 32 px, 4 px patches: 64 patches, 75% of them masked.
    let mask: Vec<f64> = serde_json::from_value(v["mask"][0].clone()).unwrap();
    assert_eq!((mask.len(), mask.iter().sum::<f64>()), (64, 48.0));
    assert!(out.join("r.png").is_file());
    let o = tuwen(&[
        "train",
        "mae",
        "--data",
        images.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--arch",
        "enormous",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("unknown --arch"),
        "{err}"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

/// `bench mae` and a miniature `bench mae-ratios` run and write what they promise.
#[test]
fn mae_benches_run() {
    let o = tuwen(&[
        "bench",
        "mae",
        "--arch",
        "tiny",
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--warmup",
        "0",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("encoder:") && out.contains("x faster"),
        "{out}"
    );

    let (dir, data) = fresh_shapes("ratios", "48");
    let o = tuwen(&[
        "bench",
        "mae-ratios",
        "--data",
        data.join("train.csv").to_str().unwrap(),
        "--test",
        data.join("test.csv").to_str().unwrap(),
        "--ratios",
        "0.5,0.75",
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--out",
        dir.join("study").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::read_to_string(dir.join("study/ratio_study.md")).unwrap();
    assert_eq!(md.lines().count(), 2 + 3, "{md}");
    assert!(md.contains("random init") && md.contains("mask ratio 0.75"));
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("study/ratio_study.json")).unwrap())
            .unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 3);
    assert!(dir.join("study/ratio_study.png").is_file());
    // The table and chart can be drawn again from the rows alone.
    std::fs::remove_file(dir.join("study/ratio_study.png")).unwrap();
    let o = tuwen(&[
        "bench",
        "mae-ratios",
        "--data",
        "unused",
        "--test",
        "unused",
        "--out",
        dir.join("study").to_str().unwrap(),
        "--replot",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(dir.join("study/ratio_study.png").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `train classifier`: a linear probe of the MAE fixture's encoder and a short fine-tune, both
/// saved as classifiers that `classify` and `eval classify` read.
#[test]
fn classifier_probe_and_fine_tune_from_mae() {
    let (dir, data) = fresh_shapes("clf", "48");
    let (train, test) = (data.join("train.csv"), data.join("test.csv"));
    let init = fixtures().join("vit-mae-odd");
    let probe = dir.join("probe");
    let o = tuwen(&[
        "train",
        "classifier",
        "--data",
        train.to_str().unwrap(),
        "--label-column",
        "color",
        "--init",
        init.to_str().unwrap(),
        "--linear-probe",
        "--probe-epochs",
        "50",
        "--val",
        test.to_str().unwrap(),
        "--out",
        probe.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!((0.0..=1.0).contains(&v["top1"].as_f64().unwrap()));
    assert!(probe.join("confusion.png").is_file());
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(probe.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "vit");
    assert_eq!(cfg["id2label"].as_object().unwrap().len(), 6, "six colours");
    let o = tuwen(&[
        "eval",
        "classify",
        "--model",
        probe.to_str().unwrap(),
        "--data",
        test.to_str().unwrap(),
        "--label-column",
        "color",
        "--json",
        "--confusion",
        dir.join("c.png").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(e["top1"], v["top1"]);
    let confusion: Vec<Vec<usize>> = serde_json::from_value(e["confusion"].clone()).unwrap();
    assert_eq!(
        confusion.iter().flatten().sum::<usize>(),
        e["n"].as_u64().unwrap() as usize
    );

    let ft = dir.join("ft");
    let o = tuwen(&[
        "train",
        "classifier",
        "--data",
        train.to_str().unwrap(),
        "--label-column",
        "shape",
        "--init",
        init.to_str().unwrap(),
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--out",
        ft.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(ft.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    let o = tuwen(&[
        "classify",
        "--model",
        ft.to_str().unwrap(),
        "--image",
        data.join("images/test-00000.png").to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = tuwen(&[
        "eval",
        "classify",
        "--model",
        ft.to_str().unwrap(),
        "--data",
        test.to_str().unwrap(),
        "--label-column",
        "color",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("not one of the model"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `train classifier` trains EfficientNets too: from an architecture, and from a checkpoint
/// with other classes (a new head).
#[test]
fn classifier_trains_efficientnet() {
    let (dir, data) = fresh_shapes("clf-eff", "32");
    let train = data.join("train.csv");
    for (tag, extra) in [
        (
            "b0",
            vec![
                "--arch",
                "efficientnet-b0",
                "--image-size",
                "32",
                "--mixup",
                "0.2",
            ],
        ),
        (
            "init",
            vec![
                "--init",
                fixtures()
                    .join("efficientnet-odd")
                    .to_str()
                    .unwrap()
                    .to_string()
                    .leak(),
            ],
        ),
    ] {
        let out = dir.join(tag);
        let mut args = vec![
            "train",
            "classifier",
            "--data",
            train.to_str().unwrap(),
            "--label-column",
            "shape",
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        let o = tuwen(&args);
        assert!(
            o.status.success(),
            "{tag}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["model_type"], "efficientnet", "{tag}");
        assert_eq!(
            cfg["id2label"].as_object().unwrap().len(),
            4,
            "{tag}: four shapes"
        );
        let o = tuwen(&[
            "eval",
            "classify",
            "--model",
            out.to_str().unwrap(),
            "--data",
            data.join("test.csv").to_str().unwrap(),
            "--label-column",
            "shape",
            "--json",
            "--confusion",
            out.join("c.png").to_str().unwrap(),
        ]);
        assert!(
            o.status.success(),
            "{tag}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
