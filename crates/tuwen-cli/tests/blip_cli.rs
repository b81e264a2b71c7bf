//! `tuwen caption` and `tuwen match` on the tiny BLIP checkpoints of
//! python/make_blip_fixtures.py, against transformers' outputs.

#[path = "../../tuwen/tests/common/mod.rs"]
mod common;

use std::process::{Command, Output};

use common::*;

fn tuwen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tuwen"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("binary runs")
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn photos() -> Vec<String> {
    ["astronaut.png", "coffee_rgba.png", "camera_gray.png"]
        .iter()
        .map(|p| {
            fixtures()
                .join("images")
                .join(p)
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("blip_captions.json")).unwrap())
        .unwrap()
}

#[test]
fn caption_json_is_transformers_generate() {
    let r = read_reference("blip_reference.safetensors");
    let model = fixtures().join("blip-caption-odd");
    let p = photos();
    for (beams, key) in [("1", "greedy"), ("3", "beam3")] {
        for (prompt, suffix) in [(None, ""), (Some("a picture of"), "_prompt")] {
            let mut args = vec!["caption", "--model", model.to_str().unwrap(), "--json"];
            args.extend(["--max-new-tokens", "12", "--beams", beams, "--image"]);
            args.extend(p.iter().map(String::as_str));
            if let Some(prompt) = prompt {
                args.extend(["--prompt", prompt]);
            }
            let v = json(&tuwen(&args));
            let name = format!("{key}{suffix}");
            assert_eq!(v["captions"], expected()[&name], "{name}");
            let (ids, shape) = i64s(&r, &format!("{name}_ids"));
            let want: Vec<Vec<i64>> = ids.chunks(shape[1]).map(<[i64]>::to_vec).collect();
            let got: Vec<Vec<i64>> = serde_json::from_value(v["token_ids"].clone()).unwrap();
            assert_eq!(got, want, "{name}");
        }
    }
}

#[test]
fn match_json_is_transformers_retrieval() {
    let r = read_reference("blip_reference.safetensors");
    let model = fixtures().join("blip-itm-odd");
    let mut args = vec![
        "match",
        "--model",
        model.to_str().unwrap(),
        "--json",
        "--image",
    ];
    let p = photos();
    args.extend(p.iter().map(String::as_str));
    let texts: Vec<String> = serde_json::from_value(expected()["texts"].clone()).unwrap();
    for t in &texts {
        args.extend(["--text", t.as_str()]);
    }
    let v = json(&tuwen(&args));
    for key in ["itm_probs", "itc_scores"] {
        let got: Vec<Vec<f32>> = serde_json::from_value(v[key].clone()).unwrap();
        let d = max_abs_diff(&got.concat(), &f32s(&r, key).0);
        assert!(d < 1e-4, "{key} differs by {d}");
    }
}

#[test]
fn bad_decoding_flags_are_one_line_errors() {
    let model = fixtures().join("blip-caption-odd");
    let img = &photos()[0];
    let m = model.to_str().unwrap();
    for (extra, needle) in [
        (vec!["--beams", "0"], "--beams"),
        (vec!["--sample", "--top-p", "2"], "--top-p"),
        (vec!["--sample", "--temperature", "0"], "--temperature"),
        (vec!["--max-new-tokens", "100"], "positions"),
        (
            vec!["--max-new-tokens", "18446744073709551615"],
            "positions",
        ),
        (vec!["--max-new-tokens", "0"], "--max-new-tokens"),
        (
            vec!["--beams", "2", "--length-penalty", "inf"],
            "length penalty",
        ),
        (
            vec!["--min-new-tokens", "5", "--max-new-tokens", "3"],
            "--min-new-tokens",
        ),
    ] {
        let mut args = vec!["caption", "--model", m, "--image", img.as_str()];
        args.extend(extra);
        let o = tuwen(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} should fail");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{err} lacks {needle}");
    }
}

