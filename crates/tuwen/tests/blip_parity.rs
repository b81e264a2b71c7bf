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
    use tuwen::models::blip::Captioner;
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
        }
    }
}
