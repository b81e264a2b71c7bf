//! BLIP pre-training's losses on one batch (the paper's §3.2): image-text contrast (ITC),
//! image-text matching (ITM) on hard negatives drawn from the contrastive similarities, and
//! language modelling (LM) of the captions, prompt tokens masked out, label smoothing 0.1.

use burn::prelude::*;
use burn::tensor::activation::softmax;

use crate::data::shapes::SplitMix64;
use crate::loss::{IGNORE, cross_entropy, itc_loss, lm_loss};
use crate::models::blip::BlipPretrain;
use crate::{Error, Result};

/// A tokenized batch of captions.
pub struct TextBatch {
    /// Token ids `[b, n]` ([CLS] first, [SEP] last, padding after).
    pub ids: Vec<Vec<i64>>,
    /// 1 for a token, 0 for padding, `[b][n]`.
    pub mask: Vec<Vec<f32>>,
    /// Tokens of each caption's prompt ([CLS] included) that the LM loss leaves out.
    pub prompt_len: usize,
}

/// The three losses of a batch.
pub struct BlipLosses {
    /// Image-text contrast.
    pub itc: Tensor<1>,
    /// Image-text matching (positives and one hard negative each way per pair).
    pub itm: Tensor<1>,
    /// Captioning.
    pub lm: Tensor<1>,
}

/// Draws an index from non-negative `weights` (none positive: uniform over the others).
fn draw(weights: &[f32], avoid: usize, rng: &mut SplitMix64) -> usize {
    let total: f32 = weights.iter().sum();
    if !(total > 0.0 && total.is_finite()) {
        let others: Vec<usize> = (0..weights.len()).filter(|&j| j != avoid).collect();
        return others[rng.below(others.len())];
    }
    let mut u = rng.unit() * total;
    for (j, &w) in weights.iter().enumerate() {
        u -= w;
        if u <= 0.0 && w > 0.0 {
            return j;
        }
    }
    (0..weights.len())
        .rev()
        .find(|&j| weights[j] > 0.0)
        .unwrap_or(avoid)
}

/// For each row, a hard negative: drawn with probability `softmax(sim row)` over the other
/// columns (BLIP's sampling; a column with the row's own caption is not a negative, unless
/// every column has it: then any other column).
fn hard_negatives(sim: Tensor<2>, groups: &[usize], rng: &mut SplitMix64) -> Result<Vec<usize>> {
    let [n, _] = sim.dims();
    let probs = crate::pipeline::to_vec(softmax(sim.detach(), 1))?;
    Ok((0..n)
        .map(|i| {
            let mut w: Vec<f32> = probs[i * n..(i + 1) * n].to_vec();
            for (j, x) in w.iter_mut().enumerate() {
                if groups[j] == groups[i] {
                    *x = 0.0;
                }
            }
            draw(&w, i, rng)
        })
        .collect())
}

