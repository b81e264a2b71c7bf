//! Deterministic synthetic "CLIP-like" unit vectors.
//!
//! x = normalise( a·μ + B (c_z + s·Λ^{1/2} g) + (σ/√D)·ε )
//!
//! * μ      : a fixed random unit direction shared by all vectors (CLIP embeddings
//!            have a strong common component: random image pairs have cosine ≈ 0.3–0.5);
//! * B      : D × 48 random orthonormal basis (a 48-dimensional subspace, ⟂ μ);
//! * c_z    : one of 1000 cluster centres, c ~ N(0, I_48); the cluster z is drawn with
//!            Zipf-like weights w_z ∝ (z+1)^-0.5 (largest/smallest cluster ≈ 32×);
//! * g      : N(0, I_48) within-cluster offset, scaled by s and a power-law spectrum
//!            λ_j = 1/(j+1) (effective dimension ≈ 12, like the low local intrinsic
//!            dimension measured on real embeddings);
//! * ε      : N(0, I_D) isotropic noise, total norm ≈ σ;
//! * then L2-normalised.
//!
//! Every vector i of stream `s` is generated from its own RNG seeded with
//! hash(seed, s, i), so the output is independent of thread count. The base set is
//! stream 0 and the queries stream 1: same distribution, different vectors.

use rayon::prelude::*;

/// Bump when the generator changes (part of the ground-truth cache key).
pub const GENERATOR_VERSION: &str = "g1";
pub const STREAM_BASE: u64 = 0;
pub const STREAM_QUERY: u64 = 1;

pub const SUBDIM: usize = 48;
pub const CLUSTERS: usize = 1000;
/// a: weight of the shared mean direction μ
pub const MEAN_NORM: f32 = 8.0;
/// s: within-cluster spread
pub const SPREAD: f32 = 3.0;
/// σ: isotropic noise norm
pub const NOISE: f32 = 3.0;
/// exponent of the cluster weights (z+1)^-ZIPF
pub const ZIPF: f64 = 0.5;

/// xoshiro256++ seeded through splitmix64.
pub struct Rng {
    s: [u64; 4],
    spare: Option<f32>,
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64, stream: u64, index: u64) -> Self {
        let mut x = seed
            ^ stream.wrapping_mul(0xA076_1D64_78BD_642F)
            ^ index.wrapping_mul(0xE703_7ED1_A0B4_28DB);
        let mut s = [0u64; 4];
        for v in &mut s {
            *v = splitmix(&mut x);
        }
        Rng { s, spare: None }
    }
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let r = (s[0].wrapping_add(s[3])).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        r
    }
    /// uniform in [0, 1)
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// standard normal (Box–Muller)
    pub fn gauss(&mut self) -> f32 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (2.0 * std::f64::consts::PI * u2).sin_cos();
        self.spare = Some((r * s) as f32);
        (r * c) as f32
    }
}

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

pub struct Generator {
    dim: usize,
    seed: u64,
    mean: Vec<f32>,    // dim, unit
    basis: Vec<f32>,   // SUBDIM rows of length dim, orthonormal, ⟂ mean
    centres: Vec<f32>, // CLUSTERS x SUBDIM
    cum_weights: Vec<f64>,
    sqrt_spec: Vec<f32>, // SUBDIM
}

impl Generator {
    pub fn new(dim: usize, seed: u64) -> Self {
        assert!(
            dim > SUBDIM,
            "dim must exceed the subspace dimension {SUBDIM}"
        );
        let mut rng = Rng::new(seed, u64::MAX, 0);
        // Gram–Schmidt on SUBDIM+1 Gaussian vectors: first = mean, rest = basis.
        let mut vecs: Vec<Vec<f32>> = Vec::with_capacity(SUBDIM + 1);
        for _ in 0..=SUBDIM {
            let mut v: Vec<f32> = (0..dim).map(|_| rng.gauss()).collect();
            for _pass in 0..2 {
                for u in &vecs {
                    let p: f32 = v.iter().zip(u).map(|(a, b)| a * b).sum();
                    v.iter_mut().zip(u).for_each(|(a, b)| *a -= p * b);
                }
            }
            normalise(&mut v);
            vecs.push(v);
        }
        let mean = vecs.remove(0);
        let basis: Vec<f32> = vecs.into_iter().flatten().collect();
        let centres: Vec<f32> = (0..CLUSTERS * SUBDIM).map(|_| rng.gauss()).collect();
        let mut acc = 0.0;
        let mut cum_weights = Vec::with_capacity(CLUSTERS);
        for z in 0..CLUSTERS {
            acc += ((z + 1) as f64).powf(-ZIPF);
            cum_weights.push(acc);
        }
        cum_weights.iter_mut().for_each(|w| *w /= acc);
        let sqrt_spec = (0..SUBDIM).map(|j| (1.0 / (j + 1) as f32).sqrt()).collect();
        Generator {
            dim,
            seed,
            mean,
            basis,
            centres,
            cum_weights,
            sqrt_spec,
        }
    }

    fn one(&self, stream: u64, index: u64, out: &mut [f32]) {
        let mut rng = Rng::new(self.seed, stream, index);
        let u = rng.uniform();
        let z = self
            .cum_weights
            .partition_point(|&w| w < u)
            .min(CLUSTERS - 1);
        let c = &self.centres[z * SUBDIM..(z + 1) * SUBDIM];
        let noise_sd = NOISE / (self.dim as f32).sqrt();
        for (o, m) in out.iter_mut().zip(&self.mean) {
            *o = MEAN_NORM * m + noise_sd * rng.gauss();
        }
        for j in 0..SUBDIM {
            let coef = c[j] + SPREAD * self.sqrt_spec[j] * rng.gauss();
            let row = &self.basis[j * self.dim..(j + 1) * self.dim];
            out.iter_mut().zip(row).for_each(|(o, b)| *o += coef * b);
        }
        normalise(out);
    }

    /// `n` vectors of stream `stream`, row-major n x dim, generated in parallel.
    pub fn generate(&self, n: usize, stream: u64) -> Vec<f32> {
        let mut out = vec![0f32; n * self.dim];
        out.par_chunks_mut(self.dim)
            .enumerate()
            .for_each(|(i, v)| self.one(stream, i as u64, v));
        out
    }
}

/// Mean cosine between random (query, base) pairs — a distribution statistic.
pub fn mean_random_cos(base: &[f32], queries: &[f32], dim: usize, pairs: usize, seed: u64) -> f64 {
    let n = base.len() / dim;
    let q = queries.len() / dim;
    let mut rng = Rng::new(seed, 7, 7);
    let mut s = 0.0f64;
    for _ in 0..pairs {
        let i = (rng.next_u64() % n as u64) as usize;
        let j = (rng.next_u64() % q as u64) as usize;
        s += crate::dist::dot(
            &base[i * dim..(i + 1) * dim],
            &queries[j * dim..(j + 1) * dim],
        ) as f64;
    }
    s / pairs as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn deterministic_and_unit() {
        let g = Generator::new(64, 1);
        let a = g.generate(10, STREAM_BASE);
        let b = Generator::new(64, 1).generate(10, STREAM_BASE);
        assert_eq!(a, b);
        let q = g.generate(10, STREAM_QUERY);
        assert_ne!(a, q);
        for v in a.chunks_exact(64) {
            let n: f32 = v.iter().map(|x| x * x).sum();
            assert!((n - 1.0).abs() < 1e-4);
        }
    }
}
