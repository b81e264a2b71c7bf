//! Fused CPU layers with weights: linear, layer norm, and the pointwise and depthwise
//! convolutions of EfficientNet, each one pass (or one GEMM) at inference and one autodiff
//! node with its own backward in training.
//!
//! burn-flex computes these as chains of tensor ops: a linear layer zeroes its output, copies
//! it to realign it and adds the bias in another pass; a layer norm is eight ops; a convolution's
//! weight gradient is a convolution over transposed copies of the input and the gradient. In
//! training each op is also a graph node. Measured on the CLIP training steps, the output
//! copies alone were 17% of the time and the layer-norm ops another 10%. Every fused path is
//! tested against burn's layer (outputs and every gradient); tensors it does not take (not
//! `f32`, not contiguous, another backend) go to burn.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::sync::Arc;

use burn::backend::flex::{Flex, FlexTensor};
use burn::prelude::*;
use burn::tensor::DType;

use super::{Ad, gemm_f32};

/// A fused op of an input, a weight and an optional bias.
pub trait Fused3: Debug + Send + Sync + Sized + 'static {
    /// The output; `tracked`: a backward will follow (keep what it needs).
    fn forward(&mut self, tracked: bool) -> FlexTensor;
    /// The gradients of the input, the weight and the bias from the output's (contiguous),
    /// each only where `need` asks.
    fn backward(&self, dy: &[f32], need: [bool; 3]) -> [Option<FlexTensor>; 3];
}

/// Runs the op `build` makes of `x`, `w` and `b`: on burn-flex directly, on the autodiff
/// backend over it as one node with [`Backward3`]. `None` when a tensor is on another backend
/// or `build` refuses the operands.
pub fn run<T: Fused3, const D: usize, const W: usize>(
    x: &Tensor<D>,
    w: &Tensor<W>,
    b: Option<&Tensor<1>>,
    build: impl FnOnce(FlexTensor, FlexTensor, Option<FlexTensor>) -> Option<T>,
) -> Option<Tensor<D>> {
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::ops::{Backward, OpsKind};
    if let Ok(xp) = x.clone().try_into_primitive::<Flex>() {
        let wp = w.clone().try_into_primitive::<Flex>().ok()?;
        let bp = match b {
            Some(b) => Some(b.clone().try_into_primitive::<Flex>().ok()?),
            None => None,
        };
        let mut op = build(xp, wp, bp)?;
        return Some(Tensor::from_primitive::<Flex>(op.forward(false)));
    }
    let xa = x.clone().try_into_primitive::<Ad>().ok()?;
    let wa = w.clone().try_into_primitive::<Ad>().ok()?;
    let ba = match b {
        Some(b) => Some(b.clone().try_into_primitive::<Ad>().ok()?),
        None => None,
    };
    let mut op = build(
        xa.primitive().clone(),
        wa.primitive().clone(),
        ba.as_ref().map(|b| b.primitive().clone()),
    )?;
    let tracked = xa.is_tracked() || wa.is_tracked() || ba.as_ref().is_some_and(|b| b.is_tracked());
    let output = op.forward(tracked);
    let op = Arc::new(op);
    let (_, xg) = xa.into_parts();
    let (_, wg) = wa.into_parts();
    let node = match ba {
        Some(ba) => {
            let (_, bg) = ba.into_parts();
            match Backward3::<T>(PhantomData)
                .prepare::<NoCheckpointing>([xg, wg, bg])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(op, output),
                OpsKind::UnTracked(prep) => prep.finish(output),
            }
        }
        None => match Backward3::<T>(PhantomData)
            .prepare::<NoCheckpointing>([xg, wg])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(op, output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        },
    };
    Some(Tensor::from_primitive::<Ad>(node))
}

/// The backward of a [`Fused3`] node; its parents are the input, the weight and (when there
/// is one) the bias.
#[derive(Debug)]
pub struct Backward3<T>(PhantomData<T>);

impl<T: Fused3, const N: usize> burn::backend::autodiff::ops::Backward<Flex, N> for Backward3<T> {
    type State = Arc<T>;

    fn backward(
        self,
        ops: burn::backend::autodiff::ops::Ops<Self::State, N>,
        grads: &mut burn::backend::autodiff::grads::Gradients,
        _checkpointer: &mut burn::backend::autodiff::checkpoint::base::Checkpointer,
    ) {
        let dy = grads.consume::<Flex>(&ops.node);
        let dy = super::dense_f32(dy);
        let (s, e) = dy.layout().contiguous_offsets().expect("made contiguous");
        let parents: Vec<_> = ops.parents.into_iter().collect();
        let mut need = [false; 3];
        for (n, p) in need.iter_mut().zip(&parents) {
            *n = p.is_some();
        }
        let out = ops.state.backward(&dy.storage::<f32>()[s..e], need);
        for (parent, g) in parents.into_iter().zip(out) {
            if let (Some(node), Some(g)) = (parent, g) {
                grads.register::<Flex>(node.id, g);
            }
        }
    }
}

/// `p`'s elements when it is contiguous (checked by the caller).
fn slice(p: &FlexTensor) -> &[f32] {
    let (s, e) = p.layout().contiguous_offsets().expect("checked contiguous");
    &p.storage::<f32>()[s..e]
}

fn tensor(v: Vec<f32>, shape: impl Into<burn::tensor::Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape))
}

/// Runs `f` compiled for AVX-512 or AVX2 + FMA when this CPU has them (the closure is inlined
/// into a function with those features enabled), plainly otherwise.
#[inline(always)]
pub(super) fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { with_avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            return unsafe { with_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// A computation whose [`SimdBody::run`] is marked `#[inline(always)]`, for [`simd_apply`];
/// `L` is the instruction set it is compiled for, whose [`Lanes`] it may call.
pub(super) trait SimdBody {
    type Out;
    fn run<L: Lanes>(self) -> Self::Out;
}

/// Loops over slices in one instruction set, full vectors and then one masked vector for
/// the rest (short rows, such as a 7 × 7 feature map's, never fall into scalar tails).
/// Only called inside [`simd_apply`], whose function has the set's features enabled.
pub(super) trait Lanes {
    /// `y += a x` over `y`'s length (`x` at least as long).
    fn axpy(y: &mut [f32], a: f32, x: &[f32]);
    /// `l += g v` elementwise over `g`'s length (`v` at least as long); `l` has room for
    /// whole vectors past it ([`LANE_PAD`]) and is read and written in whole vectors, so
    /// the next call's loads are forwarded from these stores (a masked store is not).
    fn fma(l: &mut [f32], g: &[f32], v: &[f32]);
    /// `out[q] += Σ_t w[t] · src[offs[t] + q]` for `q` below `out.len()`: the taps summed in
    /// a register, `out` read and written once.
    fn taps_row(out: &mut [f32], src: &[f32], offs: &[usize], w: &[f32]);
}

/// What [`Lanes::fma`]'s accumulators are rounded up to: the widest vector's lanes.
const LANE_PAD: usize = 16;

/// `n` rounded up to whole [`LANE_PAD`]s.
fn lane_padded(n: usize) -> usize {
    n.div_ceil(LANE_PAD) * LANE_PAD
}

/// Checks [`Lanes::taps_row`]'s reads fit: every `offs[t] + n` within `src`, a weight per tap.
#[inline(always)]
fn check_taps(n: usize, src: &[f32], offs: &[usize], w: &[f32]) {
    let last = offs.iter().copied().max().unwrap_or(0);
    assert!(w.len() >= offs.len() && (offs.is_empty() || last + n <= src.len()));
}

/// Plain loops (LLVM vectorises them for the baseline).
pub(super) struct Plain;

impl Lanes for Plain {
    #[inline(always)]
    fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        let x = &x[..y.len()];
        for (y, &x) in y.iter_mut().zip(x) {
            *y += a * x;
        }
    }

    #[inline(always)]
    fn fma(l: &mut [f32], g: &[f32], v: &[f32]) {
        let (l, v) = (&mut l[..g.len()], &v[..g.len()]);
        for ((l, &g), &v) in l.iter_mut().zip(g).zip(v) {
            *l += g * v;
        }
    }

    #[inline(always)]
    fn taps_row(out: &mut [f32], src: &[f32], offs: &[usize], w: &[f32]) {
        check_taps(out.len(), src, offs, w);
        for (&o, &wt) in offs.iter().zip(w) {
            Self::axpy(out, wt, &src[o..]);
        }
    }
}

/// One instruction set's vector of `f32` lanes, for the [`Lanes`] loops written once over it.
/// Only used inside [`simd_apply`]'s function for that set (its features enabled).
pub(super) trait Vector: Copy {
    /// Lanes per vector.
    const W: usize;
    /// Lanes `..k` (`1 ≤ k ≤ W`) from `p`, zeros above.
    ///
    /// # Safety
    /// The set's features are enabled; `p..p + k` is readable.
    unsafe fn load(p: *const f32, k: usize) -> Self;
    /// Stores lanes `..k` (`1 ≤ k ≤ W`) of `v` to `p`.
    ///
    /// # Safety
    /// The set's features are enabled; `p..p + k` is writable.
    unsafe fn store(p: *mut f32, k: usize, v: Self);
    /// `a` in every lane.
    ///
    /// # Safety
    /// The set's features are enabled.
    unsafe fn splat(a: f32) -> Self;
    /// `a b + c` lane by lane.
    ///
    /// # Safety
    /// The set's features are enabled.
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
}

impl<V: Vector> Lanes for V {
    #[inline(always)]
    fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        let n = y.len();
        let x = &x[..n];
        // SAFETY: only inlined into `simd_apply`'s function for `V` (its features checked
        // there); every access is below `n`, the length of both slices.
        unsafe {
            let (yp, xp, av) = (y.as_mut_ptr(), x.as_ptr(), V::splat(a));
            let mut i = 0;
            while i < n {
                let k = (n - i).min(V::W);
                let v = V::fma(av, V::load(xp.add(i), k), V::load(yp.add(i), k));
                V::store(yp.add(i), k, v);
                i += V::W;
            }
        }
    }

    #[inline(always)]
    fn fma(l: &mut [f32], g: &[f32], v: &[f32]) {
        let n = g.len();
        let (l, v) = (&mut l[..lane_padded(n)], &v[..n]);
        // SAFETY: as in `axpy`; `l` holds whole vectors up to `lane_padded(n)` (a multiple of
        // every `V::W`).
        unsafe {
            let (lp, gp, vp) = (l.as_mut_ptr(), g.as_ptr(), v.as_ptr());
            let mut i = 0;
            while i < n {
                let k = (n - i).min(V::W);
                let r = V::fma(
                    V::load(gp.add(i), k),
                    V::load(vp.add(i), k),
                    V::load(lp.add(i), V::W),
                );
                V::store(lp.add(i), V::W, r);
                i += V::W;
            }
        }
    }

    #[inline(always)]
    fn taps_row(out: &mut [f32], src: &[f32], offs: &[usize], w: &[f32]) {
        let n = out.len();
        check_taps(n, src, offs, w);
        // SAFETY: as in `axpy`; every read `offs[t] + q` is below `src.len()` (`check_taps`).
        unsafe {
            let (op, sp) = (out.as_mut_ptr(), src.as_ptr());
            let mut q = 0;
            while q < n {
                let k = (n - q).min(V::W);
                let mut acc = V::load(op.add(q), k);
                for (&o, &wt) in offs.iter().zip(w) {
                    acc = V::fma(V::splat(wt), V::load(sp.add(o + q), k), acc);
                }
                V::store(op.add(q), k, acc);
                q += V::W;
            }
        }
    }
}

/// AVX-512F: 16 lanes, a partial vector under a mask register.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct Avx512(std::arch::x86_64::__m512);

#[cfg(target_arch = "x86_64")]
impl Avx512 {
    #[inline(always)]
    fn mask(k: usize) -> std::arch::x86_64::__mmask16 {
        ((1u32 << k) - 1) as u16
    }
}

#[cfg(target_arch = "x86_64")]
impl Vector for Avx512 {
    const W: usize = 16;

