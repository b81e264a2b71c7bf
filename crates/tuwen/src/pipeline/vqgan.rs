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
            .map(|(a, r)| {
                if same {
                    crate::eval::psnr(a, r)
                } else {
                    f64::NAN
                }
            })
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
            let idx =
                Tensor::<1, Int>::from_ints(flat.as_slice(), &device).reshape([batch.len(), g * g]);
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

/// What a prior's config.json says of its codes (`tuwen_vq_prior`): the vocabulary is the
/// codes `0..codebook_size`, then one token per class, then the start token.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PriorSpec {
    /// Codebook entries of the VQGAN the prior models.
    pub codebook_size: usize,
    /// Side of the code grid.
    pub grid: usize,
    /// Class names (empty: unconditional).
    #[serde(default)]
    pub classes: Vec<String>,
}

impl PriorSpec {
    /// The config.json key.
    pub const KEY: &'static str = "tuwen_vq_prior";

    /// Tokens: codes, classes, start.
    pub fn vocab_size(&self) -> usize {
        self.codebook_size + self.classes.len() + 1
    }

    /// The start token (unconditional sequences begin with it).
    pub fn start_token(&self) -> i64 {
        (self.codebook_size + self.classes.len()) as i64
    }

    /// The first token of a sequence: its class's token, or the start token.
    pub fn first_token(&self, class: Option<usize>) -> i64 {
        match class {
            Some(c) => (self.codebook_size + c) as i64,
            None => self.start_token(),
        }
    }

    /// The index of a class given by name or number.
    pub fn class_index(&self, c: &str) -> Result<usize> {
        if self.classes.is_empty() {
            return Err(Error::InvalidInput(
                "--class: this prior is unconditional".into(),
            ));
        }
        if let Some(i) = self.classes.iter().position(|n| n == c) {
            return Ok(i);
        }
        match c.parse::<usize>() {
            Ok(i) if i < self.classes.len() => Ok(i),
            _ => Err(Error::InvalidInput(format!(
                "--class {c:?}: not one of {}",
                self.classes.join(", ")
            ))),
        }
    }

    /// Reads it from a prior's config.json value.
    pub fn from_config(json: &serde_json::Value) -> std::result::Result<Self, String> {
        let v = json
            .get(Self::KEY)
            .ok_or("not a VQGAN prior (no \"tuwen_vq_prior\" in config.json)")?;
        let s: PriorSpec = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        if s.codebook_size == 0 || s.grid == 0 {
            return Err("tuwen_vq_prior: codebook_size and grid must be positive".into());
        }
        Ok(s)
    }
}

/// A VQGAN's prior: GPT-2 over code indices.
pub struct VqPrior {
    /// The transformer.
    pub model: crate::models::gpt2::Gpt2LMHeadModel,
    /// Its config.
    pub config: crate::models::gpt2::Gpt2Config,
    /// Its codes.
    pub spec: PriorSpec,
}

/// The prior's key/value cache.
pub struct PriorState {
    layers: Vec<Option<crate::models::gpt2::LayerCache>>,
}

impl crate::generate::Decoder for VqPrior {
    type State = PriorState;

    fn step(&self, tokens: &[Vec<i64>], state: &mut PriorState) -> Result<Vec<Vec<f32>>> {
        let device = self.model.device();
        let (rows, n) = (tokens.len(), tokens.first().map_or(0, Vec::len));
        let flat: Vec<i64> = tokens.iter().flatten().copied().collect();
        let ids = Tensor::<1, Int>::from_ints(flat.as_slice(), &device).reshape([rows, n]);
        let logits = self.model.forward_cached(ids, Some(&mut state.layers));
        let v = logits.dims()[2];
        let last = floats(logits.slice([0..rows, n - 1..n, 0..v]))?;
        // Only codes may follow: class and start tokens are never drawn.
        let k = self.spec.codebook_size;
        Ok(last
            .chunks(v)
            .map(|row| {
                let mut r = row.to_vec();
                r[k..].fill(f32::NEG_INFINITY);
                r
            })
            .collect())
    }

    fn select(&self, state: &mut PriorState, rows: &[usize]) -> Result<()> {
        let device = self.model.device();
        let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let idx = Tensor::<1, Int>::from_ints(idx.as_slice(), &device);
        for c in state.layers.iter_mut().flatten() {
            c.keys = c.keys.clone().select(0, idx.clone());
            c.values = c.values.clone().select(0, idx.clone());
        }
        Ok(())
    }
}

