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
