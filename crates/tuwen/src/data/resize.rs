//! Image resizing with PIL's exact semantics, since transformers' (slow) image processors call
//! `PIL.Image.resize` on 8-bit images.
//!
//! PIL resamples separably, horizontal pass first, then vertical. When shrinking, the filter is
//! stretched by the scale factor (antialiasing), so every output pixel averages all input pixels
//! under it. Coefficients are normalised per output pixel, turned into 22-bit fixed point, and
//! each pass rounds and clips back to 8 bits. Reproducing those steps gives PIL's bytes exactly.
//! Nearest neighbour is an affine transform in PIL, with its own coordinate rule.

use image::RgbImage;

/// Resampling filters, numbered as PIL numbers them (and as preprocessor_config.json stores them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    /// PIL `NEAREST` (0).
    Nearest,
    /// PIL `BILINEAR` (2), a triangle filter.
    Bilinear,
    /// PIL `BICUBIC` (3), Keys' cubic with a = -0.5.
    Bicubic,
}

impl Resample {
    /// PIL's integer code of the filter.
    pub fn pil_code(self) -> u32 {
        match self {
            Resample::Nearest => 0,
            Resample::Bilinear => 2,
            Resample::Bicubic => 3,
        }
    }

    /// The filter for PIL's integer code, if tuwen supports it.
    pub fn from_pil(code: u32) -> Option<Self> {
        match code {
            0 => Some(Resample::Nearest),
            2 => Some(Resample::Bilinear),
            3 => Some(Resample::Bicubic),
            _ => None,
        }
    }

