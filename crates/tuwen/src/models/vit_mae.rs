//! MAE: "Masked Autoencoders Are Scalable Vision Learners" (He et al., 2022).
//!
//! A ViT encoder sees only a random quarter of the patches (the rest are masked out before the
//! encoder, which is where MAE's speed comes from). A light decoder gets the encoded visible
//! patches back in place among learned mask tokens, adds its own fixed 2-D sin-cos position
//! embeddings, and predicts every patch's pixels. The loss is the mean squared error on the
//! masked patches only, optionally against per-patch normalised pixels (`norm_pix_loss`).
//! Field names are transformers' (`ViTMAEForPreTraining`), so checkpoints load by name.

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::conv::Conv2dConfig;
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::vit::{NEW_TO_LEGACY, ViTConfig, ViTEncoder, ViTLayer, ViTPatchEmbeddings};
use crate::data::shapes::SplitMix64;
use crate::hub::{self, ModelConfig};
use crate::nn::encoder::linear;
use crate::{Error, Result};

fn d_decoder_hidden() -> usize {
    512
}
fn d_decoder_layers() -> usize {
    8
}
fn d_decoder_heads() -> usize {
    16
}
fn d_decoder_intermediate() -> usize {
    2048
}
fn d_mask_ratio() -> f64 {
    0.75
}

/// transformers' `ViTMAEConfig`: the encoder's ViT settings and the decoder's.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ViTMAEConfig {
    /// Decoder width.
    #[serde(default = "d_decoder_hidden")]
    pub decoder_hidden_size: usize,
    /// Decoder layers.
    #[serde(default = "d_decoder_layers")]
    pub decoder_num_hidden_layers: usize,
    /// Decoder attention heads.
    #[serde(default = "d_decoder_heads")]
    pub decoder_num_attention_heads: usize,
    /// Decoder MLP width.
    #[serde(default = "d_decoder_intermediate")]
    pub decoder_intermediate_size: usize,
    /// Share of patches masked out.
    #[serde(default = "d_mask_ratio")]
    pub mask_ratio: f64,
    /// Predict per-patch normalised pixels.
    #[serde(default)]
    pub norm_pix_loss: bool,
    /// The encoder (a ViT; its `id2label` is unused).
    #[serde(flatten)]
    pub vit: ViTConfig,
}

impl Default for ViTMAEConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialize")
    }
}

impl ViTMAEConfig {
    /// Checks a masking ratio: in [0, 1) and leaving at least one of the image's patches
    /// visible (the encoder needs a token to attend over).
    pub fn check_mask_ratio(&self, ratio: f64) -> Result<()> {
        if !(0.0..1.0).contains(&ratio) {
            return Err(Error::InvalidInput(format!(
                "--mask-ratio {ratio} must be in [0, 1)"
            )));
        }
        let patches = self.num_patches();
        if (patches as f64 * (1.0 - ratio)) < 1.0 {
            return Err(Error::InvalidInput(format!(
                "--mask-ratio {ratio} leaves no visible patch of {patches}"
            )));
        }
        Ok(())
    }

    /// Checks the numbers make a model; the error names the bad field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.vit.validate()?;
        self.decoder_vit().validate()?;
        if !(0.0..1.0).contains(&self.mask_ratio) {
            return Err(format!(
                "mask_ratio must be in [0, 1), got {}",
                self.mask_ratio
            ));
        }
        if !self.vit.hidden_size.is_multiple_of(4) || !self.decoder_hidden_size.is_multiple_of(4) {
            return Err("hidden_size and decoder_hidden_size must be multiples of 4 (2-D sin-cos positions)".into());
        }
        if !self.vit.image_size.is_multiple_of(self.vit.patch_size) {
            return Err(format!(
                "image_size {} is not a multiple of patch_size {}",
                self.vit.image_size, self.vit.patch_size
            ));
        }
        Ok(())
    }

    /// The decoder's layers as a ViT config (transformers copies the config the same way).
    pub fn decoder_vit(&self) -> ViTConfig {
        ViTConfig {
            hidden_size: self.decoder_hidden_size,
            num_hidden_layers: self.decoder_num_hidden_layers,
            num_attention_heads: self.decoder_num_attention_heads,
            intermediate_size: self.decoder_intermediate_size,
            ..self.vit.clone()
        }
    }

    /// Patches per image.
    pub fn num_patches(&self) -> usize {
        self.vit.grid() * self.vit.grid()
    }

    /// config.json as transformers writes it.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serialises");
        v["model_type"] = "vit_mae".into();
        v["architectures"] = serde_json::json!(["ViTMAEForPreTraining"]);
        if let Some(m) = v.as_object_mut() {
            m.remove("id2label");
        }
        v
    }
}

