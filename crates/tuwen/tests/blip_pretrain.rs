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
