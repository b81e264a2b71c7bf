//! Contrastive losses for image-text training.
//!
//! - [`clip_loss`]: CLIP's symmetric softmax cross-entropy over the in-batch similarity matrix.
//! - [`siglip_loss`]: SigLIP's pairwise sigmoid loss: every image-text pair is an independent
//!   binary decision, positive on the diagonal.
//! - [`siglip_loss_chunked`]: the same loss computed as the paper's §3.1 does it across D
//!   devices: device d holds B/D pairs; in D steps it scores its images against one block of
//!   texts at a time while text blocks pass around a ring, so no step needs the B x B matrix.
//!
//! - [`lm_loss`], [`itc_loss`], [`cross_entropy`]: BLIP's language-modelling loss (label
//!   smoothing, ignored positions), image-text contrast with a temperature, and the plain
//!   cross-entropy its matching head trains with.
//!
//! - [`discriminator_loss`], [`generator_loss`], [`gradient_penalty`], [`r1_penalty`]: the
//!   GAN objectives (minimax, non-saturating, hinge, Wasserstein) and the Lipschitz penalties.
//!
//! The `_grouped` forms take a group id per pair ([`text_groups`]: equal captions share one)
//! and count every pair of one group as positive, not the diagonal alone: with one caption
//! template per class, an image's row no longer scores copies of its own caption as negatives.
//! Ids `0..n` give the standard losses.

use std::collections::HashMap;

use burn::prelude::*;
use burn::tensor::activation::{log_sigmoid, log_softmax, sigmoid};

use crate::{Error, Result};

/// The largest logit scale CLIP trains with (`exp(logit_scale)` is clamped here).
pub const MAX_LOGIT_SCALE: f64 = 100.0;

/// A group id per caption: equal strings share one, ids numbered in order of first occurrence.
pub fn text_groups(captions: &[String]) -> Vec<usize> {
    let mut ids: HashMap<&str, usize> = HashMap::new();
    captions
        .iter()
        .map(|c| {
            let next = ids.len();
            *ids.entry(c.as_str()).or_insert(next)
        })
        .collect()
}

/// The group ids `0..n`: every pair its own group, positive on the diagonal alone.
fn identity_groups(n: usize) -> Vec<usize> {
    (0..n).collect()
}

/// The batch size of paired embeddings `[n, d]` with `n` group ids, or why they do not pair up.
fn check_batch(
    image_embeds: &Tensor<2>,
    text_embeds: &Tensor<2>,
    groups: &[usize],
) -> Result<usize> {
    let (img, txt) = (image_embeds.dims(), text_embeds.dims());
    if img != txt {
        return Err(Error::InvalidInput(format!(
            "image embeddings {img:?} and text embeddings {txt:?} differ in shape"
        )));
    }
    let n = img[0];
    if n == 0 {
        return Err(Error::InvalidInput("empty batch".into()));
    }
    if groups.len() != n {
        return Err(Error::InvalidInput(format!(
            "{} group ids for a batch of {n} pairs",
            groups.len()
        )));
    }
    Ok(n)
}

/// `[rows, cols]` labels `z`: +1 where the group ids agree, -1 elsewhere.
fn sign_labels(rows: &[usize], cols: &[usize], device: &Device) -> Tensor<2> {
    let values: Vec<f32> = rows
        .iter()
        .flat_map(|r| cols.iter().map(move |c| if r == c { 1.0 } else { -1.0 }))
        .collect();
    Tensor::from_data(TensorData::new(values, [rows.len(), cols.len()]), device)
}

/// `[rows, cols]` weights of the sigmoid loss's terms: `1 / c` for each positive of a row
/// whose group has `c` members in the whole batch (`all`), 1 for negatives. A row's positives
/// thus weigh what its one positive weighs in the standard loss, which keeps the balance of
/// positives and negatives that SigLIP's initial bias (-10) is set for.
fn positive_weights(rows: &[usize], cols: &[usize], all: &[usize], device: &Device) -> Tensor<2> {
    let mut sizes: HashMap<usize, usize> = HashMap::new();
    for g in all {
        *sizes.entry(*g).or_default() += 1;
    }
    let values: Vec<f32> = rows
        .iter()
        .flat_map(|r| {
            let w = 1.0 / sizes.get(r).copied().unwrap_or(1) as f32;
            cols.iter().map(move |c| if r == c { w } else { 1.0 })
        })
        .collect();
    Tensor::from_data(TensorData::new(values, [rows.len(), cols.len()]), device)
}

/// `[n, n]` target distributions: row i is uniform over the pairs of i's group. The matrix is
/// symmetric (a group's members share its size), so it serves both directions.
fn soft_targets(groups: &[usize], device: &Device) -> Tensor<2> {
    let n = groups.len();
    let mut values = vec![0f32; n * n];
    for (row, g) in values.chunks_mut(n.max(1)).zip(groups) {
        let size = groups.iter().filter(|h| *h == g).count() as f32;
        for (v, h) in row.iter_mut().zip(groups) {
            if h == g {
                *v = 1.0 / size;
            }
        }
    }
    Tensor::from_data(TensorData::new(values, [n, n]), device)
}

/// Mean over rows of the cross-entropy of `logits` `[n, n]` against `targets` (rows summing
/// to 1); the identity as `targets` is the usual cross-entropy with the diagonal as classes.
fn soft_cross_entropy(logits: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    let [n, _] = logits.dims();
    -(log_softmax(logits, 1) * targets).sum() / n as f64
}

