//! Fused element-wise kernels for the CPU backend (burn-flex), used at inference.
//!
//! burn-flex computes an activation such as GELU or SiLU with scalar `libm` calls (`erff`,
//! `expf`) and, for composite ones (CLIP's quick GELU, SigLIP's tanh GELU), one full pass over
//! memory per elementary op. Measured on ViT-B/16 and EfficientNet-B0 inference, those calls
//! were 10% and 40% of the time. Here each activation is one pass with a vectorisable
//! polynomial `exp`, compiled for AVX-512 and for AVX2 + FMA and chosen at run time.
//!
//! The fast path applies to contiguous `f32` tensors on the CPU backend. In training (the
//! autodiff backend over burn-flex) an activation is one node of the graph with its own
//! backward, `dL/dx = dL/dy · f'(x)` in one pass, where burn records three to six elementary
//! ops and recomputes `exp` for their gradients ([`apply`]). Every other tensor takes burn's
//! own ops, so the GPU is unchanged. Upstream, these belong in burn-flex's activation ops (a
//! vectorised `erf`/`exp`) and in burn-autodiff (fused activation nodes).

use burn::backend::flex::{Flex, FlexTensor};
use burn::prelude::*;
use burn::tensor::DType;

/// The element-wise functions with a fused kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// `x Φ(x)` with the exact (erf) normal CDF.
    Gelu,
    /// `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`.
    GeluTanh,
    /// `x σ(1.702 x)` (CLIP).
    QuickGelu,
    /// `x σ(x)`.
    Silu,
    /// `σ(x)`.
    Sigmoid,
    /// `e^x` (the softmax's; not an activation).
    Exp,
}

/// Below this many elements a tensor is done on one thread.
const PARALLEL_MIN: usize = 1 << 15;

/// `kernel` applied to `x` in one fused pass when `x` is a contiguous `f32` tensor on the CPU
/// backend, with or without autodiff (then with a fused backward, [`FusedBackward`]);
/// otherwise `Err(x)`, untouched, for the caller's plain path.
pub fn apply<const D: usize>(kernel: Kernel, x: Tensor<D>) -> Result<Tensor<D>, Box<Tensor<D>>> {
    let Ok(mut t) = x.clone().try_into_primitive::<Flex>() else {
        return apply_autodiff(kernel, x);
    };
    if t.dtype() != DType::F32 {
        return Err(Box::new(x));
    }
    let Some((start, end)) = t.layout().contiguous_offsets() else {
        return Err(Box::new(x));
    };
    drop(x);
    // In place when this is the only reference to the buffer (a fresh activation), else into
    // a new one.
    if let Some(buf) = t.try_storage_mut::<f32>() {
        run_in_place(kernel, &mut buf[start..end]);
        return Ok(Tensor::from_primitive::<Flex>(t));
    }
    let mut out = t.storage::<f32>()[start..end].to_vec();
    run_in_place(kernel, &mut out);
    let shape = t.layout().shape().clone();
    let data = TensorData::new(out, shape);
    Ok(Tensor::from_primitive::<Flex>(FlexTensor::from_data(data)))
}

type Ad = burn::backend::Autodiff<Flex>;

pub mod layers;
pub mod sgemm;
mod vector;
pub use layers::{
    batch_norm_train, conv2d, layer_norm, linear, linear_add, linear_side_by_side, linear_then,
    patch_linear,
};

/// `t` as a contiguous `f32` tensor (a copy when it is strided, broadcast or of another type).
fn dense_f32(t: FlexTensor) -> FlexTensor {
    if t.dtype() == DType::F32 && t.layout().contiguous_offsets().is_some() {
        t
    } else {
        FlexTensor::from_data(t.into_data().convert::<f32>())
    }
}

