//! Inner product with runtime CPU dispatch (AVX-512F / AVX2+FMA / portable).
//! Used for ground truth, brute force and the instant-distance `Point` impl
//! (and the `hnsw_rs+dot` variant), so the crate build stays x86-64 baseline.

use std::sync::OnceLock;

type DotFn = fn(&[f32], &[f32]) -> f32;

macro_rules! dot_body {
    ($a:expr, $b:expr) => {{
        let n = $a.len().min($b.len());
        let (a, b) = (&$a[..n], &$b[..n]);
        let mut acc = [0f32; 32];
        let ca = a.chunks_exact(32);
        let cb = b.chunks_exact(32);
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            let x: &[f32; 32] = x.try_into().unwrap();
            let y: &[f32; 32] = y.try_into().unwrap();
            for i in 0..32 {
                acc[i] += x[i] * y[i];
            }
        }
        // pairwise reduction of the 32 lanes
        let mut w = 16;
        while w > 0 {
            for i in 0..w {
                acc[i] += acc[i + w];
            }
            w /= 2;
        }
        let mut s = acc[0];
        for (x, y) in ra.iter().zip(rb) {
            s += x * y;
        }
        s
    }};
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    dot_body!(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2_inner(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut i = 0;
    // SAFETY: all loads are within [0, n) of both slices.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        while i + 32 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_loadu_ps(pa.add(i + 8 * j));
                let y = _mm256_loadu_ps(pb.add(i + 8 * j));
                *acc = _mm256_fmadd_ps(x, y, *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i)),
                _mm256_loadu_ps(pb.add(i)),
                acc[0],
            );
            i += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
        let mut r = _mm_cvtss_f32(h);
        while i < n {
            r += a[i] * b[i];
            i += 1;
        }
        r
    }
}
#[cfg(target_arch = "x86_64")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: only selected after runtime detection of avx2 + fma.
    unsafe { dot_avx2_inner(a, b) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn dot_avx512_inner(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut i = 0;
    // SAFETY: full loads stay within [0, n); the tail uses a masked load.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); 4];
        while i + 64 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_loadu_ps(pa.add(i + 16 * j));
                let y = _mm512_loadu_ps(pb.add(i + 16 * j));
                *acc = _mm512_fmadd_ps(x, y, *acc);
            }
            i += 64;
        }
        while i + 16 <= n {
            acc[0] = _mm512_fmadd_ps(
                _mm512_loadu_ps(pa.add(i)),
                _mm512_loadu_ps(pb.add(i)),
                acc[0],
            );
            i += 16;
        }
        if i < n {
            let m: __mmask16 = (1u32 << (n - i)).wrapping_sub(1) as __mmask16;
            let x = _mm512_maskz_loadu_ps(m, pa.add(i));
            let y = _mm512_maskz_loadu_ps(m, pb.add(i));
            acc[1] = _mm512_fmadd_ps(x, y, acc[1]);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(
            _mm512_add_ps(acc[0], acc[1]),
            _mm512_add_ps(acc[2], acc[3]),
        ))
    }
}
#[cfg(target_arch = "x86_64")]
fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: only selected after runtime detection of avx512f.
    unsafe { dot_avx512_inner(a, b) }
}

fn select() -> (DotFn, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::env::var_os("ANN_BENCH_NO_AVX512").is_none() && is_x86_feature_detected!("avx512f")
        {
            return (dot_avx512, "avx512f");
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return (dot_avx2, "avx2+fma");
        }
    }
    (dot_portable, "portable")
}

static DOT: OnceLock<(DotFn, &'static str)> = OnceLock::new();

#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    (DOT.get_or_init(select).0)(a, b)
}

pub fn simd_level() -> &'static str {
    DOT.get_or_init(select).1
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernels_agree() {
        let a: Vec<f32> = (0..515)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let b: Vec<f32> = (0..515)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
            .collect();
        let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let p = super::dot_portable(&a, &b) as f64;
        assert!((p - exact).abs() < 1e-3, "{p} {exact}");
        for len in [0, 1, 7, 8, 15, 16, 17, 31, 33, 63, 64, 65, 100, 512, 515] {
            let e: f64 = a[..len]
                .iter()
                .zip(&b[..len])
                .map(|(x, y)| *x as f64 * *y as f64)
                .sum();
            let d = super::dot(&a[..len], &b[..len]) as f64;
            assert!((d - e).abs() < 1e-3, "len {len}: {d} {e}");
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                let d2 = super::dot_avx2(&a[..len], &b[..len]) as f64;
                assert!((d2 - e).abs() < 1e-3, "avx2 len {len}: {d2} {e}");
            }
        }
    }
}
