//! BLIP's pre-training model: one text side shared by the matching encoder and the caption
//! decoder (all but self-attention), saved as both transformers models, and its losses.

mod common;

use burn::prelude::*;
use common::*;
use tuwen::burn;
use tuwen::models::blip::{BlipForConditionalGeneration, BlipForImageTextRetrieval, BlipPretrain};
use tuwen::train::blip::{TextBatch, pretrain_losses};
use tuwen::train::named_grads;

fn scalar(t: Tensor<1>) -> f32 {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()[0]
}

#[test]
fn pretraining_model_shares_the_text_side_and_saves_both_models() {
    let device = Device::flex().autodiff();
    let r = read_reference("blip_reference.safetensors");
    let g = read_reference("blip_grads.safetensors");
    let (itm, cfg) =
        BlipForImageTextRetrieval::load(&fixtures().join("blip-itm-odd"), &device).unwrap();
    let (cap, _) =
        BlipForConditionalGeneration::load(&fixtures().join("blip-caption-odd"), &device).unwrap();
    let model = BlipPretrain::from_parts(itm, cap, 0.07);

    let (v, s) = f32s(&r, "pixel_values");
    let pixels = Tensor::<1>::from_floats(v.as_slice(), &device).reshape([s[0], s[1], s[2], s[3]]);
    let (ids, shape) = i64s(&r, "texts_ids");
    let (mask, _) = i64s(&r, "texts_mask");
    let text = TextBatch {
        ids: ids.chunks(shape[1]).map(<[i64]>::to_vec).collect(),
        mask: mask
            .chunks(shape[1])
            .map(|m| m.iter().map(|&x| x as f32).collect())
            .collect(),
        prompt_len: 1,
    };
    let bos = cfg.text_config.bos_token_id;
    let losses = pretrain_losses(&model, pixels.clone(), &text, &[0, 1, 2], bos, 0.1, 7).unwrap();
    // ITC is the retrieval model's contrast at temperature 0.07: PyTorch's value.
    let want = f32s(&g, "itc/loss").0[0];
    let itc = scalar(losses.itc.clone());
    assert!((itc - want).abs() < 1e-4 * want, "ITC {itc} vs {want}");
    let (itm, lm) = (scalar(losses.itm.clone()), scalar(losses.lm.clone()));
    assert!(
        itm.is_finite() && itm > 0.0 && lm.is_finite() && lm > 0.0,
        "{itm} {lm}"
    );

    // One backward through all three: the shared embeddings hear from the decoder too, and
    // the decoder's own self-attention, head and temperature all get gradients.
    let total = losses.itc + losses.itm + losses.lm.clone();
    let grads = named_grads(&model, &total.backward());
    for name in [
        "text_encoder.embeddings.word_embeddings.weight",
        "decoder_self_attention.0.attn.query.weight",
        "cls.predictions.bias",
        "itm_head.weight",
        "temp",
        "vision_model.embeddings.patch_embedding.weight",
    ] {
        let (v, _) = grads
            .get(name)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert!(v.iter().any(|x| *x != 0.0), "{name}: zero gradient");
    }

    // Saved as both transformers models, each loads back with the same outputs.
    let dir = std::env::temp_dir().join(format!("tuwen-blip-pretrain-{}", std::process::id()));
    let plain = model.valid();
    plain.save(&cfg, &dir).unwrap();
    let cpu = Device::flex();
    let (retrieval, _) = BlipForImageTextRetrieval::load(&dir.join("retrieval"), &cpu).unwrap();
    let (captioner, _) = BlipForConditionalGeneration::load(&dir.join("captioning"), &cpu).unwrap();
    let pixels = pixels.inner();
    let ids_t = Tensor::<1, Int>::from_ints(ids.as_slice(), &cpu).reshape([shape[0], shape[1]]);
    let logits = |m: &BlipForConditionalGeneration| {
        let image = m.vision_model.forward(pixels.clone());
        m.text_decoder
            .forward(ids_t.clone(), None, image)
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    };
    let d = max_abs_diff(&logits(&captioner), &logits(&plain.captioner()));
    assert!(d < 1e-5, "saved captioner differs by {d}");
    let feats = |m: &BlipForImageTextRetrieval| {
        let image = m.vision_model.forward(pixels.clone());
        m.image_features(image)
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    };
    let d = max_abs_diff(&feats(&retrieval), &feats(&plain.retrieval()));
    assert!(d < 1e-5, "saved retrieval model differs by {d}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pretraining_lowers_all_three_losses_and_saves_usable_models() {
    use tuwen::data::captions::Sample;
    use tuwen::generate::Settings;
    use tuwen::pipeline::blip::ImageCaptioning;
    use tuwen::text::{Padding, TextTokenizer};
    use tuwen::train::blip::{BlipTrainConfig, load_pretrain, train};
    let device = Device::flex().autodiff();
    let cap_dir = fixtures().join("blip-caption-odd");
    let (itm, cfg) =
        BlipForImageTextRetrieval::load(&fixtures().join("blip-itm-odd"), &device).unwrap();
    let (cap, _) = BlipForConditionalGeneration::load(&cap_dir, &device).unwrap();
    let model = BlipPretrain::from_parts(itm, cap, 0.07);
    let processor = tuwen::pipeline::image_processor(&cap_dir, "BlipImageProcessor").unwrap();
    let tokenizer = TextTokenizer::load(&cap_dir, 40, Padding::Longest, Some(0)).unwrap();
    // Six photos, each with its own caption from the fixture's words.
    let pairs = [
        ("astronaut.png", "an astronaut in space"),
        ("coffee.bmp", "a cup of coffee"),
        ("camera_gray.png", "a black camera"),
        ("rocket.webp", "a red rocket in the sky"),
        ("chelsea.jpg", "a small cat"),
        ("hubble.gif", "space"),
    ];
    let samples: Vec<Sample> = pairs
        .iter()
        .map(|(f, c)| Sample {
            image: fixtures().join("images").join(f),
            caption: c.to_string(),
            extra: Default::default(),
        })
        .collect();
    let out = std::env::temp_dir().join(format!("tuwen-blip-train-{}", std::process::id()));
    let defaults = BlipTrainConfig::default();
    let cfg_run = BlipTrainConfig {
        run: tuwen::train::RunConfig {
            steps: 40,
            batch_size: 6,
            warmup: 5,
            checkpoint_every: 0,
            checkpoint_dir: Some(out.join("checkpoint")),
            ..defaults.run.clone()
        },
        lr: 1e-3,
        ..defaults
    };
    let mut parts: Vec<(f64, f64, f64)> = Vec::new();
    let (model, report) = train(
        model,
        &cfg,
        &processor,
        &tokenizer,
        Some(&cap_dir),
        tuwen::train::data::TrainData::Samples(&samples),
        &cfg_run,
        |s| {
            let m = &s.metrics;
            parts.push((
                m["itc"].as_f64().unwrap(),
                m["itm"].as_f64().unwrap(),
                m["lm"].as_f64().unwrap(),
            ));
            true
        },
    )
    .unwrap();
    assert_eq!(report.losses.len(), 40);
    let mean = |v: &[(f64, f64, f64)], k: usize| {
        v.iter().map(|p| [p.0, p.1, p.2][k]).sum::<f64>() / v.len() as f64
    };
    for (k, name) in ["itc", "itm", "lm"].iter().enumerate() {
        let (first, last) = (mean(&parts[..5], k), mean(&parts[35..], k));
        assert!(last < 0.8 * first, "{name}: {first:.3} -> {last:.3}");
    }
    // The checkpoint holds both transformers models, with preprocessing and tokenizer; it
    // loads back for more training, and its captioner captions.
    let ckpt = tuwen::train::checkpoint::find(&out.join("checkpoint")).unwrap();
    let (again, _) = load_pretrain(&ckpt, &Device::flex()).unwrap();
    let temp_before: f32 = model.temp.val().into_scalar();
    let temp_after: f32 = again.temp.val().into_scalar();
    assert!((temp_before - temp_after).abs() < 1e-6);
    let captioner =
        ImageCaptioning::load_folder(&ckpt.join("captioning"), &Device::flex()).unwrap();
    let settings = Settings {
        max_new_tokens: 8,
        ..Settings::default()
    };
    let c = captioner
        .caption(
            &[fixtures().join("images/astronaut.png")],
            Some("a picture of"),
            &settings,
            1,
        )
        .unwrap();
    eprintln!("after training: {:?}", c.captions);
    assert!(c.captions[0].starts_with("a picture of"));
    std::fs::remove_dir_all(&out).unwrap();
}
