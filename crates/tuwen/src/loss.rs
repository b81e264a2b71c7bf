//! Contrastive losses for image-text training.
//!
//! - [`clip_loss`]: CLIP's symmetric softmax cross-entropy over the in-batch similarity matrix.
//! - [`siglip_loss`]: SigLIP's pairwise sigmoid loss: every image-text pair is an independent
//!   binary decision, positive on the diagonal.
//! - [`siglip_loss_chunked`]: the same loss computed as the paper's §3.1 does it across D
//!   devices: device d holds B/D pairs; in D steps it scores its images against one block of
//!   texts at a time while text blocks pass around a ring, so no step needs the B x B matrix.

use burn::prelude::*;
use burn::tensor::activation::{log_sigmoid, log_softmax, sigmoid};

/// The largest logit scale CLIP trains with (`exp(logit_scale)` is clamped here).
pub const MAX_LOGIT_SCALE: f64 = 100.0;

/// Mean cross-entropy of `logits` `[n, n]` with the diagonal as the targets.
fn diagonal_cross_entropy(logits: Tensor<2>) -> Tensor<1> {
    let [n, _] = logits.dims();
    let logp = log_softmax(logits, 1);
    let eye = Tensor::<2>::eye(n, &logp.device());
    -(logp * eye).sum() / n as f64
}

/// CLIP's loss: `(CE(image -> text) + CE(text -> image)) / 2` on `scale * cos`, with
/// `scale = min(exp(logit_scale), 100)`. Embeddings must be unit length, `[n, d]` each, row i
/// of one matching row i of the other.
pub fn clip_loss(
    image_embeds: Tensor<2>,
    text_embeds: Tensor<2>,
    logit_scale: Tensor<1>,
) -> Tensor<1> {
    let scale = logit_scale
        .exp()
        .clamp_max(MAX_LOGIT_SCALE)
        .unsqueeze::<2>();
    let logits_per_image = image_embeds.matmul(text_embeds.transpose()) * scale;
    let per_text = diagonal_cross_entropy(logits_per_image.clone().transpose());
    (diagonal_cross_entropy(logits_per_image) + per_text) / 2.0
}

/// The sum over one block of `-log sigmoid(z * (scale * <x, y> + bias))`, `z` = +1 on the
/// diagonal when `positive_diagonal`, -1 elsewhere.
fn sigmoid_block(
    images: Tensor<2>,
    texts: Tensor<2>,
    scale: Tensor<2>,
    bias: Tensor<2>,
    positive_diagonal: bool,
) -> Tensor<1> {
    let [n, _] = images.dims();
    let m = texts.dims()[0];
    let device = images.device();
    let logits = images.matmul(texts.transpose()) * scale + bias;
    let labels = if positive_diagonal {
        Tensor::<2>::eye(n, &device) * 2.0 - 1.0
    } else {
        Tensor::<2>::ones([n, m], &device).neg()
    };
    // Rows first: one f32 sum over B x B terms of very different sizes loses the small ones.
    -log_sigmoid(logits * labels).sum_dim(1).sum()
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
    let scale = logit_scale.exp().unsqueeze::<2>();
    sigmoid_block(
        image_embeds,
        text_embeds,
        scale,
        logit_bias.unsqueeze::<2>(),
        true,
    ) / n as f64
}

/// [`siglip_loss`] as `devices` devices compute it: the batch splits into `devices` equal
/// shards; in step k, device d scores its images against the text shard of device
/// `(d + k) mod D`, received around the ring. The batch size must be a multiple of `devices`.
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
    assert!(
        devices > 0 && n.is_multiple_of(devices),
        "batch {n} is not a multiple of {devices} devices"
    );
    // The blocks are worked out off the autodiff graph, on the plain backend.
    let autodiff = image_embeds.device().is_autodiff();
    let scale = plain(logit_scale.clone(), autodiff).exp().unsqueeze::<2>();
    let bias = plain(logit_bias.clone(), autodiff).unsqueeze::<2>();
    let images = plain(image_embeds.clone(), autodiff).chunk(devices, 0);
    let texts = plain(text_embeds.clone(), autodiff).chunk(devices, 0);
    let device = images[0].device();
    let m = n / devices;
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
        for k in 0..devices {
            let e = (d + k) % devices;
            let cos = img.clone().matmul(texts[e].clone().transpose());
            let logits = cos.clone() * scale.clone() + bias.clone();
            let labels = if e == d {
                Tensor::<2>::eye(m, &device) * 2.0 - 1.0
            } else {
                Tensor::<2>::ones([m, m], &device).neg()
            };
            let signed = logits * labels.clone();
            loss = loss - log_sigmoid(signed.clone()).sum_dim(1).sum().reshape([1]);
            // dL/dlogits of this block.
            let g = -(labels * sigmoid(-signed)) / n as f64;
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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn unit(x: Tensor<2>) -> Tensor<2> {
        let n = x.clone().powi_scalar(2).sum_dim(1).sqrt();
        x / n
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