/// The fixed 2-D sin-cos position embeddings of MAE, `[1, 1 + grid², dim]` with a zero row for
/// the class token. Each position is `[sin(w ω) | cos(w ω) | sin(h ω) | cos(h ω)]` with
/// `ω_k = 10000^(-k / (dim/4))`: the column before the row, as the original code (and so every
/// published checkpoint) lays it out.
pub fn sincos_position_embeddings(grid: usize, dim: usize) -> Vec<f32> {
    let quarter = dim / 4;
    let mut out = vec![0f32; (1 + grid * grid) * dim];
    for h in 0..grid {
        for w in 0..grid {
            let row = &mut out[(1 + h * grid + w) * dim..][..dim];
            for k in 0..quarter {
                let omega = 1.0 / 10000f64.powf(k as f64 / quarter as f64);
                let (aw, ah) = (w as f64 * omega, h as f64 * omega);
                row[k] = aw.sin() as f32;
                row[quarter + k] = aw.cos() as f32;
                row[2 * quarter + k] = ah.sin() as f32;
                row[3 * quarter + k] = ah.cos() as f32;
            }
        }
    }
    out
}

fn fixed(values: Vec<f32>, shape: [usize; 3], device: &Device) -> Param<Tensor<3>> {
    Param::from_tensor(Tensor::from_data(TensorData::new(values, shape), device))
}

/// Patch embeddings, the class token and the fixed position embeddings of the encoder.
#[derive(Module, Debug)]
pub struct ViTMAEEmbeddings {
    /// The class token, `[1, 1, hidden]`.
    pub cls_token: Param<Tensor<3>>,
    /// Fixed sin-cos position embeddings, `[1, 1 + patches, hidden]` (never trained).
    pub position_embeddings: Param<Tensor<3>>,
    /// The patch projection.
    pub patch_embeddings: ViTPatchEmbeddings,
}

/// The MAE encoder (transformers' `ViTMAEModel`).
#[derive(Module, Debug)]
pub struct ViTMAEModel {
    /// Embeddings.
    pub embeddings: ViTMAEEmbeddings,
    /// The transformer encoder.
    pub encoder: ViTEncoder,
    /// Final norm.
    pub layernorm: LayerNorm,
}

/// The light decoder: mask tokens, fixed positions, a few layers, a pixel head.
#[derive(Module, Debug)]
pub struct ViTMAEDecoder {
    /// Encoder width to decoder width.
    pub decoder_embed: Linear,
    /// The learned token standing for each masked patch, `[1, 1, decoder_hidden]`.
    pub mask_token: Param<Tensor<3>>,
    /// Fixed sin-cos position embeddings, `[1, 1 + patches, decoder_hidden]`.
    pub decoder_pos_embed: Param<Tensor<3>>,
    /// The layers.
    pub decoder_layers: Vec<ViTLayer>,
    /// Final norm.
    pub decoder_norm: LayerNorm,
    /// Decoder width to `patch² × channels` pixel values.
    pub decoder_pred: Linear,
}

/// Which patches an image keeps: the order of its patches by noise (kept ones first).
#[derive(Clone, Debug)]
pub struct Masking {
    /// Per image, the patch indices sorted by their noise (`ids_shuffle`).
    pub order: Vec<Vec<usize>>,
    /// Patches kept per image.
    pub keep: usize,
}

impl Masking {
    /// The masking transformers draws from `noise` (per image, one value per patch): patches
    /// sorted by noise, the first `L × (1 − ratio)` (rounded down) kept.
    pub fn from_noise(noise: &[Vec<f32>], ratio: f64) -> Self {
        let order = noise
            .iter()
            .map(|n| {
                let mut o: Vec<usize> = (0..n.len()).collect();
                // A stable sort, so ties keep their order as torch's sort does on CPU.
                o.sort_by(|&a, &b| n[a].total_cmp(&n[b]));
                o
            })
            .collect::<Vec<_>>();
        let len = noise.first().map_or(0, Vec::len);
        Masking {
            order,
            keep: (len as f64 * (1.0 - ratio)) as usize,
        }
    }

    /// Uniform noise from `seed` for `batch` images of `patches` patches, then as [`Self::from_noise`].
    pub fn random(batch: usize, patches: usize, ratio: f64, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let noise: Vec<Vec<f32>> = (0..batch)
            .map(|_| (0..patches).map(|_| rng.unit()).collect())
            .collect();
        Self::from_noise(&noise, ratio)
    }