    #[inline(always)]
    unsafe fn load(p: *const f32, k: usize) -> Self {
        use std::arch::x86_64::*;
        // SAFETY: the caller's (features enabled, `p..p + k` readable; masked lanes untouched).
        unsafe { Avx512(_mm512_maskz_loadu_ps(Self::mask(k), p)) }
    }

    #[inline(always)]
    unsafe fn store(p: *mut f32, k: usize, v: Self) {
        use std::arch::x86_64::*;
        // SAFETY: the caller's (features enabled, `p..p + k` writable).
        unsafe {
            if k == 16 {
                _mm512_storeu_ps(p, v.0);
            } else {
                _mm512_mask_storeu_ps(p, Self::mask(k), v.0);
            }
        }
    }

    #[inline(always)]
    unsafe fn splat(a: f32) -> Self {
        // SAFETY: the caller's (features enabled).
        unsafe { Avx512(std::arch::x86_64::_mm512_set1_ps(a)) }
    }

    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        // SAFETY: the caller's (features enabled).
        unsafe { Avx512(std::arch::x86_64::_mm512_fmadd_ps(a.0, b.0, c.0)) }
    }
}

/// AVX2 and FMA: 8 lanes, a partial vector under a lane mask (`vmaskmovps`).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct Avx2(std::arch::x86_64::__m256);

