//! Convolutional building blocks shared by the convolutional families: TensorFlow-style
//! convolutions and padding, batch norm as PyTorch trains it, stochastic depth.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, PaddingConfig2d};
use burn::prelude::*;

/// `conv` applied to `x`: the fused CPU convolution ([`super::cpu::conv2d`]:
/// pointwise and depthwise, symmetric padding) where it applies; burn's `Conv2d::forward`
/// otherwise.
pub fn apply(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let padding = match conv.padding {
        PaddingConfig2d::Valid => Some([0, 0]),
        PaddingConfig2d::Explicit(t, l, b, r) if t == b && l == r => Some([t, l]),
        _ => None,
    };
    if let Some(padding) = padding
        && conv.dilation == [1, 1]
    {
        let w = conv.weight.val();
        let b = conv.bias.as_ref().map(|b| b.val());
        let fused = super::cpu::conv2d(&x, &w, b.as_ref(), conv.stride, padding, conv.groups);
        if let Some(y) = fused {
            return y;
        }
    }
    conv.forward(x)
}

/// A patch embedding: `conv` (kernel = stride = the patch, no padding) applied to pixels
/// `[b, c, h, w]`, as tokens `[b, gh·gw, d]` in row-major patch order, and the grid `[gh, gw]`. At inference on
/// the CPU the patches are cut out and multiplied as a linear layer on the packed-weight
/// kernels ([`super::cpu::patch_linear`]): burn's convolution goes through an image-to-column
/// copy and a GEMM that repacks the weight on every call (4.6% of CLIP B/32 at batch 1).
pub fn patch_embed(conv: &Conv2d, pixels: Tensor<4>) -> (Tensor<3>, [usize; 2]) {
    let [_, _, h, w] = pixels.dims();
    let grid = [h / conv.stride[0], w / conv.stride[1]];
    if conv.stride == conv.kernel_size
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && matches!(conv.padding, PaddingConfig2d::Valid)
    {
        let w = conv.weight.val();
        let b = conv.bias.as_ref().map(|b| b.val());
        if let Some(y) = super::cpu::patch_linear(&pixels, &w, b.as_ref()) {
            return (y, grid);
        }
    }
    let x = conv.forward(pixels);
    let [b, d, gh, gw] = x.dims();
    (x.reshape([b, d, gh * gw]).swap_dims(1, 2), [gh, gw])
}

/// Pads `x` `[b, c, h, w]` with zeros: `(top, bottom, left, right)`.
pub fn pad(x: Tensor<4>, (t, b, l, r): (usize, usize, usize, usize)) -> Tensor<4> {
    if t + b + l + r == 0 {
        return x;
    }
    x.pad(vec![(t, b), (l, r)], 0.0f32)
}

/// Batch norm over `c` channels whose running statistics move by 0.1 per training step, as
/// timm and PyTorch train (a TensorFlow config's 0.99 is the weight of the old value, too slow
/// for short runs; transformers hands it to PyTorch as the weight of the new one).
pub fn batch_norm(c: usize, eps: f64, device: &Device) -> BatchNorm {
    BatchNormConfig::new(c)
        .with_epsilon(eps)
        .with_momentum(0.1)
        .init(device)
}

/// `bn` applied to `x`: in training (an autodiff device and the layer not frozen) the fused
/// CPU batch norm ([`super::cpu::batch_norm_train`]), the running statistics moved as burn's
/// `BatchNorm` moves them; burn's `BatchNorm::forward` otherwise.
pub fn norm(bn: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    if x.device().is_autodiff() && bn.training.is_enabled() {
        let fused = super::cpu::batch_norm_train(&x, &bn.gamma.val(), &bn.beta.val(), bn.epsilon);
        if let Some((y, mean, var)) = fused {
            let device = x.device();
            let m = bn.momentum;
            let stat = |v: Vec<f32>| {
                let c = v.len();
                Tensor::<1>::from_data(TensorData::new(v, [c]), &device)
            };
            let running_mean = bn.running_mean.value_sync().to_device(&device);
            let running_var = bn.running_var.value_sync().to_device(&device);
            let running_mean = running_mean
                .mul_scalar(1.0 - m)
                .add(stat(mean).mul_scalar(m));
            let running_var = running_var.mul_scalar(1.0 - m).add(stat(var).mul_scalar(m));
            bn.running_mean.update(running_mean.detach());
            bn.running_var.update(running_var.detach());
            return y;
        }
    }
    bn.forward(x)
}

/// A `k`×`k` convolution `(in, out)` channels: "same" padding at stride 1, none at stride 2
/// (the caller pads, TensorFlow's way); weights drawn from N(0, std²).
pub fn conv(
    (i, o): (usize, usize),
    k: usize,
    stride: usize,
    groups: usize,
    bias: bool,
    std: f64,
    device: &Device,
) -> Conv2d {
    Conv2dConfig::new([i, o], [k, k])
        .with_stride([stride, stride])
        .with_groups(groups)
        .with_bias(bias)
        .with_padding(if stride == 1 {
            PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2)
        } else {
            PaddingConfig2d::Valid
        })
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device)
}

/// Per-sample stochastic depth (drop-connect): in training, each sample's branch is dropped
/// with probability `p` and the kept ones scaled by `1 / (1 − p)`; the identity elsewhere.
pub fn stochastic_depth(h: Tensor<4>, p: f64) -> Tensor<4> {
    if p <= 0.0 || !h.device().is_autodiff() {
        return h;
    }
    let [b, _, _, _] = h.dims();
    let keep = Tensor::<4>::random(
        [b, 1, 1, 1],
        burn::tensor::Distribution::Bernoulli(1.0 - p),
        &h.device(),
    );
    h * keep / (1.0 - p)
}
