//! Resizing a grid of learned position embeddings, as `torch.nn.functional.interpolate(...,
//! mode="bicubic", align_corners=False)` does it (transformers' `interpolate_pos_encoding`).
//!
//! Interpolation is linear in the embeddings, so it is two matrix products: one per axis, with
//! the bicubic weights (A = -0.75, border indices clamped) as matrices. Gradients flow back to
//! the original grid through them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use burn::prelude::*;

/// The `[out, in]` matrix of PyTorch's bicubic resampling along one axis.
pub fn bicubic_matrix(in_size: usize, out_size: usize) -> Vec<f32> {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = in_size as f64 / out_size as f64;
    let mut m = vec![0f32; out_size * in_size];
    for o in 0..out_size {
        let src = (o as f64 + 0.5) * scale - 0.5;
        let base = src.floor();
        let t = src - base;
        let w = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
        for (k, wk) in w.iter().enumerate() {
            let idx = (base as i64 - 1 + k as i64).clamp(0, in_size as i64 - 1) as usize;
            m[o * in_size + idx] += *wk as f32;
        }
    }
    m
}

/// Resizes `[1, h_in * w_in, dim]` grid embeddings (row-major) to `[1, h_out * w_out, dim]`.
pub fn resize_grid(
    grid: Tensor<3>,
    (h_in, w_in): (usize, usize),
    (h_out, w_out): (usize, usize),
) -> Tensor<3> {
    if (h_in, w_in) == (h_out, w_out) {
        return grid;
    }
    let device = grid.device();
    let dim = grid.dims()[2];
    let mh = Tensor::<2>::from_data(
        TensorData::new(bicubic_matrix(h_in, h_out), [h_out, h_in]),
        &device,
    );
    let mw = Tensor::<2>::from_data(
        TensorData::new(bicubic_matrix(w_in, w_out), [w_out, w_in]),
        &device,
    );
    // [h_in, w_in * dim] -> rows resized -> [h_out, w_in, dim]
    let x = mh
        .matmul(grid.reshape([h_in, w_in * dim]))
        .reshape([h_out, w_in, dim]);
    // Columns: for each output row, [w_out, w_in] x [w_in, dim].
    let x = mw.unsqueeze::<3>().repeat_dim(0, h_out).matmul(x);
    x.reshape([1, h_out * w_out, dim])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sum_to_one_and_identity_when_same_size() {
        for (i, o) in [(4, 7), (7, 4), (14, 16), (3, 3)] {
            let m = bicubic_matrix(i, o);
            for r in 0..o {
                let s: f32 = m[r * i..(r + 1) * i].iter().sum();
                assert!((s - 1.0).abs() < 1e-6);
            }
        }
        let m = bicubic_matrix(5, 5);
        for r in 0..5 {
            for c in 0..5 {
                assert!((m[r * 5 + c] - if r == c { 1.0 } else { 0.0 }).abs() < 1e-6);
            }
        }
    }
}

/// Where patch dropout draws from: a seed that each draw advances, shared by the copies of a
/// model, so that a training run's draws depend on the run alone (not on what else in the
/// process uses the device's generator) and can be replayed by setting the seed again.
#[derive(Clone, Debug, Default)]
pub struct DrawSeed(Arc<AtomicU64>);

impl DrawSeed {
    /// Sets the seed of the next draw.
    pub fn set(&self, seed: u64) {
        self.0.store(seed, Ordering::SeqCst);
    }

    /// The seed of this draw; advances it.
    pub fn next(&self) -> u64 {
        self.0.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::SeqCst)
    }
}

/// FLIP's patch dropout: keeps a random `1 - p` share of the `n` patch tokens of each image
/// (`x`: `[b, skip + n, d]`, the first `skip` tokens, e.g. a class token, always kept), drawn
/// from `seed`. Only in training: returns `x` unchanged when `p` is 0 or the device records no
/// gradients.
pub fn patch_dropout(x: Tensor<3>, p: f64, skip: usize, seed: u64) -> Tensor<3> {
    if p <= 0.0 || !x.device().is_autodiff() {
        return x;
    }
    let [b, t, d] = x.dims();
    let n = t - skip;
    let keep = ((n as f64 * (1.0 - p)).round() as usize).clamp(1, n);
    // A seeded partial Fisher-Yates shuffle per image picks the tokens kept.
    let mut rng = crate::data::shapes::SplitMix64::new(seed);
    let mut idx = Vec::with_capacity(b * keep);
    let mut order: Vec<i64> = Vec::with_capacity(n);
    for _ in 0..b {
        order.clear();
        order.extend((0..n as i64).map(|i| i + skip as i64));
        for i in 0..keep {
            let j = i + rng.below(n - i);
            order.swap(i, j);
        }
        idx.extend_from_slice(&order[..keep]);
    }
    let idx = Tensor::<2, Int>::from_data(TensorData::new(idx, [b, keep]), &x.device());
    let patches = x
        .clone()
        .gather(1, idx.unsqueeze_dim::<3>(2).expand([b, keep, d]));
    if skip == 0 {
        patches
    } else {
        Tensor::cat(vec![x.slice(s![.., 0..skip, ..]), patches], 1)
    }
}

#[cfg(test)]
mod patch_dropout_tests {
    use super::*;

    #[test]
    fn keeps_the_class_token_and_a_share_of_patches_only_in_training() {
        let train = Device::flex().autodiff();
        // Token i holds the value i everywhere, so kept tokens can be identified.
        let values: Vec<f32> = (0..2 * 9 * 4).map(|k| ((k / 4) % 9) as f32).collect();
        let x = Tensor::<3>::from_data(TensorData::new(values.clone(), [2, 9, 4]), &train);
        let y = patch_dropout(x, 0.5, 1, 7);
        assert_eq!(y.dims(), [2, 5, 4]);
        let v = y
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap();
        for b in 0..2 {
            let tokens: Vec<f32> = (0..5).map(|t| v[(b * 5 + t) * 4]).collect();
            assert_eq!(tokens[0], 0.0, "class token first");
            let mut rest = tokens[1..].to_vec();
            rest.sort_by(f32::total_cmp);
            rest.dedup();
            assert_eq!(rest.len(), 4, "distinct patches: {tokens:?}");
            assert!(rest.iter().all(|&t| (1.0..9.0).contains(&t)));
        }
        let infer = Device::flex();
        let x = Tensor::<3>::from_data(TensorData::new(values, [2, 9, 4]), &infer);
        assert_eq!(patch_dropout(x, 0.5, 1, 7).dims(), [2, 9, 4]);
    }
}