#[cfg(target_arch = "x86_64")]
impl Avx2 {
    /// The mask of the first `k` (< 8) lanes.
    #[inline(always)]
    unsafe fn first(k: usize) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        // SAFETY: the caller's (AVX2 enabled).
        unsafe {
            _mm256_cmpgt_epi32(
                _mm256_set1_epi32(k as i32),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            )
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Vector for Avx2 {
    const W: usize = 8;

    #[inline(always)]
    unsafe fn load(p: *const f32, k: usize) -> Self {
        use std::arch::x86_64::*;
        // SAFETY: the caller's (features enabled, `p..p + k` readable; masked lanes untouched).
        unsafe {
            if k == 8 {
                Avx2(_mm256_loadu_ps(p))
            } else {
                Avx2(_mm256_maskload_ps(p, Self::first(k)))
            }
        }
    }

    #[inline(always)]
    unsafe fn store(p: *mut f32, k: usize, v: Self) {
        use std::arch::x86_64::*;
        // SAFETY: the caller's (features enabled, `p..p + k` writable).
        unsafe {
            if k == 8 {
                _mm256_storeu_ps(p, v.0);
            } else {
                _mm256_maskstore_ps(p, Self::first(k), v.0);
            }
        }
    }

    #[inline(always)]
    unsafe fn splat(a: f32) -> Self {
        // SAFETY: the caller's (features enabled).
        unsafe { Avx2(std::arch::x86_64::_mm256_set1_ps(a)) }
    }

    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        // SAFETY: the caller's (features enabled).
        unsafe { Avx2(std::arch::x86_64::_mm256_fmadd_ps(a.0, b.0, c.0)) }
    }
}

/// `body.run()` compiled for AVX-512 or AVX2 + FMA when this CPU has them, plainly otherwise.
/// For large bodies: a closure passed to [`simd`] that LLVM does not inline stays a function
/// of its own, compiled for the baseline (SSE; seen in the depthwise convolution's profile),
/// and so does a function item's `FnOnce` shim; a trait method marked `#[inline(always)]` is
/// inlined into each ISA's copy.
#[inline(always)]
pub(super) fn simd_apply<B: SimdBody>(body: B) -> B::Out {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { apply_avx512(body) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            return unsafe { apply_avx2(body) };
        }
    }
    body.run::<Plain>()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
unsafe fn apply_avx512<B: SimdBody>(body: B) -> B::Out {
    body.run::<Avx512>()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn apply_avx2<B: SimdBody>(body: B) -> B::Out {
    body.run::<Avx2>()
}

/// A linear layer `x W + b` (`W`: `[d_in, d_out]`, burn's layout) on the CPU backend: one
/// GEMM into a buffer that starts as the bias. `x` is `[.., d_in]` and contiguous (its leading
/// dimensions are the GEMM's rows). `None` when a tensor is not a contiguous `f32` CPU tensor
/// or the shapes do not fit: the caller takes burn's op. In training: `dx = dy Wᵀ`,
/// `dW = xᵀ dy` (the rows summed by the GEMM itself), `db` the column sums of `dy`.
pub fn linear<const D: usize>(
    x: &Tensor<D>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
) -> Option<Tensor<D>> {
    run(x, weight, bias, Dense::new)
}

/// `kernel(x W + b)` at inference in one pass: the activation is applied to each stretch of
/// the output as the product finishes it, while it is in L1, instead of in a second pass over
/// memory. Only for tensors of the CPU backend without autodiff, on a CPU with the packed
/// kernels ([`super::sgemm::available`]); `None` otherwise (the caller runs the layer and the
/// activation).
pub fn linear_then<const D: usize>(
    x: &Tensor<D>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
    kernel: super::Kernel,
) -> Option<Tensor<D>> {
    let (xp, wp, bp) = flex_operands(x, weight, bias)?;
    let op = Dense::new(xp, wp, bp)?;
    let then = move |_: usize, s: &mut [f32]| super::map_in_place(kernel, s);
    op.compute_packed(Some(&then))
        .map(Tensor::from_primitive::<Flex>)
}

/// A linear layer's operands as CPU-backend tensors without autodiff; `None` for others.
fn flex_operands<const D: usize>(
    x: &Tensor<D>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
) -> Option<(FlexTensor, FlexTensor, Option<FlexTensor>)> {
    let xp = x.clone().try_into_primitive::<Flex>().ok()?;
    let wp = weight.clone().try_into_primitive::<Flex>().ok()?;
    let bp = match bias {
        Some(b) => Some(b.clone().try_into_primitive::<Flex>().ok()?),
        None => None,
    };
    Some((xp, wp, bp))
}

/// The precision the packed kernels run in, when this CPU has them for it.
fn packed_precision() -> Option<super::sgemm::Precision> {
    use super::sgemm::{self, Precision};
    let precision = sgemm::precision();
    let usable = match precision {
        Precision::F32 => sgemm::available(),
        Precision::Bf16 => sgemm::available_bf16(),
    };
    usable.then_some(precision)
}

/// What [`Dense::compute_packed`] applies to each finished stretch of output: its offset in
/// the output and its values.
type At<'a> = dyn Fn(usize, &mut [f32]) + Sync + 'a;

/// `x W + b + residual` at inference in one pass: the residual (contiguous, of the output's
/// shape) is added to each stretch of the output as the product finishes it, instead of in a
/// second pass over three tensors (a transformer's residual connections). Under the same
/// conditions as [`linear_then`]; `None` otherwise (the caller adds).
pub fn linear_add<const D: usize>(
    x: &Tensor<D>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
    residual: &Tensor<D>,
) -> Option<Tensor<D>> {
    let (xp, wp, bp) = flex_operands(x, weight, bias)?;
    let rp = residual.clone().try_into_primitive::<Flex>().ok()?;
    let mut want = x.dims();
    want[D - 1] = weight.dims()[1];
    if rp.dtype() != DType::F32 || residual.dims() != want {
        return None;
    }
    let (s, e) = rp.layout().contiguous_offsets()?;
    let r = &rp.storage::<f32>()[s..e];
    let op = Dense::new(xp, wp, bp)?;
    let then = move |at: usize, out: &mut [f32]| {
        for (o, v) in out.iter_mut().zip(&r[at..]) {
            *o += v;
        }
    };
    let out = op.compute_packed(Some(&then));
    out.map(Tensor::from_primitive::<Flex>)
}

/// Several linear layers of the same input as one product at inference (a fused projection:
/// attention's q, k and v): `x [W_1 | W_2 | ..] + [b_1 | b_2 | ..]` into one output
/// `[.., Σ d_out]`, returned as views of it, one a layer, in order. The weights are packed side
/// by side once ([`super::sgemm::packed_side_by_side`], cached); a layer without a bias adds
/// zeros. Only for `f32` tensors of the CPU backend without autodiff, on a CPU with the packed
/// kernels, and at most [`super::sgemm::MAX_ROWS`] rows; `None` otherwise or when the shapes
/// do not fit (the caller runs the layers one by one).
pub fn linear_side_by_side<const D: usize>(
    x: &Tensor<D>,
    layers: &[(&Tensor<2>, Option<&Tensor<1>>)],
) -> Option<Vec<Tensor<D>>> {
    use super::sgemm;
    let precision = packed_precision()?;
    let xp = x.clone().try_into_primitive::<Flex>().ok()?;
    if layers.is_empty() || xp.dtype() != DType::F32 {
        return None;
    }
    let (s, e) = xp.layout().contiguous_offsets()?;
    let d_in = *x.dims().last()?;
    let rows = x.dims().iter().take(D - 1).product::<usize>();
    // Only the small-batch kernel gains: 12 fused q/k/v products of 768 → 2304 against 36 of
    // 768 → 768 took 9.1 against 11.5 ms at 50 rows, the same at 1576 rows and 3% longer at
    // 400 (best of 15, one process).
    if d_in == 0 || rows == 0 || rows > super::sgemm::MAX_ROWS {
        return None;
    }
    let mut ws = Vec::with_capacity(layers.len());
    let mut widths = Vec::with_capacity(layers.len());
    let mut bias: Option<Vec<f32>> = None;
    for (w, b) in layers {
        let [k, n] = w.dims();
        if k != d_in || n == 0 {
            return None;
        }
        if let Some(b) = b {
            let bp = (*b).clone().try_into_primitive::<Flex>().ok()?;
            let (bs, be) = bp.layout().contiguous_offsets()?;
            if bp.dtype() != DType::F32 || b.dims() != [n] {
                return None;
            }
            // Zeros for the layers before that had none.
            let all = bias.get_or_insert_with(|| vec![0.0; widths.iter().sum()]);
            all.extend_from_slice(&bp.storage::<f32>()[bs..be]);
        } else if let Some(all) = &mut bias {
            all.resize(all.len() + n, 0.0);
        }
        ws.push((*w).clone().try_into_primitive::<Flex>().ok()?);
        widths.push(n);
    }
    let refs: Vec<&FlexTensor> = ws.iter().collect();
    let packed = sgemm::packed_side_by_side(&refs, precision)?;
    let n: usize = widths.iter().sum();
    let mut out = Vec::with_capacity(rows * n);
    sgemm::matmul_uninit(
        &xp.storage::<f32>()[s..e],
        rows,
        &packed,
        bias.as_deref(),
        None,
        &mut out.spare_capacity_mut()[..rows * n],
    );
    // SAFETY: `matmul_uninit` wrote all `rows · n` elements.
    unsafe { out.set_len(rows * n) };
    let mut shape = xp.layout().shape().clone();
    shape[D - 1] = n;
    let y = Tensor::<D>::from_primitive::<Flex>(tensor(out, shape));
    let mut j0 = 0;
    Some(
        widths
            .into_iter()
            .map(|w| {
                let view = y.clone().narrow(D - 1, j0, w);
                j0 += w;
                view
            })
            .collect(),
    )
}

/// A convolution whose kernel is its stride (`weight` `[d, c, p, q]`, no padding) on pixels
/// `[b, c, h, w]` as a linear layer on the cut-out patches: tokens `[b, (h/p)·(w/q), d]`, each
/// patch flattened in the weight's `(c, y, x)` order. Only for `f32` tensors of the CPU backend
/// without autodiff (inference); `None` otherwise or when the sizes do not divide.
pub fn patch_linear(
    pixels: &Tensor<4>,
    weight: &Tensor<4>,
    bias: Option<&Tensor<1>>,
) -> Option<Tensor<3>> {
    let xp = pixels.clone().try_into_primitive::<Flex>().ok()?;
    if xp.dtype() != DType::F32 || weight.dtype() != DType::F32 {
        return None;
    }
    let [b, c, h, w] = pixels.dims();
    let [d, c2, p, q] = weight.dims();
    if c2 != c || p == 0 || q == 0 || h % p != 0 || w % q != 0 || h == 0 || w == 0 {
        return None;
    }
    let (gh, gw) = (h / p, w / q);
    let (s, e) = xp.layout().contiguous_offsets()?;
    let x = &xp.storage::<f32>()[s..e];
    let k = c * p * q;
    let mut patches = Vec::with_capacity(b * gh * gw * k);
    for img in x.chunks_exact(c * h * w) {
        for py in 0..gh {
            for px in 0..gw {
                for plane in img.chunks_exact(h * w) {
                    for y in 0..p {
                        let row = (py * p + y) * w + px * q;
                        patches.extend_from_slice(&plane[row..row + q]);
                    }
                }
            }
        }
    }
    let patches =
        Tensor::<3>::from_data(TensorData::new(patches, [b, gh * gw, k]), &pixels.device());
    // The weight as [k, d]: a transposed view of its own storage, so the packing is cached.
    let w2 = weight.clone().reshape([d, k]).transpose();
    linear(&patches, &w2, bias)
}

/// The operands of a linear layer, checked: `x` contiguous `[rows, d_in]` (any leading
/// dimensions), `w` a `[d_in, d_out]` view, `b` contiguous `[d_out]`.
#[derive(Debug)]
pub struct Dense {
    x: FlexTensor,
    w: FlexTensor,
    b: Option<FlexTensor>,
    rows: usize,
    d_in: usize,
    d_out: usize,
}

impl Dense {
    fn new(x: FlexTensor, w: FlexTensor, b: Option<FlexTensor>) -> Option<Dense> {
        let f32s = |p: &FlexTensor| p.dtype() == DType::F32;
        if !(f32s(&x) && f32s(&w)) || x.layout().contiguous_offsets().is_none() {
            return None;
        }
        let xs = x.layout().shape();
        let ws = w.layout().shape();
        if xs.num_dims() == 0 || ws.num_dims() != 2 || xs[xs.num_dims() - 1] != ws[0] {
            return None;
        }
        let (d_in, d_out) = (ws[0], ws[1]);
        if let Some(b) = &b {
            let bs = b.layout().shape();
            if !f32s(b)
                || bs.num_dims() != 1
                || bs[0] != d_out
                || b.layout().contiguous_offsets().is_none()
            {
                return None;
            }
        }
        let rows = xs.num_elements() / d_in.max(1);
        if d_in == 0 || d_out == 0 || rows == 0 {
            return None;
        }
        Some(Dense {
            x,
            w,
            b,
            rows,
            d_in,
            d_out,
        })
    }

    fn x(&self) -> &[f32] {
        let (s, e) = self.x.layout().contiguous_offsets().expect("checked");
        &self.x.storage::<f32>()[s..e]
    }

    /// `W`'s start and its (row, column) strides.
    fn w(&self) -> (*const f32, isize, isize) {
        let l = self.w.layout();
        let s = l.strides();
        let ptr = self.w.storage::<f32>().as_ptr();
        // SAFETY: the view's start offset lies inside its storage.
        (unsafe { ptr.add(l.start_offset()) }, s[0], s[1])
    }

    fn parallelism(&self) -> gemm::Parallelism {
        let work = self.rows * self.d_in * self.d_out;
        if work >= 1 << 18 && rayon::current_num_threads() > 1 {
            gemm::Parallelism::Rayon(rayon::current_num_threads())
        } else {
            gemm::Parallelism::None
        }
    }

    fn compute(&self) -> FlexTensor {
        let (rows, d_in, d_out) = (self.rows, self.d_in, self.d_out);
        let x = self.x();
        let mut out = match &self.b {
            Some(b) => {
                let (s, e) = b.layout().contiguous_offsets().expect("checked");
                let bias = &b.storage::<f32>()[s..e];
                let mut v = Vec::with_capacity(rows * d_out);
                for _ in 0..rows {
                    v.extend_from_slice(bias);
                }
                v
            }
            None => vec![0.0f32; rows * d_out],
        };
        let (w, w_rs, w_cs) = self.w();
        // SAFETY: x is rows × d_in contiguous, W a d_in × d_out view with its own strides,
        // out rows × d_out contiguous.
        unsafe {
            gemm_f32(
                rows,
                d_out,
                d_in,
                (out.as_mut_ptr(), 1, d_out as isize),
                self.b.is_some(),
                (x.as_ptr(), 1, d_in as isize),
                (w, w_cs, w_rs),
                1.0,
                1.0,
                self.parallelism(),
            );
        }
        let mut shape = self.x.layout().shape().clone();
        let last = shape.num_dims() - 1;
        shape[last] = d_out;
        FlexTensor::from_data(TensorData::new(out, shape))
    }

    /// The output through [`super::sgemm`]'s kernels with the weight packed once (inference:
    /// the weight's packing is cached), in the precision [`super::sgemm::set_precision`] set,
    /// with `then(offset, stretch)` applied to each stretch of the output as it is finished
    /// (see [`super::sgemm::matmul_uninit`]; `offset` is the stretch's first element's index
    /// in the output). `None` (the general GEMM) without AVX-512F.
    fn compute_packed(&self, then: Option<&At<'_>>) -> Option<FlexTensor> {
        use super::sgemm;
        let precision = packed_precision()?;
        let w = sgemm::packed(&self.w, precision)?;
        let bias = self.b.as_ref().map(slice);
        let len = self.rows * self.d_out;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        // The stretches `matmul_uninit` hands over lie inside `out`: their offset is their
        // distance from its start.
        let base = out.as_ptr() as usize;
        let located = then
            .map(|f| move |s: &mut [f32]| f((s.as_ptr() as usize - base) / size_of::<f32>(), s));
        sgemm::matmul_uninit(
            self.x(),
            self.rows,
            &w,
            bias,
            located.as_ref().map(|f| f as &(dyn Fn(&mut [f32]) + Sync)),
            &mut out.spare_capacity_mut()[..len],
        );
        // SAFETY: `matmul_uninit` wrote all `len` elements (tested with outputs that start as
        // NaN: none is left).
        unsafe { out.set_len(len) };
        let mut shape = self.x.layout().shape().clone();
        let last = shape.num_dims() - 1;
        shape[last] = self.d_out;
        Some(tensor(out, shape))
    }

    /// `(dx, dW, db)` from `dy` (contiguous `[rows, d_out]`), each only when asked for.
    fn grads(&self, dy: &[f32], need: [bool; 3]) -> [Option<Vec<f32>>; 3] {
        let (rows, d_in, d_out) = (self.rows, self.d_in, self.d_out);
        let par = self.parallelism();
        let dx = need[0].then(|| {
            let mut dx = vec![0.0f32; rows * d_in];
            let (w, w_rs, w_cs) = self.w();
            // SAFETY: dy rows × d_out, Wᵀ read through W's strides, dx rows × d_in.
            unsafe {
                gemm_f32(
                    rows,
                    d_in,
                    d_out,
                    (dx.as_mut_ptr(), 1, d_in as isize),
                    false,
                    (dy.as_ptr(), 1, d_out as isize),
                    (w, w_rs, w_cs),
                    0.0,
                    1.0,
                    par,
                );
            }
            dx
        });
        let dw = need[1].then(|| {
            let mut dw = vec![0.0f32; d_in * d_out];
            let x = self.x();
            // SAFETY: xᵀ read through x's strides (d_in × rows), dy rows × d_out, dW d_in ×
            // d_out.
            unsafe {
                gemm_f32(
                    d_in,
                    d_out,
                    rows,
                    (dw.as_mut_ptr(), 1, d_out as isize),
                    false,
                    (x.as_ptr(), d_in as isize, 1),
                    (dy.as_ptr(), 1, d_out as isize),
                    0.0,
                    1.0,
                    par,
                );
            }
            dw
        });
        let db = (need[2] && self.b.is_some()).then(|| {
            let mut db = vec![0.0f32; d_out];
            for row in dy.chunks(d_out) {
                db.iter_mut().zip(row).for_each(|(s, g)| *s += g);
            }
            db
        });
        [dx, dw, db]
    }
}

impl Fused3 for Dense {
    fn forward(&mut self, tracked: bool) -> FlexTensor {
        if !tracked && let Some(out) = self.compute_packed(None) {
            return out;
        }
        self.compute()
    }

    fn backward(&self, dy: &[f32], need: [bool; 3]) -> [Option<FlexTensor>; 3] {
        let [dx, dw, db] = self.grads(dy, need);
        [
            dx.map(|g| tensor(g, self.x.layout().shape().clone())),
            dw.map(|g| tensor(g, [self.d_in, self.d_out])),
            db.map(|g| tensor(g, [self.d_out])),
        ]
    }
}

/// Layer norm over the last dimension, `(x - μ) / √(σ² + ε) · γ + β`, on the CPU backend: one
/// pass for the row statistics and one for the output, where burn's op is eight tensor ops.
/// `x` must be contiguous. `None` when a tensor is not a contiguous `f32` CPU tensor or the
/// shapes do not fit. In training the node keeps each row's mean and `1 / σ`: `dβ = Σ dy`,
/// `dγ = Σ dy x̂`, `dx = (g - mean(g) - x̂ mean(g x̂)) / σ` with `g = dy γ`.
pub fn layer_norm<const D: usize>(
    x: &Tensor<D>,
    gamma: &Tensor<1>,
    beta: Option<&Tensor<1>>,
    eps: f64,
) -> Option<Tensor<D>> {
    run(x, gamma, beta, |x, g, b| Norm::new(x, g, b, eps))
}

/// The operands of a layer norm, checked (`x` contiguous `[rows, d]`, γ and β contiguous
/// `[d]`), and after a tracked forward each row's `(mean, 1 / σ)`.
#[derive(Debug)]
pub struct Norm {
    x: FlexTensor,
    gamma: FlexTensor,
    beta: Option<FlexTensor>,
    rows: usize,
    d: usize,
    eps: f32,
    stats: Vec<(f32, f32)>,
}

/// Rows per task of the row-parallel loops.
const NORM_ROWS: usize = 16;

impl Norm {
    fn new(x: FlexTensor, gamma: FlexTensor, beta: Option<FlexTensor>, eps: f64) -> Option<Norm> {
        let vector = |p: &FlexTensor, d: usize| {
            p.dtype() == DType::F32
                && p.layout().shape().num_dims() == 1
                && p.layout().shape()[0] == d
                && p.layout().contiguous_offsets().is_some()
        };
        let xs = x.layout().shape();
        if x.dtype() != DType::F32
            || xs.num_dims() == 0
            || x.layout().contiguous_offsets().is_none()
        {
            return None;
        }
        let d = xs[xs.num_dims() - 1];
        if d == 0 || !vector(&gamma, d) || beta.as_ref().is_some_and(|b| !vector(b, d)) {
            return None;
        }
        Some(Norm {
            rows: xs.num_elements() / d,
            x,
            gamma,
            beta,
            d,
            eps: eps as f32,
            stats: Vec::new(),
        })
    }

    /// The output, and every row's `(mean, 1 / σ)`.
    fn compute(&self, keep_stats: bool) -> (FlexTensor, Vec<(f32, f32)>) {
        use rayon::prelude::*;
        let d = self.d;
        let x = slice(&self.x);
        let gamma = slice(&self.gamma);
        let beta = self.beta.as_ref().map(slice);
        let mut out = vec![0.0f32; self.rows * d];
        let mut stats = vec![(0.0f32, 0.0f32); self.rows];
        out.par_chunks_mut(NORM_ROWS * d)
            .zip(x.par_chunks(NORM_ROWS * d))
            .zip(stats.par_chunks_mut(NORM_ROWS))
            .for_each(|((out, x), stats)| {
                simd(|| {
                    for ((y, x), st) in out.chunks_mut(d).zip(x.chunks(d)).zip(stats.iter_mut()) {
                        let mean = x.iter().sum::<f32>() / d as f32;
                        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
                        let rstd = 1.0 / (var + self.eps).sqrt();
                        match beta {
                            Some(beta) => {
                                for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(gamma).zip(beta)
                                {
                                    *y = (x - mean) * rstd * g + b;
                                }
                            }
                            None => {
                                for ((y, &x), &g) in y.iter_mut().zip(x).zip(gamma) {
                                    *y = (x - mean) * rstd * g;
                                }
                            }
                        }
                        *st = (mean, rstd);
                    }
                })
            });
        let shape = self.x.layout().shape().clone();
        let out = FlexTensor::from_data(TensorData::new(out, shape));
        (out, if keep_stats { stats } else { Vec::new() })
    }

    /// `(dx, dγ, dβ)` from `dy` (contiguous, `x`'s shape), each only when asked for.
    fn grads(&self, dy: &[f32], need: [bool; 3]) -> [Option<Vec<f32>>; 3] {
        use rayon::prelude::*;
        let d = self.d;
        let x = slice(&self.x);
        let gamma = slice(&self.gamma);
        let chunk = NORM_ROWS * d;
        // Per task: its rows' dx, and partial sums of dγ and dβ.
        let mut dx = if need[0] {
            vec![0.0f32; self.rows * d]
        } else {
            Vec::new()
        };
        let partial = |(i, dy): (usize, &[f32]), dx: Option<&mut [f32]>| {
            simd(|| {
                let mut dgamma = vec![0.0f32; d];
                let mut dbeta = vec![0.0f32; d];
                let x = &x[i * chunk..i * chunk + dy.len()];
                let stats = &self.stats[i * NORM_ROWS..];
                let mut dx = dx;
                for (r, (dy, x)) in dy.chunks(d).zip(x.chunks(d)).enumerate() {
                    let (mean, rstd) = stats[r];
                    let (mut mg, mut mgx) = (0.0f32, 0.0f32);
                    for j in 0..d {
                        let xh = (x[j] - mean) * rstd;
                        dgamma[j] += dy[j] * xh;
                        dbeta[j] += dy[j];
                        let g = dy[j] * gamma[j];
                        mg += g;
                        mgx += g * xh;
                    }
                    if let Some(dx) = dx.as_deref_mut() {
                        let (mg, mgx) = (mg / d as f32, mgx / d as f32);
                        let row = &mut dx[r * d..(r + 1) * d];
                        for j in 0..d {
                            let xh = (x[j] - mean) * rstd;
                            row[j] = (dy[j] * gamma[j] - mg - xh * mgx) * rstd;
                        }
                    }
                }
                (dgamma, dbeta)
            })
        };
        let sums: Vec<(Vec<f32>, Vec<f32>)> = if need[0] {
            dy.par_chunks(chunk)
                .enumerate()
                .zip(dx.par_chunks_mut(chunk))
                .map(|(c, dx)| partial(c, Some(dx)))
                .collect()
        } else {
            dy.par_chunks(chunk)
                .enumerate()
                .map(|c| partial(c, None))
                .collect()
        };
        let (mut dgamma, mut dbeta) = (vec![0.0f32; d], vec![0.0f32; d]);
        for (g, b) in sums {
            dgamma.iter_mut().zip(g).for_each(|(s, v)| *s += v);
            dbeta.iter_mut().zip(b).for_each(|(s, v)| *s += v);
        }
        [
            need[0].then_some(dx),
            need[1].then_some(dgamma),
            (need[2] && self.beta.is_some()).then_some(dbeta),
        ]
    }
}

impl Fused3 for Norm {
    fn forward(&mut self, tracked: bool) -> FlexTensor {
        let (out, stats) = self.compute(tracked);
        self.stats = stats;
        out
    }

    fn backward(&self, dy: &[f32], need: [bool; 3]) -> [Option<FlexTensor>; 3] {
        let [dx, dgamma, dbeta] = self.grads(dy, need);
        [
            dx.map(|g| tensor(g, self.x.layout().shape().clone())),
            dgamma.map(|g| tensor(g, [self.d])),
            dbeta.map(|g| tensor(g, [self.d])),
        ]
    }
}

/// Batch norm in training on the CPU backend: each channel normalised by the batch's mean
/// and (biased) variance over `[n, h, w]`, then `γ x̂ + β`; returns the output and the
/// batch's per-channel mean and variance (for the running statistics). The same numbers as
/// burn's `batch_norm_train`, whose default op transposes the activation to `[c, n·h·w]`
/// (twice forward, more backward; `copy_2d_tiled` took 12–15% of an EfficientNet-B0
/// training step): here every channel's planes are read in place. One autodiff node with
/// `dx`, `dγ`, `dβ`. `None` when a tensor is not a contiguous `f32` tensor of the CPU
/// backend or the shapes do not fit: the caller takes burn's op.
pub fn batch_norm_train(
    x: &Tensor<4>,
    gamma: &Tensor<1>,
    beta: &Tensor<1>,
    eps: f64,
) -> Option<(Tensor<4>, Vec<f32>, Vec<f32>)> {
    let report = Arc::new(std::sync::Mutex::new(None));
    let sink = report.clone();
    let out = run(x, gamma, Some(beta), move |x, g, b| {
        ChannelNorm::new(x, g, b?, eps, sink)
    })?;
    let (mean, var) = report.lock().ok()?.take()?;
    Some((out, mean, var))
}

/// Where [`ChannelNorm`] leaves the batch's per-channel mean and variance.
type StatsSink = Arc<std::sync::Mutex<Option<(Vec<f32>, Vec<f32>)>>>;

/// The operands of a training batch norm, checked, and after the forward each channel's
/// `(mean, 1 / σ)`.
#[derive(Debug)]
pub struct ChannelNorm {
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    n: usize,
    c: usize,
    hw: usize,
    eps: f32,
    stats: Vec<(f32, f32)>,
    sink: StatsSink,
}

/// `Σ f(a_i, b_i)` in 16 lanes (vectorised; a plain `.sum()` adds one after another).
#[inline(always)]
fn lane_sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let b = &b[..a.len()];
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (ca, cb) in ca.zip(cb) {
        for k in 0..16 {
            acc[k] += f(ca[k], cb[k]);
        }
    }
    for (k, (&a, &b)) in ra.iter().zip(rb).enumerate() {
        acc[k] += f(a, b);
    }
    acc.iter().sum()
}

impl ChannelNorm {
    fn new(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        eps: f64,
        sink: StatsSink,
    ) -> Option<ChannelNorm> {
        let ok =
            |p: &FlexTensor| p.dtype() == DType::F32 && p.layout().contiguous_offsets().is_some();
        let xs = x.layout().shape();
        if !(ok(&x) && ok(&gamma) && ok(&beta)) || xs.num_dims() != 4 {
            return None;
        }
        let (n, c, hw) = (xs[0], xs[1], xs[2] * xs[3]);
        let vector =
            |p: &FlexTensor| p.layout().shape().num_dims() == 1 && p.layout().shape()[0] == c;
        if n * c * hw == 0 || !vector(&gamma) || !vector(&beta) {
            return None;
        }
        Some(ChannelNorm {
            x,
            gamma,
            beta,
            n,
            c,
            hw,
            eps: eps as f32,
            stats: Vec::new(),
            sink,
        })
    }