/// BLIP's three pre-training losses on images `[b, 3, h, w]` and their captions. `groups`
/// gives equal captions one id (they are not each other's negatives); `seed` draws the hard
/// negatives; the decoder starts from `bos` ([DEC]).
pub fn pretrain_losses(
    model: &BlipPretrain,
    pixels: Tensor<4>,
    text: &TextBatch,
    groups: &[usize],
    bos: i64,
    smoothing: f64,
    seed: u64,
) -> Result<BlipLosses> {
    let b = text.ids.len();
    if b < 2 || groups.len() != b || text.mask.len() != b {
        return Err(Error::InvalidInput(
            "BLIP pre-training needs at least 2 pairs, with one group and mask per pair".into(),
        ));
    }
    let device = pixels.device();
    let n = text.ids[0].len();
    let flat: Vec<i64> = text.ids.iter().flatten().copied().collect();
    let ids = Tensor::<1, Int>::from_ints(flat.as_slice(), &device).reshape([b, n]);
    let flat: Vec<f32> = text.mask.iter().flatten().copied().collect();
    let mask = Tensor::<1>::from_floats(flat.as_slice(), &device).reshape([b, n]);

    let image = model.vision_model.forward(pixels);
    let d = image.dims()[2];
    let unit = |x: Tensor<2>| {
        let norm = x
            .clone()
            .powf_scalar(2.0)
            .sum_dim(1)
            .sqrt()
            .clamp_min(1e-12);
        x / norm
    };
    let img_feat = unit(
        model
            .vision_proj
            .forward(image.clone().slice([0..b, 0..1, 0..d]).reshape([b, d])),
    );
    let text_h = model
        .text_encoder
        .forward(ids.clone(), Some(mask.clone()), None, false);
    let dt = text_h.dims()[2];
    let txt_feat = unit(
        model
            .text_proj
            .forward(text_h.slice([0..b, 0..1, 0..dt]).reshape([b, dt])),
    );
    let temp = model.temp.val().clamp(0.001, 0.5);
    let sim = img_feat.clone().matmul(txt_feat.clone().transpose()) / temp.clone().reshape([1, 1]);
    let itc = itc_loss(img_feat, txt_feat, temp);

    // Hard negatives: a text for each image, an image for each text.
    let mut rng = SplitMix64::new(seed);
    let neg_text = hard_negatives(sim.clone(), groups, &mut rng)?;
    let neg_image = hard_negatives(sim.transpose(), groups, &mut rng)?;
    let pos: Vec<i64> = (0..b as i64).collect();
    let images: Vec<i64> = pos
        .iter()
        .copied()
        .chain(neg_image.iter().map(|&j| j as i64))
        .chain(pos.iter().copied())
        .collect();
    let texts: Vec<i64> = pos
        .iter()
        .copied()
        .chain(pos.iter().copied())
        .chain(neg_text.iter().map(|&j| j as i64))
        .collect();
    let labels: Vec<i64> = (0..3 * b).map(|i| i64::from(i < b)).collect();
    let pick = |v: &[i64]| Tensor::<1, Int>::from_ints(v, &device);
    let h = model.text_encoder.forward(
        ids.clone().select(0, pick(&texts)),
        Some(mask.clone().select(0, pick(&texts))),
        Some(image.clone().select(0, pick(&images))),
        false,
    );
    let itm_logits = model
        .itm_head
        .forward(h.slice([0..3 * b, 0..1, 0..dt]).reshape([3 * b, dt]));
    let itm = cross_entropy(itm_logits, &labels, 0.0)?;

    // Captioning: [DEC] first; padding and the prompt are not predicted.
    let dec_ids: Vec<i64> = text
        .ids
        .iter()
        .flat_map(|r| std::iter::once(bos).chain(r[1..].iter().copied()))
        .collect();
    let dec_ids = Tensor::<1, Int>::from_ints(dec_ids.as_slice(), &device).reshape([b, n]);
    let lm_labels: Vec<Vec<i64>> = text
        .ids
        .iter()
        .zip(&text.mask)
        .map(|(r, m)| {
            r.iter()
                .zip(m)
                .enumerate()
                .map(|(j, (&id, &keep))| {
                    if keep == 0.0 || j < text.prompt_len {
                        IGNORE
                    } else {
                        id
                    }
                })
                .collect()
        })
        .collect();
    // The captioner's modules are clones of the shared ones: their gradients reach them.
    let captioner = model.captioner();
    let logits = captioner.text_decoder.forward(dec_ids, Some(mask), image);
    let lm = lm_loss(logits, &lm_labels, smoothing)?;
    Ok(BlipLosses { itc, itm, lm })
}

// ---------------------------------------------------------------------------------------------
// The family on the shared trainer.

use std::path::Path;

use burn::optim::GradientsParams;
use serde_json::json;

use super::data::TrainData;
use super::engine::{self, Batch, Optim, RunConfig, RunReport, StepContext, StepOutput, TrainStep};
use crate::data::ImageProcessor;
use crate::data::processor::batch_tensor;
use crate::models::blip::{BlipConfig, BlipForConditionalGeneration, BlipForImageTextRetrieval};
use crate::text::TextTokenizer;