/// CLIP's loss: `(CE(image -> text) + CE(text -> image)) / 2` on `scale * cos`, with
/// `scale = min(exp(logit_scale), 100)`. Embeddings must be unit length, `[n, d]` each, row i
/// of one matching row i of the other.
pub fn clip_loss(
    image_embeds: Tensor<2>,
    text_embeds: Tensor<2>,
    logit_scale: Tensor<1>,
) -> Tensor<1> {
    let n = image_embeds.dims()[0];
    clip_loss_of_groups(image_embeds, text_embeds, logit_scale, &identity_groups(n))
}

/// [`clip_loss`] with several positives per row: image i's target over the texts is uniform
/// over the texts of its group (`1[g_i = g_j] / |group of i|`), and likewise text j's over
/// the images. `groups` holds one id per pair (see [`text_groups`]); ids `0..n` give
/// [`clip_loss`]. Errors when the embeddings' shapes differ, the batch is empty or `groups`
/// is not one id per pair.
///
/// Where duplicates share one text embedding (one caption through one text tower), this is
/// [`clip_loss`] in value and in every gradient that reaches the towers: identical texts have
/// equal logits, so averaging their log-probabilities changes nothing. It differs where their
/// embeddings differ (text dropout); [`siglip_loss_grouped`] differs either way.
pub fn clip_loss_grouped(
    image_embeds: Tensor<2>,
    text_embeds: Tensor<2>,
    logit_scale: Tensor<1>,
    groups: &[usize],
) -> Result<Tensor<1>> {
    check_batch(&image_embeds, &text_embeds, groups)?;
    Ok(clip_loss_of_groups(
        image_embeds,
        text_embeds,
        logit_scale,
        groups,
    ))
}

/// [`clip_loss_grouped`] on a checked batch.
fn clip_loss_of_groups(
    image_embeds: Tensor<2>,
    text_embeds: Tensor<2>,
    logit_scale: Tensor<1>,
    groups: &[usize],
) -> Tensor<1> {
    let scale = logit_scale
        .exp()
        .clamp_max(MAX_LOGIT_SCALE)
        .unsqueeze::<2>();
    let logits_per_image = image_embeds.matmul(text_embeds.transpose()) * scale;
    let targets = soft_targets(groups, &logits_per_image.device());
    let per_text = soft_cross_entropy(logits_per_image.clone().transpose(), targets.clone());
    (soft_cross_entropy(logits_per_image, targets) + per_text) / 2.0
}

/// The sum over one block of `-log sigmoid(z * (scale * <x, y> + bias))` with labels `z`.
fn sigmoid_block(
    images: Tensor<2>,
    texts: Tensor<2>,
    scale: Tensor<2>,
    bias: Tensor<2>,
    labels: Tensor<2>,
    weights: Tensor<2>,
) -> Tensor<1> {
    let logits = images.matmul(texts.transpose()) * scale + bias;
    // Rows first: one f32 sum over B x B terms of very different sizes loses the small ones.
    -(log_sigmoid(logits * labels) * weights).sum_dim(1).sum()
}

/// SigLIP's loss: `-(1/n) sum_ij log sigmoid(z_ij (exp(t) <x_i, y_j> + b))`, `z_ij = 1` when
/// i = j and -1 otherwise. `logit_scale` is `t` (log of the scale), `logit_bias` is `b`.
pub fn siglip_loss(
    image_embeds: Tensor<2>,
    text_embeds: Tensor<2>,
    logit_scale: Tensor<1>,
    logit_bias: Tensor<1>,
) -> Tensor<1> {
    let n = image_embeds.dims()[0];
    siglip_loss_of_groups(
        image_embeds,
        text_embeds,
        logit_scale,
        logit_bias,
        &identity_groups(n),
    )
}

/// [`siglip_loss`] with `z_ij = 1` when pairs i and j share a group, -1 otherwise, each of the
/// `c` positives of a row weighted `1 / c` (so a row's positives weigh one, as in the standard
/// loss, and the balance SigLIP's initial bias of -10 is set for holds); ids `0..n`
/// give [`siglip_loss`]. Errors as [`clip_loss_grouped`] does.
pub fn siglip_loss_grouped(
    image_embeds: Tensor<2>,
    text_embeds: Tensor<2>,
    logit_scale: Tensor<1>,
    logit_bias: Tensor<1>,
    groups: &[usize],
) -> Result<Tensor<1>> {
    check_batch(&image_embeds, &text_embeds, groups)?;
    Ok(siglip_loss_of_groups(
        image_embeds,
        text_embeds,
        logit_scale,
        logit_bias,
        groups,
    ))
}

/// [`siglip_loss_grouped`] on a checked batch.
fn siglip_loss_of_groups(
    image_embeds: Tensor<2>,
    text_embeds: Tensor<2>,
    logit_scale: Tensor<1>,
    logit_bias: Tensor<1>,
    groups: &[usize],
) -> Tensor<1> {
    let n = image_embeds.dims()[0];
    let scale = logit_scale.exp().unsqueeze::<2>();
    let device = image_embeds.device();
    let labels = sign_labels(groups, groups, &device);
    let weights = positive_weights(groups, groups, groups, &device);
    sigmoid_block(
        image_embeds,
        text_embeds,
        scale,
        logit_bias.unsqueeze::<2>(),
        labels,
        weights,
    ) / n as f64
}