    /// Channel `ch`'s planes, one per image.
    fn planes<'a>(&self, v: &'a [f32], ch: usize) -> impl Iterator<Item = &'a [f32]> + Clone {
        let (c, hw) = (self.c, self.hw);
        (0..self.n).map(move |i| &v[(i * c + ch) * hw..][..hw])
    }
}

impl Fused3 for ChannelNorm {
    fn forward(&mut self, _tracked: bool) -> FlexTensor {
        use rayon::prelude::*;
        let (c, hw) = (self.c, self.hw);
        let count = (self.n * hw) as f32;
        let x = slice(&self.x);
        let moments: Vec<(f32, f32)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                simd(|| {
                    let planes = self.planes(x, ch);
                    let sum: f32 = planes.clone().map(|p| lane_sum2(p, p, |v, _| v)).sum();
                    let mean = sum / count;
                    let sq: f32 = planes
                        .map(|p| lane_sum2(p, p, |v, _| (v - mean) * (v - mean)))
                        .sum();
                    (mean, sq / count)
                })
            })
            .collect();
        self.stats = moments
            .iter()
            .map(|&(m, v)| (m, 1.0 / (v + self.eps).sqrt()))
            .collect();
        let (g, b) = (slice(&self.gamma), slice(&self.beta));
        let mut out = vec![0.0f32; x.len()];
        out.par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each(|(plane, (o, x))| {
                let ch = plane % c;
                let (mean, rstd) = self.stats[ch];
                let (gc, bc) = (g[ch], b[ch]);
                simd(|| {
                    for (o, &v) in o.iter_mut().zip(x) {
                        *o = (v - mean) * rstd * gc + bc;
                    }
                });
            });
        if let Ok(mut sink) = self.sink.lock() {
            *sink = Some(moments.into_iter().unzip());
        }
        tensor(out, self.x.layout().shape().clone())
    }

    fn backward(&self, dy: &[f32], need: [bool; 3]) -> [Option<FlexTensor>; 3] {
        use rayon::prelude::*;
        let (c, hw) = (self.c, self.hw);
        let count = (self.n * hw) as f32;
        let x = slice(&self.x);
        let g = slice(&self.gamma);
        // Per channel: Σ dy (dβ) and Σ dy x̂ (dγ).
        let sums: Vec<(f32, f32)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mean, rstd) = self.stats[ch];
                simd(|| {
                    let (mut s, mut sx) = (0.0f32, 0.0f32);
                    for (d, v) in self.planes(dy, ch).zip(self.planes(x, ch)) {
                        s += lane_sum2(d, d, |d, _| d);
                        sx += lane_sum2(d, v, |d, v| d * (v - mean));
                    }
                    (s, sx * rstd)
                })
            })
            .collect();
        let dx = need[0].then(|| {
            let mut dx = vec![0.0f32; x.len()];
            dx.par_chunks_mut(hw)
                .zip(dy.par_chunks(hw).zip(x.par_chunks(hw)))
                .enumerate()
                .for_each(|(plane, (dx, (dy, x)))| {
                    let ch = plane % c;
                    let (mean, rstd) = self.stats[ch];
                    let (s, sx) = sums[ch];
                    let (a, m1, m2) = (g[ch] * rstd, s / count, sx / count);
                    simd(|| {
                        for ((o, &d), &v) in dx.iter_mut().zip(dy).zip(x) {
                            *o = a * (d - m1 - (v - mean) * rstd * m2);
                        }
                    });
                });
            tensor(dx, self.x.layout().shape().clone())
        });
        let dgamma = need[1].then(|| tensor(sums.iter().map(|s| s.1).collect(), [c]));
        let dbeta = need[2].then(|| tensor(sums.iter().map(|s| s.0).collect(), [c]));
        [dx, dgamma, dbeta]
    }
}

/// A 2-d convolution on the CPU backend for the two kinds MBConv blocks are made of, each
/// with its own backward in training:
/// - pointwise (1 × 1, stride 1, no padding, one group): per image one GEMM
///   `W [c_out, c_in] · x [c_in, h w]`; `dx = Wᵀ dy`, `dW = Σ dy xᵀ`;
/// - depthwise (one group per channel, `[c, 1, kh, kw]` weight, any stride, symmetric zero
///   padding): per (image, channel) plane, each output row sums its taps in registers over a
///   zero-padded copy of the plane ([`Gather`]); at stride 1 `dx` is the same gather over
///   `dy` with the kernel turned (at stride 2 it scatters), and `dW` sums `dy · x` per
///   channel.
///
/// burn-flex computes a depthwise weight gradient as a grouped convolution over transposed
/// copies of x and dy, and its input gradient as a transposed convolution; on the
/// EfficientNet-B0 training step those were 40% of the time. At inference too: the gathers'
/// depthwise forward took 18% of EfficientNet-B0's samples (batch 8, 2 threads, Zen 4)
/// where burn-flex's direct convolution took 29%. `x` `[n, c_in, h, w]` contiguous, on
/// burn-flex or the autodiff backend over it; `padding` is `[rows, columns]` on each side.
/// `None` for any other convolution or tensor: the caller takes burn's op.
pub fn conv2d(
    x: &Tensor<4>,
    weight: &Tensor<4>,
    bias: Option<&Tensor<1>>,
    stride: [usize; 2],
    padding: [usize; 2],
    groups: usize,
) -> Option<Tensor<4>> {
    run(x, weight, bias, |x, w, b| {
        Conv::new(x, w, b, stride, padding, groups)
    })
}