    fn support(self) -> f64 {
        match self {
            Resample::Nearest => 0.5,
            Resample::Bilinear => 1.0,
            Resample::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Resample::Nearest => {
                if x < 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Resample::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Resample::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Fixed-point coefficients for one axis: for each output index, the first input index and
/// the weights of the inputs from there on.
struct Coefficients {
    start: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

fn coefficients(in_size: usize, out_size: usize, filter: Resample) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    let mut start = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // PIL rounds with `(int)(v + 0.5)`, truncating towards zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let raw: Vec<f64> = (xmin..xmax)
            .map(|x| filter.weight((x as f64 - center + 0.5) / filter_scale))
            .collect();
        let total: f64 = raw.iter().sum();
        let fixed = raw
            .iter()
            .map(|&w| {
                let w = if total != 0.0 { w / total } else { w };
                let v = w * f64::from(1u32 << PRECISION_BITS);
                (if v < 0.0 { v - 0.5 } else { v + 0.5 }) as i32
            })
            .collect();
        start.push(xmin);
        weights.push(fixed);
    }
    Coefficients { start, weights }
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Resizes an RGB image to `width` x `height` exactly as `PIL.Image.resize` does.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Resample) -> RgbImage {
    assert!(width > 0 && height > 0, "resize to an empty image");
    let (w0, h0) = img.dimensions();
    if (w0, h0) == (width, height) {
        return img.clone();
    }
    if filter == Resample::Nearest {
        return resize_nearest(img, width, height);
    }
    let (w0, h0, w1, h1) = (w0 as usize, h0 as usize, width as usize, height as usize);
    let src = img.as_raw();
    // Pillow 13 runs the vertical pass first when the height shrinks by more than
    // twice as many pixels as the width does; otherwise horizontal first. Each pass rounds to
    // 8 bits, so the order shows in the result.
    let vertical_first = w0 != w1 && h1 < h0 && (h0 - h1) as i64 > 2 * (w0 as i64 - w1 as i64);
    let out = if vertical_first {
        let tmp = vertical_pass(src, w0, h0, &coefficients(h0, h1, filter));
        horizontal_pass(&tmp, w0, h1, &coefficients(w0, w1, filter))
    } else {
        let tmp = if w0 != w1 {
            horizontal_pass(src, w0, h0, &coefficients(w0, w1, filter))
        } else {
            src.to_vec()
        };
        if h0 != h1 {
            vertical_pass(&tmp, w1, h0, &coefficients(h0, h1, filter))
        } else {
            tmp
        }
    };
    RgbImage::from_raw(width, height, out).expect("sized buffer")
}

/// Resamples each row of a `width` x `rows` RGB buffer to `k.start.len()` pixels.
fn horizontal_pass(src: &[u8], width: usize, rows: usize, k: &Coefficients) -> Vec<u8> {
    let w1 = k.start.len();
    let mut out = vec![0u8; rows * w1 * 3];
    for y in 0..rows {
        let src_row = &src[y * width * 3..(y + 1) * width * 3];
        let dst_row = &mut out[y * w1 * 3..(y + 1) * w1 * 3];
        for (xx, (x0, weights)) in k.start.iter().zip(&k.weights).enumerate() {
            let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
            for (i, &kw) in weights.iter().enumerate() {
                let p = &src_row[(x0 + i) * 3..(x0 + i) * 3 + 3];
                for c in 0..3 {
                    acc[c] += i64::from(p[c]) * i64::from(kw);
                }
            }
            for c in 0..3 {
                dst_row[xx * 3 + c] = clip8(acc[c]);
            }
        }
    }
    out
}

/// Resamples each column of a `width` x `rows` RGB buffer to `k.start.len()` pixels.
fn vertical_pass(src: &[u8], width: usize, rows: usize, k: &Coefficients) -> Vec<u8> {
    debug_assert_eq!(src.len(), width * rows * 3);
    let stride = width * 3;
    let mut out = vec![0u8; k.start.len() * stride];
    for (yy, (y0, weights)) in k.start.iter().zip(&k.weights).enumerate() {
        let dst_row = &mut out[yy * stride..(yy + 1) * stride];
        for (x, dst) in dst_row.iter_mut().enumerate() {
            let mut acc = 1i64 << (PRECISION_BITS - 1);
            for (i, &kw) in weights.iter().enumerate() {
                acc += i64::from(src[(y0 + i) * stride + x]) * i64::from(kw);
            }
            *dst = clip8(acc);
        }
    }
    out
}

/// PIL's nearest neighbour: an affine map sampled at pixel centres, with the source coordinate
/// accumulated step by step in double precision and truncated.
fn resize_nearest(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w0, h0) = img.dimensions();
    let index = |in_size: u32, out_size: u32| -> Vec<u32> {
        let step = f64::from(in_size) / f64::from(out_size);
        let mut pos = step * 0.5;
        (0..out_size)
            .map(|_| {
                let i = (pos as i64).clamp(0, i64::from(in_size) - 1) as u32;
                pos += step;
                i
            })
            .collect()
    };
    let (xs, ys) = (index(w0, width), index(h0, height));
    RgbImage::from_fn(width, height, |x, y| {
        *img.get_pixel(xs[x as usize], ys[y as usize])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([200, 17, 99]));
        for f in [Resample::Nearest, Resample::Bilinear, Resample::Bicubic] {
            for (w, h) in [(10, 10), (80, 7), (37, 50)] {
                let out = resize(&img, w, h, f);
                assert_eq!(out.dimensions(), (w, h));
                assert!(out.pixels().all(|p| p.0 == [200, 17, 99]), "{f:?} {w}x{h}");
            }
        }
    }

    #[test]
    fn shrinking_by_two_with_bilinear_averages_pairs() {
        // A triangle of support 2 (stretched) centred between two pixels weighs them 1/4, 3/4,
        // 3/4, 1/4: on a row of alternating 0/200 every output is 100.
        let img = RgbImage::from_fn(8, 1, |x, _| {
            image::Rgb([if x % 2 == 0 { 0 } else { 200 }; 3])
        });
        let out = resize(&img, 4, 1, Resample::Bilinear);
        let interior: Vec<u8> = out.pixels().skip(1).take(2).map(|p| p[0]).collect();
        assert_eq!(interior, vec![100, 100]);
    }
}
