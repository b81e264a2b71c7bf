//! BLIP against transformers on a tiny random checkpoint of sizes no published model has
//! (python/make_blip_fixtures.py): image tokens, decoder logits, ITM probabilities, ITC cosines.

mod common;

use burn::prelude::*;
use common::*;
use tuwen::burn;
use tuwen::models::blip::{BlipForConditionalGeneration, BlipForImageTextRetrieval};

fn pixels(r: &std::collections::BTreeMap<String, Array>, device: &Device) -> Tensor<4> {
    let (v, s) = f32s(r, "pixel_values");
    Tensor::<1>::from_floats(v.as_slice(), device).reshape([s[0], s[1], s[2], s[3]])
}

fn ids(
    r: &std::collections::BTreeMap<String, Array>,
    key: &str,
    device: &Device,
) -> Tensor<2, Int> {
    let (v, s) = i64s(r, key);
    Tensor::<1, Int>::from_ints(v.as_slice(), device).reshape([s[0], s[1]])
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

#[test]
fn captioning_model_matches_transformers() {
    let device = Device::flex();
    let r = read_reference("blip_reference.safetensors");
    let (model, _) =
        BlipForConditionalGeneration::load(&fixtures().join("blip-caption-odd"), &device).unwrap();
    let image = model.vision_model.forward(pixels(&r, &device));
    let (want, shape) = f32s(&r, "caption_image_embeds");
    assert_eq!(image.dims().to_vec(), shape);
    let got = values(image.clone());
    let d = max_abs_diff(&got, &want);
    assert!(d < 1e-4, "image tokens differ by {d}");

    let logits = model
        .text_decoder
        .forward(ids(&r, "prompt_ids", &device), None, image);
    let (want, shape) = f32s(&r, "decoder_logits");
    assert_eq!(logits.dims().to_vec(), shape);
    let d = max_abs_diff(&values(logits), &want);
    assert!(d < 1e-4, "decoder logits differ by {d}");
}

#[test]
fn retrieval_model_matches_transformers() {
    let device = Device::flex();
    let r = read_reference("blip_reference.safetensors");
    let (model, _) =
        BlipForImageTextRetrieval::load(&fixtures().join("blip-itm-odd"), &device).unwrap();
    let image = model.vision_model.forward(pixels(&r, &device));
    let [n, t, d] = image.dims();
    let texts = ids(&r, "texts_ids", &device);
    let (mask, mshape) = i64s(&r, "texts_mask");
    let mask = Tensor::<1>::from_floats(
        mask.iter()
            .map(|&m| m as f32)
            .collect::<Vec<_>>()
            .as_slice(),
        &device,
    )
    .reshape([mshape[0], mshape[1]]);
    let k = mshape[0];
    let mut itm = Vec::new();
    for i in 0..n {
        let one = image
            .clone()
            .slice([i..i + 1, 0..t, 0..d])
            .expand([k, t, d]);
        let logits = model.itm_logits(one, texts.clone(), Some(mask.clone()));
        let probs = burn::tensor::activation::softmax(logits, 1);
        itm.extend(values(probs.slice([0..k, 1..2])));
    }
    let (want, _) = f32s(&r, "itm_probs");
    let diff = max_abs_diff(&itm, &want);
    assert!(
        diff < 1e-4,
        "ITM probabilities differ by {diff}: {itm:?} vs {want:?}"
    );

    let img = model.image_features(image);
    let txt = model.text_features(texts, Some(mask));
    let itc = values(img.matmul(txt.transpose()));
    let (want, _) = f32s(&r, "itc_scores");
    let diff = max_abs_diff(&itc, &want);
    assert!(
        diff < 1e-4,
        "ITC cosines differ by {diff}: {itc:?} vs {want:?}"
    );
}

fn rows(v: &[i64], shape: &[usize]) -> Vec<Vec<i64>> {
    v.chunks(shape[1]).map(<[i64]>::to_vec).collect()
}

#[test]
fn greedy_and_beam_captions_match_transformers_token_for_token() {
    use tuwen::generate::{Settings, generate};
    use tuwen::models::blip::{Captioner, UncachedCaptioner};
    let device = Device::flex();
    let r = read_reference("blip_reference.safetensors");
    let (model, cfg) =
        BlipForConditionalGeneration::load(&fixtures().join("blip-caption-odd"), &device).unwrap();
    let image = model.vision_model.forward(pixels(&r, &device));
    let [n, t, d] = image.dims();
    let t_cfg = &cfg.text_config;
    let (prompt, pshape) = i64s(&r, "prompt_ids");
    let with_prompt = rows(&prompt, &pshape);
    let bare: Vec<Vec<i64>> = vec![vec![t_cfg.bos_token_id]; n];
    let captioner = Captioner { model: &model };
    for (beams, key) in [(1, "greedy"), (3, "beam3")] {
        // Each image's tokens repeated for its beams, as generate expands them.
        let idx: Vec<i64> = (0..n as i64).flat_map(|i| vec![i; beams]).collect();
        let rows_image = image
            .clone()
            .select(0, Tensor::<1, Int>::from_ints(idx.as_slice(), &device));
        assert_eq!(rows_image.dims(), [n * beams, t, d]);
        let settings = Settings {
            max_new_tokens: 12,
            num_beams: beams,
            eos_token_id: t_cfg.sep_token_id,
            pad_token_id: t_cfg.pad_token_id,
            ..Settings::default()
        };
        for (prompts, suffix) in [(&bare, ""), (&with_prompt, "_prompt")] {
            let got = generate(
                &captioner,
                captioner.start(rows_image.clone()),
                prompts,
                &settings,
            )
            .unwrap();
            let (want, shape) = i64s(&r, &format!("{key}{suffix}_ids"));
            assert_eq!(got, rows(&want, &shape), "{key}{suffix}");
            // Without the cache: the same tokens.
            let plain = UncachedCaptioner { model: &model };
            let again =
                generate(&plain, plain.start(rows_image.clone()), prompts, &settings).unwrap();
            assert_eq!(again, got, "{key}{suffix} without the cache");
        }
    }
}

fn captions_json() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("blip_captions.json")).unwrap())
        .unwrap()
}