/// The file beside the two saved models that holds the contrastive temperature.
pub const TEMP_FILE: &str = "blip_temperature.json";

/// How to pre-train BLIP: the engine's run settings and BLIP's own.
#[derive(Clone, Debug)]
pub struct BlipTrainConfig {
    /// Steps, batch size, warmup, clipping, seed, augmentation, checkpoints, metrics, stop.
    pub run: RunConfig,
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW weight decay (BLIP: 0.05).
    pub weight_decay: f64,
    /// Label smoothing of the captioning loss (BLIP: 0.1).
    pub label_smoothing: f64,
    /// Text before every caption that the captioning loss does not predict (BLIP:
    /// "a picture of ").
    pub prompt: String,
}

impl Default for BlipTrainConfig {
    fn default() -> Self {
        BlipTrainConfig {
            run: RunConfig {
                steps: 500,
                batch_size: 32,
                warmup: 50,
                max_grad_norm: 1.0,
                checkpoint_every: 100,
                ..RunConfig::default()
            },
            lr: 1e-4,
            weight_decay: 0.05,
            label_smoothing: 0.1,
            prompt: "a picture of ".into(),
        }
    }
}

/// BLIP's step: the three losses on one batch, summed, one optimiser over everything.
struct BlipFamily<'a> {
    config: &'a BlipConfig,
    processor: &'a ImageProcessor,
    tokenizer: &'a TextTokenizer,
    cfg: &'a BlipTrainConfig,
    prompt_len: usize,
    tokenizer_from: Option<&'a Path>,
}

impl TrainStep for BlipFamily<'_> {
    type Models = BlipPretrain;

    fn settings(&self) -> serde_json::Value {
        let (c, r) = (self.cfg, &self.cfg.run);
        json!({"steps": r.steps, "batch_size": r.batch_size, "lr": c.lr, "warmup": r.warmup,
            "weight_decay": c.weight_decay, "max_grad_norm": r.max_grad_norm,
            "label_smoothing": c.label_smoothing, "prompt": c.prompt,
            "crop_scale": r.augment.min_scale, "hflip": r.augment.hflip})
    }

    fn optimizers(&self, model: &BlipPretrain) -> Vec<Optim> {
        vec![Optim::new(
            "model",
            super::adamw(model, self.cfg.weight_decay),
            self.cfg.lr,
        )]
    }

    fn device(&self, model: &BlipPretrain) -> Device {
        model.temp.val().device()
    }

    fn processor(&self) -> &ImageProcessor {
        self.processor
    }

    fn device_draws(&self, _model: &BlipPretrain) -> bool {
        let t = &self.config.text_config;
        t.hidden_dropout_prob > 0.0
            || t.attention_probs_dropout_prob > 0.0
            || self.config.vision_config.attention_dropout > 0.0
    }

    fn min_batch(&self) -> usize {
        2
    }

    fn step(
        &mut self,
        model: BlipPretrain,
        batch: Batch,
        ctx: &mut StepContext,
    ) -> Result<(BlipPretrain, StepOutput)> {
        let captions: Vec<String> = batch
            .texts
            .iter()
            .map(|c| format!("{}{c}", self.cfg.prompt))
            .collect();
        let groups = crate::loss::text_groups(&batch.texts);
        let (ids, mask, rows, cols) = self.tokenizer.encode_with_mask(&captions)?;
        let text = TextBatch {
            ids: ids.chunks(cols).map(<[i64]>::to_vec).collect(),
            mask: mask.chunks(cols).map(<[f32]>::to_vec).collect(),
            prompt_len: self.prompt_len,
        };
        debug_assert_eq!(rows, captions.len());
        let pixels = batch_tensor(batch.images, ctx.device)?;
        let l = pretrain_losses(
            &model,
            pixels,
            &text,
            &groups,
            self.config.text_config.bos_token_id,
            self.cfg.label_smoothing,
            ctx.seed(0),
        )?;
        let scalar = |t: &Tensor<1>| -> f32 { t.clone().into_scalar() };
        let (itc, itm, lm) = (scalar(&l.itc), scalar(&l.itm), scalar(&l.lm));
        let total = l.itc + l.itm + l.lm;
        let grads = GradientsParams::from_grads(total.backward(), &model);
        let model = ctx.update("model", model, grads)?;
        let mut out = StepOutput::loss(itc + itm + lm);
        for (k, v) in [("itc", itc), ("itm", itm), ("lm", lm)] {
            out.metrics.insert(k.into(), json!(v));
        }
        Ok((model, out))
    }

    fn save(&self, model: &BlipPretrain, dir: &Path) -> Result<()> {
        save_pretrain(model, self.config, self.processor, self.tokenizer_from, dir)
    }
}