/// Which convolution a [`Conv`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConvKind {
    Pointwise,
    Depthwise,
}

/// The operands of a pointwise or depthwise convolution, checked.
#[derive(Debug)]
pub struct Conv {
    x: FlexTensor,
    w: FlexTensor,
    b: Option<FlexTensor>,
    kind: ConvKind,
    n: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    wd: usize,
    kh: usize,
    kw: usize,
    stride: [usize; 2],
    pad: [usize; 2],
    oh: usize,
    ow: usize,
}

impl Conv {
    fn new(
        x: FlexTensor,
        w: FlexTensor,
        b: Option<FlexTensor>,
        stride: [usize; 2],
        pad: [usize; 2],
        groups: usize,
    ) -> Option<Conv> {
        let ok = |p: &FlexTensor, dims: usize| {
            p.dtype() == DType::F32
                && p.layout().shape().num_dims() == dims
                && p.layout().contiguous_offsets().is_some()
        };
        if !(ok(&x, 4) && ok(&w, 4)) {
            return None;
        }
        let (xs, ws) = (x.layout().shape(), w.layout().shape());
        let [n, c_in, h, wd] = [xs[0], xs[1], xs[2], xs[3]];
        let [c_out, per_group, kh, kw] = [ws[0], ws[1], ws[2], ws[3]];
        let kind = if kh == 1 && kw == 1 && stride == [1, 1] && pad == [0, 0] && groups == 1 {
            ConvKind::Pointwise
        } else if groups == c_in && c_out == c_in && per_group == 1 {
            ConvKind::Depthwise
        } else {
            return None;
        };
        if kind == ConvKind::Pointwise && per_group != c_in {
            return None;
        }
        if let Some(b) = &b
            && !(ok(b, 1) && b.layout().shape()[0] == c_out)
        {
            return None;
        }
        if stride.contains(&0) || h + 2 * pad[0] < kh || wd + 2 * pad[1] < kw || n * c_in == 0 {
            return None;
        }
        let oh = (h + 2 * pad[0] - kh) / stride[0] + 1;
        let ow = (wd + 2 * pad[1] - kw) / stride[1] + 1;
        Some(Conv {
            x,
            w,
            b,
            kind,
            n,
            c_in,
            c_out,
            h,
            wd,
            kh,
            kw,
            stride,
            pad,
            oh,
            ow,
        })
    }

    #[inline(always)]
    /// The output columns `ow` whose input column `ow · s + j - p` lies in `0..w`.
    fn columns(&self, j: usize) -> std::ops::Range<usize> {
        let (s, p) = (self.stride[1], self.pad[1]);
        let lo = p.saturating_sub(j).div_ceil(s);
        let hi = if self.wd + p > j {
            ((self.wd + p - j - 1) / s + 1).min(self.ow)
        } else {
            0
        };
        // Empty when no output column reads this kernel column (a kernel wider than the
        // padded image's interior).
        lo.min(hi)..hi
    }

    #[inline(always)]
    /// The input row of output row `o` and kernel row `i`, when inside the image.
    fn row(&self, o: usize, i: usize) -> Option<usize> {
        (o * self.stride[0] + i)
            .checked_sub(self.pad[0])
            .filter(|&r| r < self.h)
    }

    fn pointwise_forward(&self, x: &[f32], w: &[f32], out: &mut [f32]) {
        use rayon::prelude::*;
        let (hw, c_in, c_out) = (self.h * self.wd, self.c_in, self.c_out);
        let read = self.b.is_some();
        out.par_chunks_mut(c_out * hw)
            .zip(x.par_chunks(c_in * hw))
            .for_each(|(out, x)| {
                // SAFETY: W c_out × c_in, x c_in × hw and out c_out × hw, all contiguous.
                unsafe {
                    gemm_f32(
                        c_out,
                        hw,
                        c_in,
                        (out.as_mut_ptr(), 1, hw as isize),
                        read,
                        (w.as_ptr(), 1, c_in as isize),
                        (x.as_ptr(), 1, hw as isize),
                        1.0,
                        1.0,
                        gemm::Parallelism::None,
                    );
                }
            });
    }

    /// Where kernel column `j` reads in the phased plane (see [`Conv::depthwise_grads`]): output column
    /// `q` reads input column `q·s + j - p = (q + off)·s + ph`, i.e. element `q + off` of a
    /// row of phase `ph`.
    #[inline(always)]
    fn tap(&self, j: usize) -> (usize, isize) {
        let (s, p) = (self.stride[1] as isize, self.pad[1] as isize);
        let d = j as isize - p;
        (d.rem_euclid(s) as usize, d.div_euclid(s))
    }

    /// The width of a phased row: the input columns of one phase.
    fn phase_width(&self) -> usize {
        self.wd.div_ceil(self.stride[1])
    }

    /// For each kernel column `j`: the output columns that read inside the image and where
    /// the first of them reads in the phased plane's row 0 (row `r` is `r · tw` further).
    /// Computed once per call: the divisions cost more than a short row's products.
    fn taps(&self) -> Vec<(std::ops::Range<usize>, usize)> {
        let tw = self.phase_width() as isize;
        (0..self.kw)
            .map(|j| {
                let cols = self.columns(j);
                let (ph, off) = self.tap(j);
                let base = (ph * self.h) as isize * tw + cols.start as isize + off;
                // An empty range reads nothing; its base is then 0 (row r's start, inside).
                if cols.is_empty() {
                    (0..0, 0)
                } else {
                    (cols, base as usize)
                }
            })
            .collect()
    }

    /// The forward pass as a [`Gather`] over the input.
    fn forward_gather(&self) -> Gather {
        Gather {
            h: self.h,
            wd: self.wd,
            top: self.pad[0],
            left: self.pad[1],
            sr: self.stride[0],
            s: self.stride[1],
            kh: self.kh,
            kw: self.kw,
            oh: self.oh,
            ow: self.ow,
        }
    }

    fn depthwise_forward(&self, x: &[f32], w: &[f32], out: &mut [f32]) {
        use rayon::prelude::*;
        let (h, wd, oh, ow, k) = (self.h, self.wd, self.oh, self.ow, self.kh * self.kw);
        let g = self.forward_gather();
        let offs = g.offsets();
        out.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * wd))
            .enumerate()
            .for_each_init(Vec::new, |buf, (plane, (out, x))| {
                let c = plane % self.c_in;
                let w = &w[c * k..(c + 1) * k];
                let xp = g.fill(x, buf);
                // Compiled for the CPU's vector width (see `simd_apply`).
                simd_apply(GatherPlane(&g, xp, &offs, w, out));
            });
    }

    fn compute(&self) -> FlexTensor {
        let x = slice(&self.x);
        let w = slice(&self.w);
        let plane = self.oh * self.ow;
        let mut out = match &self.b {
            Some(b) => {
                let b = slice(b);
                let mut v = Vec::with_capacity(self.n * self.c_out * plane);
                for _ in 0..self.n {
                    for &bc in b {
                        v.extend(std::iter::repeat_n(bc, plane));
                    }
                }
                v
            }
            None => vec![0.0f32; self.n * self.c_out * plane],
        };
        match self.kind {
            ConvKind::Pointwise => self.pointwise_forward(x, w, &mut out),
            ConvKind::Depthwise => self.depthwise_forward(x, w, &mut out),
        }
        tensor(out, [self.n, self.c_out, self.oh, self.ow])
    }

    fn pointwise_grads(&self, dy: &[f32], need: [bool; 2]) -> [Option<Vec<f32>>; 2] {
        use rayon::prelude::*;
        let (hw, c_in, c_out) = (self.h * self.wd, self.c_in, self.c_out);
        let (x, w) = (slice(&self.x), slice(&self.w));
        let dx = need[0].then(|| {
            let mut dx = vec![0.0f32; self.n * c_in * hw];
            dx.par_chunks_mut(c_in * hw)
                .zip(dy.par_chunks(c_out * hw))
                .for_each(|(dx, dy)| {
                    // SAFETY: Wᵀ read through W's strides (c_in × c_out), dy c_out × hw,
                    // dx c_in × hw.
                    unsafe {
                        gemm_f32(
                            c_in,
                            hw,
                            c_out,
                            (dx.as_mut_ptr(), 1, hw as isize),
                            false,
                            (w.as_ptr(), c_in as isize, 1),
                            (dy.as_ptr(), 1, hw as isize),
                            0.0,
                            1.0,
                            gemm::Parallelism::None,
                        );
                    }
                });
            dx
        });
        let dw = need[1].then(|| {
            let mut dw = vec![0.0f32; c_out * c_in];
            let par = if c_out * c_in * hw >= 1 << 16 && rayon::current_num_threads() > 1 {
                gemm::Parallelism::Rayon(rayon::current_num_threads())
            } else {
                gemm::Parallelism::None
            };
            for (img, (dy, x)) in dy.chunks(c_out * hw).zip(x.chunks(c_in * hw)).enumerate() {
                // SAFETY: dy c_out × hw, xᵀ read through x's strides (hw × c_in), dW
                // c_out × c_in; the images accumulate into dW one after another.
                unsafe {
                    gemm_f32(
                        c_out,
                        c_in,
                        hw,
                        (dw.as_mut_ptr(), 1, c_in as isize),
                        img > 0,
                        (dy.as_ptr(), 1, hw as isize),
                        (x.as_ptr(), hw as isize, 1),
                        1.0,
                        1.0,
                        par,
                    );
                }
            }
            dw
        });
        [dx, dw]
    }

    fn depthwise_grads(&self, dy: &[f32], need: [bool; 2]) -> [Option<Vec<f32>>; 2] {
        use rayon::prelude::*;
        let (h, wd, oh, ow) = (self.h, self.wd, self.oh, self.ow);
        let (kh, kw, c, s) = (self.kh, self.kw, self.c_in, self.stride[1]);
        let (x, w) = (slice(&self.x), slice(&self.w));
        let dx = need[0].then(|| {
            let mut dx = vec![0.0f32; self.n * c * h * wd];
            // At stride 1 the input gradient is the forward's gather over `dy` with the
            // kernel turned by 180°: dx[r][c] = Σ w[i][j] dy[r + p - i][c + p - j].
            if self.stride == [1, 1] && self.pad[0] < kh && self.pad[1] < kw {
                let dx_gather = Gather {
                    h: oh,
                    wd: ow,
                    top: kh - 1 - self.pad[0],
                    left: kw - 1 - self.pad[1],
                    sr: 1,
                    s: 1,
                    kh,
                    kw,
                    oh: h,
                    ow: wd,
                };
                let offs = dx_gather.offsets();
                dx.par_chunks_mut(h * wd)
                    .zip(dy.par_chunks(oh * ow))
                    .enumerate()
                    .for_each_init(
                        || (Vec::new(), Vec::new()),
                        |(buf, turned), (plane, (dx, dy))| {
                            let ch = plane % c;
                            turned.clear();
                            turned.extend(w[ch * kh * kw..(ch + 1) * kh * kw].iter().rev());
                            let dyp = dx_gather.fill(dy, buf);
                            simd_apply(GatherPlane(&dx_gather, dyp, &offs, turned, dx));
                        },
                    );
                return dx;
            }
            let (taps, tw) = (self.taps(), self.phase_width());
            dx.par_chunks_mut(h * wd)
                .zip(dy.par_chunks(oh * ow))
                .enumerate()
                .for_each_init(Vec::new, |buf, (plane, (dx, dy))| {
                    let ch = plane % c;
                    let w = &w[ch * kh * kw..(ch + 1) * kh * kw];
                    // The gradient of the phased plane (the plane itself at stride 1),
                    // contiguous writes at any stride; interleaved back at the end.
                    let dxp: &mut [f32] = if s == 1 {
                        dx
                    } else {
                        buf.clear();
                        buf.resize(s * h * tw, 0.0);
                        buf
                    };
                    simd_apply(ScatterDx((self, dy, w, (&taps, tw), dxp)));
                    if s > 1 {
                        for r in 0..h {
                            for (col, d) in dx[r * wd..(r + 1) * wd].iter_mut().enumerate() {
                                *d = buf[((col % s) * h + r) * tw + col / s];
                            }
                        }
                    }
                });
            dx
        });
        let dw = need[1].then(|| {
            let mut dw = vec![0.0f32; c * kh * kw];
            let g = self.forward_gather();
            let (offs, owp) = (g.offsets(), lane_padded(ow));
            dw.par_chunks_mut(kh * kw).enumerate().for_each_init(
                || (Vec::new(), Vec::new()),
                |(buf, acc), (ch, dw)| {
                    // Per kernel tap, the products summed along the output row in ow lanes
                    // (vectorised), over all rows and images; the lanes are added up once at
                    // the end.
                    acc.clear();
                    acc.resize(kh * kw * owp, 0.0f32);
                    for img in 0..self.n {
                        let plane = img * c + ch;
                        let xp = g.fill(&x[plane * h * wd..(plane + 1) * h * wd], buf);
                        let dy = &dy[plane * oh * ow..(plane + 1) * oh * ow];
                        simd_apply(TapSums(&g, xp, &offs, dy, acc));
                    }
                    for (d, lanes) in dw.iter_mut().zip(acc.chunks_exact(owp)) {
                        *d = lanes[..ow].iter().sum();
                    }
                },
            );
            dw
        });
        [dx, dw]
    }
}

