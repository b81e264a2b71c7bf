//! Training-time augmentations: random resized crop and horizontal flip, as torchvision's
//! `RandomResizedCrop` (here the crop only; the image processor resizes) and
//! `RandomHorizontalFlip` draw them.

use image::RgbImage;
use image::imageops;

use super::shapes::SplitMix64;

/// What to draw for each training image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Augment {
    /// Smallest share of the image area a crop keeps (1: no cropping). open_clip uses 0.9.
    pub min_scale: f64,
    /// Mirror half of the images left to right (wrong for captions that say left or right).
    pub hflip: bool,
}

impl Default for Augment {
    fn default() -> Self {
        Augment {
            min_scale: 1.0,
            hflip: false,
        }
    }
}

impl Augment {
    /// Whether it changes anything.
    pub fn is_identity(&self) -> bool {
        self.min_scale >= 1.0 && !self.hflip
    }

    /// The augmented image, drawn from `rng`.
    pub fn apply(&self, img: RgbImage, rng: &mut SplitMix64) -> RgbImage {
        let mut img = if self.min_scale < 1.0 {
            let (x, y, w, h) = crop_box(img.width(), img.height(), self.min_scale, rng);
            imageops::crop_imm(&img, x, y, w, h).to_image()
        } else {
            img
        };
        if self.hflip && rng.unit() < 0.5 {
            imageops::flip_horizontal_in_place(&mut img);
        }
        img
    }
}

/// A crop of `width` x `height` keeping a share in `[min_scale, 1]` of the area with aspect
/// ratio in `[3/4, 4/3]` (log-uniform), at a uniform position; after ten misses, the largest
/// centred crop within those ratios, as torchvision does.
pub fn crop_box(
    width: u32,
    height: u32,
    min_scale: f64,
    rng: &mut SplitMix64,
) -> (u32, u32, u32, u32) {
    let area = f64::from(width) * f64::from(height);
    let (lo, hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * (min_scale + (1.0 - min_scale) * f64::from(rng.unit()));
        let ratio = (lo + (hi - lo) * f64::from(rng.unit())).exp();
        let w = (target * ratio).sqrt().round() as u32;
        let h = (target / ratio).sqrt().round() as u32;
        if w > 0 && h > 0 && w <= width && h <= height {
            let x = rng.below((width - w + 1) as usize) as u32;
            let y = rng.below((height - h + 1) as usize) as u32;
            return (x, y, w, h);
        }
    }
    let ratio = f64::from(width) / f64::from(height);
    let (w, h) = if ratio < 3.0 / 4.0 {
        (
            width,
            ((f64::from(width) / (3.0 / 4.0)).round() as u32).min(height),
        )
    } else if ratio > 4.0 / 3.0 {
        (
            ((f64::from(height) * 4.0 / 3.0).round() as u32).min(width),
            height,
        )
    } else {
        (width, height)
    };
    ((width - w) / 2, (height - h) / 2, w, h)
}

/// A draw from Beta(α, α), the mixing weight of mixup (Zhang et al., 2018), as the ratio of two
/// Gamma(α) draws (Marsaglia and Tsang's method, with Box-Muller normals).
pub fn beta_symmetric(alpha: f64, rng: &mut SplitMix64) -> f64 {
    let x = gamma(alpha, rng);
    let y = gamma(alpha, rng);
    if x + y > 0.0 { x / (x + y) } else { 0.5 }
}

fn gamma(alpha: f64, rng: &mut SplitMix64) -> f64 {
    if alpha < 1.0 {
        // Gamma(α) = Gamma(α + 1) · U^(1/α).
        let u = f64::from(rng.unit()).max(1e-12);
        return gamma(alpha + 1.0, rng) * u.powf(1.0 / alpha);
    }
    let d = alpha - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let (u1, u2) = (f64::from(rng.unit()).max(1e-12), f64::from(rng.unit()));
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let v = (1.0 + c * z).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = f64::from(rng.unit()).max(1e-12);
        if u.ln() < 0.5 * z * z + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_stay_inside_and_keep_their_share() {
        let mut rng = SplitMix64::new(3);
        for _ in 0..500 {
            let (x, y, w, h) = crop_box(64, 48, 0.5, &mut rng);
            assert!(x + w <= 64 && y + h <= 48);
            let share = f64::from(w * h) / (64.0 * 48.0);
            assert!((0.45..=1.0).contains(&share), "{share}");
            let r = f64::from(w) / f64::from(h);
            assert!((0.7..=1.4).contains(&r) || share > 0.9, "{r}");
        }
        // A strip too thin for any ratio falls back to a centred crop.
        assert_eq!(crop_box(100, 10, 0.9, &mut rng).3, 10);
    }

    #[test]
    fn flips_mirror_about_half_the_images() {
        let mut img = RgbImage::new(4, 1);
        img.put_pixel(0, 0, image::Rgb([255, 0, 0]));
        let aug = Augment {
            min_scale: 1.0,
            hflip: true,
        };
        let mut rng = SplitMix64::new(1);
        let flipped = (0..200)
            .filter(|_| aug.apply(img.clone(), &mut rng).get_pixel(3, 0).0 == [255, 0, 0])
            .count();
        assert!((70..130).contains(&flipped), "{flipped}");
        assert!(Augment::default().is_identity());
    }

    #[test]
    fn beta_draws_have_the_right_mean_and_spread() {
        let mut rng = SplitMix64::new(9);
        for alpha in [0.2, 1.0, 4.0] {
            let xs: Vec<f64> = (0..20_000)
                .map(|_| beta_symmetric(alpha, &mut rng))
                .collect();
            let mean = xs.iter().sum::<f64>() / xs.len() as f64;
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
            // Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)).
            let expect = 1.0 / (4.0 * (2.0 * alpha + 1.0));
            assert!((mean - 0.5).abs() < 0.01, "{alpha}: mean {mean}");
            assert!(
                (var - expect).abs() < 0.1 * expect,
                "{alpha}: var {var} vs {expect}"
            );
            assert!(xs.iter().all(|x| (0.0..=1.0).contains(x)));
        }
    }
}
