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
}