/// [`apply`] on the autodiff backend over burn-flex: the output is computed from a copy of
/// the input, which the node keeps for its backward.
fn apply_autodiff<const D: usize>(
    kernel: Kernel,
    x: Tensor<D>,
) -> Result<Tensor<D>, Box<Tensor<D>>> {
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::ops::{Backward, OpsKind};
    let Ok(t) = x.clone().try_into_primitive::<Ad>() else {
        return Err(Box::new(x));
    };
    let p = t.primitive();
    if p.dtype() != DType::F32 || p.layout().contiguous_offsets().is_none() {
        return Err(Box::new(x));
    }
    drop(x);
    let (input, guard) = t.into_parts();
    let (start, end) = input.layout().contiguous_offsets().expect("checked above");
    let mut out = vec![0.0f32; end - start];
    run_map(kernel, &input.storage::<f32>()[start..end], &mut out);
    let shape = input.layout().shape().clone();
    let output = FlexTensor::from_data(TensorData::new(out, shape));
    let node = match FusedBackward(kernel)
        .prepare::<NoCheckpointing>([guard])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(input, output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    Ok(Tensor::from_primitive::<Ad>(node))
}

/// The backward of a fused activation node: `dL/dx = dL/dy · f'(x)` in one pass over the
/// kept input `x` (its state) and the incoming gradient.
#[derive(Debug)]
pub struct FusedBackward(Kernel);

impl burn::backend::autodiff::ops::Backward<Flex, 1> for FusedBackward {
    type State = FlexTensor;

    fn backward(
        self,
        ops: burn::backend::autodiff::ops::Ops<FlexTensor, 1>,
        grads: &mut burn::backend::autodiff::grads::Gradients,
        _checkpointer: &mut burn::backend::autodiff::checkpoint::base::Checkpointer,
    ) {
        let kernel = self.0;
        let x = ops.state;
        burn::backend::autodiff::ops::unary::<Flex, _>(ops.parents, ops.node, grads, |g| {
            grad_input(kernel, &x, g)
        });
    }
}

/// `g · f'(x)` for contiguous `x`, in `g`'s buffer when it is unshared.
fn grad_input(kernel: Kernel, x: &FlexTensor, g: FlexTensor) -> FlexTensor {
    let (xs, xe) = x.layout().contiguous_offsets().expect("kept contiguous");
    let xv = &x.storage::<f32>()[xs..xe];
    // A broadcast or strided gradient (or another float type) is made dense f32 first.
    let mut g = dense_f32(g);
    let (gs, ge) = g.layout().contiguous_offsets().expect("made contiguous");
    assert_eq!(ge - gs, xv.len(), "gradient and input sizes differ");
    if let Some(buf) = g.try_storage_mut::<f32>() {
        run_grad(kernel, xv, &mut buf[gs..ge]);
        return g;
    }
    let mut out = g.storage::<f32>()[gs..ge].to_vec();
    run_grad(kernel, xv, &mut out);
    let shape = g.layout().shape().clone();
    FlexTensor::from_data(TensorData::new(out, shape))
}

/// [`map`] across the thread pool for large buffers.
fn run_map(kernel: Kernel, src: &[f32], dst: &mut [f32]) {
    use rayon::prelude::*;
    if src.len() < PARALLEL_MIN {
        map(kernel, src, dst);
    } else {
        let chunk = PARALLEL_MIN.max(src.len().div_ceil(4 * rayon::current_num_threads()));
        src.par_chunks(chunk)
            .zip(dst.par_chunks_mut(chunk))
            .for_each(|(s, d)| map(kernel, s, d));
    }
}

/// [`grad_map`] across the thread pool for large buffers.
fn run_grad(kernel: Kernel, x: &[f32], g: &mut [f32]) {
    use rayon::prelude::*;
    if x.len() < PARALLEL_MIN {
        grad_map(kernel, x, g);
    } else {
        let chunk = PARALLEL_MIN.max(x.len().div_ceil(4 * rayon::current_num_threads()));
        x.par_chunks(chunk)
            .zip(g.par_chunks_mut(chunk))
            .for_each(|(x, g)| grad_map(kernel, x, g));
    }
}

/// `g[i] *= kernel'(x[i])`, dispatched at run time as [`map_in_place`] is.
pub fn grad_map(kernel: Kernel, x: &[f32], g: &mut [f32]) {
    assert_eq!(x.len(), g.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { grad_avx512(kernel, x, g) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            return unsafe { grad_avx2(kernel, x, g) };
        }
    }
    grad_generic(kernel, x, g)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
unsafe fn grad_avx512(kernel: Kernel, x: &[f32], g: &mut [f32]) {
    grad_generic(kernel, x, g)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn grad_avx2(kernel: Kernel, x: &[f32], g: &mut [f32]) {
    grad_generic(kernel, x, g)
}

#[inline(always)]
fn grad_generic(kernel: Kernel, x: &[f32], g: &mut [f32]) {
    let apply = |f: fn(f32) -> f32, g: &mut [f32]| {
        g.iter_mut().zip(x).for_each(|(g, &x)| *g *= f(x));
    };
    match kernel {
        Kernel::Gelu => apply(gelu_grad, g),
        Kernel::GeluTanh => apply(gelu_tanh_grad, g),
        Kernel::QuickGelu => apply(quick_gelu_grad, g),
        Kernel::Silu => apply(silu_grad, g),
        Kernel::Sigmoid => apply(sigmoid_grad, g),
        Kernel::Exp => apply(exp, g),
    }
}

/// `d/dx x Φ(x) = Φ(x) + x φ(x)`.
#[inline(always)]
pub fn gelu_grad(x: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    cdf + x * INV_SQRT_2PI * exp(-0.5 * x * x)
}

/// The derivative of [`gelu_tanh`]: `0.5 (1 + t) + 0.5 x (1 - t²) u'` with `t = tanh(u)`.
#[inline(always)]
pub fn gelu_tanh_grad(x: f32) -> f32 {
    const C: f32 = 0.797_884_6;
    let u = C * (x + 0.044_715 * x * x * x);
    let t = 1.0 - 2.0 / (exp(2.0 * u) + 1.0);
    let du = C * (1.0 + 3.0 * 0.044_715 * x * x);
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
}

/// `d/dx x σ(a x) = σ + a x σ (1 - σ)` at `a` = 1.702.
#[inline(always)]
pub fn quick_gelu_grad(x: f32) -> f32 {
    let s = sigmoid(1.702 * x);
    s + 1.702 * x * s * (1.0 - s)
}

/// `d/dx x σ(x) = σ + x σ (1 - σ)`.
#[inline(always)]
pub fn silu_grad(x: f32) -> f32 {
    let s = sigmoid(x);
    s + x * s * (1.0 - s)
}

/// `σ (1 - σ)`.
#[inline(always)]
pub fn sigmoid_grad(x: f32) -> f32 {
    let s = sigmoid(x);
    s * (1.0 - s)
}

fn run_in_place(kernel: Kernel, buf: &mut [f32]) {
    use rayon::prelude::*;
    if buf.len() < PARALLEL_MIN {
        map_in_place(kernel, buf);
    } else {
        let chunk = PARALLEL_MIN.max(buf.len().div_ceil(4 * rayon::current_num_threads()));
        buf.par_chunks_mut(chunk)
            .for_each(|c| map_in_place(kernel, c));
    }
}

/// `dst[i] = kernel(src[i])` with the widest vector unit this CPU has.
pub fn map(kernel: Kernel, src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    // Blocks small enough to stay in L1 between the copy and the update.
    for (s, d) in src.chunks(1024).zip(dst.chunks_mut(1024)) {
        d.copy_from_slice(s);
        map_in_place(kernel, d);
    }
}

/// `buf[i] = kernel(buf[i])`, dispatched at run time to AVX-512, AVX2 + FMA or plain code.
pub fn map_in_place(kernel: Kernel, buf: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { map_avx512(kernel, buf) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            return unsafe { map_avx2(kernel, buf) };
        }
    }
    map_generic(kernel, buf)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
unsafe fn map_avx512(kernel: Kernel, buf: &mut [f32]) {
    // SAFETY: the caller's contract (AVX-512F).
    unsafe { vector::map_avx512(kernel, buf) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn map_avx2(kernel: Kernel, buf: &mut [f32]) {
    map_generic(kernel, buf)
}

/// One loop per kernel, each written so that the compiler vectorises it (no calls, no
/// branches in the body).
#[inline(always)]
fn map_generic(kernel: Kernel, buf: &mut [f32]) {
    match kernel {
        Kernel::Gelu => buf.iter_mut().for_each(|x| *x = gelu(*x)),
        Kernel::GeluTanh => buf.iter_mut().for_each(|x| *x = gelu_tanh(*x)),
        Kernel::QuickGelu => buf.iter_mut().for_each(|x| *x *= sigmoid(1.702 * *x)),
        Kernel::Silu => buf.iter_mut().for_each(|x| *x *= sigmoid(*x)),
        Kernel::Sigmoid => buf.iter_mut().for_each(|x| *x = sigmoid(*x)),
        Kernel::Exp => buf.iter_mut().for_each(|x| *x = exp(*x)),
    }
}

/// The constants of [`exp`] (shared with the vector kernels).
mod exp_consts {
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    /// `ln 2` in two parts, the first with enough trailing zeros that `n · LN2_HI` is exact.
    pub const LN2_HI: f32 = 0.693_145_75;
    pub const LN2_LO: f32 = 1.428_606_8e-6;
    /// 1.5 · 2²³: adding it rounds to the nearest integer, which then sits in the low bits.
    pub const SHIFTER: f32 = 12_582_912.0;
}

/// The constants of [`erf`] (Abramowitz and Stegun 7.1.26; shared with the vector kernels).
const ERF_P: f32 = 0.327_591_1;
const ERF_A: [f32; 5] = [
    0.254_829_6,
    -0.284_496_74,
    1.421_413_7,
    -1.453_152_1,
    1.061_405_4,
];

/// `e^x` to about 2 ulp for `x` in [-87, 88] (clamped outside): `2^n · p(r)` with
/// `x = n ln 2 + r`, `|r| ≤ ln 2 / 2`, `p` the degree-7 Taylor polynomial (error below 1e-8
/// relative on that interval), `ln 2` split in two for an exact `n ln 2`.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    use exp_consts::*;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + SHIFTER;
    let n = t - SHIFTER;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2ⁿ: n (in t's low mantissa bits) moved into the exponent field.
    let n_int = t.to_bits().wrapping_sub(SHIFTER.to_bits()) as i32;
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    p * scale
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `erf(x)` to 1e-6 absolute in `f32` (Abramowitz and Stegun 7.1.26, 1.5e-7 in exact
/// arithmetic; odd extension).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: f32 = ERF_P;
    const A: [f32; 5] = ERF_A;
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

/// `x Φ(x) = x (1 + erf(x / √2)) / 2`.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU's tanh approximation, with `tanh(u) = 1 - 2 / (e^{2u} + 1)`.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // √(2/π)
    let u = C * (x + 0.044_715 * x * x * x);
    let tanh = 1.0 - 2.0 / (exp(2.0 * u) + 1.0);
    0.5 * x * (1.0 + tanh)
}

/// The largest difference between `a` and `b` (relative to `max(|b|, 1)` when `relative`);
/// infinite when an element is NaN or the lengths differ, so that a comparison cannot pass
/// on either.
#[cfg(test)]
fn worst_diff(a: &[f32], b: &[f32], relative: bool) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(a, b)| {
            let d = (a - b).abs();
            if relative { d / b.abs().max(1.0) } else { d }
        })
        .fold(
            0.0f32,
            |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused attention against burn's ops on the same inputs: plain, with strided views
    /// (q, k, v sliced out of one fused projection), and with masks that broadcast.
    #[test]
    fn attention_matches_the_plain_path() {
        let dev = Device::flex();
        dev.seed(3);
        // Tiny ragged heads, and heads as long and wide as a ViT's (several kernel blocks and
        // panels, ragged tails).
        for (b, n_q, n_k, heads, dh) in [(3, 7, 9, 4, 5), (2, 61, 50, 2, 64)] {
            attention_case(&dev, b, n_q, n_k, heads, dh);
        }
        // No queries or no keys: left to burn's ops (no panic here).
        let empty = Tensor::<3>::zeros([1, 0, 8], &dev);
        let some = Tensor::<3>::ones([1, 3, 8], &dev);
        assert!(attention(&empty, &some, &some, 2, None, 1.0).is_none());
        assert!(attention(&some, &empty, &empty, 2, None, 1.0).is_none());
        // A view whose last dimension is strided is not taken.
        let qt = Tensor::<3>::zeros([1, 4, 4], &dev).swap_dims(1, 2);
        assert!(attention(&qt, &qt, &qt, 2, None, 1.0).is_none());
    }

    /// The fused attention against burn's ops on random q, k, v (k and v strided views of one
    /// tensor) with no mask and three mask shapes.
    fn attention_case(dev: &Device, b: usize, n_q: usize, n_k: usize, heads: usize, dh: usize) {
        use burn::tensor::Distribution;
        let dev = dev.clone();
        let d = heads * dh;
        let q = Tensor::<3>::random([b, n_q, d], Distribution::Normal(0.0, 1.0), &dev);
        let qkv = Tensor::<3>::random([b, n_k, 3 * d], Distribution::Normal(0.0, 1.0), &dev);
        let (k, v) = (
            qkv.clone().slice([0..b, 0..n_k, d..2 * d]),
            qkv.slice([0..b, 0..n_k, 2 * d..3 * d]),
        );
        let scale = 0.37;
        let plain = |mask: Option<Tensor<4>>| {
            let split = |t: Tensor<3>, n: usize| t.reshape([b, n, heads, dh]).swap_dims(1, 2);
            let s = split(q.clone(), n_q).matmul(split(k.clone(), n_k).swap_dims(2, 3)) * scale;
            let s = match mask {
                Some(m) => s + m,
                None => s,
            };
            let p = burn::tensor::activation::softmax(s, 3);
            p.matmul(split(v.clone(), n_k))
                .swap_dims(1, 2)
                .reshape([b, n_q, d])
        };
        let masks = [
            None,
            Some(Tensor::<4>::random(
                [b, 1, 1, n_k],
                Distribution::Uniform(-5.0, 0.0),
                &dev,
            )),
            Some(Tensor::<4>::random(
                [1, heads, n_q, n_k],
                Distribution::Uniform(-5.0, 0.0),
                &dev,
            )),
            Some(Tensor::<4>::random(
                [b, heads, n_q, n_k],
                Distribution::Uniform(-5.0, 0.0),
                &dev,
            )),
        ];
        for mask in masks {
            let want = plain(mask.clone()).into_data().try_to_vec::<f32>().unwrap();
            let got = attention(&q, &k, &v, heads, mask.as_ref(), scale)
                .expect("CPU f32 tensors take the fused path")
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            assert_eq!(got.len(), want.len());
            let diff = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                diff < 1e-5,
                "n_q {n_q} n_k {n_k} dh {dh}: max difference {diff}"
            );
            assert!(got.iter().all(|x| x.is_finite()));
        }
    }

    fn grid() -> Vec<f32> {
        (-40_000..=40_000).map(|i| i as f32 * 2.5e-4).collect()
    }

    #[test]
    fn exp_is_within_3_ulp_of_libm() {
        for x in (-8_700..=8_800).map(|i| i as f32 * 0.01) {
            let (got, want) = (exp(x), x.exp());
            let ulp = (want.to_bits() as i64 - got.to_bits() as i64).abs();
            assert!(ulp <= 3, "exp({x}) = {got}, libm {want} ({ulp} ulp)");
        }
        assert!(exp(-200.0) < 1e-37 && exp(-200.0) >= 0.0);
    }

    #[test]
    fn scalar_kernels_match_the_definitions() {
        for x in grid() {
            let xd = x as f64;
            let sig = 1.0 / (1.0 + (-xd).exp());
            let erf_ref = libm::erf(xd);
            let gelu_ref = 0.5 * xd * (1.0 + libm::erf(xd / std::f64::consts::SQRT_2));
            let u = (2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd.powi(3));
            let tanh_ref = 0.5 * xd * (1.0 + u.tanh());
            assert!((erf(x) as f64 - erf_ref).abs() < 1e-6, "erf({x})");
            assert!((sigmoid(x) as f64 - sig).abs() < 3e-7, "sigmoid({x})");
            assert!(
                (gelu(x) as f64 - gelu_ref).abs() < 2e-6 * (1.0 + xd.abs()),
                "gelu({x})"
            );
            assert!(
                (gelu_tanh(x) as f64 - tanh_ref).abs() < 2e-6 * (1.0 + xd.abs()),
                "gelu_tanh({x})"
            );
        }
    }

    /// On the autodiff backend the fused attention node's output and the gradients of q, k
    /// and v (strided slices of one fused projection) equal those of burn's ops, without and
    /// with broadcast masks; a mask that needs a gradient takes burn's path.
    #[test]
    fn fused_attention_gradients_match_burns() {
        use burn::tensor::Distribution;
        let dev = Device::flex().autodiff();
        dev.seed(9);
        let (b, n_q, n_k, heads, dh) = (3, 6, 6, 4, 5);
        let d = heads * dh;
        let qkv0 = Tensor::<3>::random([b, n_q, 3 * d], Distribution::Normal(0.0, 1.0), &dev);
        let weight = Tensor::<3>::random([b, n_q, d], Distribution::Normal(0.0, 1.0), &dev);
        let scale = 0.41;
        let masks = [
            None,
            Some(Tensor::<4>::random(
                [b, 1, 1, n_k],
                Distribution::Uniform(-5.0, 0.0),
                &dev,
            )),
            Some(Tensor::<4>::random(
                [1, heads, n_q, n_k],
                Distribution::Uniform(-5.0, 0.0),
                &dev,
            )),
        ];
        let plain = |q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, mask: Option<Tensor<4>>| {
            let split = |t: Tensor<3>, n: usize| t.reshape([b, n, heads, dh]).swap_dims(1, 2);
            let s = split(q, n_q).matmul(split(k, n_k).swap_dims(2, 3)) * scale;
            let s = match mask {
                Some(m) => s + m,
                None => s,
            };
            let p = burn::tensor::activation::softmax(s, 3);
            p.matmul(split(v, n_k)).swap_dims(1, 2).reshape([b, n_q, d])
        };
        for mask in masks {
            let run = |fused: bool| {
                let qkv = qkv0.clone().detach().require_grad();
                let part = |i: usize| qkv.clone().slice([0..b, 0..n_q, i * d..(i + 1) * d]);
                let (q, k, v) = (part(0), part(1), part(2));
                let out = if fused {
                    attention(&q, &k, &v, heads, mask.as_ref(), scale)
                        .expect("autodiff CPU tensors take the fused node")
                } else {
                    plain(q, k, v, mask.clone())
                };
                let g = qkv
                    .grad(&(out.clone() * weight.clone()).sum().backward())
                    .unwrap();
                (
                    out.inner().into_data().try_to_vec::<f32>().unwrap(),
                    g.into_data().try_to_vec::<f32>().unwrap(),
                )
            };
            let (y1, g1) = run(true);
            let (y0, g0) = run(false);
            assert_eq!((y1.len(), g1.len()), (y0.len(), g0.len()));
            let worst = |a: &[f32], b: &[f32]| worst_diff(a, b, false);
            assert!(worst(&y1, &y0) < 1e-5, "output {}", worst(&y1, &y0));
            assert!(worst(&g1, &g0) < 1e-5, "gradient {}", worst(&g1, &g0));
            // The gradient is not trivially zero.
            assert!(g0.iter().map(|x| x.abs()).sum::<f32>() > 1.0);
        }
        let tracked = Tensor::<4>::zeros([1, 1, 1, n_k], &dev).require_grad();
        let part = |i: usize| qkv0.clone().slice([0..b, 0..n_q, i * d..(i + 1) * d]);
        assert!(attention(&part(0), &part(1), &part(2), heads, Some(&tracked), scale).is_none());
    }

    /// Each derivative against a central difference of its function in f64.
    #[test]
    fn derivatives_match_central_differences() {
        type Reference = (Kernel, fn(f64) -> f64);
        let f64s: [Reference; 6] = [
            (Kernel::Gelu, |x| {
                0.5 * x * (1.0 + libm::erf(x / 2f64.sqrt()))
            }),
            (Kernel::GeluTanh, |x| {
                let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
                0.5 * x * (1.0 + u.tanh())
            }),
            (Kernel::QuickGelu, |x| x / (1.0 + (-1.702 * x).exp())),
            (Kernel::Silu, |x| x / (1.0 + (-x).exp())),
            (Kernel::Sigmoid, |x| 1.0 / (1.0 + (-x).exp())),
            (Kernel::Exp, f64::exp),
        ];
        let xs: Vec<f32> = (-600..=600).map(|i| i as f32 / 60.0).collect();
        for (kernel, f) in f64s {
            let mut g = vec![1.0f32; xs.len()];
            grad_map(kernel, &xs, &mut g);
            for (&x, &got) in xs.iter().zip(&g) {
                let h = 1e-4;
                let x = x as f64;
                let want = (f(x + h) - f(x - h)) / (2.0 * h);
                let tol = 2e-5 * want.abs().max(1.0);
                assert!(
                    (got as f64 - want).abs() < tol,
                    "{kernel:?}'({x}) = {got}, want {want}"
                );
            }
        }
    }

    /// On the autodiff backend the fused node's output and input gradient equal those of
    /// burn's elementary ops, for every activation, with an uneven upstream gradient; a
    /// strided input takes burn's path and still agrees.
    #[test]
    fn fused_autodiff_nodes_match_burns_gradients() {
        use crate::nn::activation::Activation;
        use burn::tensor::Distribution;
        let dev = Device::flex().autodiff();
        dev.seed(5);
        let base = Tensor::<2>::random([37, 300], Distribution::Normal(0.0, 2.5), &dev);
        let weight = Tensor::<2>::random([37, 300], Distribution::Normal(0.0, 1.0), &dev);
        let acts = [
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::QuickGelu,
            Activation::Silu,
        ];
        // An autodiff tensor takes the fused node, a strided one does not.
        let x = base.clone().detach().require_grad();
        assert!(apply(Kernel::Gelu, x.clone()).is_ok());
        assert!(apply(Kernel::Gelu, x.swap_dims(0, 1)).is_err());
        for act in acts {
            for strided in [false, true] {
                let run = |fused: bool| {
                    let x = base.clone().detach().require_grad();
                    let input = if strided {
                        x.clone().swap_dims(0, 1)
                    } else {
                        x.clone()
                    };
                    let y = if fused {
                        act.forward(input)
                    } else {
                        act.plain(input)
                    };
                    let y = if strided { y.swap_dims(0, 1) } else { y };
                    let loss = (y.clone() * weight.clone()).sum();
                    let grads = loss.backward();
                    let gx = x.grad(&grads).unwrap();
                    (
                        y.inner().into_data().try_to_vec::<f32>().unwrap(),
                        gx.into_data().try_to_vec::<f32>().unwrap(),
                    )
                };
                let (y1, g1) = run(true);
                let (y0, g0) = run(false);
                assert_eq!(y1.len(), y0.len());
                assert_eq!(g1.len(), g0.len());
                let worst = |a: &[f32], b: &[f32]| worst_diff(a, b, true);
                assert!(
                    worst(&y1, &y0) < 1e-5,
                    "{act:?} output: {}",
                    worst(&y1, &y0)
                );
                assert!(
                    worst(&g1, &g0) < 1e-5,
                    "{act:?} gradient: {}",
                    worst(&g1, &g0)
                );
            }
        }
        // The sigmoid of squeeze-excitation.
        let x = base.clone().detach().require_grad();
        let y = crate::nn::activation::sigmoid(x.clone());
        let g = x.grad(&(y * weight.clone()).sum().backward()).unwrap();
        let x0 = base.detach().require_grad();
        let y0 = burn::tensor::activation::sigmoid(x0.clone());
        let g0 = x0.grad(&(y0 * weight).sum().backward()).unwrap();
        let (g, g0) = (
            g.into_data().try_to_vec::<f32>().unwrap(),
            g0.into_data().try_to_vec::<f32>().unwrap(),
        );
        assert!(g.iter().zip(&g0).all(|(a, b)| (a - b).abs() < 1e-6));
    }

    #[test]
    fn dispatched_loops_equal_the_scalar_functions() {
        let src = grid();
        for k in [
            Kernel::Gelu,
            Kernel::GeluTanh,
            Kernel::QuickGelu,
            Kernel::Silu,
            Kernel::Sigmoid,
        ] {
            let mut dst = vec![f32::NAN; src.len()];
            map(k, &src, &mut dst);
            for (x, y) in src.iter().zip(&dst) {
                let want = match k {
                    Kernel::Gelu => gelu(*x),
                    Kernel::GeluTanh => gelu_tanh(*x),
                    Kernel::QuickGelu => x * sigmoid(1.702 * x),
                    Kernel::Silu => x * sigmoid(*x),
                    Kernel::Sigmoid => sigmoid(*x),
                    Kernel::Exp => exp(*x),
                };
                // The vector code may contract into FMAs differently from the scalar code.
                assert!(
                    (y - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "{k:?}({x}): {y} vs {want}"
                );
            }
        }
    }
}

/// Multi-head attention `softmax(q kᵀ · scale + mask) v` straight on the `[batch, n, heads ·
/// d_head]` projections, on the CPU backend: each (image, head) pair reads its queries, keys
/// and values in place through strides (burn's op copies q, k and v into `[batch, heads, n,
/// d_head]` first and the result back), the scores of one pair live in a scratch buffer, and
/// the softmax uses the vectorised `exp`. `mask` is added to the scores and broadcasts to
/// `[batch, heads, n_q, n_k]`. Returns `[batch, n_q, heads · d_head]`, or `None` when a tensor
/// is not an `f32` CPU tensor whose last dimension is contiguous, or the shapes do not fit
/// (the caller then takes burn's op).
///
/// On the autodiff backend the result is one graph node whose backward ([`AttentionBackward`])
/// computes the gradients of q, k and v pair by pair from the kept probabilities, where burn
/// records a dozen ops (reshapes, transposes, two batched matmuls, the softmax) and their
/// gradients. A mask that itself needs a gradient takes burn's path.
pub fn attention(
    q: &Tensor<3>,
    k: &Tensor<3>,
    v: &Tensor<3>,
    heads: usize,
    mask: Option<&Tensor<4>>,
    scale: f32,
) -> Option<Tensor<3>> {
    let Ok(qp) = q.clone().try_into_primitive::<Flex>() else {
        return attention_autodiff(q, k, v, heads, mask, scale);
    };
    let kp = k.clone().try_into_primitive::<Flex>().ok()?;
    let vp = v.clone().try_into_primitive::<Flex>().ok()?;
    let mp = match mask {
        Some(m) => Some(m.clone().try_into_primitive::<Flex>().ok()?),
        None => None,
    };
    let views = Views::new(qp, kp, vp, mp, heads)?;
    let (out, _) = views.forward(scale, false);
    let data = TensorData::new(out, [views.b, views.n_q, views.d]);
    Some(Tensor::from_primitive::<Flex>(FlexTensor::from_data(data)))
}

/// [`attention`] on the autodiff backend over burn-flex.
fn attention_autodiff(
    q: &Tensor<3>,
    k: &Tensor<3>,
    v: &Tensor<3>,
    heads: usize,
    mask: Option<&Tensor<4>>,
    scale: f32,
) -> Option<Tensor<3>> {
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::ops::{Backward, OpsKind};
    let qa = q.clone().try_into_primitive::<Ad>().ok()?;
    let ka = k.clone().try_into_primitive::<Ad>().ok()?;
    let va = v.clone().try_into_primitive::<Ad>().ok()?;
    let mp = match mask {
        Some(m) => {
            let ma = m.clone().try_into_primitive::<Ad>().ok()?;
            if ma.is_tracked() {
                return None;
            }
            Some(ma.into_primitive())
        }
        None => None,
    };
    let views = Views::new(
        qa.primitive().clone(),
        ka.primitive().clone(),
        va.primitive().clone(),
        mp,
        heads,
    )?;
    let (_, qg) = qa.into_parts();
    let (_, kg) = ka.into_parts();
    let (_, vg) = va.into_parts();
    let prep = AttentionBackward { scale }
        .prepare::<NoCheckpointing>([qg, kg, vg])
        .compute_bound()
        .stateful();
    let tracked = matches!(prep, OpsKind::Tracked(_));
    let (out, probs) = views.forward(scale, tracked);
    let output = FlexTensor::from_data(TensorData::new(out, [views.b, views.n_q, views.d]));
    let node = match prep {
        OpsKind::Tracked(prep) => {
            let state = AttentionState {
                views: std::sync::Arc::new(views),
                probs: std::sync::Arc::new(probs.expect("kept when tracked")),
            };
            prep.finish(state, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    Some(Tensor::from_primitive::<Ad>(node))
}

/// q, k and v as strided `[batch, n, heads · d_head]` views (last dimension contiguous) and
/// the mask, checked to fit one another.
#[derive(Debug)]
struct Views {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    mask: Option<FlexTensor>,
    b: usize,
    n_q: usize,
    n_k: usize,
    d: usize,
    heads: usize,
}

/// Where element (i, j) of image `bi` of a `[b, n, d]` view is: `offset + bi·img + i·row + j`.
#[derive(Clone, Copy)]
struct Geom {
    offset: isize,
    img: isize,
    row: isize,
}

impl Views {
    fn new(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        mask: Option<FlexTensor>,
        heads: usize,
    ) -> Option<Views> {
        let fits = |p: &FlexTensor| {
            p.dtype() == DType::F32
                && p.layout().shape().num_dims() == 3
                && p.layout().strides()[2] == 1
        };
        if !(fits(&q) && fits(&k) && fits(&v)) {
            return None;
        }
        let dims = |p: &FlexTensor| {
            let s = p.layout().shape();
            [s[0], s[1], s[2]]
        };
        let [b, n_q, d] = dims(&q);
        let [kb, n_k, kd] = dims(&k);
        if heads == 0 || d % heads != 0 || kd != d || dims(&v) != [kb, n_k, kd] || kb != b {
            return None;
        }
        // Empty tensors go to burn's ops.
        if b == 0 || n_q == 0 || n_k == 0 || d == 0 {
            return None;
        }
        if let Some(p) = &mask {
            let m = p.layout().shape();
            let ok = |i: usize, want: usize| m[i] == 1 || m[i] == want;
            if p.dtype() != DType::F32
                || m.num_dims() != 4
                || !(ok(0, b) && ok(1, heads) && ok(2, n_q) && m[3] == n_k)
            {
                return None;
            }
        }
        Some(Views {
            q,
            k,
            v,
            mask,
            b,
            n_q,
            n_k,
            d,
            heads,
        })
    }

    fn geom(p: &FlexTensor) -> Geom {
        let s = p.layout().strides();
        Geom {
            offset: p.layout().start_offset() as isize,
            img: s[0],
            row: s[1],
        }
    }

    /// q, k and v: each one's geometry and storage.
    fn operands(&self) -> [(Geom, &[f32]); 3] {
        [&self.q, &self.k, &self.v].map(|p| (Self::geom(p), p.storage::<f32>()))
    }

    /// The output `[b, n_q, d]` and, with `keep_probs`, every pair's probabilities
    /// `[b · heads, n_q, n_k]`.
    fn forward(&self, scale: f32, keep_probs: bool) -> (Vec<f32>, Option<Vec<f32>>) {
        let Views {
            b,
            n_q,
            n_k,
            d,
            heads,
            ..
        } = *self;
        let dh = d / heads;
        let [(qg, qs), (kg, ks), (vg, vs)] = self.operands();
        // The mask's strides with broadcast dimensions at 0.
        let mgeom = self.mask.as_ref().map(|p| {
            let l = p.layout();
            let dims = l.shape();
            let st = l.strides();
            let s = |i: usize| if dims[i] == 1 { 0 } else { st[i] };
            (l.start_offset() as isize, [s(0), s(1), s(2), s(3)])
        });
        let ms = self.mask.as_ref().map(|p| p.storage::<f32>());
        let mut out = vec![0.0f32; b * n_q * d];
        let mut probs = if keep_probs {
            vec![0.0f32; b * heads * n_q * n_k]
        } else {
            Vec::new()
        };
        let out_ptr = SendPtr(out.as_mut_ptr());
        if !keep_probs && sgemm::available() {
            let pair = |bh: usize, scratch: &mut Scratch| {
                let (bi, h) = (bh / heads, bh % heads);
                let base = |g: Geom| g.offset + bi as isize * g.img + (h * dh) as isize;
                let mask = match (ms, mgeom) {
                    (Some(m), Some((off, st))) => {
                        Some((m, off + bi as isize * st[0] + h as isize * st[1], st))
                    }
                    _ => None,
                };
                // SAFETY: pair (bi, h) writes only its head's columns of image bi's rows.
                let dst = unsafe { out_ptr.get().add(bi * n_q * d + h * dh) };
                let operands = [
                    (qs, base(qg), qg.row),
                    (ks, base(kg), kg.row),
                    (vs, base(vg), vg.row),
                ];
                layers::simd(|| {
                    head_attention(operands, (n_q, n_k, dh), scale, mask, (dst, d), scratch)
                });
            };
            use rayon::prelude::*;
            (0..b * heads)
                .into_par_iter()
                .for_each_init(Scratch::default, |s, bh| pair(bh, s));
            return (out, None);
        }
        let probs_ptr = SendPtr(probs.as_mut_ptr());
        let pair = |bh: usize, scratch: &mut Vec<f32>| {
            let (bi, h) = (bh / heads, bh % heads);
            let base = |g: Geom| g.offset + bi as isize * g.img + (h * dh) as isize;
            let scores: &mut [f32] = if keep_probs {
                // SAFETY: pair bh owns block bh of `probs` (n_q · n_k elements); no other
                // pair touches it.
                unsafe {
                    std::slice::from_raw_parts_mut(probs_ptr.get().add(bh * n_q * n_k), n_q * n_k)
                }
            } else {
                scratch.resize(n_q * n_k, 0.0);
                scratch
            };
            // SAFETY: every index below stays inside its tensor: rows < n, columns < d_head,
            // and the views' strides come from their layouts; each pair writes its own columns
            // of `out` (its head's slice of its image's rows), so no two pairs write the same
            // place.
            unsafe {
                gemm_f32(
                    n_q,
                    n_k,
                    dh,
                    (scores.as_mut_ptr(), 1, n_k as isize),
                    false,
                    (qs.as_ptr().offset(base(qg)), 1, qg.row),
                    (ks.as_ptr().offset(base(kg)), kg.row, 1),
                    0.0,
                    scale,
                    gemm::Parallelism::None,
                );
            }
            for (i, row) in scores.chunks_mut(n_k).enumerate() {
                if let (Some(m), Some((off, st))) = (ms, mgeom) {
                    let start = off + bi as isize * st[0] + h as isize * st[1] + i as isize * st[2];
                    for (j, s) in row.iter_mut().enumerate() {
                        *s += m[(start + j as isize * st[3]) as usize];
                    }
                }
                softmax_in_place(row);
            }
            // SAFETY: as above.
            unsafe {
                gemm_f32(
                    n_q,
                    dh,
                    n_k,
                    (out_ptr.get().add(bi * n_q * d + h * dh), 1, d as isize),
                    false,
                    (scores.as_ptr(), 1, n_k as isize),
                    (vs.as_ptr().offset(base(vg)), 1, vg.row),
                    0.0,
                    1.0,
                    gemm::Parallelism::None,
                );
            }
        };
        {
            use rayon::prelude::*;
            (0..b * heads)
                .into_par_iter()
                .for_each_init(Vec::new, |s, bh| pair(bh, s));
        }
        (out, keep_probs.then_some(probs))
    }

    /// The gradients of q, k and v (each `[b, n, d]`, contiguous) from the output's gradient
    /// `dout` (contiguous `[b, n_q, d]`) and the kept probabilities:
    /// `dV = Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ⊙ (dP - rowsum(dP ⊙ P))`, `dQ = scale dS K`,
    /// `dK = scale dSᵀ Q`, pair by pair.
    fn backward(&self, scale: f32, probs: &[f32], dout: &[f32]) -> [Vec<f32>; 3] {
        let Views {
            b,
            n_q,
            n_k,
            d,
            heads,
            ..
        } = *self;
        let dh = d / heads;
        let [(qg, qs), (kg, ks), (vg, vs)] = self.operands();
        let mut dq = vec![0.0f32; b * n_q * d];
        let mut dk = vec![0.0f32; b * n_k * d];
        let mut dv = vec![0.0f32; b * n_k * d];
        let (dq_ptr, dk_ptr, dv_ptr) = (
            SendPtr(dq.as_mut_ptr()),
            SendPtr(dk.as_mut_ptr()),
            SendPtr(dv.as_mut_ptr()),
        );
        let pair = |bh: usize, ds: &mut Vec<f32>| {
            let (bi, h) = (bh / heads, bh % heads);
            let base = |g: Geom| g.offset + bi as isize * g.img + (h * dh) as isize;
            let p = &probs[bh * n_q * n_k..(bh + 1) * n_q * n_k];
            let dout = dout[bi * n_q * d + h * dh..].as_ptr();
            ds.resize(n_q * n_k, 0.0);
            // SAFETY: as in `forward`: every read stays inside its view or buffer, and pair
            // (bi, h) writes only its head's columns of image bi in dq, dk and dv.
            unsafe {
                // dV = Pᵀ dO: [n_k, dh].
                gemm_f32(
                    n_k,
                    dh,
                    n_q,
                    (dv_ptr.get().add(bi * n_k * d + h * dh), 1, d as isize),
                    false,
                    (p.as_ptr(), n_k as isize, 1),
                    (dout, 1, d as isize),
                    0.0,
                    1.0,
                    gemm::Parallelism::None,
                );
                // dP = dO Vᵀ: [n_q, n_k].
                gemm_f32(
                    n_q,
                    n_k,
                    dh,
                    (ds.as_mut_ptr(), 1, n_k as isize),
                    false,
                    (dout, 1, d as isize),
                    (vs.as_ptr().offset(base(vg)), vg.row, 1),
                    0.0,
                    1.0,
                    gemm::Parallelism::None,
                );
            }
            // dS = P ⊙ (dP - rowsum(dP ⊙ P)).
            for (drow, prow) in ds.chunks_mut(n_k).zip(p.chunks(n_k)) {
                let c: f32 = drow.iter().zip(prow).map(|(a, b)| a * b).sum();
                for (x, &pv) in drow.iter_mut().zip(prow) {
                    *x = pv * (*x - c);
                }
            }
            // SAFETY: as above.
            unsafe {
                // dQ = scale dS K: [n_q, dh].
                gemm_f32(
                    n_q,
                    dh,
                    n_k,
                    (dq_ptr.get().add(bi * n_q * d + h * dh), 1, d as isize),
                    false,
                    (ds.as_ptr(), 1, n_k as isize),
                    (ks.as_ptr().offset(base(kg)), 1, kg.row),
                    0.0,
                    scale,
                    gemm::Parallelism::None,
                );
                // dK = scale dSᵀ Q: [n_k, dh].
                gemm_f32(
                    n_k,
                    dh,
                    n_q,
                    (dk_ptr.get().add(bi * n_k * d + h * dh), 1, d as isize),
                    false,
                    (ds.as_ptr(), n_k as isize, 1),
                    (qs.as_ptr().offset(base(qg)), 1, qg.row),
                    0.0,
                    scale,
                    gemm::Parallelism::None,
                );
            }
        };
        {
            use rayon::prelude::*;
            (0..b * heads)
                .into_par_iter()
                .for_each_init(Vec::new, |s, bh| pair(bh, s));
        }
        [dq, dk, dv]
    }
}

/// What [`AttentionBackward`] keeps: the views of q, k and v and the probabilities.
#[derive(Clone, Debug)]
pub struct AttentionState {
    views: std::sync::Arc<Views>,
    probs: std::sync::Arc<Vec<f32>>,
}

/// The backward of a fused attention node ([`attention`] on the autodiff backend).
#[derive(Debug)]
pub struct AttentionBackward {
    scale: f32,
}

impl burn::backend::autodiff::ops::Backward<Flex, 3> for AttentionBackward {
    type State = AttentionState;

    fn backward(
        self,
        ops: burn::backend::autodiff::ops::Ops<AttentionState, 3>,
        grads: &mut burn::backend::autodiff::grads::Gradients,
        _checkpointer: &mut burn::backend::autodiff::checkpoint::base::Checkpointer,
    ) {
        let dout = dense_f32(grads.consume::<Flex>(&ops.node));
        let (start, end) = dout.layout().contiguous_offsets().expect("made contiguous");
        let views = &ops.state.views;
        let [dq, dk, dv] = views.backward(
            self.scale,
            &ops.state.probs,
            &dout.storage::<f32>()[start..end],
        );
        let (b, n_q, n_k, d) = (views.b, views.n_q, views.n_k, views.d);
        let [pq, pk, pv] = ops.parents;
        for (parent, g, n) in [(pq, dq, n_q), (pk, dk, n_k), (pv, dv, n_k)] {
            if let Some(node) = parent {
                let g = FlexTensor::from_data(TensorData::new(g, [b, n, d]));
                grads.register::<Flex>(node.id, g);
            }
        }
    }
}

/// `dst ← alpha · dst + beta · lhs · rhs` (`alpha` only with `read_dst`), an `m × n` result
/// over `k`: gemm's call with each operand as (start, column stride, row stride) and no
/// conjugation.
///
/// # Safety
/// Every operand's `m × k`, `k × n` and `m × n` elements, through its strides, must lie in
/// its buffer, and no other thread may write `dst`'s elements during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    dst: (*mut f32, isize, isize),
    read_dst: bool,
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    alpha: f32,
    beta: f32,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.1,
            dst.2,
            read_dst,
            lhs.0,
            lhs.1,
            lhs.2,
            rhs.0,
            rhs.1,
            rhs.2,
            alpha,
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Buffers one thread reuses from head to head: `Kᵀ` and the transposed scores.
#[derive(Default)]
struct Scratch {
    kt: Vec<f32>,
    st: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
}

/// The attention of one head of one image at inference, on the packed-weight kernel
/// ([`sgemm`]): the scores are computed transposed, `Sᵀ = K Qᵀ` (`[n_k, n_q]`), so that the
/// softmax over the keys runs down columns with every query in its own lane, and `Sᵀ` is then
/// already the transposed left operand the kernel takes for `P V`. `q`, `k`, `v`: storage,
/// the head's first element and the row stride; `mask`: storage, this pair's offset and the
/// strides (broadcast dimensions at 0); the output goes to `dst`, rows `ldo` apart.
#[allow(clippy::type_complexity)]
#[inline(always)]
fn head_attention(
    [(qs, qb, qr), (ks, kb, kr), (vs, vb, vr)]: [(&[f32], isize, isize); 3],
    (n_q, n_k, dh): (usize, usize, usize),
    scale: f32,
    mask: Option<(&[f32], isize, [isize; 4])>,
    (dst, ldo): (*mut f32, usize),
    scratch: &mut Scratch,
) {
    use sgemm::{PackedWeight, Precision};
    let Scratch { kt, st, max, sum } = scratch;
    kt.clear();
    kt.resize(dh * n_k, 0.0);
    for j in 0..n_k {
        let row = &ks[(kb + j as isize * kr) as usize..][..dh];
        for (dd, &x) in row.iter().enumerate() {
            kt[dd * n_k + j] = x;
        }
    }
    let qt = PackedWeight::new(qs, (qb as usize, 1, qr), dh, n_q, Precision::F32)
        .expect("the view's rows lie inside q's storage");
    st.clear();
    st.resize(n_k * n_q, 0.0);
    // SAFETY: st holds n_k rows of n_q floats; AVX-512F was checked by the caller.
    unsafe { sgemm::product_t(kt, n_k, n_k, &qt, st.as_mut_ptr(), n_q) };
    max.clear();
    max.resize(n_q, f32::NEG_INFINITY);
    for (j, row) in st.chunks_exact_mut(n_q).enumerate() {
        match mask {
            Some((m, off, s)) => {
                let start = off + j as isize * s[3];
                for (i, x) in row.iter_mut().enumerate() {
                    *x = *x * scale + m[(start + i as isize * s[2]) as usize];
                }
            }
            None => row.iter_mut().for_each(|x| *x *= scale),
        }
        for (x, m) in row.iter().zip(max.iter_mut()) {
            *m = if *x > *m { *x } else { *m };
        }
    }
    sum.clear();
    sum.resize(n_q, 0.0);
    for row in st.chunks_exact_mut(n_q) {
        for (x, m) in row.iter_mut().zip(max.iter()) {
            *x -= m;
        }
        map_in_place(Kernel::Exp, row);
        for (x, s) in row.iter().zip(sum.iter_mut()) {
            *s += x;
        }
    }
    for s in sum.iter_mut() {
        *s = 1.0 / *s;
    }
    for row in st.chunks_exact_mut(n_q) {
        for (x, s) in row.iter_mut().zip(sum.iter()) {
            *x *= s;
        }
    }
    let vp = PackedWeight::new(vs, (vb as usize, vr, 1), n_k, dh, Precision::F32)
        .expect("the view's rows lie inside v's storage");
    // SAFETY: st is Pᵀ (n_k rows of n_q); dst covers n_q rows of dh floats ldo apart, which
    // belong to this head (the caller's contract).
    unsafe { sgemm::product_t(st, n_q, n_q, &vp, dst, ldo) };
}

/// A raw pointer that rayon's tasks may share: each writes a disjoint part.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the tasks that share it write disjoint elements (see `attention`).
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `row ← softmax(row)`, with the maximum subtracted first. Masked entries (large negative
/// additive masks) get `e^-87` relative weight at most, not exactly 0; a row that is all `-inf`
/// becomes NaN, as in burn's softmax.
fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for x in row.iter_mut() {
        *x -= max;
    }
    map_in_place(Kernel::Exp, row);
    let inv = 1.0 / row.iter().sum::<f32>();
    for x in row.iter_mut() {
        *x *= inv;
    }
}
