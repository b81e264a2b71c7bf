//! Masked-autoencoder reconstructions: mask images, let the model fill them in, and draw
//! original | masked input | reconstruction | reconstruction with the visible patches pasted.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use image::{Rgb, RgbImage};

use super::{image_processor, to_vec};
use crate::data::ImageProcessor;
use crate::models::vit_mae::{Masking, ViTMAEConfig, ViTMAEForPreTraining};
use crate::{Error, Result, draw, hub};

/// A loaded MAE checkpoint with its preprocessing.
pub struct MaskedAutoencoder {
    /// The model.
    pub model: ViTMAEForPreTraining,
    /// Its config.
    pub config: ViTMAEConfig,
    /// The preprocessing the checkpoint expects.
    pub processor: ImageProcessor,
    device: Device,
}

/// Reconstructions of a batch of images.
pub struct Reconstruction {
    /// The preprocessed inputs, `[3, h, w]` each.
    pub pixels: Vec<Vec<f32>>,
    /// Per image and patch, the predicted `p × p × 3` values (transformers' `logits`).
    pub logits: Vec<Vec<Vec<f32>>>,
    /// Per image and patch, 1 where masked (transformers' `mask`).
    pub mask: Vec<Vec<f32>>,
    /// The loss over masked patches; `None` when nothing is masked.
    pub loss: Option<f32>,
    /// Image side and patch side.
    pub size: usize,
    /// Patch side.
    pub patch: usize,
}

impl MaskedAutoencoder {
    /// Loads a `vit_mae` checkpoint (folder or HF repo id).
    pub fn load(model: &str, device: &Device) -> Result<Self> {
        let folder = hub::resolve(model)?;
        Self::load_folder(&folder, device)
    }

    /// Loads a `vit_mae` checkpoint folder.
    pub fn load_folder(folder: &Path, device: &Device) -> Result<Self> {
        let (model, config) = ViTMAEForPreTraining::load(folder, device)?;
        Ok(MaskedAutoencoder {
            model,
            config,
            processor: image_processor(folder, "ViTImageProcessor")?,
            device: device.clone(),
        })
    }

    /// Masks `ratio` of each image's patches (drawn from `seed`) and reconstructs them.
    pub fn reconstruct(&self, paths: &[PathBuf], ratio: f64, seed: u64) -> Result<Reconstruction> {
        self.config.check_mask_ratio(ratio)?;
        let size = self.config.vit.image_size;
        let mut items = Vec::with_capacity(paths.len());
        for p in paths {
            let img = crate::data::open_rgb(p)?;
            let (v, shape) = self.processor.preprocess(&img);
            if shape != [3, size, size] {
                return Err(Error::InvalidInput(format!(
                    "{}: the preprocessor makes {}x{} images but the model takes {size}x{size}",
                    p.display(),
                    shape[1],
                    shape[2]
                )));
            }
            items.push((v, shape));
        }
        let pixels: Vec<Vec<f32>> = items.iter().map(|(v, _)| v.clone()).collect();
        let batch = crate::data::processor::batch_tensor(items, &self.device)?;
        let patches = self.config.num_patches();
        let masking = Masking::random(paths.len(), patches, ratio, seed);
        let out = self.model.forward(batch, &masking);
        let width = out.logits.dims()[2];
        let flat = to_vec(out.logits)?;
        let logits = flat
            .chunks(patches * width)
            .map(|img| img.chunks(width).map(<[f32]>::to_vec).collect())
            .collect();
        let mask = masking.mask();
        let masked: f32 = mask.iter().flatten().sum();
        let loss = (masked > 0.0)
            .then(|| to_vec(out.loss).map(|v| v[0]))
            .transpose()?;
        Ok(Reconstruction {
            pixels,
            logits,
            mask,
            loss,
            size,
            patch: self.config.vit.patch_size,
        })
    }
}

impl MaskedAutoencoder {
    /// The encoder's class-token features (after its final norm) of unmasked images, as MAE's
    /// linear probing reads them; unreadable images are an error.
    pub fn features(&self, paths: &[PathBuf], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        let size = self.config.vit.image_size;
        let mut out = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(batch_size.max(1)) {
            let items = chunk
                .iter()
                .map(|p| {
                    let (v, shape) = self.processor.preprocess(&crate::data::open_rgb(p)?);
                    if shape != [3, size, size] {
                        return Err(Error::InvalidInput(format!(
                            "{}: preprocessed to {}x{}, the model takes {size}",
                            p.display(),
                            shape[1],
                            shape[2]
                        )));
                    }
                    Ok((v, shape))
                })
                .collect::<Result<Vec<_>>>()?;
            let pixels = crate::data::processor::batch_tensor(items, &self.device)?;
            let masking = Masking::none(chunk.len(), self.config.num_patches());
            let latent = self.model.encode(pixels, &masking);
            let [b, _, d] = latent.dims();
            let cls = to_vec(latent.slice(s![.., 0..1, ..]).reshape([b, d]))?;
            out.extend(cls.chunks(d).map(<[f32]>::to_vec));
        }
        Ok(out)
    }
}