/// [`siglip_loss`] as `devices` devices compute it: the batch splits into `devices` shards;
/// in step k, device d scores its images against the text shard of device `(d + k) mod D`,
/// received around the ring. Shard d holds pairs `d n / D .. (d + 1) n / D`: `n / D` each when
/// D divides the batch size n, sizes one apart otherwise. `devices` is taken into `1..=n`; an
/// empty batch gives NaN, as [`siglip_loss`] does.
///
/// Only one `B/D x B/D` block of logits exists at a time, in the backward pass too: each
/// block's contribution to the gradients of the embeddings, the temperature and the bias is
/// worked out as the block is scored (the loss's derivative in a logit is
/// `-z sigmoid(-z l) / B`), and the returned tensor carries those gradients into the graph
/// through `sum(x * dL/dx) + sum(y * dL/dy) + t dL/dt + b dL/db`, whose value is replaced by
/// the loss. So peak memory falls with D, as it does across devices.
pub fn siglip_loss_chunked(
    image_embeds: Tensor<2>,
    text_embeds: Tensor<2>,
    logit_scale: Tensor<1>,
    logit_bias: Tensor<1>,
    devices: usize,
) -> Tensor<1> {
    let n = image_embeds.dims()[0];
    if n == 0 {
        // No shards to split: the dense loss of the empty batch.
        return siglip_loss(image_embeds, text_embeds, logit_scale, logit_bias);
    }
    siglip_loss_chunked_of_groups(
        image_embeds,
        text_embeds,
        logit_scale,
        logit_bias,
        devices.clamp(1, n),
        &identity_groups(n),
    )
}

/// [`siglip_loss_chunked`] with the labels of [`siglip_loss_grouped`]: block (d, e) takes
/// them from the group ids of shard d's images against those of shard e's texts. Errors as
/// [`clip_loss_grouped`] does, and when `devices` is not in `1..=n`.
pub fn siglip_loss_chunked_grouped(
    image_embeds: Tensor<2>,
    text_embeds: Tensor<2>,
    logit_scale: Tensor<1>,
    logit_bias: Tensor<1>,
    devices: usize,
    groups: &[usize],
) -> Result<Tensor<1>> {
    let n = check_batch(&image_embeds, &text_embeds, groups)?;
    if devices == 0 || devices > n {
        return Err(Error::InvalidInput(format!(
            "{devices} devices for a batch of {n} pairs: need 1 to {n}"
        )));
    }
    Ok(siglip_loss_chunked_of_groups(
        image_embeds,
        text_embeds,
        logit_scale,
        logit_bias,
        devices,
        groups,
    ))
}

/// [`siglip_loss_chunked_grouped`] on a checked batch, `devices` in `1..=n`.
fn siglip_loss_chunked_of_groups(
    image_embeds: Tensor<2>,
    text_embeds: Tensor<2>,
    logit_scale: Tensor<1>,
    logit_bias: Tensor<1>,
    devices: usize,
    groups: &[usize],
) -> Tensor<1> {
    let n = image_embeds.dims()[0];
    let shards: Vec<(usize, usize)> = (0..devices)
        .map(|d| (d * n / devices, (d + 1) * n / devices))
        .collect();
    // The blocks are worked out off the autodiff graph, on the plain backend.
    let autodiff = image_embeds.device().is_autodiff();
    let scale = plain(logit_scale.clone(), autodiff).exp().unsqueeze::<2>();
    let bias = plain(logit_bias.clone(), autodiff).unsqueeze::<2>();
    let split = |t: &Tensor<2>| -> Vec<Tensor<2>> {
        let t = plain(t.clone(), autodiff);
        shards.iter().map(|&(a, b)| t.clone().slice(a..b)).collect()
    };
    let (images, texts) = (split(&image_embeds), split(&text_embeds));
    let device = images[0].device();
    let mut grad_images: Vec<Option<Tensor<2>>> = vec![None; devices];
    let mut grad_texts: Vec<Option<Tensor<2>>> = vec![None; devices];
    let mut loss = Tensor::<1>::zeros([1], &device);
    let mut grad_scale = Tensor::<1>::zeros([1], &device);
    let mut grad_bias = Tensor::<1>::zeros([1], &device);
    let add = |acc: &mut Option<Tensor<2>>, g: Tensor<2>| {
        *acc = Some(match acc.take() {
            Some(a) => a + g,
            None => g,
        });
    };
    for (d, img) in images.iter().enumerate() {
        let (a, b) = shards[d];
        for k in 0..devices {
            let e = (d + k) % devices;
            let (c, f) = shards[e];
            let cos = img.clone().matmul(texts[e].clone().transpose());
            let logits = cos.clone() * scale.clone() + bias.clone();
            let labels = sign_labels(&groups[a..b], &groups[c..f], &device);
            let weights = positive_weights(&groups[a..b], &groups[c..f], groups, &device);
            let signed = logits * labels.clone();
            loss = loss
                - (log_sigmoid(signed.clone()) * weights.clone())
                    .sum_dim(1)
                    .sum()
                    .reshape([1]);
            // dL/dlogits of this block.
            let g = -(weights * labels * sigmoid(-signed)) / n as f64;
            grad_scale = grad_scale + (g.clone() * cos).sum();
            grad_bias = grad_bias + g.clone().sum();
            add(
                &mut grad_images[d],
                g.clone().matmul(texts[e].clone()) * scale.clone(),
            );
            add(
                &mut grad_texts[e],
                g.transpose().matmul(img.clone()) * scale.clone(),
            );
        }
    }
    // The gradients go back to the autodiff backend as constants.
    let cat = |parts: Vec<Option<Tensor<2>>>| {
        let whole = Tensor::cat(
            parts
                .into_iter()
                .map(|p| p.expect("every block scored"))
                .collect(),
            0,
        );
        lift(whole, autodiff)
    };
    // d/dt of scale = exp(t) is the scale itself.
    let grad_t = lift(grad_scale * scale.reshape([1]), autodiff);
    let (grad_bias, loss) = (lift(grad_bias, autodiff), lift(loss, autodiff));
    let surrogate = (image_embeds * cat(grad_images)).sum()
        + (text_embeds * cat(grad_texts)).sum()
        + logit_scale * grad_t
        + logit_bias * grad_bias;
    surrogate.clone() - surrogate.detach() + loss / n as f64
}