    /// No masking: every patch kept, in order (for features and evaluation).
    pub fn none(batch: usize, patches: usize) -> Self {
        Masking {
            order: vec![(0..patches).collect(); batch],
            keep: patches,
        }
    }

    /// transformers' `mask`: per image and patch, 1 where masked, 0 where kept.
    pub fn mask(&self) -> Vec<Vec<f32>> {
        self.order
            .iter()
            .map(|o| {
                let mut m = vec![1f32; o.len()];
                for &i in &o[..self.keep] {
                    m[i] = 0.0;
                }
                m
            })
            .collect()
    }

    fn ids(
        &self,
        rows: impl Fn(&[usize]) -> Vec<i64>,
        width: usize,
        device: &Device,
    ) -> Tensor<2, Int> {
        let b = self.order.len();
        let flat: Vec<i64> = self.order.iter().flat_map(|o| rows(o)).collect();
        Tensor::from_data(TensorData::new(flat, [b, width]), device)
    }

    /// `[b, keep]` indices of the kept patches, in noise order.
    fn keep_ids(&self, device: &Device) -> Tensor<2, Int> {
        self.ids(
            |o| o[..self.keep].iter().map(|&i| i as i64).collect(),
            self.keep,
            device,
        )
    }

    /// `[b, L]` `ids_restore`: where each patch sits in the noise order.
    fn restore_ids(&self, device: &Device) -> Tensor<2, Int> {
        let len = self.order.first().map_or(0, Vec::len);
        self.ids(
            |o| {
                let mut r = vec![0i64; o.len()];
                for (pos, &i) in o.iter().enumerate() {
                    r[i] = pos as i64;
                }
                r
            },
            len,
            device,
        )
    }
}

/// What [`ViTMAEForPreTraining::forward`] returns, named as transformers names it.
#[derive(Debug, Clone)]
pub struct MaeOutput {
    /// `[b, patches, patch² × channels]` predicted pixels of every patch.
    pub logits: Tensor<3>,
    /// `[b, patches]`: 1 where masked.
    pub mask: Tensor<2>,
    /// The mean squared error over masked patches.
    pub loss: Tensor<1>,
    /// `[b, 1 + kept, hidden]`, the encoder's output.
    pub last_hidden_state: Tensor<3>,
}

/// MAE with its decoder (transformers' `ViTMAEForPreTraining`).
#[derive(Module, Debug)]
pub struct ViTMAEForPreTraining {
    /// The encoder.
    pub vit: ViTMAEModel,
    /// The decoder.
    pub decoder: ViTMAEDecoder,
    /// Patch side.
    pub patch_size: usize,
    /// Whether the loss targets per-patch normalised pixels.
    pub norm_pix_loss: bool,
}

/// `[b, c, h, w]` to `[b, patches, p × p × c]`, patches row-major, values in (row, column,
/// channel) order within a patch: transformers' `patchify`.
pub fn patchify(pixels: Tensor<4>, p: usize) -> Tensor<3> {
    let [b, c, h, w] = pixels.dims();
    let (gh, gw) = (h / p, w / p);
    pixels
        .reshape([b, c, gh, p, gw, p])
        .permute([0, 2, 4, 3, 5, 1])
        .reshape([b, gh * gw, p * p * c])
}

/// The inverse of [`patchify`] for a `gh` × `gw` grid.
pub fn unpatchify(patches: Tensor<3>, p: usize, c: usize, gh: usize, gw: usize) -> Tensor<4> {
    let [b, _, _] = patches.dims();
    patches
        .reshape([b, gh, gw, p, p, c])
        .permute([0, 5, 1, 3, 2, 4])
        .reshape([b, c, gh * p, gw * p])
}

/// Per-patch normalisation of `norm_pix_loss`: `(x − mean) / sqrt(var + 1e-6)` with the
/// unbiased variance, as torch's `var` computes it.
pub fn normalize_patches(target: Tensor<3>) -> Tensor<3> {
    let n = target.dims()[2];
    let mean = target.clone().mean_dim(2);
    let centred = target - mean;
    let var = centred.clone().powi_scalar(2).sum_dim(2) / (n.max(2) - 1) as f64;
    centred / (var + 1e-6).sqrt()
}

