//! Reconstructing images with a VQGAN's first stage (a diffusers `VQModel` folder): their code
//! grids, the decoder's reconstructions and how close those are.

use std::path::{Path, PathBuf};

use burn::prelude::*;

use crate::models::vqgan::{VqConfig, VqModel};
use crate::{Error, Result};

/// A loaded `VQModel`.
pub struct VqAutoencoder {
    /// The network.
    pub model: VqModel,
    /// Its config.
    pub config: VqConfig,
}

/// What [`VqAutoencoder::reconstruct`] makes of some images.
#[derive(Clone, Debug)]
pub struct Reconstruction {
    /// The inputs, channel-first in [-1, 1], one `Vec` per image.
    pub inputs: Vec<Vec<f32>>,
    /// Each image's code indices, row-major over the grid.
    pub codes: Vec<Vec<i64>>,
    /// The decoder's raw outputs `[C·H·W]` per image (diffusers' `VQModel(x).sample`).
    pub reconstructions: Vec<Vec<f32>>,
    /// PSNR (dB) of each reconstruction.
    pub psnr: Vec<f64>,
    /// SSIM of each reconstruction.
    pub ssim: Vec<f64>,
    /// Images that were resized to the model's size.
    pub resized: Vec<PathBuf>,
}

fn floats<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| Error::InvalidInput(format!("cannot read a tensor: {e:?}")))
}

impl VqAutoencoder {
    /// Loads a `VQModel` folder.
    pub fn load(folder: &Path, device: &Device) -> Result<Self> {
        let (model, config) = VqModel::load(folder, device)?;
        Ok(VqAutoencoder { model, config })
    }

    /// An image as the model takes it, channel-first in [-1, 1]: at the model's
    /// `sample_size` the pixels are used as they are (x / 127.5 − 1); other sizes are resized
    /// (bicubic) first, and `true` says so. Grey models take the mean of the three channels.
    pub fn image_values(&self, path: &Path) -> Result<(Vec<f32>, bool)> {
        let img = crate::data::open_rgb(path)?;
        let s = self.config.sample_size;
        let (w, h) = img.dimensions();
        let resized = (w as usize, h as usize) != (s, s);
        let px: Vec<f32> = if resized {
            crate::pipeline::gan::gan_processor(s).preprocess(&img).0
        } else {
            let plane = s * s;
            let mut v = vec![0f32; 3 * plane];
            for (i, p) in img.pixels().enumerate() {
                for c in 0..3 {
                    v[c * plane + i] = f32::from(p.0[c]) / 127.5 - 1.0;
                }
            }
            v
        };
        let mut out = Vec::new();
        match self.config.in_channels {
            3 => out = px,
            1 => crate::pipeline::gan::push_channels(&px, 1, s * s, &mut out),
            c => {
                return Err(Error::InvalidInput(format!(
                    "the model takes {c} channels; images have 1 or 3"
                )));
            }
        }
        Ok((out, resized))
    }

    /// Encodes, quantises and decodes the images at `paths` (in batches of 16).
    pub fn reconstruct(&self, paths: &[PathBuf]) -> Result<Reconstruction> {
        let mut inputs = Vec::new();
        let mut resized = Vec::new();
        for p in paths {
            let (v, r) = self.image_values(p)?;
            if r {
                resized.push(p.clone());
            }
            inputs.push(v);
        }
        let mut r = self.reconstruct_values(inputs)?;
        r.resized = resized;
        Ok(r)
    }

    /// [`Self::reconstruct`] of images already as values (channel-first, [-1, 1]).
    pub fn reconstruct_values(&self, inputs: Vec<Vec<f32>>) -> Result<Reconstruction> {
        let c = &self.config;
        let (s, ch) = (c.sample_size, c.in_channels);
        let device = self.model.device();
        let (mut codes, mut recs) = (Vec::new(), Vec::new());
        for batch in inputs.chunks(16) {
            let flat: Vec<f32> = batch.concat();
            let b = batch.len();
            let x = Tensor::<1>::from_floats(flat.as_slice(), &device).reshape([b, ch, s, s]);
            let out = self.model.forward(x);
            let idx: Vec<i64> = out
                .quantized
                .indices
                .into_data()
                .convert::<i64>()
                .try_into_vec::<i64>()
                .map_err(|e| Error::InvalidInput(format!("cannot read codes: {e:?}")))?;
            let per_codes = idx.len() / b;
            codes.extend(idx.chunks(per_codes).map(<[i64]>::to_vec));
            let rec = floats(out.sample)?;
            let per = rec.len() / b;
            recs.extend(rec.chunks(per).map(<[f32]>::to_vec));
        }
        let same = c.in_channels == c.out_channels;
        let psnr = inputs
            .iter()
            .zip(&recs)
            .map(|(a, r)| if same { crate::eval::psnr(a, r) } else { f64::NAN })
            .collect();
        let ssim = inputs
            .iter()
            .zip(&recs)
            .map(|(a, r)| {
                if same {
                    crate::eval::ssim(a, r, ch, s, s)
                } else {
                    f64::NAN
                }
            })
            .collect();
        Ok(Reconstruction {
            inputs,
            codes,
            reconstructions: recs,
            psnr,
            ssim,
            resized: vec![],
        })
    }

    /// Decodes code grids (row-major, `grid`×`grid` each) into images `[C·H·W]` each.
    pub fn decode(&self, codes: &[Vec<i64>]) -> Result<Vec<Vec<f32>>> {
        let g = self.config.grid();
        let k = self.config.num_vq_embeddings as i64;
        let device = self.model.device();
        let mut out = Vec::new();
        for batch in codes.chunks(16) {
            for row in batch {
                if row.len() != g * g || row.iter().any(|&i| i < 0 || i >= k) {
                    return Err(Error::InvalidInput(format!(
                        "a code grid must hold {} indices below {k}",
                        g * g
                    )));
                }
            }
            let flat: Vec<i64> = batch.concat();
            let idx = Tensor::<1, Int>::from_ints(flat.as_slice(), &device)
                .reshape([batch.len(), g * g]);
            let img = floats(self.model.decode_codes(idx, g, g))?;
            let per = img.len() / batch.len();
            out.extend(img.chunks(per).map(<[f32]>::to_vec));
        }
        Ok(out)
    }
}

/// A picture of inputs over their reconstructions: pairs of rows, `cols` images a row.
pub fn pairs_png(r: &Reconstruction, shape: [usize; 3], cols: usize, path: &Path) -> Result<()> {
    let cols = cols.clamp(1, r.inputs.len().max(1));
    let mut cells: Vec<f32> = Vec::new();
    let per = shape.iter().product::<usize>();
    let blank = vec![1.0f32; per];
    for start in (0..r.inputs.len()).step_by(cols) {
        for row in [&r.inputs, &r.reconstructions] {
            for i in start..start + cols {
                cells.extend_from_slice(row.get(i).map_or(&blank[..], |v| &v[..]));
            }
        }
    }
    let scale = (128 / shape[1].max(1)).clamp(1, 8) as u32;
    crate::pipeline::gan::grid_png(&cells, shape, cols, scale, path)
}