/// A kernel column's output columns and where the first reads (see [`Conv::taps`]).
type Taps<'a> = (&'a [(std::ops::Range<usize>, usize)], usize);

/// One plane's input gradient by scatters, [`depthwise_plane_dx`] (strides above 1), for
/// [`simd_apply`].
struct ScatterDx<'a>((&'a Conv, &'a [f32], &'a [f32], Taps<'a>, &'a mut [f32]));

impl SimdBody for ScatterDx<'_> {
    type Out = ();
    #[inline(always)]
    fn run<L: Lanes>(self) {
        depthwise_plane_dx::<L>(self.0);
    }
}

/// A depthwise pass written as gathers, `out[o][q] += Σ_{i,j} w[i·kw + j] ·
/// src[o·sr + i − top][q·s + j − left]` with `src` (`h × wd`) zero outside: the forward
/// (over `x`), and at stride 1 the input gradient (over `dy`, the kernel turned). The source
/// is first copied into a zero-padded plane split by column phase (see [`Gather::fill`]), so
/// that each tap reads one contiguous, in-bounds stretch per output row, at an offset that
/// is the same for every row; the taps are then summed in registers ([`Lanes::taps_row`])
/// instead of each adding into the output in memory.
struct Gather {
    h: usize,
    wd: usize,
    top: usize,
    left: usize,
    sr: usize,
    s: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
}

impl Gather {
    /// Rows of the padded plane: every row an output row reads, and the source.
    fn hp(&self) -> usize {
        ((self.oh - 1) * self.sr + self.kh).max(self.top + self.h)
    }

    /// Elements of a padded row of one phase.
    fn tw(&self) -> usize {
        ((self.ow - 1) * self.s + self.kw)
            .max(self.left + self.wd)
            .div_ceil(self.s)
    }

    /// Per tap `(i, j)` (`i·kw + j`), where output row 0 reads in the padded plane; row `o`
    /// reads [`Gather::row_step`] `· o` further.
    fn offsets(&self) -> Vec<usize> {
        let (hp, tw, s, kw) = (self.hp(), self.tw(), self.s, self.kw);
        (0..self.kh * kw)
            .map(|t| {
                let (i, j) = (t / kw, t % kw);
                ((j % s) * hp + i) * tw + j / s
            })
            .collect()
    }

    fn row_step(&self) -> usize {
        self.sr * self.tw()
    }

    /// `src` zero-padded (`top` rows above, `left` columns before) into `buf`, each row split
    /// by column phase: padded column `t·s + ph` of padded row `r` at `[(ph·hp + r)·tw + t]`.
    fn fill<'a>(&self, src: &[f32], buf: &'a mut Vec<f32>) -> &'a [f32] {
        let (s, hp, tw, wd) = (self.s, self.hp(), self.tw(), self.wd);
        if s == 1 {
            // Each padded row written once: zeros around the source row, or all zeros.
            buf.resize(hp * tw, 0.0);
            let src = &src[..self.h * wd];
            for (pr, dst) in buf[..hp * tw].chunks_exact_mut(tw).enumerate() {
                match pr.checked_sub(self.top).filter(|&r| r < self.h) {
                    Some(r) => {
                        let (before, rest) = dst.split_at_mut(self.left);
                        let (mid, after) = rest.split_at_mut(wd);
                        before.fill(0.0);
                        mid.copy_from_slice(&src[r * wd..][..wd]);
                        after.fill(0.0);
                    }
                    None => dst.fill(0.0),
                }
            }
            return &buf[..hp * tw];
        }
        buf.clear();
        buf.resize(s * hp * tw, 0.0);
        for (r, row) in src[..self.h * wd].chunks_exact(wd).enumerate() {
            let pr = r + self.top;
            // Phase by phase: padded column `t·s + ph` is source column `t·s + ph - left`.
            for ph in 0..s {
                let dst = &mut buf[(ph * hp + pr) * tw..][..tw];
                let first = (self.left + s - 1 - ph) / s;
                let src = row.iter().skip(first * s + ph - self.left).step_by(s);
                for (d, &v) in dst[first..].iter_mut().zip(src) {
                    *d = v;
                }
            }
        }
        buf
    }
}

/// One plane of a [`Gather`] for [`simd_apply`]: (geometry, padded source, tap offsets,
/// weights, output plane).
struct GatherPlane<'a>(&'a Gather, &'a [f32], &'a [usize], &'a [f32], &'a mut [f32]);

impl SimdBody for GatherPlane<'_> {
    type Out = ();
    #[inline(always)]
    fn run<L: Lanes>(self) {
        let GatherPlane(g, src, offs, w, out) = self;
        let (ow, step) = (g.ow, g.row_step());
        for (o, row) in out[..g.oh * ow].chunks_exact_mut(ow).enumerate() {
            L::taps_row(row, &src[o * step..], offs, w);
        }
    }
}

/// One plane's products for the weight gradient, for [`simd_apply`]: per tap `t`,
/// `acc[t][q] += dy[o][q] · src[offs[t] + o·step + q]` over the output rows `o` (the
/// forward's [`Gather`] over `x`); `acc` has [`lane_padded`]`(ow)` lanes per tap.
struct TapSums<'a>(&'a Gather, &'a [f32], &'a [usize], &'a [f32], &'a mut [f32]);

impl SimdBody for TapSums<'_> {
    type Out = ();
    #[inline(always)]
    fn run<L: Lanes>(self) {
        let TapSums(g, src, offs, dy, acc) = self;
        let (ow, step, owp) = (g.ow, g.row_step(), lane_padded(g.ow));
        for (o, dy_row) in dy[..g.oh * ow].chunks_exact(ow).enumerate() {
            for (&off, lanes) in offs.iter().zip(acc.chunks_exact_mut(owp)) {
                L::fma(lanes, dy_row, &src[o * step + off..]);
            }
        }
    }
}

/// One plane's input gradient, `dxp += w ⋆ dy` (`dxp` phased).
#[inline(always)]
fn depthwise_plane_dx<L: Lanes>(
    (conv, dy, w, (taps, tw), dxp): (&Conv, &[f32], &[f32], Taps, &mut [f32]),
) {
    let (ow, kw) = (conv.ow, conv.kw);
    for o in 0..conv.oh {
        let dy_row = &dy[o * ow..(o + 1) * ow];
        for i in 0..conv.kh {
            let Some(r) = conv.row(o, i) else { continue };
            for (j, (cols, base)) in taps.iter().enumerate() {
                let wij = w[i * kw + j];
                let dst = &mut dxp[base + r * tw..][..cols.len()];
                L::axpy(dst, wij, &dy_row[cols.clone()]);
            }
        }
    }
}

impl Fused3 for Conv {
    fn forward(&mut self, _tracked: bool) -> FlexTensor {
        self.compute()
    }

    fn backward(&self, dy: &[f32], need: [bool; 3]) -> [Option<FlexTensor>; 3] {
        let [dx, dw] = match self.kind {
            ConvKind::Pointwise => self.pointwise_grads(dy, [need[0], need[1]]),
            ConvKind::Depthwise => self.depthwise_grads(dy, [need[0], need[1]]),
        };
        let db = (need[2] && self.b.is_some()).then(|| {
            let plane = self.oh * self.ow;
            let mut db = vec![0.0f32; self.c_out];
            for (k, chunk) in dy.chunks(plane).enumerate() {
                db[k % self.c_out] += chunk.iter().sum::<f32>();
            }
            db
        });
        let w_shape = self.w.layout().shape().clone();
        [
            dx.map(|g| tensor(g, [self.n, self.c_in, self.h, self.wd])),
            dw.map(|g| tensor(g, w_shape)),
            db.map(|g| tensor(g, [self.c_out])),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every instruction set's [`Lanes`] this CPU has against the plain loops, on lengths
    /// around the vector widths (full vectors, a masked rest, both, none), with the slices
    /// cut out of longer ones so that a masked access past the end would change what is seen.
    struct LanesCheck;

    impl SimdBody for LanesCheck {
        type Out = ();
        fn run<L: Lanes>(self) {
            for n in [0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 56, 112] {
                let x: Vec<f32> = (0..n + 20).map(|i| (i as f32 * 0.37).sin()).collect();
                let g: Vec<f32> = (0..n + 20).map(|i| (i as f32 * 0.11).cos()).collect();
                let y0: Vec<f32> = (0..n + 20).map(|i| i as f32 * 0.5 - 3.0).collect();
                let (mut y, mut want) = (y0.clone(), y0.clone());
                L::axpy(&mut y[2..2 + n], 1.5, &x[5..]);
                Plain::axpy(&mut want[2..2 + n], 1.5, &x[5..]);
                assert_eq!(y.len(), want.len());
                for (a, b) in y.iter().zip(&want) {
                    assert!((a - b).abs() <= 1e-5, "axpy n={n}: {a} against {b}");
                }
                // The accumulators have whole vectors of room past `n`: lanes from `n` on
                // may be rewritten, but not changed.
                let (mut l, mut want) = (y0.clone(), y0.clone());
                L::fma(&mut l[1..], &g[3..3 + n], &x[4..]);
                Plain::fma(&mut want[1..], &g[3..3 + n], &x[4..]);
                for (a, b) in l.iter().zip(&want) {
                    assert!((a - b).abs() <= 1e-5, "fma n={n}: {a} against {b}");
                }
                // Three taps at offsets 0, 2, 7 of `x[5..]`.
                let (mut o, mut want) = (y0.clone(), y0.clone());
                let (offs, w) = ([0, 2, 7], [0.5, -1.25, 2.0]);
                L::taps_row(&mut o[2..2 + n], &x[5..5 + n + 7], &offs, &w);
                for (q, v) in want[2..2 + n].iter_mut().enumerate() {
                    *v += 0.5 * x[5 + q] - 1.25 * x[7 + q] + 2.0 * x[12 + q];
                }
                for (a, b) in o.iter().zip(&want) {
                    assert!((a - b).abs() <= 1e-5, "taps_row n={n}: {a} against {b}");
                }
            }
        }
    }

    /// The fused training batch norm against burn's op (output, batch mean and variance, and
    /// the gradients of x, γ, β), and `nn::conv::norm` against `BatchNorm::forward` (output
    /// and the running statistics after the step), on shapes with lane tails and 1 × 1 maps.
    #[test]
    fn fused_batch_norm_matches_burns() {
        use burn::nn::BatchNormConfig;
        use burn::tensor::Distribution;
        let dev = Device::flex().autodiff();
        dev.seed(23);
        for [n, c, h, w] in [[3, 5, 7, 9], [2, 4, 1, 1], [2, 3, 13, 38]] {
            // A mean of its own per channel, so that centring matters.
            let shift = Tensor::<4>::random([1, c, 1, 1], Distribution::Uniform(-3.0, 3.0), &dev);
            let x0 =
                Tensor::<4>::random([n, c, h, w], Distribution::Normal(0.0, 2.0), &dev) + shift;
            let up = Tensor::<4>::random([n, c, h, w], Distribution::Normal(0.0, 1.0), &dev);
            let gamma0 = Tensor::<1>::random([c], Distribution::Normal(1.0, 0.5), &dev);
            let beta0 = Tensor::<1>::random([c], Distribution::Normal(0.0, 0.5), &dev);
            let run = |fused: bool| {
                let x = x0.clone().detach().require_grad();
                let gamma = gamma0.clone().detach().require_grad();
                let beta = beta0.clone().detach().require_grad();
                let flat1 = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
                let (y, mean, var) = if fused {
                    batch_norm_train(&x, &gamma, &beta, 1e-3).expect("fused")
                } else {
                    let r = burn::tensor::module::batch_norm_train(
                        x.clone(),
                        gamma.clone(),
                        beta.clone(),
                        1e-3,
                    );
                    (r.output, flat1(r.mean.inner()), flat1(r.variance.inner()))
                };
                let mut out = vec![y.clone().inner().into_data().try_to_vec::<f32>().unwrap()];
                out.push(mean);
                out.push(var);
                let grads = (y * up.clone()).sum().backward();
                out.push(x.grad(&grads).unwrap().into_data().try_to_vec().unwrap());
                out.push(
                    gamma
                        .grad(&grads)
                        .unwrap()
                        .into_data()
                        .try_to_vec()
                        .unwrap(),
                );
                out.push(beta.grad(&grads).unwrap().into_data().try_to_vec().unwrap());
                out
            };
            let (got, want) = (run(true), run(false));
            assert_eq!(got.len(), 6);
            for (k, (a, b)) in got.iter().zip(&want).enumerate() {
                let worst = super::super::worst_diff(a, b, true);
                assert!(worst < 1e-4, "{n}x{c}x{h}x{w} output {k}: {worst}");
            }
            // The module: the same output and running statistics as burn's BatchNorm.
            // Two layers (a clone would share the running state): ones, zeros, as configured.
            let cfg = BatchNormConfig::new(c).with_momentum(0.1);
            let (a, b) = (cfg.init(&dev), cfg.init(&dev));
            let ya = crate::nn::conv::norm(&a, x0.clone());
            let yb = b.forward(x0.clone());
            let v = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
            for (got, want) in [
                (v(a.running_mean.value()), v(b.running_mean.value())),
                (v(a.running_var.value()), v(b.running_var.value())),
                (
                    ya.into_data().try_to_vec::<f32>().unwrap(),
                    yb.into_data().try_to_vec::<f32>().unwrap(),
                ),
            ] {
                let worst = super::super::worst_diff(&got, &want, true);
                assert!(worst < 1e-4, "{n}x{c}x{h}x{w} module: {worst}");
            }
        }
    }

    #[test]
    fn vector_lanes_equal_the_plain_loops() {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F.
                unsafe { apply_avx512(LanesCheck) };
            } else {
                eprintln!("no AVX-512F here: its lanes are not tested on this CPU");
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has AVX2 and FMA.
                unsafe { apply_avx2(LanesCheck) };
            }
        }
        LanesCheck.run::<Plain>();
    }