impl ViTMAEForPreTraining {
    /// A randomly initialised model as transformers initialises it (fixed sin-cos positions,
    /// normal(0, initializer_range) weights, zero mask token).
    pub fn new(config: &ViTMAEConfig, device: &Device) -> Self {
        let v = &config.vit;
        let (d, dd, std) = (
            v.hidden_size,
            config.decoder_hidden_size,
            v.initializer_range,
        );
        let grid = v.grid();
        let t = 1 + grid * grid;
        let normal = Initializer::Normal { mean: 0.0, std };
        let p = v.patch_size;
        let ln = |width: usize| {
            LayerNormConfig::new(width)
                .with_epsilon(v.layer_norm_eps)
                .init(device)
        };
        let dec = config.decoder_vit();
        ViTMAEForPreTraining {
            vit: ViTMAEModel {
                embeddings: ViTMAEEmbeddings {
                    cls_token: normal.init([1, 1, d], device),
                    position_embeddings: fixed(
                        sincos_position_embeddings(grid, d),
                        [1, t, d],
                        device,
                    ),
                    patch_embeddings: ViTPatchEmbeddings {
                        projection: Conv2dConfig::new([v.num_channels, d], [p, p])
                            .with_stride([p, p])
                            .with_initializer(Initializer::XavierUniform { gain: 1.0 })
                            .init(device),
                    },
                },
                encoder: ViTEncoder {
                    layer: (0..v.num_hidden_layers)
                        .map(|_| ViTLayer::new(v, device))
                        .collect(),
                },
                layernorm: ln(d),
            },
            decoder: ViTMAEDecoder {
                decoder_embed: linear(d, dd, true, std, device),
                mask_token: Initializer::Zeros.init([1, 1, dd], device),
                decoder_pos_embed: fixed(sincos_position_embeddings(grid, dd), [1, t, dd], device),
                decoder_layers: (0..config.decoder_num_hidden_layers)
                    .map(|_| ViTLayer::new(&dec, device))
                    .collect(),
                decoder_norm: ln(dd),
                decoder_pred: linear(dd, p * p * v.num_channels, true, std, device),
            },
            patch_size: p,
            norm_pix_loss: config.norm_pix_loss,
        }
    }

    /// The encoder on the kept patches: `[b, 1 + kept, hidden]`.
    pub fn encode(&self, pixels: Tensor<4>, masking: &Masking) -> Tensor<3> {
        let e = &self.vit.embeddings;
        let device = pixels.device();
        let patches = e.patch_embeddings.forward(pixels);
        let [b, _, d] = patches.dims();
        // The positions are fixed: no gradient reaches them.
        let pos = e.position_embeddings.val().detach();
        let t = pos.dims()[1];
        let patches = patches + pos.clone().slice(s![.., 1..t, ..]);
        let keep = masking.keep;
        let ids = masking
            .keep_ids(&device)
            .unsqueeze_dim::<3>(2)
            .expand([b, keep, d]);
        let visible = patches.gather(1, ids);
        let cls = (e.cls_token.val() + pos.slice(s![.., 0..1, ..])).expand([b, 1, d]);
        let mut x = Tensor::cat(vec![cls, visible], 1);
        for layer in &self.vit.encoder.layer {
            x = layer.forward(x);
        }
        self.vit.layernorm.forward(x)
    }

    /// The decoder: `[b, 1 + kept, hidden]` encoded tokens to `[b, patches, p² × c]` pixels.
    pub fn decode(&self, latent: Tensor<3>, masking: &Masking) -> Tensor<3> {
        let dec = &self.decoder;
        let device = latent.device();
        let x = dec.decoder_embed.forward(latent);
        let [b, t, dd] = x.dims();
        let patches = masking.order.first().map_or(0, Vec::len);
        let mut tokens = vec![x.clone().slice(s![.., 1..t, ..])];
        if patches + 1 > t {
            tokens.push(dec.mask_token.val().expand([b, patches + 1 - t, dd]));
        }
        let tokens = Tensor::cat(tokens, 1);
        let restore = masking
            .restore_ids(&device)
            .unsqueeze_dim::<3>(2)
            .expand([b, patches, dd]);
        let tokens = tokens.gather(1, restore);
        let mut h = Tensor::cat(vec![x.slice(s![.., 0..1, ..]), tokens], 1)
            + dec.decoder_pos_embed.val().detach();
        for layer in &dec.decoder_layers {
            h = layer.forward(h);
        }
        let logits = dec.decoder_pred.forward(dec.decoder_norm.forward(h));
        logits.slice(s![.., 1..patches + 1, ..])
    }

