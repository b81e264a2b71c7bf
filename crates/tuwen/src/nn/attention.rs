//! Multi-head scaled dot-product attention on already-projected queries, keys and values.

use burn::nn::Dropout;
use burn::prelude::*;
use burn::tensor::activation::softmax;

/// `softmax(q kᵀ / sqrt(d_head) + mask) v`, per head.
///
/// `q`: `[batch, n_q, heads * d_head]`, `k`, `v`: `[batch, n_k, heads * d_head]`; `mask`, when
/// given, is added to the scores and broadcasts to `[batch, heads, n_q, n_k]`. Returns
/// `[batch, n_q, heads * d_head]` with the heads concatenated, as transformers does before its
/// output projection. `dropout` applies to the attention probabilities (training only).
pub fn scaled_dot_product_attention(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    heads: usize,
    mask: Option<Tensor<4>>,
    dropout: &Dropout,
) -> Tensor<3> {
    let [b, n_q, d] = q.dims();
    if dropout.prob == 0.0 {
        let scale = (d as f64 / heads as f64).powf(-0.5) as f32;
        if let Some(ctx) = super::cpu::attention(&q, &k, &v, heads, mask.as_ref(), scale) {
            return ctx;
        }
    }
    let n_k = k.dims()[1];
    let d_head = d / heads;
    let split = |t: Tensor<3>, n: usize| t.reshape([b, n, heads, d_head]).swap_dims(1, 2);
    let (q, k, v) = (split(q, n_q), split(k, n_k), split(v, n_k));
    let scale = (d_head as f64).powf(-0.5);
    if dropout.prob == 0.0 {
        // burn's attention op: fused on the CPU backend (no score tensor per op, one pass of
        // softmax); under autodiff it is the same sequence of ops as below.
        let options = burn::tensor::ops::AttentionModuleOptions {
            scale: Some(scale),
            softcap: None,
            is_causal: false,
        };
        let ctx = burn::tensor::module::attention(q, k, v, None, mask, options);
        return ctx.swap_dims(1, 2).reshape([b, n_q, d]);
    }
    let mut scores = q.matmul(k.swap_dims(2, 3)) * scale;
    if let Some(mask) = mask {
        scores = scores + mask;
    }
    let probs = dropout.forward(softmax(scores, 3));
    probs.matmul(v).swap_dims(1, 2).reshape([b, n_q, d])
}