    /// The fused linear layer against burn's, at inference and on the autodiff backend
    /// (output and the gradients of x, W and b), with and without bias, for a 3-d input and
    /// for a weight that is a transposed view.
    /// The patch embedding as a linear layer on cut-out patches equals burn's convolution
    /// (flattened to tokens), with and without bias, for non-square images and patches.
    #[test]
    fn patch_embedding_as_a_linear_layer_equals_the_convolution() {
        use burn::nn::PaddingConfig2d;
        use burn::nn::conv::Conv2dConfig;
        use burn::tensor::Distribution;
        let dev = Device::flex();
        dev.seed(31);
        for (bias, [h, w], [p, q]) in [(true, [12, 8], [4, 4]), (false, [15, 10], [5, 2])] {
            let conv = Conv2dConfig::new([3, 70], [p, q])
                .with_stride([p, q])
                .with_padding(PaddingConfig2d::Valid)
                .with_bias(bias)
                .init(&dev);
            // A bias large enough to matter.
            let conv = match conv.bias.clone() {
                Some(b) => burn::nn::conv::Conv2d {
                    bias: Some(b.map(|t| t + 1.5)),
                    ..conv
                },
                None => conv,
            };
            let x = Tensor::<4>::random([2, 3, h, w], Distribution::Normal(0.0, 1.0), &dev);
            let wv = conv.weight.val();
            let bv = conv.bias.as_ref().map(|b| b.val());
            let got = patch_linear(&x, &wv, bv.as_ref()).expect("CPU f32 tensors");
            let y = conv.forward(x.clone());
            let [b, d, gh, gw] = y.dims();
            let want = y.reshape([b, d, gh * gw]).swap_dims(1, 2);
            assert_eq!(got.dims(), [2, (h / p) * (w / q), 70]);
            let got = got.into_data().try_to_vec::<f32>().unwrap();
            let want = want.into_data().try_to_vec::<f32>().unwrap();
            let worst = super::super::worst_diff(&got, &want, true);
            assert!(worst < 1e-5, "bias {bias} {h}x{w} patch {p}x{q}: {worst}");
            assert!(want.iter().map(|v| v.abs()).sum::<f32>() > 1.0);
        }
        // Sizes that the patch does not divide take the convolution.
        let x = Tensor::<4>::zeros([1, 3, 9, 8], &dev);
        let w = Tensor::<4>::zeros([4, 3, 4, 4], &dev);
        assert!(patch_linear(&x, &w, None).is_none());
    }

    #[test]
    fn linear_then_activation_matches_the_layer_then_the_activation() {
        use crate::nn::Activation;
        use burn::tensor::Distribution;
        if !super::super::sgemm::available() {
            // Without AVX-512F `linear_then` declines and the caller takes the two ops.
            let dev = Device::flex();
            let x = Tensor::<2>::zeros([2, 3], &dev);
            let w = Tensor::<2>::zeros([3, 4], &dev);
            assert!(linear_then(&x, &w, None, super::super::Kernel::Gelu).is_none());
            return;
        }
        let dev = Device::flex();
        dev.seed(21);
        // Rows for both kernels (up to and above sgemm::MAX_ROWS), a ragged width.
        for rows in [5, 230] {
            let x = Tensor::<3>::random([1, rows, 72], Distribution::Normal(0.0, 1.0), &dev);
            let w = Tensor::<2>::random([72, 150], Distribution::Normal(0.0, 0.3), &dev);
            let b = Tensor::<1>::random([150], Distribution::Normal(0.0, 1.0), &dev);
            for act in [
                Activation::Gelu,
                Activation::GeluTanh,
                Activation::QuickGelu,
                Activation::Silu,
            ] {
                let kernel = act.kernel().expect("a fused activation");
                let got = linear_then(&x, &w, Some(&b), kernel).expect("CPU f32 tensors");
                let want = act.plain(burn::tensor::module::linear(
                    x.clone(),
                    w.clone(),
                    Some(b.clone()),
                ));
                let got = got.into_data().try_to_vec::<f32>().unwrap();
                let want = want.into_data().try_to_vec::<f32>().unwrap();
                let worst = super::super::worst_diff(&got, &want, true);
                assert!(worst < 1e-5, "{act:?} rows {rows}: {worst}");
                // The activation ran: it changed the outputs.
                let linear = burn::tensor::module::linear(x.clone(), w.clone(), Some(b.clone()));
                let linear = linear.into_data().try_to_vec::<f32>().unwrap();
                assert!(super::super::worst_diff(&got, &linear, false) > 0.1);
            }
        }
    }

    #[test]
    fn linear_add_equals_the_layer_plus_the_residual() {
        use burn::tensor::Distribution;
        let dev = Device::flex();
        if !super::super::sgemm::available() {
            // Without AVX-512F it declines and the caller adds.
            let x = Tensor::<2>::zeros([2, 3], &dev);
            let w = Tensor::<2>::zeros([3, 4], &dev);
            let r = Tensor::<2>::zeros([2, 4], &dev);
            assert!(linear_add(&x, &w, None, &r).is_none());
            return;
        }
        dev.seed(41);
        // Rows for both kernels (up to and above sgemm::MAX_ROWS), a width that is not whole
        // panels, with and without a bias.
        for rows in [5, 230] {
            let x = Tensor::<3>::random([2, rows, 72], Distribution::Normal(0.0, 1.0), &dev);
            let w = Tensor::<2>::random([72, 150], Distribution::Normal(0.0, 0.3), &dev);
            let b = Tensor::<1>::random([150], Distribution::Normal(0.0, 1.0), &dev);
            let r = Tensor::<3>::random([2, rows, 150], Distribution::Normal(0.0, 1.0), &dev);
            for bias in [Some(&b), None] {
                let got = linear_add(&x, &w, bias, &r).expect("CPU f32 tensors");
                let linear = burn::tensor::module::linear(x.clone(), w.clone(), bias.cloned());
                let want = linear.clone() + r.clone();
                assert_eq!(got.dims(), want.dims());
                let got = got.into_data().try_to_vec::<f32>().unwrap();
                let want = want.into_data().try_to_vec::<f32>().unwrap();
                let worst = super::super::worst_diff(&got, &want, true);
                assert!(worst < 1e-5, "rows {rows}: {worst}");
                // The residual was added: the output is not the layer's alone.
                let linear = linear.into_data().try_to_vec::<f32>().unwrap();
                assert!(super::super::worst_diff(&got, &linear, false) > 0.5);
            }
            // A residual of another shape is refused.
            let wrong = Tensor::<3>::zeros([2, rows, 149], &dev);
            assert!(linear_add(&x, &w, None, &wrong).is_none());
        }
    }

    #[test]
    fn side_by_side_layers_equal_the_layers_one_by_one() {
        use burn::tensor::Distribution;
        let dev = Device::flex();
        if !super::super::sgemm::available() {
            // Without AVX-512F it declines and the caller runs the layers one by one.
            let x = Tensor::<2>::zeros([2, 3], &dev);
            let w = Tensor::<2>::zeros([3, 4], &dev);
            assert!(linear_side_by_side(&x, &[(&w, None), (&w, None)]).is_none());
            return;
        }
        dev.seed(31);
        // Widths that are not whole panels (so the layers' columns share one), a layer without
        // a bias between two with, a transposed weight; 14 and 90 rows.
        let w1 = Tensor::<2>::random([40, 40], Distribution::Normal(0.0, 0.3), &dev);
        let w2 = Tensor::<2>::random([17, 40], Distribution::Normal(0.0, 0.3), &dev).transpose();
        let w3 = Tensor::<2>::random([40, 33], Distribution::Normal(0.0, 0.3), &dev);
        let b1 = Tensor::<1>::random([40], Distribution::Normal(0.0, 1.0), &dev);
        let b3 = Tensor::<1>::random([33], Distribution::Normal(0.0, 1.0), &dev);
        let layers = [(&w1, Some(&b1)), (&w2, None), (&w3, Some(&b3))];
        for rows in [7, 45] {
            let x = Tensor::<3>::random([2, rows, 40], Distribution::Normal(0.0, 1.0), &dev);
            for round in 0..2 {
                let got = linear_side_by_side(&x, &layers).expect("CPU f32 tensors");
                assert_eq!(got.len(), 3);
                for ((w, b), y) in layers.iter().zip(got) {
                    let want = burn::tensor::module::linear(x.clone(), (*w).clone(), b.cloned());
                    assert_eq!(y.dims(), want.dims());
                    let y = y.into_data().try_to_vec::<f32>().unwrap();
                    let want = want.into_data().try_to_vec::<f32>().unwrap();
                    let worst = super::super::worst_diff(&y, &want, true);
                    assert!(worst < 1e-5, "rows {rows} round {round}: {worst}");
                }
            }
        }
        // The packing is made once and then found in the cache.
        let ws: Vec<FlexTensor> = [&w1, &w2, &w3]
            .iter()
            .map(|w| (*w).clone().try_into_primitive::<Flex>().unwrap())
            .collect();
        let refs: Vec<&FlexTensor> = ws.iter().collect();
        let f32 = super::super::sgemm::Precision::F32;
        let a = super::super::sgemm::packed_side_by_side(&refs, f32).unwrap();
        let b = super::super::sgemm::packed_side_by_side(&refs, f32).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        // Above the small-batch kernel's rows the layers run one by one.
        let many = super::super::sgemm::MAX_ROWS + 1;
        let x = Tensor::<2>::zeros([many, 40], &dev);
        assert!(linear_side_by_side(&x, &layers).is_none());
        // A weight of another reduction size does not fit beside them.
        let other = Tensor::<2>::zeros([41, 8], &dev);
        let x = Tensor::<2>::zeros([3, 40], &dev);
        assert!(linear_side_by_side(&x, &[(&w1, None), (&other, None)]).is_none());
    }