impl Reconstruction {
    /// The `(y, x)` of value `k` of patch `i` in a `[3, size, size]` image, with its channel.
    fn place(&self, i: usize, k: usize) -> (usize, usize, usize) {
        let (p, grid) = (self.patch, self.size / self.patch);
        let (gy, gx) = (i / grid, i % grid);
        let (py, px, c) = (k / (p * 3), (k / 3) % p, k % 3);
        (c, gy * p + py, gx * p + px)
    }

    /// The four panels of image `n` as normalised `[3, size, size]` values: the input, the
    /// input with masked patches blanked (`None` values), the reconstruction and the
    /// reconstruction with the visible patches pasted back. With `norm_pix`, predictions are in
    /// per-patch normalised units and are mapped back with each original patch's statistics.
    fn panels(&self, n: usize, norm_pix: bool) -> [Vec<Option<f32>>; 4] {
        let len = 3 * self.size * self.size;
        let orig = &self.pixels[n];
        let mut masked = vec![None; len];
        let mut recon = vec![None; len];
        let mut pasted = vec![None; len];
        let at = |(c, y, x): (usize, usize, usize)| c * self.size * self.size + y * self.size + x;
        for (i, pred) in self.logits[n].iter().enumerate() {
            let idx: Vec<usize> = (0..pred.len()).map(|k| at(self.place(i, k))).collect();
            let (mean, std) = if norm_pix {
                let vals: Vec<f32> = idx.iter().map(|&j| orig[j]).collect();
                let m = vals.iter().sum::<f32>() / vals.len() as f32;
                let var = vals.iter().map(|v| (v - m).powi(2)).sum::<f32>()
                    / (vals.len().max(2) - 1) as f32;
                (m, (var + 1e-6).sqrt())
            } else {
                (0.0, 1.0)
            };
            let hidden = self.mask[n][i] > 0.5;
            for (k, &j) in idx.iter().enumerate() {
                let r = pred[k] * std + mean;
                recon[j] = Some(r);
                pasted[j] = Some(if hidden { r } else { orig[j] });
                if !hidden {
                    masked[j] = Some(orig[j]);
                }
            }
        }
        [
            orig.iter().map(|&v| Some(v)).collect(),
            masked,
            recon,
            pasted,
        ]
    }

    /// Writes the PNG: a row per image with its four panels under a header.
    pub fn png(&self, processor: &ImageProcessor, norm_pix: bool, path: &Path) -> Result<()> {
        const CELL: u32 = 160;
        const PAD: u32 = 8;
        const HEAD: u32 = 20;
        let (mean, std) = processor.normalize.unwrap_or(([0.0; 3], [1.0; 3]));
        let s = self.size;
        let to_rgb = |vals: &[Option<f32>]| {
            let mut img = RgbImage::new(s as u32, s as u32);
            for y in 0..s {
                for x in 0..s {
                    let mut px = [0u8; 3];
                    for c in 0..3 {
                        px[c] = match vals[c * s * s + y * s + x] {
                            // Masked out: mid grey.
                            None => 128,
                            Some(v) => {
                                ((v * std[c] + mean[c]).clamp(0.0, 1.0) * 255.0).round() as u8
                            }
                        };
                    }
                    img.put_pixel(x as u32, y as u32, Rgb(px));
                }
            }
            img
        };
        let rows = self.pixels.len() as u32;
        let mut out = RgbImage::from_pixel(
            4 * (CELL + PAD) + PAD,
            HEAD + rows * (CELL + PAD) + PAD,
            Rgb([255, 255, 255]),
        );
        for (k, title) in ["original", "masked", "reconstruction", "+ visible"]
            .iter()
            .enumerate()
        {
            let x = PAD + k as u32 * (CELL + PAD);
            draw::text(&mut out, x as i64, 6, title, 1, [20, 20, 20]);
        }
        for n in 0..self.pixels.len() {
            let y = HEAD + n as u32 * (CELL + PAD);
            for (k, panel) in self.panels(n, norm_pix).iter().enumerate() {
                let x = PAD + k as u32 * (CELL + PAD);
                draw::paste_fit(&mut out, &to_rgb(panel), x, y, CELL);
            }
        }
        let mut bytes = Vec::new();
        image::DynamicImage::ImageRgb8(out)
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .map_err(|e| Error::InvalidInput(format!("cannot encode PNG: {e}")))?;
        hub::write_atomic(path, &bytes)
    }
}