fn photos() -> Vec<std::path::PathBuf> {
    ["astronaut.png", "coffee_rgba.png", "camera_gray.png"]
        .iter()
        .map(|p| fixtures().join("images").join(p))
        .collect()
}

#[test]
fn captioning_pipeline_reads_photos_and_decodes_like_transformers() {
    use tuwen::generate::Settings;
    use tuwen::pipeline::blip::ImageCaptioning;
    let device = Device::flex();
    let r = read_reference("blip_reference.safetensors");
    let expected = captions_json();
    let cap = ImageCaptioning::load_folder(&fixtures().join("blip-caption-odd"), &device).unwrap();
    let pixels = cap.processor.load_batch(&photos(), &device).unwrap();
    let d = max_abs_diff(&values(pixels), &f32s(&r, "pixel_values").0);
    assert!(d < 1e-4, "preprocessing differs by {d}");
    for (beams, key) in [(1, "greedy"), (3, "beam3")] {
        let settings = Settings {
            max_new_tokens: 12,
            num_beams: beams,
            ..Settings::default()
        };
        for (prompt, suffix) in [(None, ""), (Some("a picture of"), "_prompt")] {
            // Two images a batch: batching must not change a caption.
            let got = cap.caption(&photos(), prompt, &settings, 2).unwrap();
            let name = format!("{key}{suffix}");
            let want: Vec<String> = serde_json::from_value(expected[&name].clone()).unwrap();
            assert_eq!(got.captions, want, "{name}");
            // Batched in twos, rows are padded per batch; the last image's ids are its own.
            let (ids, shape) = i64s(&r, &format!("{name}_ids"));
            let full = rows(&ids, &shape);
            let trim = |v: &[i64]| {
                let mut v = v.to_vec();
                while v.len() > 1
                    && (v.last() == Some(&0) || v.last() == Some(&3))
                    && v[v.len() - 2] == *v.last().unwrap()
                {
                    v.pop();
                }
                v
            };
            for (g, w) in got.token_ids.iter().zip(&full) {
                assert_eq!(trim(g), trim(w), "{name}");
            }
        }
    }
}

