//! `tuwen data shapes`, `tuwen train` and `tuwen eval zero-shot` end to end (short runs; the
//! learning itself is tested in the library's train_contrastive test).

#[path = "../../tuwen/tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

fn tuwen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tuwen"))
        .args(args)
        .output()
        .expect("binary runs")
}

fn one_line_error(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "should fail: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    assert!(err.contains(needle), "{err:?} lacks {needle:?}");
}

/// A fresh folder for test `tag` with `tuwen data shapes` pictures in its `data/` (with `extra`
/// arguments); returns both.
fn fresh_shapes(tag: &str, n: &str, size: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("tuwen-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    let mut args = vec![
        "data",
        "shapes",
        "--out",
        data.to_str().unwrap(),
        "--n",
        n,
        "--size",
        size,
    ];
    args.extend_from_slice(extra);
    let o = tuwen(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (dir, data)
}

#[test]
fn shapes_train_eval() {
    let dir: PathBuf = std::env::temp_dir().join(format!("tuwen-train-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    let (d, m) = (data.to_str().unwrap(), dir.join("model"));
    let o = tuwen(&[
        "data", "shapes", "--out", d, "--n", "120", "--size", "32", "--seed", "3",
    ]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("120 training and 24 test"));
    let train_csv = data.join("train.csv");
    let test_csv = data.join("test.csv");
    for kind in ["siglip", "clip"] {
        let o = tuwen(&[
            "train",
            kind,
            "--data",
            train_csv.to_str().unwrap(),
            "--val",
            test_csv.to_str().unwrap(),
            "--out",
            m.to_str().unwrap(),
            "--steps",
            "6",
            "--batch-size",
            "16",
            "--warmup",
            "2",
        ]);
        assert!(
            o.status.success(),
            "{kind}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
        assert_eq!(v["steps"], 6);
        assert_eq!(v["zero_shot"]["n"], 24);
        let metrics = std::fs::read_to_string(m.join("metrics.jsonl")).unwrap();
        assert_eq!(metrics.lines().count(), 6);
        assert!(m.join("curves.png").exists(), "{kind}: no curves.png");
        for f in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "preprocessor_config.json",
        ] {
            assert!(m.join(f).exists(), "{kind}: no {f}");
        }
        let o = tuwen(&[
            "eval",
            "zero-shot",
            "--model",
            m.to_str().unwrap(),
            "--data",
            test_csv.to_str().unwrap(),
            "--json",
        ]);
        assert!(o.status.success());
        let v: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
        let top1 = v["top1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&top1) && v["top5"].as_f64().unwrap() >= top1);
        assert!(v["per_class"].as_object().unwrap().len() > 3);
        let o = tuwen(&[
            "eval",
            "retrieval",
            "--model",
            m.to_str().unwrap(),
            "--data",
            test_csv.to_str().unwrap(),
            "--json",
        ]);
        assert!(o.status.success());
        let v: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
        assert_eq!(v["n"], 24);
        let (r1, r10) = (
            v["text_to_image"]["R@1"].as_f64().unwrap(),
            v["text_to_image"]["R@10"].as_f64().unwrap(),
        );
        assert!(r1 <= r10 && r10 <= 1.0);
    }
    // The chunked sigmoid loss trains too.
    let o = tuwen(&[
        "train",
        "siglip",
        "--data",
        train_csv.to_str().unwrap(),
        "--out",
        m.to_str().unwrap(),
        "--steps",
        "2",
        "--batch-size",
        "16",
        "--loss",
        "sigmoid-chunked",
        "--loss-chunks",
        "4",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Data-parallel on two CPU devices, the chunked loss one block per device.
    let o = tuwen(&[
        "train",
        "siglip",
        "--data",
        train_csv.to_str().unwrap(),
        "--out",
        m.to_str().unwrap(),
        "--steps",
        "2",
        "--batch-size",
        "16",
        "--loss",
        "sigmoid-chunked",
        "--devices",
        "cpu,cpu",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The performance harness times the saved folder: a training step, image and text
    // inference, as JSON.
    for task in [&["train"][..], &["infer"], &["infer", "--text"]] {
        let mut args = vec!["bench"];
        args.extend_from_slice(task);
        args.extend([
            "--model",
            m.to_str().unwrap(),
            "--steps",
            "2",
            "--warmup",
            "0",
            "--batch-size",
            "4",
            "--json",
        ]);
        let o = tuwen(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
        let runs = j["runs"].as_array().expect("runs");
        assert_eq!(runs.len(), 2, "{j}");
        assert!(
            runs.iter().all(|r| r.as_f64().is_some_and(|ms| ms > 0.0)),
            "{j}"
        );
        assert!(j["ms"].as_f64().unwrap() > 0.0 && j["peak_rss_mb"].as_f64().unwrap() > 1.0);
    }
    // Every other family the harness takes, from the fixtures; the text workload needs a
    // text tower.
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");
    for name in ["efficientnet-odd", "vit-mae-odd", "vit-odd", "clip-tiny"] {
        let folder = format!("{fixtures}/{name}");
        for task in ["infer", "train"] {
            let o = tuwen(&[
                "bench",
                task,
                "--model",
                &folder,
                "--steps",
                "1",
                "--warmup",
                "0",
                "--batch-size",
                "2",
            ]);
            assert!(
                o.status.success(),
                "{name} {task}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(String::from_utf8_lossy(&o.stdout).contains("ms per batch"));
        }
    }
    one_line_error(
        &tuwen(&[
            "bench",
            "infer",
            "--text",
            "--model",
            &format!("{fixtures}/vit-mae-odd"),
        ]),
        "--text",
    );

    one_line_error(
        &tuwen(&[
            "train",
            "clip",
            "--data",
            train_csv.to_str().unwrap(),
            "--out",
            m.to_str().unwrap(),
            "--loss",
            "sigmoid",
        ]),
        "--loss",
    );
    one_line_error(
        &tuwen(&[
            "train",
            "siglip",
            "--data",
            train_csv.to_str().unwrap(),
            "--out",
            m.to_str().unwrap(),
            "--loss",
            "sigmoid-chunked",
            "--loss-chunks",
            "5",
            "--batch-size",
            "16",
        ]),
        "multiple",
    );
    // --devices names devices; a count gets a hint towards --loss-chunks.
    one_line_error(
        &tuwen(&[
            "train",
            "siglip",
            "--data",
            train_csv.to_str().unwrap(),
            "--out",
            m.to_str().unwrap(),
            "--devices",
            "4",
        ]),
        "--loss-chunks",
    );
    one_line_error(
        &tuwen(&[
            "train",
            "clip",
            "--data",
            "/no/such.csv",
            "--out",
            m.to_str().unwrap(),
        ]),
        "/no/such.csv",
    );
    one_line_error(
        &tuwen(&[
            "train",
            "clip",
            "--data",
            train_csv.to_str().unwrap(),
            "--out",
            m.to_str().unwrap(),
            "--arch",
            "huge",
        ]),
        "unknown --arch",
    );
    one_line_error(
        &tuwen(&["data", "shapes", "--out", d, "--size", "4"]),
        "--size",
    );
    one_line_error(
        &tuwen(&[
            "eval",
            "zero-shot",
            "--model",
            m.to_str().unwrap(),
            "--data",
            test_csv.to_str().unwrap(),
            "--label-column",
            "nope",
        ]),
        "nope",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The losses of `metrics.jsonl`, by step.
fn losses(folder: &std::path::Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(folder.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

/// Ctrl-C saves a checkpoint and exits; `--resume` continues, and the whole loss curve equals
/// the one of the same run left alone. `--val-every` adds validation scores to the metrics.
#[test]
fn interrupted_run_resumes_exactly() {
    let (dir, data) = fresh_shapes("resume-cli", "64", "32", &[]);
    let csv = data.join("train.csv");
    let steps = "300";
    let args = |out: &std::path::Path| -> Vec<String> {
        [
            "train",
            "siglip",
            "--data",
            csv.to_str().unwrap(),
            "--val",
            data.join("test.csv").to_str().unwrap(),
            "--val-every",
            "50",
            "--out",
            out.to_str().unwrap(),
            "--steps",
            steps,
            "--batch-size",
            "8",
            "--image-size",
            "16",
            "--patch-dropout",
            "0.5",
            "--save-every",
            "1000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let (a, b) = (dir.join("a"), dir.join("b"));
    let o = Command::new(env!("CARGO_BIN_EXE_tuwen"))
        .args(args(&a))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let whole = losses(&a);
    assert_eq!(whole.len(), 300);
    let metrics = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.matches("val_top1").count(), 6);

    let child = Command::new(env!("CARGO_BIN_EXE_tuwen"))
        .args(args(&b))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once some steps are done.
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(b.join("metrics.jsonl"))
        .map(|m| m.lines().count() < 20)
        .unwrap_or(true)
    {
        assert!(t0.elapsed().as_secs() < 120, "the run did not start");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("--resume"), "{err}");
    let part = losses(&b);
    assert!(
        part.len() < 300,
        "the interrupt came too late to test anything"
    );
    assert!(b.join("checkpoint").join("optimizer.bpk").exists());

    let mut resumed = args(&b);
    resumed.push("--resume".into());
    let o = Command::new(env!("CARGO_BIN_EXE_tuwen"))
        .args(&resumed)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(losses(&b), whole, "the resumed curve differs");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `tuwen quickstart` (shortened) writes its whole report, and its model loads back.
#[test]
fn quickstart_writes_a_report() {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("tuwen-quickstart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let o = tuwen(&[
        "quickstart",
        "--out",
        dir.to_str().unwrap(),
        "--n",
        "200",
        "--steps",
        "10",
    ]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{err}");
    assert!(out.contains("held-out pairings"), "{out}");
    for f in [
        "metrics.json",
        "curves.png",
        "retrieval.png",
        "model/model.safetensors",
    ] {
        assert!(dir.join(f).is_file(), "no {f}");
    }
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["train"]["steps"], 10);
    assert_eq!(m["zero_shot"]["n"], 40);
    assert_eq!(
        m["zero_shot_held_out"]["n"].as_u64().unwrap() + m["zero_shot_seen"]["n"].as_u64().unwrap(),
        40
    );
    // The PNG header's size: eight query rows of six 64-pixel images.
    let png = std::fs::read(dir.join("retrieval.png")).unwrap();
    let be = |i: usize| u32::from_be_bytes(png[i..i + 4].try_into().unwrap());
    assert!(
        be(16) > 6 * 64 && be(20) >= 8 * 64,
        "{} x {}",
        be(16),
        be(20)
    );
    let o = tuwen(&[
        "classify",
        "--model",
        dir.join("model").to_str().unwrap(),
        "--image",
        dir.join("data/images/test-00000.png").to_str().unwrap(),
        "--labels",
        "red circle,blue square",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// WebDataset shards (with a damaged one) stream into training with augmentations; the damage
/// is skipped, not fatal, and a brace pattern naming no shard is a one-line error.
#[test]
fn trains_from_webdataset_shards() {
    let (dir, data) = fresh_shapes("wds-cli", "96", "32", &["--shards", "3"]);
    assert!(data.join("train-0002.tar").is_file() && !data.join("train-0003.tar").exists());
    // Damage the last shard: cut it mid-member.
    let last = data.join("train-0002.tar");
    let bytes = std::fs::read(&last).unwrap();
    std::fs::write(&last, &bytes[..bytes.len() / 2 + 100]).unwrap();
    let pattern = data.join("train-{0000..0002}.tar");
    let m = dir.join("model");
    let o = tuwen(&[
        "train",
        "siglip",
        "--data",
        pattern.to_str().unwrap(),
        "--out",
        m.to_str().unwrap(),
        "--steps",
        "8",
        "--batch-size",
        "16",
        "--shuffle-buffer",
        "32",
        "--crop-scale",
        "0.8",
        "--hflip",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("streaming WebDataset"), "{err}");
    assert_eq!(
        std::fs::read_to_string(m.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        8
    );
    assert!(m.join("tokenizer.json").exists());
    one_line_error(
        &tuwen(&[
            "train",
            "siglip",
            "--data",
            data.join("none-{0..3}.tar").to_str().unwrap(),
            "--out",
            m.to_str().unwrap(),
        ]),
        "no shard",
    );
    one_line_error(
        &tuwen(&[
            "train",
            "siglip",
            "--data",
            pattern.to_str().unwrap(),
            "--out",
            m.to_str().unwrap(),
            "--crop-scale",
            "0",
        ]),
        "--crop-scale",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--epochs` sets the steps from the data size; `--caption-column` picks another column.
#[test]
fn epochs_and_caption_column() {
    let (dir, data) = fresh_shapes("epochs", "96", "16", &[]);
    let m = dir.join("m");
    let csv = data.join("train.csv");
    let o = tuwen(&[
        "train",
        "clip",
        "--data",
        csv.to_str().unwrap(),
        "--out",
        m.to_str().unwrap(),
        "--epochs",
        "1.5",
        "--batch-size",
        "16",
        "--image-size",
        "16",
        "--caption-column",
        "label",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // 1.5 x 96 pairs / 16 per step.
    assert_eq!(
        std::fs::read_to_string(m.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        9
    );
    // The tokenizer learnt the label words only: no size or position words.
    let vocab = std::fs::read_to_string(m.join("tokenizer.json")).unwrap();
    assert!(vocab.contains("\"circle\"") && !vocab.contains("\"left\""));
    one_line_error(
        &tuwen(&[
            "train",
            "clip",
            "--data",
            csv.to_str().unwrap(),
            "--out",
            m.to_str().unwrap(),
            "--caption-column",
            "nope",
        ]),
        "nope",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--device` reaches training, the quickstart and the benches: a device this build lacks is a
/// one-line error before any work, never a silent run on the CPU.
#[cfg(not(feature = "cuda"))]
#[test]
fn a_missing_device_is_an_error_for_every_training_command() {
    let (dir, data) = fresh_shapes("nodevice", "24", "16", &[]);
    let train = data.join("train.csv");
    let out = dir.join("out");
    let commands: [&[&str]; 7] = [
        &[
            "train",
            "classifier",
            "--arch",
            "vit-ti16",
            "--label-column",
            "color",
        ],
        &["train", "siglip"],
        &["train", "mae"],
        &["train", "gan"],
        &["quickstart"],
        &["bench", "train", "--model", "/no/such/folder"],
        &["bench", "infer", "--model", "/no/such/folder"],
    ];
    for cmd in commands {
        let mut args = vec!["--device", "cuda"];
        args.extend_from_slice(cmd);
        if cmd[0] == "train" {
            args.extend([
                "--data",
                train.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ]);
        }
        if cmd[0] == "quickstart" {
            args.extend(["--out", out.to_str().unwrap()]);
        }
        let o = tuwen(&args);
        one_line_error(&o, "not compiled in");
        assert!(!out.exists(), "{cmd:?} wrote {}", out.display());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A classifier fine-tuned or probed from a checkpoint is saved with exactly the preprocessing
/// it was trained with: EfficientNet's rescale and include_top, the ViT fixture's
/// shortest-edge resize and center crop. The saved processor makes transformers' pixel values
/// of the initial checkpoint (tests/fixtures references) from a real photo.
#[test]
fn fine_tuned_and_probed_classifiers_keep_their_preprocessing() {
    use tuwen::data::ImageProcessor;
    let (dir, data) = fresh_shapes("keepproc", "48", "40", &[]);
    let train = data.join("train.csv");
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let photo = tuwen::data::open_rgb(&fixtures.join("images/astronaut.png")).unwrap();
    let reference = |file: &str, key: &str, len: usize| -> Vec<f32> {
        let bytes = std::fs::read(fixtures.join(file)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor(key).unwrap();
        let v: Vec<f32> = t
            .data()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        v[..len].to_vec()
    };
    // astronaut.png is the first image of both references.
    let eff = reference(
        "efficientnet_reference.safetensors",
        "pixel_values",
        3 * 67 * 67,
    );
    let vit = reference(
        "reference.safetensors",
        "pixels/vit-odd/astronaut.png",
        3 * 40 * 40,
    );
    let runs: [(&str, &str, &[&str], &[f32]); 3] = [
        ("eff", "efficientnet-odd", &[], &eff),
        ("vit", "vit-odd", &[], &vit),
        (
            "probe",
            "vit-odd",
            &["--linear-probe", "--probe-epochs", "5"],
            &vit,
        ),
    ];
    for (tag, init, extra, expect) in runs {
        let out = dir.join(tag);
        let init = fixtures.join(init);
        let mut args = vec![
            "train",
            "classifier",
            "--data",
            train.to_str().unwrap(),
            "--label-column",
            "color",
            "--init",
            init.to_str().unwrap(),
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = tuwen(&args);
        assert!(
            o.status.success(),
            "{tag}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let before = ImageProcessor::from_file(&init.join("preprocessor_config.json")).unwrap();
        let after = ImageProcessor::from_file(&out.join("preprocessor_config.json")).unwrap();
        assert_eq!(after, before, "{tag}");
        let (pixels, _) = after.preprocess(&photo);
        let worst = common::max_abs_diff(&pixels, expect);
        assert!(
            worst < 1e-4,
            "{tag}: pixels differ from transformers' by {worst}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