/// `tuwen train blip` from the two fixture checkpoints: an interrupted run resumed equals an
/// uninterrupted one, and what it saves captions and matches.
#[test]
fn train_blip_resumes_exactly_and_saves_both_models() {
    let dir = std::env::temp_dir().join(format!("tuwen-train-blip-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pairs = [
        ("astronaut.png", "an astronaut in space"),
        ("coffee.bmp", "a cup of coffee"),
        ("camera_gray.png", "a black camera"),
        ("rocket.webp", "a red rocket in the sky"),
        ("chelsea.jpg", "a small cat"),
        ("hubble.gif", "space"),
    ];
    let mut csv = String::from("filepath,caption\n");
    for (f, c) in pairs {
        let path = fixtures().join("images").join(f);
        csv.push_str(&format!("{},{c}\n", path.display()));
    }
    std::fs::write(dir.join("d.csv"), csv).unwrap();
    let args = |out: &std::path::Path| -> Vec<String> {
        let f = |n: &str| fixtures().join(n).to_str().unwrap().to_string();
        let d = dir.join("d.csv");
        [
            "train",
            "blip",
            "--data",
            d.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--captioner",
            &f("blip-caption-odd"),
            "--retrieval",
            &f("blip-itm-odd"),
            "--steps",
            "80",
            "--batch-size",
            "4",
            "--lr",
            "1e-3",
            "--warmup",
            "5",
            "--save-every",
            "1000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let losses = |out: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                format!("{} {} {} {}", v["step"], v["itc"], v["itm"], v["lm"])
            })
            .collect()
    };
    let (a, b) = (dir.join("a"), dir.join("b"));
    let o = Command::new(env!("CARGO_BIN_EXE_tuwen"))
        .args(args(&a))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let whole = losses(&a);
    assert_eq!(whole.len(), 80);

    let child = Command::new(env!("CARGO_BIN_EXE_tuwen"))
        .args(args(&b))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(b.join("metrics.jsonl"))
        .map(|m| m.lines().count() < 10)
        .unwrap_or(true)
    {
        assert!(t0.elapsed().as_secs() < 120, "the run did not start");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("--resume"), "{err}");
    assert!(
        losses(&b).len() < 80,
        "the interrupt came too late to test anything"
    );
    let mut resumed = args(&b);
    resumed.push("--resume".into());
    let o = Command::new(env!("CARGO_BIN_EXE_tuwen"))
        .args(&resumed)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(losses(&b), whole, "the resumed run differs");

    // Both saved models work from the command line.
    let img = fixtures().join("images/astronaut.png");
    let cap = b.join("captioning");
    let v = json(&tuwen(&[
        "caption",
        "--model",
        cap.to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(v["captions"].as_array().unwrap().len(), 1);
    let ret = b.join("retrieval");
    let v = json(&tuwen(&[
        "match",
        "--model",
        ret.to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
        "--text",
        "an astronaut in space",
        "--text",
        "a small cat",
        "--json",
    ]));
    let itc: Vec<Vec<f32>> = serde_json::from_value(v["itc_scores"].clone()).unwrap();
    assert!(
        itc[0][0] > itc[0][1],
        "training did not teach the astronaut's caption: {itc:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `tuwen capfilt`: every kept caption reaches the threshold and every dropped one does not,
/// the original captions' scores are `tuwen match`'s (transformers' ITM), and the report,
/// the CSV and the picture agree.
#[test]
fn capfilt_keeps_exactly_the_captions_the_filter_accepts() {
    let dir = std::env::temp_dir().join(format!("tuwen-capfilt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pairs = [
        ("astronaut.png", "an astronaut in space"),
        ("coffee_rgba.png", "a cup of coffee"),
        ("camera_gray.png", "a photo of a cat"),
    ];
    let mut csv = String::from("filepath,caption\n");
    for (f, c) in pairs {
        csv.push_str(&format!(
            "{},{c}\n",
            fixtures().join("images").join(f).display()
        ));
    }
    std::fs::write(dir.join("noisy.csv"), csv).unwrap();
    let out = dir.join("clean.csv");
    let f = |n: &str| fixtures().join(n).to_str().unwrap().to_string();
    let o = tuwen(&[
        "capfilt",
        "--captioner",
        &f("blip-caption-odd"),
        "--filter",
        &f("blip-itm-odd"),
        "--data",
        dir.join("noisy.csv").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--captions-per-image",
        "2",
        "--max-new-tokens",
        "6",
        "--threshold",
        "0.6",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("clean_report.json")).unwrap())
            .unwrap();
    let mut kept_rows = 0;
    for (row, (file, caption)) in report["decisions"].as_array().unwrap().iter().zip(pairs) {
        let orig = &row["original"];
        assert_eq!(orig[0], caption);
        // The filter's score of the original caption is `tuwen match`'s ITM.
        let img = fixtures().join("images").join(file);
        let v = json(&tuwen(&[
            "match",
            "--model",
            &f("blip-itm-odd"),
            "--image",
            img.to_str().unwrap(),
            "--text",
            caption,
            "--json",
        ]));
        let itm = v["itm_probs"][0][0].as_f64().unwrap();
        assert!((orig[1].as_f64().unwrap() - itm).abs() < 1e-4);
        for judged in std::iter::once(orig).chain(row["synthetic"].as_array().unwrap()) {
            let (p, keep) = (judged[1].as_f64().unwrap(), judged[2].as_bool().unwrap());
            assert_eq!(
                keep,
                p >= 0.6 && !judged[0].as_str().unwrap().is_empty(),
                "{judged}"
            );
            kept_rows += usize::from(keep);
        }
    }
    let total =
        report["original_kept"].as_u64().unwrap() + report["synthetic_kept"].as_u64().unwrap();
    assert_eq!(total as usize, kept_rows);
    let lines = std::fs::read_to_string(&out).unwrap().lines().count();
    assert_eq!(
        lines,
        kept_rows + 1,
        "the CSV holds the kept pairs and a header"
    );
    assert!(dir.join("clean_examples.png").is_file());
    // The output may not replace the input.
    let o = tuwen(&[
        "capfilt",
        "--captioner",
        &f("blip-caption-odd"),
        "--filter",
        &f("blip-itm-odd"),
        "--data",
        dir.join("noisy.csv").to_str().unwrap(),
        "--out",
        dir.join("noisy.csv").to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("would replace the input"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A tiny BLIP from scratch (`--arch tiny`, its tokenizer learnt from the captions) learns six
/// captioned photos well enough to caption each with its own caption.
#[test]
fn train_blip_from_scratch_learns_to_caption() {
    let dir = std::env::temp_dir().join(format!("tuwen-blip-scratch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pairs = [
        ("astronaut.png", "an astronaut in space"),
        ("coffee.bmp", "a cup of coffee"),
        ("camera_gray.png", "a black camera"),
        ("rocket.webp", "a red rocket in the sky"),
        ("chelsea.jpg", "a small cat"),
        ("hubble.gif", "space"),
    ];
    let mut csv = String::from("filepath,caption\n");
    for (f, c) in pairs {
        csv.push_str(&format!(
            "{},{c}\n",
            fixtures().join("images").join(f).display()
        ));
    }
    let data = dir.join("d.csv");
    std::fs::write(&data, csv).unwrap();
    let out = dir.join("run");
    let o = tuwen(&[
        "train",
        "blip",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--arch",
        "tiny",
        "--steps",
        "150",
        "--batch-size",
        "6",
        "--lr",
        "2e-3",
        "--warmup",
        "10",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut args = vec![
        "caption".to_string(),
        "--model".into(),
        out.join("captioning").display().to_string(),
        "--prompt".into(),
        "a picture of".into(),
        "--json".into(),
        "--image".into(),
    ];
    args.extend(
        pairs
            .iter()
            .map(|(f, _)| fixtures().join("images").join(f).display().to_string()),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let v = json(&tuwen(&args));
    let want: Vec<String> = pairs
        .iter()
        .map(|(_, c)| format!("a picture of {c}"))
        .collect();
    let got: Vec<String> = serde_json::from_value(v["captions"].clone()).unwrap();
    assert_eq!(got, want);
    std::fs::remove_dir_all(&dir).unwrap();
}
