//! Sampling a trained GAN and the pictures of its samples: a grid of images, a scatter plot of
//! 2-D samples over the data, a histogram of 1-D samples over the data's.

use std::path::Path;

use burn::prelude::*;
use image::{Rgb, RgbImage};

use crate::hub::write_atomic;
use crate::models::gan::{Gan, GanConfig};
use crate::{Error, Result};

/// A GAN folder loaded for sampling.
pub struct GanSampler {
    /// The networks (the generator is used).
    pub gan: Gan,
    /// Its configuration.
    pub config: GanConfig,
}

/// The most samples one call makes (a guard against a typo's `--n`).
pub const MAX_SAMPLES: usize = 1 << 20;

impl GanSampler {
    /// Loads a folder written by `tuwen train gan`.
    pub fn load(folder: &Path, device: &Device) -> Result<Self> {
        let (gan, config) = Gan::load(folder, device)?;
        Ok(GanSampler { gan, config })
    }

    /// `n` samples, row-major (`n · features` values; images channel-first in [-1, 1]),
    /// drawn from noise seeded by `seed` in batches of 256.
    pub fn sample(&self, n: usize, seed: u64) -> Result<Vec<f32>> {
        if n == 0 || n > MAX_SAMPLES {
            return Err(Error::InvalidInput(format!(
                "--n {n} must be between 1 and {MAX_SAMPLES}"
            )));
        }
        let mut out = Vec::with_capacity(n * self.config.features());
        let mut done = 0;
        let mut k = 0u64;
        while done < n {
            let b = (n - done).min(256);
            let x = self.gan.sample(
                &self.config,
                b,
                seed.wrapping_add(k.wrapping_mul(0x9e37_79b9)),
            );
            out.extend(
                x.into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .map_err(|e| Error::InvalidInput(format!("cannot read samples: {e:?}")))?,
            );
            done += b;
            k += 1;
        }
        Ok(out)
    }

    /// The shape of `n` samples as `.npy` holds them: `[n, features]`, or `[n, c, h, w]`.
    pub fn shape(&self, n: usize) -> Vec<usize> {
        match self.config.image_shape() {
            Some([c, h, w]) => vec![n, c, h, w],
            None => vec![n, self.config.features()],
        }
    }
}

/// Images as a GAN of `config` sees its real samples: resized to its size, scaled to [-1, 1],
/// grey as the mean of the three channels when the model is grey; rows `[n, c·h·w]`.
/// Unreadable files are skipped (their count is returned).
pub fn image_rows(paths: &[std::path::PathBuf], config: &GanConfig) -> Result<(Vec<f32>, usize)> {
    let [c, h, w] = config
        .image_shape()
        .ok_or_else(|| Error::InvalidInput("the model makes points, not images".into()))?;
    let processor = gan_processor(h);
    let mut out = Vec::new();
    let mut skipped = 0;
    for p in paths {
        let Ok(img) = crate::data::open_rgb(p) else {
            skipped += 1;
            continue;
        };
        let (px, _) = processor.preprocess(&img);
        push_channels(&px, c, h * w, &mut out);
    }
    Ok((out, skipped))
}

/// Appends channel-first RGB values `px` (3 planes of `plane` values) as `channels` planes:
/// as they are for 3, their mean for 1 (grey).
pub fn push_channels(px: &[f32], channels: usize, plane: usize, out: &mut Vec<f32>) {
    if channels == 1 {
        out.extend((0..plane).map(|i| (px[i] + px[plane + i] + px[2 * plane + i]) / 3.0));
    } else {
        out.extend_from_slice(px);
    }
}

fn encode(img: &RgbImage, path: &Path) -> Result<()> {
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| Error::InvalidInput(format!("cannot encode PNG: {e}")))?;
    write_atomic(path, &png)
}

/// A grid of images (row-major samples `[n, c, h, w]` in [-1, 1]; 1 or 3 channels), `cols`
/// a row, each scaled ×`scale`, written as a PNG.
pub fn grid_png(
    samples: &[f32],
    [c, h, w]: [usize; 3],
    cols: usize,
    scale: u32,
    path: &Path,
) -> Result<()> {
    let per = c * h * w;
    let n = samples.len() / per.max(1);
    if n == 0 || !(c == 1 || c == 3) {
        return Err(Error::InvalidInput(format!(
            "a grid needs images of 1 or 3 channels, got {n} of {c}"
        )));
    }
    let cols = cols.clamp(1, n);
    let rows = n.div_ceil(cols);
    let (cw, ch) = (w as u32 * scale + 2, h as u32 * scale + 2);
    let mut img = RgbImage::from_pixel(cols as u32 * cw, rows as u32 * ch, Rgb([255, 255, 255]));
    let byte = |v: f32| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
    for (k, s) in samples.chunks_exact(per).enumerate() {
        let (x0, y0) = ((k % cols) as u32 * cw + 1, (k / cols) as u32 * ch + 1);
        for y in 0..h {
            for x in 0..w {
                let at = |ch: usize| s[ch * h * w + y * w + x];
                let px = if c == 1 {
                    let g = byte(at(0));
                    [g, g, g]
                } else {
                    [byte(at(0)), byte(at(1)), byte(at(2))]
                };
                for dy in 0..scale {
                    for dx in 0..scale {
                        img.put_pixel(
                            x0 + x as u32 * scale + dx,
                            y0 + y as u32 * scale + dy,
                            Rgb(px),
                        );
                    }
                }
            }
        }
    }
    encode(&img, path)
}