/// The values of `t`, off the autodiff graph (on the plain backend when `autodiff`).
fn plain<const D: usize>(t: Tensor<D>, autodiff: bool) -> Tensor<D> {
    if autodiff { t.detach().inner() } else { t }
}

/// A plain tensor back on the autodiff backend (as a constant) when `autodiff`.
fn lift<const D: usize>(t: Tensor<D>, autodiff: bool) -> Tensor<D> {
    if autodiff { Tensor::from_inner(t) } else { t }
}

/// The token id that a cross-entropy target ignores (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// Cross-entropy of `logits` `[n, classes]` against `targets` (one class id per row, or
/// [`IGNORE`]), with PyTorch's label smoothing ε: each counted row's loss is
/// `(1 - ε) · (-log p_target) + ε · mean_c(-log p_c)`, averaged over the counted rows.
/// Errors when no row is counted or a target is out of range.
pub fn cross_entropy(logits: Tensor<2>, targets: &[i64], smoothing: f64) -> Result<Tensor<1>> {
    let [n, classes] = logits.dims();
    if targets.len() != n {
        return Err(Error::InvalidInput(format!(
            "{} targets for {n} rows of logits",
            targets.len()
        )));
    }
    if let Some(t) = targets
        .iter()
        .find(|&&t| t != IGNORE && !(0..classes as i64).contains(&t))
    {
        return Err(Error::InvalidInput(format!(
            "target {t} is outside {classes} classes"
        )));
    }
    if !(0.0..=1.0).contains(&smoothing) {
        return Err(Error::InvalidInput(format!(
            "label smoothing {smoothing} must be in [0, 1]"
        )));
    }
    let counted = targets.iter().filter(|&&t| t != IGNORE).count();
    if counted == 0 {
        return Err(Error::InvalidInput("no target to learn from".into()));
    }
    let device = logits.device();
    // Per row: (1 - ε) · log p[target] + ε · mean_c log p[c], zero for ignored rows.
    let keep: Vec<f32> = targets.iter().map(|&t| f32::from(t != IGNORE)).collect();
    let keep = Tensor::<1>::from_floats(keep.as_slice(), &device).reshape([n, 1]);
    let index: Vec<i64> = targets.iter().map(|&t| t.max(0)).collect();
    let index = Tensor::<1, Int>::from_ints(index.as_slice(), &device).reshape([n, 1]);
    let logp = log_softmax(logits, 1);
    let picked = logp.clone().gather(1, index);
    let mean = logp.mean_dim(1);
    let per_row = (picked * (1.0 - smoothing) + mean * smoothing) * keep;
    Ok(-per_row.sum() / counted as f64)
}

/// BLIP's language-modelling loss: next-token cross-entropy of `logits` `[b, n, vocab]`
/// against `labels` `[b][n]` shifted by one (position t predicts label t + 1), [`IGNORE`] for
/// padding and prompt tokens, with label smoothing (BLIP trains with 0.1).
pub fn lm_loss(logits: Tensor<3>, labels: &[Vec<i64>], smoothing: f64) -> Result<Tensor<1>> {
    let [b, n, v] = logits.dims();
    if labels.len() != b || labels.iter().any(|l| l.len() != n) || n < 2 {
        return Err(Error::InvalidInput(
            "labels must be one row of the sequence length (at least 2) per sample".into(),
        ));
    }
    let shifted = logits
        .slice([0..b, 0..n - 1, 0..v])
        .reshape([b * (n - 1), v]);
    let targets: Vec<i64> = labels.iter().flat_map(|l| l[1..].to_vec()).collect();
    cross_entropy(shifted, &targets, smoothing)
}

/// BLIP's image-text contrastive loss: the symmetric cross-entropy of `img · txtᵀ / temp` on
/// unit-length features `[n, d]` (row i of each a pair).
pub fn itc_loss(image_feat: Tensor<2>, text_feat: Tensor<2>, temp: Tensor<1>) -> Tensor<1> {
    let n = image_feat.dims()[0];
    let sim = image_feat.matmul(text_feat.transpose()) / temp.reshape([1, 1]);
    let eye = soft_targets(&identity_groups(n), &sim.device());
    (soft_cross_entropy(sim.clone(), eye.clone()) + soft_cross_entropy(sim.transpose(), eye)) / 2.0
}

/// A GAN's objective: how the critic's raw outputs (no sigmoid) on real and generated samples
/// become the two players' losses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GanObjective {
    /// Goodfellow et al.'s minimax game: the discriminator's binary cross-entropy, and the
    /// generator minimises `log(1 − σ(D(G(z))))`, which saturates early in training.
    Minimax,
    /// The same discriminator; the generator maximises `log σ(D(G(z)))` instead (the paper's
    /// practical fix).
    NonSaturating,
    /// Hinge: `relu(1 − D(x)) + relu(1 + D(G(z)))` for the critic, `−D(G(z))` for the generator.
    Hinge,
    /// Wasserstein: the critic maximises `D(x) − D(G(z))` (the Kantorovich-Rubinstein dual of
    /// W1 over 1-Lipschitz critics), the generator minimises `−D(G(z))`.
    Wasserstein,
}