impl VqPrior {
    /// Loads a prior folder (`tuwen train vq-prior`).
    pub fn load(folder: &Path, device: &Device) -> Result<Self> {
        let (model, config, json) = crate::models::gpt2::Gpt2LMHeadModel::load(folder, device)?;
        let path = folder.join("config.json");
        let spec = PriorSpec::from_config(&json).map_err(|e| Error::config(&path, e))?;
        if spec.vocab_size() != config.vocab_size || config.n_positions < spec.grid * spec.grid {
            return Err(Error::config(
                &path,
                "vocab_size or n_positions does not fit tuwen_vq_prior's codes",
            ));
        }
        Ok(VqPrior {
            model,
            config,
            spec,
        })
    }

    /// Checks that the prior models `vq`'s codes.
    pub fn check_matches(&self, vq: &VqConfig) -> Result<()> {
        if vq.num_vq_embeddings != self.spec.codebook_size || vq.grid() != self.spec.grid {
            return Err(Error::InvalidInput(format!(
                "the prior models {} codes on a {g}x{g} grid; the VQGAN has {} on {h}x{h}",
                self.spec.codebook_size,
                vq.num_vq_embeddings,
                g = self.spec.grid,
                h = vq.grid()
            )));
        }
        Ok(())
    }

    /// `n` code grids drawn with `sampling` (temperature, top-k, top-p, seed), of `class` when
    /// given, in batches of 64.
    pub fn sample(
        &self,
        n: usize,
        class: Option<usize>,
        sampling: &crate::generate::Sampling,
    ) -> Result<Vec<Vec<i64>>> {
        let cells = self.spec.grid * self.spec.grid;
        let mut out = Vec::with_capacity(n);
        let mut batch = 0u64;
        while out.len() < n {
            let b = (n - out.len()).min(64);
            let settings = crate::generate::Settings {
                max_new_tokens: cells,
                sampling: Some(crate::generate::Sampling {
                    seed: sampling
                        .seed
                        .wrapping_add(batch.wrapping_mul(0x9e37_79b9_7f4a)),
                    ..sampling.clone()
                }),
                eos_token_id: -1,
                pad_token_id: 0,
                ..Default::default()
            };
            let prompts = vec![vec![self.spec.first_token(class)]; b];
            let state = PriorState {
                layers: vec![None; self.config.n_layer],
            };
            for seq in crate::generate::generate(self, state, &prompts, &settings)? {
                out.push(seq[1..].to_vec());
            }
            batch += 1;
        }
        Ok(out)
    }
}

/// Writes a taming-transformers VQGAN state dict (one safetensors file, e.g. the
/// `state_dict` of a `last.ckpt`) as a diffusers `VQModel` folder at `out`, trained at
/// `resolution` px, and checks that it loads. Returns the config.
pub fn convert_taming(file: &Path, resolution: usize, out: &Path) -> Result<VqConfig> {
    use crate::models::vqgan::taming;
    use safetensors::{SafeTensors, tensor::TensorView};
    let bad = |m: String| Error::Weights {
        path: file.to_path_buf(),
        message: m,
    };
    let shapes = crate::hub::safetensors_header(file)?;
    let cfg = taming::config(&shapes, resolution).map_err(bad)?;
    let bytes = std::fs::read(file).map_err(|e| Error::io(file, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let levels = cfg.block_out_channels.len();
    let mut views: Vec<(String, TensorView<'_>)> = Vec::new();
    for (name, view) in st.tensors() {
        let Some((new, linear)) = taming::rename(&name, levels).map_err(bad)? else {
            continue;
        };
        let view = if linear {
            let s = view.shape();
            if s.len() != 4 || s[2] != 1 || s[3] != 1 {
                return Err(bad(format!("{name} has shape {s:?}, not [c, c, 1, 1]")));
            }
            TensorView::new(view.dtype(), vec![s[0], s[1]], view.data())
                .map_err(|e| bad(e.to_string()))?
        } else {
            view
        };
        views.push((new, view));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let info = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    let data = safetensors::serialize(views, info).map_err(|e| bad(e.to_string()))?;
    crate::hub::write_atomic(&out.join(crate::models::vqgan::WEIGHTS), &data)?;
    let text = serde_json::to_string_pretty(&cfg.to_json()).expect("JSON value serializes");
    crate::hub::write_atomic(&out.join("config.json"), text.as_bytes())?;
    // Every parameter must be there with its shape.
    VqModel::load(out, &Device::default())?;
    Ok(cfg)
}
