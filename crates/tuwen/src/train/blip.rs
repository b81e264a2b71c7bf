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
/// columns (BLIP's sampling; a column with the row's own caption is not a negative).
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
    if groups.iter().all(|&g| g == groups[0]) {
        return Err(Error::InvalidInput(
            "every caption of the batch is the same: no negatives to learn from".into(),
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