#[test]
fn matching_pipeline_matches_transformers() {
    use tuwen::pipeline::blip::ImageTextMatching;
    let device = Device::flex();
    let r = read_reference("blip_reference.safetensors");
    let texts: Vec<String> = serde_json::from_value(captions_json()["texts"].clone()).unwrap();
    let m = ImageTextMatching::load_folder(&fixtures().join("blip-itm-odd"), &device).unwrap();
    let s = m.score(&photos(), &texts).unwrap();
    let flat = |v: &[Vec<f32>]| v.concat();
    let d = max_abs_diff(&flat(&s.itm_probs), &f32s(&r, "itm_probs").0);
    assert!(d < 1e-4, "ITM differs by {d}");
    let d = max_abs_diff(&flat(&s.itc_scores), &f32s(&r, "itc_scores").0);
    assert!(d < 1e-4, "ITC differs by {d}");
}

#[test]
fn a_vocab_txt_tokenizes_and_decodes_as_tokenizer_json_does() {
    use tuwen::text::{Padding, TextTokenizer};
    let r = read_reference("blip_reference.safetensors");
    let src = fixtures().join("blip-caption-odd");
    let dir = std::env::temp_dir().join(format!("tuwen-blip-vocab-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer.json")).unwrap())
            .unwrap();
    let vocab = tj["model"]["vocab"].as_object().unwrap();
    let mut words: Vec<(&String, u64)> = vocab
        .iter()
        .map(|(k, v)| (k, v.as_u64().unwrap()))
        .collect();
    words.sort_by_key(|w| w.1);
    // BLIP's layout: BERT's vocab.txt, [DEC] as an added token after it.
    let (base, dec): (Vec<_>, Vec<_>) = words.into_iter().partition(|w| w.0 != "[DEC]");
    let text: String = base.iter().map(|w| format!("{}\n", w.0)).collect();
    std::fs::write(dir.join("vocab.txt"), text).unwrap();
    std::fs::write(
        dir.join("added_tokens.json"),
        format!("{{\"[DEC]\": {}}}", dec[0].1),
    )
    .unwrap();
    std::fs::copy(
        src.join("tokenizer_config.json"),
        dir.join("tokenizer_config.json"),
    )
    .unwrap();
    let from_vocab = TextTokenizer::load(&dir, 40, Padding::Longest, Some(0)).unwrap();
    let from_json = TextTokenizer::load(&src, 40, Padding::Longest, Some(0)).unwrap();
    let texts: Vec<String> = serde_json::from_value(captions_json()["texts"].clone()).unwrap();
    let (ids, mask, _, _) = from_vocab.encode_with_mask(&texts).unwrap();
    assert_eq!(ids, i64s(&r, "texts_ids").0);
    assert_eq!(
        mask,
        i64s(&r, "texts_mask")
            .0
            .iter()
            .map(|&m| m as f32)
            .collect::<Vec<_>>()
    );
    assert_eq!(from_json.encode(&texts).unwrap().0, ids);
    assert_eq!(from_vocab.token_id("[DEC]"), Some(dec[0].1 as i64));
    let seq = [dec[0].1 as i64, 5, 14, 8, 34, 22, 3, 0];
    assert_eq!(
        from_vocab.decode(&seq).unwrap(),
        from_json.decode(&seq).unwrap()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn saved_models_keep_transformers_names_and_outputs() {
    let device = Device::flex();
    let r = read_reference("blip_reference.safetensors");
    let dir = std::env::temp_dir().join(format!("tuwen-blip-save-{}", std::process::id()));
    let names = |folder: &std::path::Path| {
        tuwen::hub::safetensors_header(&folder.join("model.safetensors")).unwrap()
    };
    // Captioning: transformers' names, plus the tied output layer written out.
    let src = fixtures().join("blip-caption-odd");
    let (model, cfg) = BlipForConditionalGeneration::load(&src, &device).unwrap();
    model.save(&cfg, &dir.join("cap")).unwrap();
    let mut want = names(&src);
    let words = want["text_decoder.bert.embeddings.word_embeddings.weight"].clone();
    let bias = want["text_decoder.cls.predictions.bias"].clone();
    want.insert("text_decoder.cls.predictions.decoder.weight".into(), words);
    want.insert("text_decoder.cls.predictions.decoder.bias".into(), bias);
    assert_eq!(names(&dir.join("cap")), want);
    let (again, cfg2) = BlipForConditionalGeneration::load(&dir.join("cap"), &device).unwrap();
    assert_eq!(cfg2, cfg);
    let image = again.vision_model.forward(pixels(&r, &device));
    let logits = again
        .text_decoder
        .forward(ids(&r, "prompt_ids", &device), None, image);
    let d = max_abs_diff(&values(logits), &f32s(&r, "decoder_logits").0);
    assert!(d < 1e-4, "reloaded logits differ by {d}");
    // Retrieval: exactly transformers' names.
    let src = fixtures().join("blip-itm-odd");
    let (model, cfg) = BlipForImageTextRetrieval::load(&src, &device).unwrap();
    model.save(&cfg, &dir.join("itm")).unwrap();
    assert_eq!(names(&dir.join("itm")), names(&src));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// python/make_blip_fixtures.py's EXTRA_DECODING: length penalty, early stopping, minimum
/// length and repetition penalty, in greedy and beam search.
#[test]
fn decoding_options_match_transformers() {
    use tuwen::generate::{Settings, generate};
    use tuwen::models::blip::Captioner;
    let device = Device::flex();
    let r = read_reference("blip_reference.safetensors");
    let (model, cfg) =
        BlipForConditionalGeneration::load(&fixtures().join("blip-caption-odd"), &device).unwrap();
    let image = model.vision_model.forward(pixels(&r, &device));
    let n = image.dims()[0];
    let t = &cfg.text_config;
    let base = Settings {
        max_new_tokens: 12,
        eos_token_id: t.sep_token_id,
        pad_token_id: t.pad_token_id,
        ..Settings::default()
    };
    let cases = [
        (
            "beam3_lp05_early",
            Settings {
                num_beams: 3,
                length_penalty: 0.5,
                early_stopping: true,
                ..base.clone()
            },
        ),
        (
            "greedy_rep15_min4",
            Settings {
                repetition_penalty: 1.5,
                min_new_tokens: 4,
                ..base.clone()
            },
        ),
        (
            "beam2_min5_rep13_lp2",
            Settings {
                num_beams: 2,
                min_new_tokens: 5,
                repetition_penalty: 1.3,
                length_penalty: 2.0,
                ..base.clone()
            },
        ),
    ];
    let captioner = Captioner { model: &model };
    for (name, settings) in cases {
        let beams = settings.num_beams;
        let idx: Vec<i64> = (0..n as i64).flat_map(|i| vec![i; beams]).collect();
        let rows_image = image
            .clone()
            .select(0, Tensor::<1, Int>::from_ints(idx.as_slice(), &device));
        let prompts = vec![vec![t.bos_token_id]; n];
        let got = generate(&captioner, captioner.start(rows_image), &prompts, &settings).unwrap();
        let (want, shape) = i64s(&r, &format!("{name}_ids"));
        assert_eq!(got, rows(&want, &shape), "{name}");
    }
}
