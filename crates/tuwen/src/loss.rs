//! Contrastive losses for image-text training.
//!
//! - [`clip_loss`]: CLIP's symmetric softmax cross-entropy over the in-batch similarity matrix.
//! - [`siglip_loss`]: SigLIP's pairwise sigmoid loss: every image-text pair is an independent
//!   binary decision, positive on the diagonal.
//! - [`siglip_loss_chunked`]: the same loss computed as the paper's §3.1 does it across D
//!   devices: device d holds B/D pairs; in D steps it scores its images against one block of
//!   texts at a time while text blocks pass around a ring, so no step needs the B x B matrix.

use burn::prelude::*;
use burn::tensor::activation::{log_sigmoid, log_softmax};

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
    -log_sigmoid(logits * labels).sum()
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
/// `(d + k) mod D`, received around the ring. Only one `B/D x B/D` block exists per device and
/// step. The batch size must be a multiple of `devices`.
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
    let scale = logit_scale.exp().unsqueeze::<2>();
    let bias = logit_bias.unsqueeze::<2>();
    let images = image_embeds.chunk(devices, 0);
    let texts = text_embeds.chunk(devices, 0);
    let mut total: Option<Tensor<1>> = None;
    for (d, img) in images.iter().enumerate() {
        for k in 0..devices {
            let j = (d + k) % devices;
            let block = sigmoid_block(
                img.clone(),
                texts[j].clone(),
                scale.clone(),
                bias.clone(),
                j == d,
            );
            total = Some(match total {
                Some(t) => t + block,
                None => block,
            });
        }
    }
    total.expect("at least one device") / n as f64
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
        let dense_v = dense.into_scalar::<f32>();
        for devices in [1, 2, 3, 4, 6, 12] {
            let chunked =
                siglip_loss_chunked(img.clone(), txt.clone(), t.clone(), b.clone(), devices);
            let g = chunked.backward();
            let v = chunked.into_scalar::<f32>();
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
