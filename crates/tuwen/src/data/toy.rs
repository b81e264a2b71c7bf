//! Toy distributions for GANs, as WGAN-GP's `gan_toy.py` draws them, and the mode-coverage
//! measure of Unrolled GAN and VEEGAN.
//!
//! - `8gaussians`: eight Gaussians (σ = 0.02) at radius 2 on the compass directions, the
//!   whole set divided by 1.414.
//! - `25gaussians`: a 5×5 grid of Gaussians (σ = 0.05) at −4, −2, 0, 2, 4, divided by 2.828.
//! - `swissroll`: scikit-learn's `make_swiss_roll(noise=0.25)`, its x and z coordinates,
//!   divided by 7.5.
//! - `1d-mixture`: a 1-D mixture (ours): weights 0.3, 0.5, 0.2 of N(−2, 0.3²), N(0.5, 0.5²),
//!   N(3, 0.2²).

use crate::data::shapes::SplitMix64;
use crate::models::gan::normals;
use crate::{Error, Result};

/// A toy distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toy {
    /// Eight Gaussians on a circle.
    EightGaussians,
    /// 25 Gaussians on a grid.
    TwentyFiveGaussians,
    /// A noisy swiss roll in the plane.
    SwissRoll,
    /// Three Gaussians on the line.
    Mixture1d,
}

/// The names `toy:NAME` takes.
pub const NAMES: &[&str] = &["8gaussians", "25gaussians", "swissroll", "1d-mixture"];

impl Toy {
    /// The set called `name` (see [`NAMES`]).
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "8gaussians" => Toy::EightGaussians,
            "25gaussians" => Toy::TwentyFiveGaussians,
            "swissroll" => Toy::SwissRoll,
            "1d-mixture" => Toy::Mixture1d,
            _ => {
                return Err(Error::InvalidInput(format!(
                    "unknown toy set {name:?}; choose one of {}",
                    NAMES.join(", ")
                )));
            }
        })
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Toy::EightGaussians => "8gaussians",
            Toy::TwentyFiveGaussians => "25gaussians",
            Toy::SwissRoll => "swissroll",
            Toy::Mixture1d => "1d-mixture",
        }
    }

    /// Values per sample.
    pub fn dims(self) -> usize {
        match self {
            Toy::Mixture1d => 1,
            _ => 2,
        }
    }

    /// The modes (centres, after the set's scaling) and their standard deviation, for the
    /// Gaussian mixtures in the plane; `None` for the others.
    pub fn modes(self) -> Option<(Vec<[f32; 2]>, f32)> {
        match self {
            Toy::EightGaussians => {
                let r = std::f32::consts::FRAC_1_SQRT_2;
                let c = [
                    (1.0, 0.0),
                    (-1.0, 0.0),
                    (0.0, 1.0),
                    (0.0, -1.0),
                    (r, r),
                    (r, -r),
                    (-r, r),
                    (-r, -r),
                ];
                let v = c
                    .iter()
                    .map(|&(x, y)| [2.0 * x / 1.414, 2.0 * y / 1.414])
                    .collect();
                Some((v, 0.02 / 1.414))
            }
            Toy::TwentyFiveGaussians => {
                let mut v = Vec::new();
                for x in -2..=2 {
                    for y in -2..=2 {
                        v.push([2.0 * x as f32 / 2.828, 2.0 * y as f32 / 2.828]);
                    }
                }
                Some((v, 0.05 / 2.828))
            }
            _ => None,
        }
    }

    /// `n` samples, row-major (`n · dims` values), from `rng`.
    pub fn draw(self, n: usize, rng: &mut SplitMix64) -> Vec<f32> {
        let mut out = Vec::with_capacity(n * self.dims());
        match self {
            Toy::EightGaussians | Toy::TwentyFiveGaussians => {
                let (modes, sigma) = self.modes().expect("a mixture");
                let noise = normals(rng, 2 * n);
                for i in 0..n {
                    let m = modes[rng.below(modes.len())];
                    out.push(m[0] + sigma * noise[2 * i]);
                    out.push(m[1] + sigma * noise[2 * i + 1]);
                }
            }
            Toy::SwissRoll => {
                let noise = normals(rng, 2 * n);
                for i in 0..n {
                    let t = 1.5 * std::f32::consts::PI * (1.0 + 2.0 * rng.unit());
                    out.push((t * t.cos() + 0.25 * noise[2 * i]) / 7.5);
                    out.push((t * t.sin() + 0.25 * noise[2 * i + 1]) / 7.5);
                }
            }
            Toy::Mixture1d => {
                let noise = normals(rng, n);
                for z in noise {
                    let u = rng.unit();
                    let (m, s) = if u < 0.3 {
                        (-2.0, 0.3)
                    } else if u < 0.8 {
                        (0.5, 0.5)
                    } else {
                        (3.0, 0.2)
                    };
                    out.push(m + s * z);
                }
            }
        }
        out
    }
}