/// The critic's (discriminator's) loss from its outputs `[n, 1]` on real and generated samples.
pub fn discriminator_loss(kind: GanObjective, real: Tensor<2>, fake: Tensor<2>) -> Tensor<1> {
    use burn::tensor::activation::{relu, softplus};
    match kind {
        // −log σ(r) − log(1 − σ(f)) = softplus(−r) + softplus(f).
        GanObjective::Minimax | GanObjective::NonSaturating => {
            softplus(real.neg(), 1.0).mean() + softplus(fake, 1.0).mean()
        }
        GanObjective::Hinge => {
            relu(real.neg().add_scalar(1.0)).mean() + relu(fake.add_scalar(1.0)).mean()
        }
        GanObjective::Wasserstein => fake.mean() - real.mean(),
    }
}

/// The generator's loss from the critic's outputs `[n, 1]` on generated samples.
pub fn generator_loss(kind: GanObjective, fake: Tensor<2>) -> Tensor<1> {
    use burn::tensor::activation::softplus;
    match kind {
        // log(1 − σ(f)) = −softplus(f).
        GanObjective::Minimax => softplus(fake, 1.0).mean().neg(),
        // −log σ(f) = softplus(−f).
        GanObjective::NonSaturating => softplus(fake.neg(), 1.0).mean(),
        GanObjective::Hinge | GanObjective::Wasserstein => fake.mean().neg(),
    }
}

/// Each row's L2 norm `[n]` (the per-sample input-gradient norm). `√(Σg² + 10⁻¹²)`: a row of
/// zeros (a ReLU critic's flat region) then has a zero gradient, as PyTorch's `norm` gives it,
/// instead of `∞ · 0 = NaN`; the value moves by at most 10⁻⁶.
fn row_norms(grad: Tensor<2>) -> Tensor<1> {
    let n = grad.dims()[0];
    grad.powi_scalar(2)
        .sum_dim(1)
        .reshape([n])
        .add_scalar(1e-12)
        .sqrt()
}

/// WGAN-GP's penalty without its λ: `mean((‖∇ₓD(x̂)‖₂ − 1)²)` over the rows of the input
/// gradient `[n, features]` (see [`crate::models::gan::Critic::input_grad`]).
pub fn gradient_penalty(grad: Tensor<2>) -> Tensor<1> {
    row_norms(grad).sub_scalar(1.0).powi_scalar(2).mean()
}

/// R1 (Mescheder et al.) without its γ/2: `mean(‖∇ₓD(x)‖₂²)` on real samples.
pub fn r1_penalty(grad: Tensor<2>) -> Tensor<1> {
    grad.powi_scalar(2).sum_dim(1).mean()
}

/// Where the quantiser's β goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CommitPlacement {
    /// The VQ-VAE paper's: `‖sg[z] − e‖² + β‖z − sg[e]‖²` (the encoder's commitment is
    /// weighted).
    #[default]
    Paper,
    /// taming-transformers' (and diffusers' `legacy=True`): `‖z − sg[e]‖² + β‖sg[z] − e‖²`.
    Legacy,
}

/// The quantiser's loss from the encoder's output `z` and the codes' vectors `e` (both
/// `[b, d, h, w]`, `e` carrying the codebook's gradient): the codebook term moves the codes
/// toward the encoder outputs, the commitment term the encoder toward its codes; means over
/// every value. With an EMA codebook `codebook_term` is false and only the commitment stays.
pub fn vq_loss(
    z: Tensor<4>,
    e: Tensor<4>,
    beta: f64,
    placement: CommitPlacement,
    codebook_term: bool,
) -> Tensor<1> {
    let commit = (e.clone().detach() - z.clone()).powi_scalar(2).mean();
    let (w_commit, w_codebook) = match placement {
        CommitPlacement::Paper => (beta, 1.0),
        CommitPlacement::Legacy => (1.0, beta),
    };
    if !codebook_term {
        return commit * w_commit;
    }
    let codebook = (e - z.detach()).powi_scalar(2).mean();
    commit * w_commit + codebook * w_codebook
}

/// VQGAN's adaptive weight of the adversarial term from the two losses' gradients at the
/// decoder's last layer: `‖∇L_rec‖ / (‖∇L_G‖ + 10⁻⁴)`, clamped to [0, 10⁴] (a number: it takes
/// no gradient).
pub fn adaptive_weight(grad_rec: Tensor<4>, grad_gan: Tensor<4>) -> f64 {
    let norm = |g: Tensor<4>| f64::from(g.powi_scalar(2).sum().sqrt().into_scalar::<f32>());
    (norm(grad_rec) / (norm(grad_gan) + 1e-4)).clamp(0.0, 1e4)
}

