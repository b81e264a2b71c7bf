//! The element-wise kernels ([`super::Kernel`]) written with AVX-512 intrinsics.
//!
//! The compiler vectorises the scalar kernels in [`super`], but a division there becomes
//! `vdivps`, whose throughput on 16 lanes is about as much as the rest of a GELU together; the
//! reciprocals here are `vrcp14ps` with one Newton step (relative error about 2⁻²⁸, below the
//! kernels' own). The arithmetic otherwise follows the scalar functions step for step, and
//! the tail of a buffer (fewer than 16 values) runs the scalar code.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::Kernel;

/// `kernel` applied to each element of `buf` in place.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
pub(super) unsafe fn map_avx512(kernel: Kernel, buf: &mut [f32]) {
    // (Closures here inherit the function's target features: the helpers are safe to call.)
    match kernel {
        Kernel::Gelu => each(buf, |x| gelu(x)),
        Kernel::GeluTanh => each(buf, |x| gelu_tanh(x)),
        Kernel::QuickGelu => each(buf, |x| {
            _mm512_mul_ps(x, sigmoid(_mm512_mul_ps(x, _mm512_set1_ps(1.702))))
        }),
        Kernel::Silu => each(buf, |x| _mm512_mul_ps(x, sigmoid(x))),
        Kernel::Sigmoid => each(buf, |x| sigmoid(x)),
        Kernel::Exp => each(buf, |x| exp(x)),
    }
    let tail = buf.len() / 16 * 16;
    super::map_generic(kernel, &mut buf[tail..]);
}

/// `f` applied to each whole vector of 16 in `buf` (the tail is left to the caller).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn each(buf: &mut [f32], f: impl Fn(__m512) -> __m512) {
    for c in buf.chunks_exact_mut(16) {
        // SAFETY: 16 floats read and written in `c`; AVX-512F per `map_avx512`'s caller.
        unsafe { _mm512_storeu_ps(c.as_mut_ptr(), f(_mm512_loadu_ps(c.as_ptr()))) };
    }
}

/// `1 / d`: `vrcp14ps` refined by one Newton step, `r + r (1 - d r)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn recip(d: __m512) -> __m512 {
    let r = _mm512_rcp14_ps(d);
    _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(1.0)), r)
}

/// [`super::exp`] on 16 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn exp(x: __m512) -> __m512 {
    use super::exp_consts::*;
    let s = _mm512_set1_ps;
    let x = _mm512_min_ps(_mm512_max_ps(x, s(-87.0)), s(88.0));
    let t = _mm512_add_ps(_mm512_mul_ps(x, s(LOG2E)), s(SHIFTER));
    let n = _mm512_sub_ps(t, s(SHIFTER));
    let r = _mm512_sub_ps(
        _mm512_sub_ps(x, _mm512_mul_ps(n, s(LN2_HI))),
        _mm512_mul_ps(n, s(LN2_LO)),
    );
    let mut p = s(1.0 / 5040.0);
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = _mm512_fmadd_ps(p, r, s(c));
    }
    // 2ⁿ: n (in t's low mantissa bits) moved into the exponent field.
    let n_int = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_castps_si512(s(SHIFTER)));
    let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
        n_int,
        _mm512_set1_epi32(127),
    )));
    _mm512_mul_ps(p, scale)
}

/// `1 / (1 + e^-x)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn sigmoid(x: __m512) -> __m512 {
    let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), x));
    recip(_mm512_add_ps(_mm512_set1_ps(1.0), e))
}

/// [`super::erf`] on 16 lanes. `|x|` is capped at 10, where `erf` is 1 in `f32` (this keeps
/// the reciprocal finite).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
fn erf(x: __m512) -> __m512 {
    const P: f32 = super::ERF_P;
    const A: [f32; 5] = super::ERF_A;
    let s = _mm512_set1_ps;
    let sign = _mm512_and_ps(x, s(-0.0));
    let a = _mm512_min_ps(_mm512_andnot_ps(s(-0.0), x), s(10.0));
    let t = recip(_mm512_fmadd_ps(s(P), a, s(1.0)));
    let mut poly = s(A[4]);
    for c in [A[3], A[2], A[1], A[0]] {
        poly = _mm512_fmadd_ps(poly, t, s(c));
    }
    poly = _mm512_mul_ps(poly, t);
    let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(a, a)));
    let y = _mm512_fnmadd_ps(poly, e, s(1.0));
    _mm512_or_ps(y, sign)
}

/// [`super::gelu`] on 16 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
fn gelu(x: __m512) -> __m512 {
    let s = _mm512_set1_ps;
    let cdf = _mm512_add_ps(
        s(1.0),
        erf(_mm512_mul_ps(x, s(std::f32::consts::FRAC_1_SQRT_2))),
    );
    _mm512_mul_ps(_mm512_mul_ps(s(0.5), x), cdf)
}

/// [`super::gelu_tanh`] on 16 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn gelu_tanh(x: __m512) -> __m512 {
    const C: f32 = 0.797_884_6;
    let s = _mm512_set1_ps;
    let x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
    let u = _mm512_mul_ps(s(C), _mm512_fmadd_ps(s(0.044_715), x3, x));
    let e = exp(_mm512_mul_ps(s(2.0), u));
    let tanh = _mm512_fnmadd_ps(s(2.0), recip(_mm512_add_ps(e, s(1.0))), s(1.0));
    _mm512_mul_ps(_mm512_mul_ps(s(0.5), x), _mm512_add_ps(s(1.0), tanh))
}

#[cfg(test)]
mod tests {
    use super::super::{Kernel, map_generic};

    /// Each vector kernel against the scalar one, on a grid through the interesting range,
    /// the clamps of `exp` and huge values (where a reciprocal of infinity would go wrong).
    #[test]
    fn vector_kernels_match_the_scalar_ones() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("no AVX-512F on this CPU: the vector kernels are not used here");
            return;
        }
        let mut xs: Vec<f32> = vec![
            -1e30, -1e6, -100.0, -88.5, -87.5, 87.5, 88.5, 100.0, 1e6, 1e30, 0.0, -0.0,
        ];
        xs.extend((-1600..=1600).map(|i| i as f32 / 40.0));
        // Whole vectors only, so that every value goes through the vector code.
        xs.truncate(xs.len() / 16 * 16);
        for kernel in [
            Kernel::Gelu,
            Kernel::GeluTanh,
            Kernel::QuickGelu,
            Kernel::Silu,
            Kernel::Sigmoid,
            Kernel::Exp,
        ] {
            let mut want = xs.clone();
            map_generic(kernel, &mut want);
            let mut got = xs.clone();
            // SAFETY: AVX-512F checked above.
            unsafe { super::map_avx512(kernel, &mut got) };
            for ((&x, &g), &w) in xs.iter().zip(&got).zip(&want) {
                let tol = 2e-6 * w.abs().max(1.0);
                assert!(
                    (g - w).abs() <= tol || g == w,
                    "{kernel:?}({x}) = {g}, scalar {w}"
                );
            }
        }
    }
}