    /// The training objective on `[b, c, h, w]` pixels with `masking`.
    pub fn forward(&self, pixels: Tensor<4>, masking: &Masking) -> MaeOutput {
        let device = pixels.device();
        let latent = self.encode(pixels.clone(), masking);
        let logits = self.decode(latent.clone(), masking);
        let mut target = patchify(pixels, self.patch_size);
        if self.norm_pix_loss {
            target = normalize_patches(target);
        }
        let m = masking.mask();
        let (b, l) = (m.len(), m.first().map_or(0, Vec::len));
        let mask = Tensor::<2>::from_data(
            TensorData::new(m.into_iter().flatten().collect::<Vec<f32>>(), [b, l]),
            &device,
        );
        let per_patch = (logits.clone() - target)
            .powi_scalar(2)
            .mean_dim(2)
            .reshape([b, l]);
        let masked = mask.clone().sum().clamp_min(1.0);
        let loss = (per_patch * mask.clone()).sum() / masked;
        MaeOutput {
            logits,
            mask,
            loss,
            last_hidden_state: latent,
        }
    }
}

/// Reads and validates a ViTMAE config.json.
pub fn read_config(folder: &Path) -> Result<(ModelConfig, ViTMAEConfig)> {
    let mc = ModelConfig::read(folder)?;
    if mc.model_type != "vit_mae" {
        return Err(Error::Unsupported(format!(
            "{}: model_type {:?} is not a ViTMAE",
            mc.path.display(),
            mc.model_type
        )));
    }
    let cfg: ViTMAEConfig = mc.parse()?;
    cfg.validate().map_err(|m| Error::config(&mc.path, m))?;
    Ok((mc, cfg))
}

impl ViTMAEForPreTraining {
    /// Loads a `ViTMAEForPreTraining` checkpoint folder.
    pub fn load(folder: &Path, device: &Device) -> Result<(Self, ViTMAEConfig)> {
        let (_, cfg) = read_config(folder)?;
        // transformers 5 saves the decoder's layers as `decoder.decoder_encoder.layer.N`; the
        // published checkpoints call them `decoder.decoder_layers.N`.
        let renames: Vec<(&str, &str)> = [(
            r"^decoder\.decoder_encoder\.layer\.",
            "decoder.decoder_layers.",
        )]
        .into_iter()
        .chain(NEW_TO_LEGACY.iter().copied())
        .collect();
        let model = hub::load_weights(Self::new(&cfg, device), folder, &renames, &[])?;
        Ok((model, cfg))
    }

    /// Writes a folder that transformers' `ViTMAEForPreTraining.from_pretrained` loads.
    pub fn save(&self, config: &ViTMAEConfig, folder: &Path) -> Result<()> {
        hub::save_pretrained(self, &config.to_json(), folder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patchify_round_trips_and_orders_like_transformers() {
        let device = Device::flex();
        let x = Tensor::<4>::from_data(
            TensorData::new((0..2 * 3 * 4 * 4).map(|v| v as f32).collect(), [2, 3, 4, 4]),
            &device,
        );
        let p = patchify(x.clone(), 2);
        assert_eq!(p.dims(), [2, 4, 12]);
        // Patch 1 (top right), first value: row 0, column 2, channel 0 -> 2; then channel 1.
        let v = crate::pipeline::to_vec(p.clone()).unwrap();
        assert_eq!(v[12], 2.0);
        assert_eq!(v[13], 18.0);
        let back = unpatchify(p, 2, 3, 2, 2);
        let d = (back - x).abs().max().into_scalar::<f32>();
        assert_eq!(d, 0.0);
    }

    #[test]
    fn masking_keeps_the_lowest_noise_and_restores_order() {
        let m = Masking::from_noise(&[vec![0.9, 0.1, 0.5, 0.3]], 0.5);
        assert_eq!(m.keep, 2);
        assert_eq!(m.order[0], vec![1, 3, 2, 0]);
        assert_eq!(m.mask(), vec![vec![1.0, 0.0, 1.0, 0.0]]);
        let r = Masking::random(3, 196, 0.75, 1);
        assert_eq!(r.keep, 49);
        assert!(r.mask().iter().all(|m| m.iter().sum::<f32>() == 147.0));
    }

    #[test]
    fn sincos_rows_have_unit_pairs() {
        let e = sincos_position_embeddings(3, 8);
        assert!(e[..8].iter().all(|&v| v == 0.0));
        // Each (sin, cos) pair at one frequency has norm 1.
        let row = &e[8 * 5..8 * 6];
        assert!((row[0].powi(2) + row[2].powi(2) - 1.0).abs() < 1e-6);
    }
}