/// Hinge loss of a PatchGAN discriminator from its logit maps on real and reconstructed
/// images: `½(mean relu(1 − D(x)) + mean relu(1 + D(x̂)))`, as taming's `hinge_d_loss`.
pub fn hinge_d_loss(real: Tensor<4>, fake: Tensor<4>) -> Tensor<1> {
    use burn::tensor::activation::relu;
    (relu(real.neg().add_scalar(1.0)).mean() + relu(fake.add_scalar(1.0)).mean()) * 0.5
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn unit(x: Tensor<2>) -> Tensor<2> {
        let n = x.clone().powi_scalar(2).sum_dim(1).sqrt();
        x / n
    }

    /// A grouping of 12 pairs with groups of 4, 3, 2, 1 and 2 members, interleaved.
    const GROUPS: [usize; 12] = [0, 1, 0, 2, 1, 0, 3, 2, 0, 1, 4, 4];

    /// `clip_loss` as it was before the grouped forms.
    fn clip_loss_before(img: Tensor<2>, txt: Tensor<2>, logit_scale: Tensor<1>) -> Tensor<1> {
        fn diagonal_cross_entropy(logits: Tensor<2>) -> Tensor<1> {
            let [n, _] = logits.dims();
            let logp = log_softmax(logits, 1);
            let eye = Tensor::<2>::eye(n, &logp.device());
            -(logp * eye).sum() / n as f64
        }
        let scale = logit_scale
            .exp()
            .clamp_max(MAX_LOGIT_SCALE)
            .unsqueeze::<2>();
        let logits_per_image = img.matmul(txt.transpose()) * scale;
        let per_text = diagonal_cross_entropy(logits_per_image.clone().transpose());
        (diagonal_cross_entropy(logits_per_image) + per_text) / 2.0
    }

    /// `siglip_loss` as it was before the grouped forms.
    fn siglip_loss_before(img: Tensor<2>, txt: Tensor<2>, t: Tensor<1>, b: Tensor<1>) -> Tensor<1> {
        let n = img.dims()[0];
        let device = img.device();
        let logits = img.matmul(txt.transpose()) * t.exp().unsqueeze::<2>() + b.unsqueeze::<2>();
        let labels = Tensor::<2>::eye(n, &device) * 2.0 - 1.0;
        -log_sigmoid(logits * labels).sum_dim(1).sum() / n as f64
    }

    /// Unit embeddings `[n, d]` of images and texts, a temperature and a bias, as leaves.
    struct Leaves {
        x: Tensor<2>,
        y: Tensor<2>,
        t: Tensor<1>,
        b: Tensor<1>,
    }

    impl Leaves {
        fn draw(n: usize, d: usize) -> Self {
            let device = Device::flex().autodiff();
            // Seeded, with the generator held: the draws (and the margins the tests assert)
            // do not depend on what other tests drew before.
            let _rng = crate::device::rng_lock();
            device.seed(11);
            let normal = || {
                unit(Tensor::<2>::random(
                    [n, d],
                    Distribution::Normal(0.0, 1.0),
                    &device,
                ))
            };
            Self {
                x: normal().require_grad(),
                y: normal().require_grad(),
                t: Tensor::<1>::from_floats([10f32.ln()], &device).require_grad(),
                b: Tensor::<1>::from_floats([-2.5], &device).require_grad(),
            }
        }

        /// The loss and its gradients in x, y, t and b (empty where one takes none).
        fn eval(&self, loss: Tensor<1>) -> Vec<(&'static str, Vec<f32>)> {
            let g = loss.backward();
            let vals = |t: Option<Tensor<2>>| t.map(values).unwrap_or_default();
            let vals1 = |t: Option<Tensor<1>>| t.map(values).unwrap_or_default();
            vec![
                ("loss", values(loss)),
                ("x", vals(self.x.grad(&g))),
                ("y", vals(self.y.grad(&g))),
                ("t", vals1(self.t.grad(&g))),
                ("b", vals1(self.b.grad(&g))),
            ]
        }

        fn clip(&self, groups: &[usize]) -> Tensor<1> {
            clip_loss_grouped(self.x.clone(), self.y.clone(), self.t.clone(), groups).unwrap()
        }

        fn siglip(&self, groups: &[usize]) -> Tensor<1> {
            let (x, y, t, b) = (
                self.x.clone(),
                self.y.clone(),
                self.t.clone(),
                self.b.clone(),
            );
            siglip_loss_grouped(x, y, t, b, groups).unwrap()
        }

        fn chunked(&self, devices: usize, groups: &[usize]) -> Tensor<1> {
            let (x, y, t, b) = (
                self.x.clone(),
                self.y.clone(),
                self.t.clone(),
                self.b.clone(),
            );
            siglip_loss_chunked_grouped(x, y, t, b, devices, groups).unwrap()
        }
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    /// Asserts `|ours - theirs| <= tol (1 + |theirs|)` everywhere, both finite, the lengths
    /// equal; returns the largest difference.
    fn assert_close(what: &str, ours: &[f32], theirs: &[f32], tol: f32) -> f32 {
        assert_eq!(ours.len(), theirs.len(), "{what}: lengths differ");
        let mut worst = 0f32;
        for (i, (o, e)) in ours.iter().zip(theirs).enumerate() {
            assert!(o.is_finite() && e.is_finite(), "{what}[{i}]: {o} vs {e}");
            let diff = (o - e).abs();
            assert!(diff <= tol * (1.0 + e.abs()), "{what}[{i}]: {o} vs {e}");
            if diff > worst {
                worst = diff;
            }
        }
        worst
    }

    fn assert_all_close(
        what: &str,
        ours: &[(&str, Vec<f32>)],
        theirs: &[(&str, Vec<f32>)],
        tol: f32,
    ) {
        assert_eq!(ours.len(), theirs.len());
        for ((name, o), (_, e)) in ours.iter().zip(theirs) {
            assert_close(&format!("{what}, {name}"), o, e, tol);
        }
    }

    #[test]
    fn text_groups_number_equal_captions_in_order_of_first_occurrence() {
        let captions: Vec<String> = ["a cat", "a dog", "a cat", "a bird", "a dog", "A cat"]
            .map(String::from)
            .to_vec();
        assert_eq!(text_groups(&captions), [0, 1, 0, 2, 1, 3]);
        assert_eq!(text_groups(&[]), Vec::<usize>::new());
    }

    #[test]
    fn identity_groups_give_the_standard_losses() {
        let p = Leaves::draw(12, 8);
        let ids = identity_groups(12);
        let (x, y, t, b) = (p.x.clone(), p.y.clone(), p.t.clone(), p.b.clone());
        let clip_before = p.eval(clip_loss_before(x.clone(), y.clone(), t.clone()));
        let siglip_before = p.eval(siglip_loss_before(
            x.clone(),
            y.clone(),
            t.clone(),
            b.clone(),
        ));
        // The same operations on the same values: equal to the bit.
        assert_all_close(
            "clip_loss",
            &p.eval(clip_loss(x.clone(), y.clone(), t.clone())),
            &clip_before,
            0.0,
        );
        assert_all_close(
            "clip_loss_grouped",
            &p.eval(p.clip(&ids)),
            &clip_before,
            0.0,
        );
        let siglip = siglip_loss(x.clone(), y.clone(), t.clone(), b.clone());
        assert_all_close("siglip_loss", &p.eval(siglip), &siglip_before, 0.0);
        assert_all_close(
            "siglip_loss_grouped",
            &p.eval(p.siglip(&ids)),
            &siglip_before,
            0.0,
        );
        for devices in [1, 2, 3, 4, 6, 12] {
            let chunked = p.eval(p.chunked(devices, &ids));
            assert_all_close(
                &format!("{devices} devices"),
                &chunked,
                &siglip_before,
                1e-5,
            );
        }
    }

    #[test]
    fn chunked_grouped_loss_and_gradients_equal_the_dense_grouped_loss() {
        let p = Leaves::draw(12, 8);
        let dense = p.eval(p.siglip(&GROUPS));
        // The grouping matters: the standard loss differs.
        let standard = p.eval(p.siglip(&identity_groups(12)));
        assert!((dense[0].1[0] - standard[0].1[0]).abs() > 1e-2);
        // 5, 7 and 11 devices: shards of unequal sizes.
        for devices in [1, 2, 3, 4, 6, 12, 5, 7, 11] {
            let chunked = p.eval(p.chunked(devices, &GROUPS));
            assert_all_close(&format!("{devices} devices"), &chunked, &dense, 1e-5);
        }
    }

    #[test]
    fn chunked_loss_takes_any_device_count() {
        let p = Leaves::draw(12, 8);
        let (x, y, t, b) = (p.x.clone(), p.y.clone(), p.t.clone(), p.b.clone());
        let dense = p.eval(siglip_loss(x.clone(), y.clone(), t.clone(), b.clone()));
        // 0 counts as 1 device and 13 as 12; 5 and 7 split the batch unevenly.
        for devices in [0, 5, 7, 13] {
            let chunked = siglip_loss_chunked(x.clone(), y.clone(), t.clone(), b.clone(), devices);
            assert_all_close(
                &format!("{devices} devices"),
                &p.eval(chunked),
                &dense,
                1e-5,
            );
        }
        // An empty batch: no panic, and no loss to speak of.
        let empty = x.slice(0..0);
        let loss = siglip_loss_chunked(empty.clone(), empty, t, b, 4);
        assert!(values(loss)[0].is_nan());
    }

    /// Texts `[12, 8]` with duplicates sharing one embedding: row i is basis vector `GROUPS[i]`.
    fn duplicate_texts(device: &Device) -> Tensor<2> {
        let rows = GROUPS.map(|g| g as i64).to_vec();
        let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [12]), device);
        Tensor::<2>::eye(8, device).select(0, rows)
    }

    #[test]
    fn grouped_clip_loss_changes_nothing_when_duplicates_share_a_text_embedding() {
        // The logits of identical texts are equal, so averaging their log-probabilities (the
        // soft targets) gives the diagonal's: the same value, the same gradients in the images
        // and the temperature, and in the texts the same sum over each group.
        let device = Device::flex().autodiff();
        let txt = duplicate_texts(&device).require_grad();
        let t = Tensor::<1>::from_floats([100f32.ln()], &device).require_grad();
        let both = |img: Tensor<2>| {
            let img = img.detach().require_grad();
            let eval = |loss: Tensor<1>| {
                let g = loss.backward();
                let per_text = values(txt.grad(&g).unwrap());
                let mut per_group = vec![0f32; 5 * 8];
                for (row, &group) in per_text.chunks(8).zip(&GROUPS) {
                    for (acc, v) in per_group[group * 8..][..8].iter_mut().zip(row) {
                        *acc += v;
                    }
                }
                [
                    values(loss),
                    values(img.grad(&g).unwrap()),
                    values(t.grad(&g).unwrap()),
                    per_group,
                ]
            };
            let standard = eval(clip_loss(img.clone(), txt.clone(), t.clone()));
            let grouped =
                eval(clip_loss_grouped(img.clone(), txt.clone(), t.clone(), &GROUPS).unwrap());
            (standard, grouped)
        };
        // Images on their caption's embedding: each row's softmax is uniform over its group,
        // both losses mean ln |group| (4, 3, 2, 1 and 2 members).
        let (standard, grouped) = both(txt.clone());
        let floor = (4.0 * 4f32.ln() + 3.0 * 3f32.ln() + 4.0 * 2f32.ln()) / 12.0;
        assert_close("standard", &standard[0], &[floor], 1e-5);
        assert_close("grouped", &grouped[0], &[floor], 1e-5);
        // Images near their caption's embedding.
        let noise = Tensor::<2>::random([12, 8], Distribution::Normal(0.0, 0.3), &device);
        let (standard, grouped) = both(unit(txt.clone() + noise));
        assert!(standard[0][0] > floor + 0.1, "{:?}", standard[0]);
        let names = ["loss", "x", "t", "y summed per group"];
        for (what, (o, e)) in names.iter().zip(grouped.iter().zip(&standard)) {
            assert_close(what, o, e, 1e-5);
        }
    }

    #[test]
    fn grouped_siglip_loss_scores_copies_of_the_own_caption_as_positives() {
        let device = Device::flex();
        let txt = duplicate_texts(&device);
        let (scale, bias) = (10f32, -5f32);
        let t = || Tensor::<1>::from_floats([scale.ln()], &device);
        let b = || Tensor::<1>::from_floats([bias], &device);
        let standard = values(siglip_loss(txt.clone(), txt.clone(), t(), b()))[0];
        let grouped = values(siglip_loss_grouped(txt.clone(), txt, t(), b(), &GROUPS).unwrap())[0];
        // Images on their caption's embedding: logit scale + bias within a group, bias across.
        let nll = |l: f64| (1.0 + (-l).exp()).ln();
        let (same, other) = ((scale + bias) as f64, bias as f64);
        let sizes = GROUPS.map(|g| GROUPS.iter().filter(|h| **h == g).count() as f64);
        let (mut want_standard, mut want_grouped) = (0.0, 0.0);
        for c in sizes {
            want_standard += nll(same) + (c - 1.0) * nll(-same) + (12.0 - c) * nll(-other);
            // c positives of weight 1 / c each.
            want_grouped += nll(same) + (12.0 - c) * nll(-other);
        }
        let want = [(want_standard / 12.0) as f32, (want_grouped / 12.0) as f32];
        assert_close("losses", &[standard, grouped], &want, 1e-5);
        assert!(grouped < standard - 1.0, "{grouped} vs {standard}");
    }

    #[test]
    fn grouped_losses_reject_batches_that_do_not_pair_up() {
        let p = Leaves::draw(12, 8);
        let (x, y, t, b) = (p.x.clone(), p.y.clone(), p.t.clone(), p.b.clone());
        let invalid = |r: Result<Tensor<1>>| matches!(r, Err(Error::InvalidInput(_)));
        let short = &GROUPS[..11];
        assert!(invalid(clip_loss_grouped(
            x.clone(),
            y.clone(),
            t.clone(),
            short
        )));
        assert!(invalid(siglip_loss_grouped(
            x.clone(),
            y.clone(),
            t.clone(),
            b.clone(),
            short
        )));
        let chunked = |devices, groups: &[usize]| {
            siglip_loss_chunked_grouped(x.clone(), y.clone(), t.clone(), b.clone(), devices, groups)
        };
        assert!(invalid(chunked(2, short)));
        assert!(invalid(chunked(0, &GROUPS)));
        assert!(invalid(chunked(13, &GROUPS)));
        let fewer_texts = y.clone().slice(0..11);
        assert!(invalid(clip_loss_grouped(
            x.clone(),
            fewer_texts,
            t.clone(),
            &GROUPS
        )));
        let empty = x.clone().slice(0..0);
        assert!(invalid(clip_loss_grouped(empty.clone(), empty, t, &[])));
    }

    #[test]
    fn chunked_sigmoid_loss_and_gradients_equal_the_dense_loss() {
        let device = Device::flex().autodiff();
        let img = unit(Tensor::<2>::random(
            [12, 8],
            Distribution::Normal(0.0, 1.0),
            &device,
        ))
        .require_grad();
        let txt = unit(Tensor::<2>::random(
            [12, 8],
            Distribution::Normal(0.0, 1.0),
            &device,
        ))
        .require_grad();
        let t = Tensor::<1>::from_floats([10f32.ln()], &device).require_grad();
        let b = Tensor::<1>::from_floats([-3.0], &device).require_grad();
        let dense = siglip_loss(img.clone(), txt.clone(), t.clone(), b.clone());
        let g = dense.backward();
        let dense_grads = [img.grad(&g).unwrap(), txt.grad(&g).unwrap()];
        let dense_tb = [t.grad(&g).unwrap(), b.grad(&g).unwrap()];
        let dense_v = dense.into_scalar::<f32>();
        for devices in [1, 2, 3, 4, 6, 12] {
            let chunked =
                siglip_loss_chunked(img.clone(), txt.clone(), t.clone(), b.clone(), devices);
            let g = chunked.backward();
            let v = chunked.into_scalar::<f32>();
            for (ours, theirs) in [t.grad(&g).unwrap(), b.grad(&g).unwrap()]
                .iter()
                .zip(&dense_tb)
            {
                let (o, e) = (
                    ours.clone().into_scalar::<f32>(),
                    theirs.clone().into_scalar::<f32>(),
                );
                assert!(
                    (o - e).abs() < 1e-5 * e.abs().max(1.0),
                    "{devices} devices: {o} vs {e}"
                );
            }
            assert!(
                (v - dense_v).abs() < 1e-5,
                "{devices} devices: {v} vs {dense_v}"
            );
            for (ours, theirs) in [img.grad(&g).unwrap(), txt.grad(&g).unwrap()]
                .iter()
                .zip(&dense_grads)
            {
                let diff = (ours.clone() - theirs.clone())
                    .abs()
                    .max()
                    .into_scalar::<f32>();
                assert!(diff < 1e-5, "{devices} devices: gradient differs by {diff}");
            }
        }
    }

    #[test]
    fn clip_loss_is_small_for_matched_pairs_and_clamps_the_scale() {
        let device = Device::flex();
        let x = unit(Tensor::<2>::eye(4, &device) + 0.01);
        let matched = clip_loss(
            x.clone(),
            x.clone(),
            Tensor::from_floats([100f32.ln()], &device),
        );
        assert!(matched.into_scalar::<f32>() < 1e-3);
        // exp(10) is clamped to 100: the same loss as logit_scale = ln 100.
        let a = clip_loss(x.clone(), x.clone(), Tensor::from_floats([10.0], &device))
            .into_scalar::<f32>();
        let b = clip_loss(x.clone(), x, Tensor::from_floats([100f32.ln()], &device))
            .into_scalar::<f32>();
        assert!((a - b).abs() < 1e-6);
    }
}