/// How well samples cover a mixture's modes (Unrolled GAN's and VEEGAN's measure).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Coverage {
    /// Modes with at least [`Coverage::MIN_PER_MODE`] high-quality samples.
    pub modes_covered: usize,
    /// Modes of the mixture.
    pub modes: usize,
    /// Share of samples within 3σ of their nearest mode.
    pub high_quality: f64,
    /// High-quality samples per mode.
    pub per_mode: Vec<usize>,
}

impl Coverage {
    /// High-quality samples a mode needs to count as covered (of the usual 2,500 samples:
    /// 20, under a tenth of the 312 a perfect generator puts on each of 8 modes).
    pub const MIN_PER_MODE: usize = 20;
}

/// Mode coverage of 2-D `samples` (row-major) for a mixture with `modes` and `sigma`: a
/// sample is high quality within 3σ of its nearest mode.
pub fn mode_coverage(samples: &[f32], modes: &[[f32; 2]], sigma: f32) -> Coverage {
    let mut per_mode = vec![0usize; modes.len()];
    let n = samples.len() / 2;
    let mut good = 0;
    for p in samples.chunks_exact(2) {
        let (k, d) = modes
            .iter()
            .enumerate()
            .map(|(k, m)| (k, ((p[0] - m[0]).powi(2) + (p[1] - m[1]).powi(2)).sqrt()))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("at least one mode");
        if d <= 3.0 * sigma {
            per_mode[k] += 1;
            good += 1;
        }
    }
    Coverage {
        modes_covered: per_mode
            .iter()
            .filter(|&&c| c >= Coverage::MIN_PER_MODE)
            .count(),
        modes: modes.len(),
        high_quality: good as f64 / n.max(1) as f64,
        per_mode,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data itself covers every mode, almost all of it within 3σ (99.7% in 1-D; in the
    /// plane a 2-D Gaussian keeps 98.9% within 3σ).
    #[test]
    fn data_covers_its_own_modes() {
        for toy in [Toy::EightGaussians, Toy::TwentyFiveGaussians] {
            let mut rng = SplitMix64::new(1);
            let x = toy.draw(2500, &mut rng);
            let (modes, sigma) = toy.modes().unwrap();
            let c = mode_coverage(&x, &modes, sigma);
            assert_eq!(c.modes_covered, modes.len(), "{toy:?}: {c:?}");
            assert!(c.high_quality > 0.98, "{toy:?}: {c:?}");
        }
        // A collapsed generator: every sample on one mode.
        let (modes, sigma) = Toy::EightGaussians.modes().unwrap();
        let one: Vec<f32> = (0..100).flat_map(|_| modes[3]).collect();
        let c = mode_coverage(&one, &modes, sigma);
        assert_eq!((c.modes_covered, c.high_quality), (1, 1.0));
    }

    #[test]
    fn eight_gaussians_sit_at_radius_two_over_1_414() {
        let mut rng = SplitMix64::new(2);
        let x = Toy::EightGaussians.draw(1000, &mut rng);
        let mean_r: f32 = x
            .chunks_exact(2)
            .map(|p| (p[0] * p[0] + p[1] * p[1]).sqrt())
            .sum::<f32>()
            / 1000.0;
        assert!((mean_r - 2.0 / 1.414).abs() < 0.01, "{mean_r}");
        assert!(Toy::parse("9gaussians").is_err());
    }
}
