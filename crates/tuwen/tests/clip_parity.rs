//! CLIP (both end-token rules) and SigLIP against transformers: token ids, embeddings, logits.

mod common;

use std::collections::BTreeMap;

use burn::prelude::*;
use common::*;
use safetensors::{Dtype, SafeTensors};
use tuwen::burn;
use tuwen::pipeline::ImageText;

struct Ref {
    f32s: BTreeMap<String, (Vec<f32>, Vec<usize>)>,
    ids: BTreeMap<String, (Vec<i64>, Vec<usize>)>,
}

fn clip_reference() -> Ref {
    let bytes = std::fs::read(fixtures().join("clip_reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut r = Ref {
        f32s: BTreeMap::new(),
        ids: BTreeMap::new(),
    };
    for (name, view) in st.iter() {
        let shape = view.shape().to_vec();
        match view.dtype() {
            Dtype::F32 => {
                let v = view
                    .data()
                    .chunks(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                r.f32s.insert(name.to_string(), (v, shape));
            }
            Dtype::I64 => {
                let v = view
                    .data()
                    .chunks(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                r.ids.insert(name.to_string(), (v, shape));
            }
            d => panic!("{d:?}"),
        }
    }
    r
}

fn texts() -> Vec<String> {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("clip_texts.json")).unwrap())
        .unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

const MODELS: [&str; 4] = ["clip-tiny", "clip-legacy", "siglip-tiny", "siglip-spiece"];

#[test]
fn token_ids_match_transformers() {
    let r = clip_reference();
    for tag in MODELS {
        let m = ImageText::load_folder(&fixtures().join(tag), &Device::flex()).unwrap();
        let (ids, n, len) = m.tokenizer.as_ref().unwrap().encode(&texts()).unwrap();
        let (expect, shape) = &r.ids[&format!("{tag}/input_ids")];
        assert_eq!(vec![n, len], *shape, "{tag}");
        // CLIP pads to the longest text, SigLIP to max_position_embeddings; both with the
        // tokenizer's pad token, as transformers does.
        assert_eq!(&ids, expect, "{tag}");
    }
}

#[test]
fn text_embeddings_match_transformers() {
    let r = clip_reference();
    for tag in MODELS {
        let m = ImageText::load_folder(&fixtures().join(tag), &Device::flex()).unwrap();
        let ours = m.encode_texts(&texts(), 2).unwrap();
        let (expect, shape) = &r.f32s[&format!("{tag}/text_embeds")];
        for (i, row) in ours.iter().enumerate() {
            let e = &expect[i * shape[1]..(i + 1) * shape[1]];
            let diff = max_abs_diff(row, e);
            eprintln!("{tag} text {i}: max diff {diff:.2e}");
            assert!(diff < 1e-4, "{tag} text {i}: {diff}");
        }
    }
}

#[test]
fn image_embeddings_and_logits_match_transformers() {
    let r = clip_reference();
    let names = image_names();
    let paths: Vec<_> = names
        .iter()
        .map(|n| fixtures().join("images").join(n))
        .collect();
    for tag in MODELS {
        let m = ImageText::load_folder(&fixtures().join(tag), &Device::flex()).unwrap();
        let images = m.encode_images(&paths, 4).unwrap();
        let (expect, shape) = &r.f32s[&format!("{tag}/image_embeds")];
        assert_eq!(images.len(), names.len(), "{tag}: rows");
        assert_eq!(
            expect.len(),
            names.len() * shape[1],
            "{tag}: reference rows"
        );
        for (i, (row, name)) in images.iter().zip(&names).enumerate() {
            let e = &expect[i * shape[1]..(i + 1) * shape[1]];
            if name.ends_with(".jpg") {
                // JPEG decoders round differently; the issue asks cosine >= 0.9995.
                let c = cosine(row, e);
                eprintln!("{tag} {name}: cosine {c:.6}");
                assert!(c >= 0.9995, "{tag} {name}: cosine {c}");
            } else {
                let diff = max_abs_diff(row, e);
                eprintln!("{tag} {name}: max diff {diff:.2e}");
                assert!(diff < 1e-4, "{tag} {name}: {diff}");
            }
        }
        // Logits on the exact-decode images, with scale (and SigLIP's bias).
        let text = m.encode_texts(&texts(), 8).unwrap();
        let logits = m.logits(&images, &text).unwrap();
        let (expect, shape) = &r.f32s[&format!("{tag}/logits_per_image")];
        for (i, name) in names.iter().enumerate() {
            if name.ends_with(".jpg") {
                continue;
            }
            let diff = max_abs_diff(&logits[i], &expect[i * shape[1]..(i + 1) * shape[1]]);
            assert!(diff < 1e-3, "{tag} {name}: logits {diff}");
        }
    }
}

#[test]
fn zero_shot_matches_transformers_logits() {
    let r = clip_reference();
    let names = image_names();
    let paths: Vec<_> = names
        .iter()
        .map(|n| fixtures().join("images").join(n))
        .collect();
    for tag in MODELS {
        let m = ImageText::load_folder(&fixtures().join(tag), &Device::flex()).unwrap();
        // One template, "{}": each class embedding is the text's own embedding.
        let zs = m.zero_shot(&texts(), &["{}".to_string()]).unwrap();
        let images = m.encode_images(&paths, 8).unwrap();
        let (logits, probs) = zs.classify(&images);
        let (expect, shape) = &r.f32s[&format!("{tag}/logits_per_image")];
        for (i, name) in names.iter().enumerate() {
            if name.ends_with(".jpg") {
                continue;
            }
            let e = &expect[i * shape[1]..(i + 1) * shape[1]];
            assert!(max_abs_diff(&logits[i], e) < 1e-3, "{tag} {name}");
            let sum: f32 = probs[i].iter().sum();
            if tag.starts_with("siglip") {
                // Independent sigmoids: each is sigmoid(logit), they need not sum to 1.
                assert_eq!(probs[i].len(), e.len(), "{tag} {name}: probabilities");
                for (p, l) in probs[i].iter().zip(e) {
                    assert!((p - 1.0 / (1.0 + (-l).exp())).abs() < 1e-4);
                }
            } else {
                assert!((sum - 1.0).abs() < 1e-5, "{tag}: softmax sums to {sum}");
            }
        }
    }
}

#[test]
fn template_ensemble_is_the_renormalised_mean() {
    let m = ImageText::load_folder(&fixtures().join("clip-tiny"), &Device::flex()).unwrap();
    let templates = vec!["a photo of a {}.".to_string(), "art of the {}.".to_string()];
    let zs = m.zero_shot(&["cat".to_string()], &templates).unwrap();
    let e = m
        .encode_texts(
            &[
                "a photo of a cat.".to_string(),
                "art of the cat.".to_string(),
            ],
            2,
        )
        .unwrap();
    let mut mean: Vec<f32> = e[0].iter().zip(&e[1]).map(|(a, b)| (a + b) / 2.0).collect();
    let n = mean.iter().map(|x| x * x).sum::<f32>().sqrt();
    mean.iter_mut().for_each(|x| *x /= n);
    assert!(max_abs_diff(&zs.class_embeds[0], &mean) < 1e-6);
    assert!(
        m.zero_shot(&["cat".to_string()], &["no placeholder".to_string()])
            .is_err()
    );
}

#[test]
fn image_bytes_embed_like_files() {
    let m = ImageText::load_folder(&fixtures().join("siglip-tiny"), &Device::flex()).unwrap();
    let path = fixtures().join("images/astronaut.png");
    let bytes = std::fs::read(&path).unwrap();
    let a = m.encode_images(&[path], 1).unwrap();
    let b = m.encode_image_bytes(&[&bytes], 1).unwrap();
    assert_eq!(a, b);
}

#[test]
fn saved_folders_keep_transformers_names_shapes_and_numbers() {
    for tag in MODELS {
        let src = fixtures().join(tag);
        let out = std::env::temp_dir().join(format!("tuwen-save-{tag}-{}", std::process::id()));
        tuwen::pipeline::convert(src.to_str().unwrap(), &out, &Device::flex()).unwrap();
        let theirs = tuwen::hub::safetensors_header(&src.join("model.safetensors")).unwrap();
        let ours = tuwen::hub::safetensors_header(&out.join("model.safetensors")).unwrap();
        // Same names and shapes, CLIP's 0-d logit_scale included.
        assert_eq!(ours, theirs, "{tag}");
        let a = ImageText::load_folder(&src, &Device::flex()).unwrap();
        let b = ImageText::load_folder(&out, &Device::flex()).unwrap();
        let t = vec!["a photo of a cat".to_string()];
        assert_eq!(
            a.encode_texts(&t, 1).unwrap(),
            b.encode_texts(&t, 1).unwrap()
        );
        assert_eq!(a.scale_and_bias().unwrap(), b.scale_and_bias().unwrap());
        std::fs::remove_dir_all(&out).unwrap();
    }
}