/// Writes `dir/captioning` and `dir/retrieval` (transformers checkpoints with the
/// preprocessing, and the tokenizer files of `tokenizer_from` when given) and the temperature.
pub fn save_pretrain(
    model: &BlipPretrain,
    config: &BlipConfig,
    processor: &ImageProcessor,
    tokenizer_from: Option<&Path>,
    dir: &Path,
) -> Result<()> {
    let plain = model.valid();
    plain.save(config, dir)?;
    for sub in ["captioning", "retrieval"] {
        let to = dir.join(sub);
        processor.save(&to)?;
        if let Some(src) = tokenizer_from {
            for name in crate::hub::SIDE_FILES {
                let from = src.join(name);
                if from.is_file() && *name != "preprocessor_config.json" {
                    let bytes = std::fs::read(&from).map_err(|e| Error::io(&from, e))?;
                    crate::hub::write_atomic(&to.join(name), &bytes)?;
                }
            }
        }
    }
    let temp: f32 = plain.temp.val().into_scalar();
    crate::hub::write_atomic(
        &dir.join(TEMP_FILE),
        json!({ "temp": temp }).to_string().as_bytes(),
    )
}

/// Loads what [`save_pretrain`] wrote.
pub fn load_pretrain(dir: &Path, device: &Device) -> Result<(BlipPretrain, BlipConfig)> {
    let (retrieval, config) = BlipForImageTextRetrieval::load(&dir.join("retrieval"), device)?;
    let (captioner, _) = BlipForConditionalGeneration::load(&dir.join("captioning"), device)?;
    let temp_path = dir.join(TEMP_FILE);
    let temp = if temp_path.exists() {
        crate::hub::read_json(&temp_path)?["temp"]
            .as_f64()
            .unwrap_or(0.07) as f32
    } else {
        0.07
    };
    Ok((BlipPretrain::from_parts(retrieval, captioner, temp), config))
}

/// Pre-trains `model` (on an autodiff device) on captioned images; the run is the shared
/// engine's (checkpoints, resume, metrics, Ctrl-C). Checkpoints carry the tokenizer files of
/// `tokenizer_from`.
#[allow(clippy::too_many_arguments)]
pub fn train<'a>(
    model: BlipPretrain,
    config: &BlipConfig,
    processor: &ImageProcessor,
    tokenizer: &TextTokenizer,
    tokenizer_from: Option<&Path>,
    data: impl Into<TrainData<'a>>,
    cfg: &BlipTrainConfig,
    mut on_step: impl FnMut(&engine::StepReport) -> bool,
) -> Result<(BlipPretrain, RunReport)> {
    if cfg.run.batch_size < 2 {
        return Err(Error::InvalidInput(
            "--batch-size must be at least 2 (the pairs are each other's negatives)".into(),
        ));
    }
    // The prompt's tokens: [CLS] and the prompt's words (its final [SEP] is not part of it).
    let prompt_len = if cfg.prompt.trim().is_empty() {
        1
    } else {
        tokenizer.encode(&[cfg.prompt.trim().to_string()])?.2 - 1
    };
    let mut family = BlipFamily {
        config,
        processor,
        tokenizer,
        cfg,
        prompt_len,
        tokenizer_from,
    };
    let model = super::stable_param_ids(model);
    engine::run(&mut family, model, data, &cfg.run, |s, _| on_step(s))
}