    #[test]
    fn fused_linear_matches_burns_layer() {
        use burn::tensor::Distribution;
        for autodiff in [false, true] {
            let dev = if autodiff {
                Device::flex().autodiff()
            } else {
                Device::flex()
            };
            dev.seed(13);
            let x0 = Tensor::<3>::random([3, 7, 40], Distribution::Normal(0.0, 1.0), &dev);
            let w0 = Tensor::<2>::random([40, 24], Distribution::Normal(0.0, 0.3), &dev);
            let wt0 = Tensor::<2>::random([24, 40], Distribution::Normal(0.0, 0.3), &dev);
            let b0 = Tensor::<1>::random([24], Distribution::Normal(0.0, 1.0), &dev);
            let up = Tensor::<3>::random([3, 7, 24], Distribution::Normal(0.0, 1.0), &dev);
            for (bias, transposed) in [(true, false), (false, false), (true, true)] {
                let run = |fused: bool| {
                    let track = |t: Tensor<2>| {
                        if autodiff {
                            t.detach().require_grad()
                        } else {
                            t
                        }
                    };
                    let x = if autodiff {
                        x0.clone().detach().require_grad()
                    } else {
                        x0.clone()
                    };
                    let w_leaf = track(if transposed { wt0.clone() } else { w0.clone() });
                    let w = if transposed {
                        w_leaf.clone().transpose()
                    } else {
                        w_leaf.clone()
                    };
                    let b = if autodiff {
                        b0.clone().detach().require_grad()
                    } else {
                        b0.clone()
                    };
                    let bias_t = bias.then(|| b.clone());
                    let y = if fused {
                        linear(&x, &w, bias_t.as_ref()).expect("CPU f32 tensors are fused")
                    } else {
                        burn::tensor::module::linear(x.clone(), w.clone(), bias_t.clone())
                    };
                    let flat = |t: Tensor<3>| t.into_data().try_to_vec::<f32>().unwrap();
                    let mut out = vec![if autodiff {
                        flat(y.clone().inner())
                    } else {
                        flat(y.clone())
                    }];
                    if autodiff {
                        let grads = (y * up.clone()).sum().backward();
                        out.push(x.grad(&grads).unwrap().into_data().try_to_vec().unwrap());
                        out.push(
                            w_leaf
                                .grad(&grads)
                                .unwrap()
                                .into_data()
                                .try_to_vec()
                                .unwrap(),
                        );
                        if bias {
                            out.push(b.grad(&grads).unwrap().into_data().try_to_vec().unwrap());
                        }
                    }
                    out
                };
                let (got, want) = (run(true), run(false));
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!(g.len(), w.len());
                    let worst = super::super::worst_diff(g, w, false);
                    assert!(
                        worst < 1e-4,
                        "autodiff {autodiff} bias {bias} transposed {transposed}: {worst}"
                    );
                }
            }
        }
        // A non-contiguous input is left to burn.
        let dev = Device::flex();
        let x = Tensor::<2>::zeros([4, 6], &dev).transpose();
        assert!(linear(&x, &Tensor::<2>::zeros([4, 3], &dev), None).is_none());
    }

    /// The fused layer norm against burn's, at inference and on the autodiff backend (output
    /// and the gradients of x, γ and β), with and without β, on rows whose mean and scale
    /// differ.
    #[test]
    fn fused_layer_norm_matches_burns() {
        use burn::nn::LayerNormConfig;
        use burn::tensor::Distribution;
        for autodiff in [false, true] {
            let dev = if autodiff {
                Device::flex().autodiff()
            } else {
                Device::flex()
            };
            dev.seed(17);
            let d = 96;
            let shift = Tensor::<3>::random([3, 15, 1], Distribution::Uniform(-3.0, 3.0), &dev);
            let x0 = Tensor::<3>::random([3, 15, d], Distribution::Normal(0.0, 2.0), &dev) + shift;
            let up = Tensor::<3>::random([3, 15, d], Distribution::Normal(0.0, 1.0), &dev);
            for bias in [true, false] {
                let mut ln = LayerNormConfig::new(d)
                    .with_epsilon(1e-6)
                    .with_bias(bias)
                    .init(&dev);
                ln.gamma = burn::module::Param::from_tensor(Tensor::<1>::random(
                    [d],
                    Distribution::Normal(1.0, 0.5),
                    &dev,
                ));
                if let Some(b) = &mut ln.beta {
                    *b = burn::module::Param::from_tensor(Tensor::<1>::random(
                        [d],
                        Distribution::Normal(0.0, 0.5),
                        &dev,
                    ));
                }
                let run = |fused: bool| {
                    let x = if autodiff {
                        x0.clone().detach().require_grad()
                    } else {
                        x0.clone()
                    };
                    let (gamma, beta) = (ln.gamma.val(), ln.beta.as_ref().map(|b| b.val()));
                    let y = if fused {
                        layer_norm(&x, &gamma, beta.as_ref(), 1e-6).expect("fused")
                    } else {
                        ln.forward(x.clone())
                    };
                    let flat = |t: Tensor<3>| t.into_data().try_to_vec::<f32>().unwrap();
                    let mut out = vec![flat(if autodiff {
                        y.clone().inner()
                    } else {
                        y.clone()
                    })];
                    if autodiff {
                        let grads = (y * up.clone()).sum().backward();
                        out.push(x.grad(&grads).unwrap().into_data().try_to_vec().unwrap());
                        out.push(
                            gamma
                                .grad(&grads)
                                .unwrap()
                                .into_data()
                                .try_to_vec()
                                .unwrap(),
                        );
                        if let Some(b) = &beta {
                            out.push(b.grad(&grads).unwrap().into_data().try_to_vec().unwrap());
                        }
                    }
                    out
                };
                let (got, want) = (run(true), run(false));
                assert_eq!(got.len(), want.len());
                assert_eq!(got.len(), if autodiff { 3 + bias as usize } else { 1 });
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!(g.len(), w.len());
                    let worst = super::super::worst_diff(g, w, true);
                    assert!(worst < 1e-4, "autodiff {autodiff} bias {bias}: {worst}");
                }
            }
        }
    }

    /// The fused pointwise and depthwise convolutions against burn's conv2d, at inference and
    /// on the autodiff backend (output and the gradients of x, W and b): 1 × 1 with and
    /// without bias; depthwise 3 × 3 and 5 × 5, strides 1 and 2, with and without padding,
    /// on odd sizes. Other convolutions are left to burn.
    #[test]
    fn fused_convolutions_match_burns() {
        use burn::tensor::Distribution;
        use burn::tensor::ops::ConvOptions;
        // (c_in, c_out, k, stride, pad, groups, bias)
        let cases = [
            (6, 10, 1, 1, 0, 1, true),
            (6, 10, 1, 1, 0, 1, false),
            (5, 5, 3, 1, 1, 5, false),
            (5, 5, 3, 2, 1, 5, true),
            (5, 5, 5, 2, 0, 5, false),
            (5, 5, 5, 1, 2, 5, false),
            (4, 4, 3, 2, 0, 4, false),
            (4, 4, 3, 1, 0, 4, true),
        ];
        for autodiff in [false, true] {
            let dev = if autodiff {
                Device::flex().autodiff()
            } else {
                Device::flex()
            };
            dev.seed(21);
            // Odd sizes, and images smaller than the kernel (the last MBConv stages).
            let sizes = [(11, 9), (2, 3), (1, 1), (13, 38)];
            let all = cases
                .iter()
                .flat_map(|&c| sizes.iter().map(move |&hw| (c, hw)))
                .filter(|&((_, _, k, _, pad, _, _), (h, w))| h + 2 * pad >= k && w + 2 * pad >= k);
            for ((c_in, c_out, k, stride, pad, groups, bias), (h, wd)) in all {
                let x0 =
                    Tensor::<4>::random([2, c_in, h, wd], Distribution::Normal(0.0, 1.0), &dev);
                let w0 = Tensor::<4>::random(
                    [c_out, c_in / groups, k, k],
                    Distribution::Normal(0.0, 0.5),
                    &dev,
                );
                let b0 = Tensor::<1>::random([c_out], Distribution::Normal(0.0, 1.0), &dev);
                // Drawn once for both runs (other tests draw from the same generator).
                let (oh, ow) = (
                    (h + 2 * pad - k) / stride + 1,
                    (wd + 2 * pad - k) / stride + 1,
                );
                let up =
                    Tensor::<4>::random([2, c_out, oh, ow], Distribution::Normal(0.0, 1.0), &dev);
                let track = |t: Tensor<4>| {
                    if autodiff {
                        t.detach().require_grad()
                    } else {
                        t
                    }
                };
                let run = |fused: bool| {
                    let (x, w) = (track(x0.clone()), track(w0.clone()));
                    let b = if autodiff {
                        b0.clone().detach().require_grad()
                    } else {
                        b0.clone()
                    };
                    let bias_t = bias.then(|| b.clone());
                    let y = if fused {
                        conv2d(&x, &w, bias_t.as_ref(), [stride; 2], [pad; 2], groups)
                            .expect("fused")
                    } else {
                        let opts = ConvOptions::new([stride; 2], [pad; 2], [1, 1], groups);
                        burn::tensor::module::conv2d(x.clone(), w.clone(), bias_t, opts)
                    };
                    let flat = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
                    let mut out = vec![y.dims().to_vec().iter().map(|&d| d as f32).collect()];
                    out.push(flat(if autodiff {
                        y.clone().inner()
                    } else {
                        y.clone()
                    }));
                    if autodiff {
                        let grads = (y * up.clone()).sum().backward();
                        out.push(x.grad(&grads).unwrap().into_data().try_to_vec().unwrap());
                        out.push(w.grad(&grads).unwrap().into_data().try_to_vec().unwrap());
                        if bias {
                            out.push(b.grad(&grads).unwrap().into_data().try_to_vec().unwrap());
                        }
                    }
                    out
                };
                let got = run(true);
                let want = run(false);
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!(g.len(), w.len());
                    let worst = super::super::worst_diff(g, w, true);
                    assert!(
                        worst < 1e-4,
                        "autodiff {autodiff} {h}x{wd} k {k} stride {stride} pad {pad} groups {groups}: {worst}"
                    );
                }
            }
        }
        // A grouped convolution that is neither kind is left to burn.
        let dev = Device::flex().autodiff();
        let x = Tensor::<4>::zeros([1, 4, 5, 5], &dev);
        let w = Tensor::<4>::zeros([4, 2, 3, 3], &dev);
        assert!(conv2d(&x, &w, None, [1, 1], [1, 1], 2).is_none());
        let w = Tensor::<4>::zeros([4, 1, 3, 3], &dev);
        assert!(conv2d(&x, &w, None, [1, 1], [1, 1], 4).is_some());
    }
}