/// The preprocessing of a GAN's real images: resized to `size` (bilinear), scaled to [-1, 1].
pub fn gan_processor(size: usize) -> crate::data::ImageProcessor {
    let json = serde_json::json!({"image_processor_type": "ViTImageProcessor", "do_resize": true,
        "size": {"height": size, "width": size}, "resample": 2,
        "do_rescale": true, "rescale_factor": 1.0 / 255.0, "do_normalize": true,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]});
    crate::data::ImageProcessor::from_json(&json.to_string()).expect("a valid processor")
}

const SIDE: u32 = 480;

/// The smallest and largest finite value of two sets; an error when neither holds one.
fn finite_range(data: &[f32], samples: &[f32]) -> Result<(f32, f32)> {
    let (lo, hi) = data
        .iter()
        .chain(samples)
        .copied()
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !(lo.is_finite() && hi.is_finite()) {
        return Err(Error::InvalidInput("nothing finite to plot".into()));
    }
    Ok((lo, hi))
}

/// A scatter plot of 2-D `samples` (orange) over `data` (grey), both row-major, on axes that
/// hold both; `title` on top.
pub fn scatter_png(data: &[f32], samples: &[f32], title: &str, path: &Path) -> Result<()> {
    let (lo, hi) = finite_range(data, samples)?;
    // A square view (equal scales) with a margin.
    let (lo, hi) = (lo - 0.05 * (hi - lo + 1e-3), hi + 0.05 * (hi - lo + 1e-3));
    let (top, side) = (20u32, SIDE - 20);
    let mut img = RgbImage::from_pixel(SIDE, SIDE, Rgb([255, 255, 255]));
    let to = |v: f32| ((v - lo) / (hi - lo) * (side - 1) as f32).round() as i64;
    let mut dot = |x: f32, y: f32, color: [u8; 3], r: i64| {
        if !(x.is_finite() && y.is_finite()) {
            return;
        }
        let (px, py) = (to(x), (side - 1) as i64 - to(y) + top as i64);
        for dy in -r..=r {
            for dx in -r..=r {
                let (qx, qy) = (px + dx, py + dy);
                if qx >= 0 && qy >= top as i64 && (qx as u32) < SIDE && (qy as u32) < SIDE {
                    img.put_pixel(qx as u32, qy as u32, Rgb(color));
                }
            }
        }
    };
    for p in data.chunks_exact(2) {
        dot(p[0], p[1], [150, 150, 150], 1);
    }
    for p in samples.chunks_exact(2) {
        dot(p[0], p[1], [235, 120, 20], 1);
    }
    crate::draw::text(&mut img, 4, 4, title, 1, [40, 40, 40]);
    encode(&img, path)
}

/// Histograms of 1-D `samples` (orange) over `data` (grey), 96 bins.
pub fn histogram_png(data: &[f32], samples: &[f32], title: &str, path: &Path) -> Result<()> {
    let (lo, hi) = finite_range(data, samples)?;
    let bins = 96usize;
    let count = |v: &[f32]| {
        let mut h = vec![0f32; bins];
        for &x in v.iter().filter(|x| x.is_finite()) {
            let b = (((x - lo) / (hi - lo + 1e-9)) * bins as f32) as usize;
            h[b.min(bins - 1)] += 1.0 / v.len().max(1) as f32;
        }
        h
    };
    let (hd, hs) = (count(data), count(samples));
    let peak = hd.iter().chain(&hs).copied().fold(1e-9, f32::max);
    let (w, h) = (SIDE, 240u32);
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let bw = w / bins as u32;
    for (k, (a, b)) in hd.iter().zip(&hs).enumerate() {
        let x0 = k as u32 * bw;
        for (v, color, half) in [(a, [170, 170, 170], 0), (b, [235, 120, 20], bw / 2)] {
            let top = h - 1 - ((v / peak) * (h - 30) as f32) as u32;
            for x in x0 + half..(x0 + half + bw / 2).min(w) {
                for y in top..h {
                    img.put_pixel(x, y, Rgb(color));
                }
            }
        }
    }
    crate::draw::text(&mut img, 4, 4, title, 1, [40, 40, 40]);
    encode(&img, path)
}

/// The picture of samples that suits the model: a grid for images, a scatter plot over `data`
/// in 2-D, histograms over `data` in 1-D (higher dimensions: the first two coordinates).
pub fn samples_png(
    config: &GanConfig,
    data: &[f32],
    samples: &[f32],
    title: &str,
    path: &Path,
) -> Result<()> {
    match config.image_shape() {
        Some(shape) => {
            let n = (samples.len() / config.features()).min(64);
            grid_png(&samples[..n * config.features()], shape, 8, 2, path)
        }
        None if config.features() == 1 => histogram_png(data, samples, title, path),
        None => {
            let d = config.features();
            let two =
                |v: &[f32]| -> Vec<f32> { v.chunks_exact(d).flat_map(|r| [r[0], r[1]]).collect() };
            scatter_png(&two(data), &two(samples), title, path)
        }
    }
}