// ---------------------------------------------------------------------------------------------
// From scratch.

/// The architecture names [`init_arch`] knows.
pub const ARCHS: &[&str] = &["tiny", "small", "base"];

/// A new BLIP of a named size, with a word-level tokenizer learnt from `captions` (BERT's
/// specials and `[DEC]`), written into `folder` (tokenizer and preprocessing files) and
/// initialised from `seed`. `tiny` (32 px) and `small` (64 px) train on a laptop; `base` is
/// the paper's ViT-B/16 at 384 px with BERT-base.
pub fn init_arch(
    name: &str,
    image_size: Option<usize>,
    captions: &[String],
    folder: &Path,
    seed: u64,
    device: &Device,
) -> Result<(BlipPretrain, BlipConfig)> {
    use crate::models::blip::{BlipTextConfig, BlipVisionConfig};
    // (hidden, layers, heads, mlp, patch or positions, default size)
    let (v, t, e, size) = match name {
        "tiny" => ((64, 3, 4, 256, 8), (64, 2, 4, 256, 40), 64, 32),
        "small" => ((192, 6, 3, 768, 16), (192, 4, 4, 768, 64), 128, 64),
        "base" => ((768, 12, 12, 3072, 16), (768, 12, 12, 3072, 512), 256, 384),
        other => {
            return Err(Error::InvalidInput(format!(
                "unknown --arch {other:?} (known: {})",
                ARCHS.join(", ")
            )));
        }
    };
    let size = image_size.unwrap_or(size);
    if size < v.4 || !size.is_multiple_of(v.4) {
        return Err(Error::InvalidInput(format!(
            "--image-size {size} must be a multiple of the patch size {}",
            v.4
        )));
    }
    let tok = crate::text::train_bert_word_tokenizer(captions, 30_000)?;
    let id = |t: &str| tok.token_to_id(t).map(i64::from).expect("special token");
    let config = BlipConfig {
        vision_config: BlipVisionConfig {
            hidden_size: v.0,
            num_hidden_layers: v.1,
            num_attention_heads: v.2,
            intermediate_size: v.3,
            patch_size: v.4,
            image_size: size,
            ..BlipVisionConfig::default()
        },
        text_config: BlipTextConfig {
            vocab_size: tok.get_vocab_size(true),
            hidden_size: t.0,
            encoder_hidden_size: v.0,
            num_hidden_layers: t.1,
            num_attention_heads: t.2,
            intermediate_size: t.3,
            max_position_embeddings: t.4,
            bos_token_id: id("[DEC]"),
            eos_token_id: id("[SEP]"),
            sep_token_id: id("[SEP]"),
            pad_token_id: id("[PAD]"),
            ..BlipTextConfig::default()
        },
        image_text_hidden_size: e,
        ..BlipConfig::default()
    };
    config
        .validate()
        .map_err(|m| Error::InvalidInput(format!("--arch {name}: {m}")))?;
    std::fs::create_dir_all(folder).map_err(|e| Error::io(folder, e))?;
    let json = tok
        .to_string(true)
        .map_err(|e| Error::InvalidInput(format!("cannot serialise the tokenizer: {e}")))?;
    crate::hub::write_atomic(&folder.join("tokenizer.json"), json.as_bytes())?;
    let tcfg = json!({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": t.4,
        "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
        "mask_token": "[MASK]", "bos_token": "[DEC]"});
    crate::hub::write_atomic(
        &folder.join("tokenizer_config.json"),
        tcfg.to_string().as_bytes(),
    )?;
    let pcfg = json!({"image_processor_type": "BlipImageProcessor",
        "size": {"height": size, "width": size}});
    crate::hub::write_atomic(
        &folder.join("preprocessor_config.json"),
        pcfg.to_string().as_bytes(),
    )?;
    let model = engine::init_seeded(device, seed, |d| BlipPretrain::new(&config, d));
    Ok((model, config))
}
