//! VQGAN's first stage (Esser et al., "Taming Transformers"): a convolutional encoder, a
//! vector quantiser and a decoder, in diffusers' `VQModel` layout, its config and tensor names.
//!
//! - **Encoder**: `conv_in`, then `down_blocks` (ResNet blocks, attention where the block type
//!   says `Attn…`, a stride-2 convolution between resolutions), a `mid_block` (ResNet,
//!   self-attention, ResNet), GroupNorm, swish, `conv_out` to `latent_channels`.
//! - `quant_conv` (1×1) to the codes' width, the **quantiser** (`quantize.embedding`: nearest
//!   code by Euclidean distance, straight-through gradient), `post_quant_conv` (1×1) back.
//! - **Decoder**: `conv_in`, `mid_block`, `up_blocks` in reverse order of widths (one more
//!   ResNet block each than the encoder's, nearest ×2 upsampling and a convolution between
//!   resolutions), GroupNorm, swish, `conv_out`.
//!
//! Every GroupNorm has diffusers' eps 1e-6; attention is single-headed over the positions, as
//! in taming's `AttnBlock`. A folder is `config.json` (with `_class_name: "VQModel"`) and
//! `diffusion_pytorch_model.safetensors`: diffusers loads what [`VqModel::save`] writes, and
//! [`VqModel::load`] loads what diffusers saves.

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    Embedding, EmbeddingConfig, GroupNorm, GroupNormConfig, Initializer, Linear, LinearConfig,
    PaddingConfig2d,
};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::nn::activation::Activation;
use crate::{Error, Result, hub};

/// diffusers' class name in `config.json`.
pub const CLASS_NAME: &str = "VQModel";
/// diffusers' weights file.
pub const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

/// GroupNorm's eps everywhere in the autoencoder.
const NORM_EPS: f64 = 1e-6;

fn three() -> usize {
    3
}
fn down_default() -> Vec<String> {
    vec!["DownEncoderBlock2D".into()]
}
fn up_default() -> Vec<String> {
    vec!["UpDecoderBlock2D".into()]
}
fn widths_default() -> Vec<usize> {
    vec![64]
}
fn one() -> usize {
    1
}
fn silu() -> Activation {
    Activation::Silu
}
fn sample_size_default() -> usize {
    32
}
fn codes_default() -> usize {
    256
}
fn groups_default() -> usize {
    32
}
fn scaling_default() -> f64 {
    0.18215
}
fn group() -> String {
    "group".into()
}
fn yes() -> bool {
    true
}
fn is_false(b: &bool) -> bool {
    !*b
}

/// diffusers' `VQModel` config, with its defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VqConfig {
    /// Image channels in.
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Image channels out.
    #[serde(default = "three")]
    pub out_channels: usize,
    /// `DownEncoderBlock2D` or `AttnDownEncoderBlock2D`, one per resolution.
    #[serde(default = "down_default")]
    pub down_block_types: Vec<String>,
    /// `UpDecoderBlock2D` or `AttnUpDecoderBlock2D`, from the coarsest resolution up.
    #[serde(default = "up_default")]
    pub up_block_types: Vec<String>,
    /// Channels of each resolution, finest first.
    #[serde(default = "widths_default")]
    pub block_out_channels: Vec<usize>,
    /// ResNet blocks per encoder resolution (the decoder has one more).
    #[serde(default = "one")]
    pub layers_per_block: usize,
    /// The activation ("silu").
    #[serde(default = "silu")]
    pub act_fn: Activation,
    /// Channels of the encoder's output and the decoder's input.
    #[serde(default = "three")]
    pub latent_channels: usize,
    /// The image side the model was made for.
    #[serde(default = "sample_size_default")]
    pub sample_size: usize,
    /// Codebook entries.
    #[serde(default = "codes_default")]
    pub num_vq_embeddings: usize,
    /// Groups of every GroupNorm.
    #[serde(default = "groups_default")]
    pub norm_num_groups: usize,
    /// Width of a code (default: `latent_channels`).
    #[serde(default)]
    pub vq_embed_dim: Option<usize>,
    /// Latent scaling for diffusion models (kept, unused here).
    #[serde(default = "scaling_default")]
    pub scaling_factor: f64,
    /// "group" (MoVQ's "spatial" is not supported).
    #[serde(default = "group")]
    pub norm_type: String,
    /// Self-attention in the middle blocks.
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    /// diffusers' flag for decoding from indices (kept).
    #[serde(default)]
    pub lookup_from_codebook: bool,
    /// diffusers' flag (kept).
    #[serde(default)]
    pub force_upcast: bool,
    /// tuwen's option: codes and encoder outputs are l2-normalised before the lookup (as in
    /// ViT-VQGAN). diffusers ignores this key, so such a model decodes differently there.
    #[serde(default, skip_serializing_if = "is_false")]
    pub l2_normalized_codes: bool,
}

impl Default for VqConfig {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults deserialize")
    }
}

impl VqConfig {
    /// The codes' width.
    pub fn code_dim(&self) -> usize {
        self.vq_embed_dim.unwrap_or(self.latent_channels)
    }

    /// The side reduction: 2 per resolution after the first.
    pub fn downsample(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    /// The side of the code grid of a `sample_size` image.
    pub fn grid(&self) -> usize {
        self.sample_size / self.downsample()
    }

    /// Checks sizes and names before anything is built; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        use super::bounds::*;
        super::require_sizes(&[
            ("in_channels", self.in_channels, CHANNELS),
            ("out_channels", self.out_channels, CHANNELS),
            ("layers_per_block", self.layers_per_block, LAYERS),
            ("latent_channels", self.latent_channels, WIDTH),
            ("sample_size", self.sample_size, IMAGE_SIZE),
            ("num_vq_embeddings", self.num_vq_embeddings, VOCAB),
            ("norm_num_groups", self.norm_num_groups, WIDTH),
            ("vq_embed_dim", self.code_dim(), WIDTH),
        ])?;
        let n = self.block_out_channels.len();
        if n == 0 || n > 12 {
            return Err(format!(
                "block_out_channels must list 1 to 12 widths, not {n}"
            ));
        }
        for &w in &self.block_out_channels {
            super::require_sizes(&[("block_out_channels", w, WIDTH)])?;
            if !w.is_multiple_of(self.norm_num_groups) {
                return Err(format!(
                    "block_out_channels {w} is not a multiple of norm_num_groups {}",
                    self.norm_num_groups
                ));
            }
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "down_block_types ({}) and up_block_types ({}) must list as many blocks as \
                 block_out_channels ({n})",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        for t in &self.down_block_types {
            if !matches!(t.as_str(), "DownEncoderBlock2D" | "AttnDownEncoderBlock2D") {
                return Err(format!(
                    "down block type {t:?} is not DownEncoderBlock2D or AttnDownEncoderBlock2D"
                ));
            }
        }
        for t in &self.up_block_types {
            if !matches!(t.as_str(), "UpDecoderBlock2D" | "AttnUpDecoderBlock2D") {
                return Err(format!(
                    "up block type {t:?} is not UpDecoderBlock2D or AttnUpDecoderBlock2D"
                ));
            }
        }
        if self.norm_type != "group" {
            return Err(format!(
                "norm_type {:?}: only \"group\" is supported (MoVQ's spatial norm is not)",
                self.norm_type
            ));
        }
        if !self.sample_size.is_multiple_of(self.downsample()) {
            return Err(format!(
                "sample_size {} is not a multiple of the downsampling {}",
                self.sample_size,
                self.downsample()
            ));
        }
        Ok(())
    }

    /// The config.json value diffusers reads.
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("configs serialise");
        v["_class_name"] = Value::from(CLASS_NAME);
        v["_diffusers_version"] = Value::from("0.42.1");
        if self.vq_embed_dim.is_none() {
            v["vq_embed_dim"] = Value::Null;
        }
        v
    }

    /// Reads a config.json value (`_class_name` must be `VQModel` when present).
    pub fn from_json(v: &Value) -> std::result::Result<Self, String> {
        match v.get("_class_name").and_then(Value::as_str) {
            None | Some(CLASS_NAME) => {}
            Some(other) => return Err(format!("_class_name {other:?} is not {CLASS_NAME:?}")),
        }
        let cfg: VqConfig = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parameters of the model this config builds.
    pub fn num_params(&self) -> usize {
        let conv = |i: usize, o: usize, k: usize| i * o * k * k + o;
        let norm = |c: usize| 2 * c;
        let resnet = |i: usize, o: usize| {
            norm(i)
                + conv(i, o, 3)
                + norm(o)
                + conv(o, o, 3)
                + if i != o { conv(i, o, 1) } else { 0 }
        };
        let attn = |c: usize| norm(c) + 4 * (c * c + c);
        let w = &self.block_out_channels;
        let top = *w.last().expect("validated");
        let mid = 2 * resnet(top, top)
            + if self.mid_block_add_attention {
                attn(top)
            } else {
                0
            };
        let mut enc = conv(self.in_channels, w[0], 3) + mid + norm(top);
        enc += conv(top, self.latent_channels, 3);
        let mut prev = w[0];
        for (i, (&o, t)) in w.iter().zip(&self.down_block_types).enumerate() {
            for j in 0..self.layers_per_block {
                enc += resnet(if j == 0 { prev } else { o }, o);
                if t.starts_with("Attn") {
                    enc += attn(o);
                }
            }
            if i + 1 < w.len() {
                enc += conv(o, o, 3);
            }
            prev = o;
        }
        let mut dec = conv(self.latent_channels, top, 3) + mid + norm(w[0]);
        dec += conv(w[0], self.out_channels, 3);
        let mut prev = top;
        for (i, (&o, t)) in w.iter().rev().zip(&self.up_block_types).enumerate() {
            for j in 0..=self.layers_per_block {
                dec += resnet(if j == 0 { prev } else { o }, o);
                if t.starts_with("Attn") {
                    dec += attn(o);
                }
            }
            if i + 1 < w.len() {
                dec += conv(o, o, 3);
            }
            prev = o;
        }
        let d = self.code_dim();
        enc + dec
            + conv(self.latent_channels, d, 1)
            + conv(d, self.latent_channels, 1)
            + self.num_vq_embeddings * d
    }
}

fn group_norm(c: usize, groups: usize, device: &Device) -> GroupNorm {
    GroupNormConfig::new(groups, c)
        .with_epsilon(NORM_EPS)
        .init(device)
}

/// A k×k convolution with PyTorch's default initialisation, "same" padding at stride 1.
fn conv(i: usize, o: usize, k: usize, stride: usize, device: &Device) -> Conv2d {
    let pad = if stride == 1 { k / 2 } else { 0 };
    Conv2dConfig::new([i, o], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .init(device)
}

/// diffusers' `ResnetBlock2D` without a time embedding: norm, swish, conv, norm, swish, conv,
/// plus the input (through a 1×1 `conv_shortcut` when the widths differ).
#[derive(Module, Debug)]
pub struct ResnetBlock {
    /// First GroupNorm.
    pub norm1: GroupNorm,
    /// First 3×3 convolution.
    pub conv1: Conv2d,
    /// Second GroupNorm.
    pub norm2: GroupNorm,
    /// Second 3×3 convolution.
    pub conv2: Conv2d,
    /// 1×1 convolution of the input when the widths differ.
    pub conv_shortcut: Option<Conv2d>,
    #[module(skip)]
    act: Activation,
}

impl ResnetBlock {
    fn new(i: usize, o: usize, cfg: &VqConfig, device: &Device) -> Self {
        let g = cfg.norm_num_groups;
        ResnetBlock {
            norm1: group_norm(i, g, device),
            conv1: conv(i, o, 3, 1, device),
            norm2: group_norm(o, g, device),
            conv2: conv(o, o, 3, 1, device),
            conv_shortcut: (i != o).then(|| conv(i, o, 1, 1, device)),
            act: cfg.act_fn,
        }
    }

    /// `[b, i, h, w]` → `[b, o, h, w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = self
            .conv1
            .forward(self.act.forward(self.norm1.forward(x.clone())));
        let h = self.conv2.forward(self.act.forward(self.norm2.forward(h)));
        let x = match &self.conv_shortcut {
            Some(c) => c.forward(x),
            None => x,
        };
        x + h
    }
}

/// Single-head self-attention over the positions of a feature map, with a residual
/// (diffusers' `Attention` as the VAE blocks use it; taming's `AttnBlock`).
#[derive(Module, Debug)]
pub struct AttnBlock {
    /// GroupNorm of the input.
    pub group_norm: GroupNorm,
    /// Queries.
    pub to_q: Linear,
    /// Keys.
    pub to_k: Linear,
    /// Values.
    pub to_v: Linear,
    /// Output projection (`to_out.0`).
    pub to_out: Vec<Linear>,
}

impl AttnBlock {
    fn new(c: usize, cfg: &VqConfig, device: &Device) -> Self {
        let lin = || LinearConfig::new(c, c).init(device);
        AttnBlock {
            group_norm: group_norm(c, cfg.norm_num_groups, device),
            to_q: lin(),
            to_k: lin(),
            to_v: lin(),
            to_out: vec![lin()],
        }
    }

    /// `[b, c, h, w]` → `[b, c, h, w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let n = self
            .group_norm
            .forward(x.clone())
            .reshape([b, c, h * w])
            .swap_dims(1, 2);
        let q = self.to_q.forward(n.clone());
        let k = self.to_k.forward(n.clone());
        let v = self.to_v.forward(n);
        let scores = q.matmul(k.swap_dims(1, 2)) * (c as f64).powf(-0.5);
        let out = softmax(scores, 2).matmul(v);
        let out = self.to_out[0].forward(out);
        x + out.swap_dims(1, 2).reshape([b, c, h, w])
    }
}

/// A stride-2 convolution after padding one row and column at the bottom and right.
#[derive(Module, Debug)]
pub struct Downsample {
    /// 3×3, stride 2, no padding of its own.
    pub conv: Conv2d,
}

/// Nearest-neighbour ×2, then a 3×3 convolution.
#[derive(Module, Debug)]
pub struct Upsample {
    /// 3×3 convolution.
    pub conv: Conv2d,
}

/// `[b, c, h, w]` → `[b, c, 2h, 2w]`, each value repeated in a 2×2 square.
pub fn upsample_nearest2(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, 2, w, 2])
        .reshape([b, c, 2 * h, 2 * w])
}

/// One resolution of the encoder (`DownEncoderBlock2D` / `AttnDownEncoderBlock2D`) or of the
/// decoder (`UpDecoderBlock2D` / `AttnUpDecoderBlock2D`).
#[derive(Module, Debug)]
pub struct Stage {
    /// ResNet blocks.
    pub resnets: Vec<ResnetBlock>,
    /// Attention after each ResNet block (empty without).
    pub attentions: Vec<AttnBlock>,
    /// The stride-2 convolution to the next resolution (encoder; empty at the last).
    pub downsamplers: Vec<Downsample>,
    /// The ×2 upsampling to the next resolution (decoder; empty at the last).
    pub upsamplers: Vec<Upsample>,
}

impl Stage {
    fn forward(&self, mut h: Tensor<4>) -> Tensor<4> {
        for (i, r) in self.resnets.iter().enumerate() {
            h = r.forward(h);
            if let Some(a) = self.attentions.get(i) {
                h = a.forward(h);
            }
        }
        for d in &self.downsamplers {
            h = d.conv.forward(crate::nn::conv::pad(h, (0, 1, 0, 1)));
        }
        for u in &self.upsamplers {
            h = u.conv.forward(upsample_nearest2(h));
        }
        h
    }
}

/// ResNet, attention, ResNet at the coarsest resolution.
#[derive(Module, Debug)]
pub struct MidBlock {
    /// Attention between the two ResNet blocks (empty without).
    pub attentions: Vec<AttnBlock>,
    /// Two ResNet blocks.
    pub resnets: Vec<ResnetBlock>,
}

impl MidBlock {
    fn new(c: usize, cfg: &VqConfig, device: &Device) -> Self {
        MidBlock {
            attentions: if cfg.mid_block_add_attention {
                vec![AttnBlock::new(c, cfg, device)]
            } else {
                vec![]
            },
            resnets: vec![
                ResnetBlock::new(c, c, cfg, device),
                ResnetBlock::new(c, c, cfg, device),
            ],
        }
    }

    fn forward(&self, h: Tensor<4>) -> Tensor<4> {
        let mut h = self.resnets[0].forward(h);
        if let Some(a) = self.attentions.first() {
            h = a.forward(h);
        }
        self.resnets[1].forward(h)
    }
}

/// Image → latent `[b, latent_channels, h/f, w/f]`.
#[derive(Module, Debug)]
pub struct Encoder {
    /// 3×3 from the image's channels.
    pub conv_in: Conv2d,
    /// One stage per resolution.
    pub down_blocks: Vec<Stage>,
    /// The middle block.
    pub mid_block: MidBlock,
    /// GroupNorm before the output.
    pub conv_norm_out: GroupNorm,
    /// 3×3 to `latent_channels`.
    pub conv_out: Conv2d,
    #[module(skip)]
    act: Activation,
}

impl Encoder {
    fn new(cfg: &VqConfig, device: &Device) -> Self {
        let w = &cfg.block_out_channels;
        let top = *w.last().expect("validated");
        let mut prev = w[0];
        let mut down_blocks = Vec::new();
        for (i, (&o, t)) in w.iter().zip(&cfg.down_block_types).enumerate() {
            let resnets = (0..cfg.layers_per_block)
                .map(|j| ResnetBlock::new(if j == 0 { prev } else { o }, o, cfg, device))
                .collect();
            let attentions = if t.starts_with("Attn") {
                (0..cfg.layers_per_block)
                    .map(|_| AttnBlock::new(o, cfg, device))
                    .collect()
            } else {
                vec![]
            };
            let downsamplers = if i + 1 < w.len() {
                vec![Downsample {
                    conv: conv(o, o, 3, 2, device),
                }]
            } else {
                vec![]
            };
            down_blocks.push(Stage {
                resnets,
                attentions,
                downsamplers,
                upsamplers: vec![],
            });
            prev = o;
        }
        Encoder {
            conv_in: conv(cfg.in_channels, w[0], 3, 1, device),
            down_blocks,
            mid_block: MidBlock::new(top, cfg, device),
            conv_norm_out: group_norm(top, cfg.norm_num_groups, device),
            conv_out: conv(top, cfg.latent_channels, 3, 1, device),
            act: cfg.act_fn,
        }
    }

    /// `[b, in_channels, h, w]` → `[b, latent_channels, h/f, w/f]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut h = self.conv_in.forward(x);
        for s in &self.down_blocks {
            h = s.forward(h);
        }
        let h = self.mid_block.forward(h);
        self.conv_out
            .forward(self.act.forward(self.conv_norm_out.forward(h)))
    }
}

/// Latent → image.
#[derive(Module, Debug)]
pub struct Decoder {
    /// 3×3 from `latent_channels`.
    pub conv_in: Conv2d,
    /// One stage per resolution, coarsest first.
    pub up_blocks: Vec<Stage>,
    /// The middle block.
    pub mid_block: MidBlock,
    /// GroupNorm before the output.
    pub conv_norm_out: GroupNorm,
    /// 3×3 to the image's channels: "the decoder's last layer" of the adaptive weight.
    pub conv_out: Conv2d,
    #[module(skip)]
    act: Activation,
}

impl Decoder {
    fn new(cfg: &VqConfig, device: &Device) -> Self {
        let w: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let mut prev = w[0];
        let mut up_blocks = Vec::new();
        for (i, (&o, t)) in w.iter().zip(&cfg.up_block_types).enumerate() {
            let n = cfg.layers_per_block + 1;
            let resnets = (0..n)
                .map(|j| ResnetBlock::new(if j == 0 { prev } else { o }, o, cfg, device))
                .collect();
            let attentions = if t.starts_with("Attn") {
                (0..n).map(|_| AttnBlock::new(o, cfg, device)).collect()
            } else {
                vec![]
            };
            let upsamplers = if i + 1 < w.len() {
                vec![Upsample {
                    conv: conv(o, o, 3, 1, device),
                }]
            } else {
                vec![]
            };
            up_blocks.push(Stage {
                resnets,
                attentions,
                downsamplers: vec![],
                upsamplers,
            });
            prev = o;
        }
        let first = *w.last().expect("validated");
        Decoder {
            conv_in: conv(cfg.latent_channels, w[0], 3, 1, device),
            up_blocks,
            mid_block: MidBlock::new(w[0], cfg, device),
            conv_norm_out: group_norm(first, cfg.norm_num_groups, device),
            conv_out: conv(first, cfg.out_channels, 3, 1, device),
            act: cfg.act_fn,
        }
    }

    /// The input of `conv_out` (after the last norm and activation) and the image.
    pub fn forward_parts(&self, z: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let mut h = self.mid_block.forward(self.conv_in.forward(z));
        for s in &self.up_blocks {
            h = s.forward(h);
        }
        let h = self.act.forward(self.conv_norm_out.forward(h));
        (h.clone(), self.conv_out.forward(h))
    }

    /// `[b, latent_channels, h, w]` → `[b, out_channels, h·f, w·f]`.
    pub fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        self.forward_parts(z).1
    }
}

/// The codebook and its lookup.
#[derive(Module, Debug)]
pub struct VectorQuantizer {
    /// `[num_vq_embeddings, vq_embed_dim]`.
    pub embedding: Embedding,
    #[module(skip)]
    l2: bool,
}

/// What the quantiser makes of a latent.
#[derive(Clone, Debug)]
pub struct Quantized {
    /// The codes' vectors `[b, d, h, w]`, with the straight-through gradient to the input.
    pub z_q: Tensor<4>,
    /// The input as the lookup compared it (l2-normalised with that option) `[b, d, h, w]`.
    pub z: Tensor<4>,
    /// The codes' vectors without the straight-through path (they carry the codebook's
    /// gradient) `[b, d, h, w]`.
    pub codes_vectors: Tensor<4>,
    /// Code indices `[b, h·w]`, row-major.
    pub indices: Tensor<2, Int>,
}

fn l2_normalize<const D: usize>(x: Tensor<D>, dim: usize) -> Tensor<D> {
    let norm = x.clone().square().sum_dim(dim).sqrt().clamp_min(1e-12);
    x / norm
}

impl VectorQuantizer {
    fn new(cfg: &VqConfig, device: &Device) -> Self {
        let k = cfg.num_vq_embeddings as f64;
        VectorQuantizer {
            embedding: EmbeddingConfig::new(cfg.num_vq_embeddings, cfg.code_dim())
                .with_initializer(Initializer::Uniform {
                    min: -1.0 / k,
                    max: 1.0 / k,
                })
                .init(device),
            l2: cfg.l2_normalized_codes,
        }
    }

    /// The codebook as the lookup uses it `[K, d]` (l2-normalised with that option).
    pub fn codebook(&self) -> Tensor<2> {
        let e = self.embedding.weight.val();
        if self.l2 { l2_normalize(e, 1) } else { e }
    }

    /// Nearest code of each of `z`'s rows `[n, d]` (by squared Euclidean distance).
    pub fn nearest(&self, z: Tensor<2>) -> Tensor<1, Int> {
        let e = self.codebook().detach();
        let z = z.detach();
        let [n, _] = z.dims();
        let dist = z.clone().square().sum_dim(1) - z.matmul(e.clone().transpose()) * 2.0
            + e.square().sum_dim(1).transpose();
        dist.argmin(1).reshape([n])
    }

    /// Quantises `z` `[b, d, h, w]`.
    pub fn forward(&self, z: Tensor<4>) -> Quantized {
        let [b, d, h, w] = z.dims();
        let mut flat = z.permute([0, 2, 3, 1]).reshape([b * h * w, d]);
        if self.l2 {
            flat = l2_normalize(flat, 1);
        }
        let idx = self.nearest(flat.clone());
        let vectors = self.codebook().select(0, idx.clone());
        let back = |t: Tensor<2>| t.reshape([b, h, w, d]).permute([0, 3, 1, 2]);
        let st = flat.clone() + (vectors.clone() - flat.clone()).detach();
        Quantized {
            z_q: back(st),
            z: back(flat),
            codes_vectors: back(vectors),
            indices: idx.reshape([b, h * w]),
        }
    }

    /// The vectors of code indices `[b, h·w]` as a latent `[b, d, h, w]`.
    pub fn lookup(&self, indices: Tensor<2, Int>, h: usize, w: usize) -> Tensor<4> {
        let [b, n] = indices.dims();
        debug_assert_eq!(n, h * w);
        let e = self.codebook();
        let d = e.dims()[1];
        e.select(0, indices.reshape([b * n]))
            .reshape([b, h, w, d])
            .permute([0, 3, 1, 2])
    }
}

/// diffusers' `VQModel`.
#[derive(Module, Debug)]
pub struct VqModel {
    /// Image → latent.
    pub encoder: Encoder,
    /// 1×1, latent → codes' width.
    pub quant_conv: Conv2d,
    /// The codebook.
    pub quantize: VectorQuantizer,
    /// 1×1, codes' width → latent.
    pub post_quant_conv: Conv2d,
    /// Latent → image.
    pub decoder: Decoder,
}

/// What a pass through the autoencoder makes.
#[derive(Clone, Debug)]
pub struct VqOutput {
    /// The reconstruction `[b, out_channels, h, w]` (the decoder's raw output).
    pub sample: Tensor<4>,
    /// The input of the decoder's `conv_out` (for the adaptive weight).
    pub last_hidden: Tensor<4>,
    /// The quantiser's output.
    pub quantized: Quantized,
}

impl VqModel {
    /// A freshly initialised model (`cfg` must be valid).
    pub fn new(cfg: &VqConfig, device: &Device) -> Self {
        let d = cfg.code_dim();
        VqModel {
            encoder: Encoder::new(cfg, device),
            quant_conv: conv(cfg.latent_channels, d, 1, 1, device),
            quantize: VectorQuantizer::new(cfg, device),
            post_quant_conv: conv(d, cfg.latent_channels, 1, 1, device),
            decoder: Decoder::new(cfg, device),
        }
    }

    /// Image `[b, c, h, w]` in [-1, 1] → latent before quantisation `[b, d, h/f, w/f]`
    /// (diffusers' `encode(x).latents`).
    pub fn encode(&self, x: Tensor<4>) -> Tensor<4> {
        self.quant_conv.forward(self.encoder.forward(x))
    }

    /// Quantised latent `[b, d, h, w]` → (input of `conv_out`, image).
    pub fn decode_parts(&self, z_q: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        self.decoder
            .forward_parts(self.post_quant_conv.forward(z_q))
    }

    /// Code indices `[b, h·w]` of an `h`×`w` grid → images.
    pub fn decode_codes(&self, indices: Tensor<2, Int>, h: usize, w: usize) -> Tensor<4> {
        self.decode_parts(self.quantize.lookup(indices, h, w)).1
    }

    /// The whole pass: encode, quantise, decode (diffusers' `VQModel(x).sample`).
    pub fn forward(&self, x: Tensor<4>) -> VqOutput {
        let quantized = self.quantize.forward(self.encode(x));
        let (last_hidden, sample) = self.decode_parts(quantized.z_q.clone());
        VqOutput {
            sample,
            last_hidden,
            quantized,
        }
    }

    /// The device the model lives on.
    pub fn device(&self) -> Device {
        self.quant_conv.weight.device()
    }

    /// Loads a diffusers `VQModel` folder (`config.json` + `diffusion_pytorch_model.safetensors`).
    pub fn load(folder: &Path, device: &Device) -> Result<(Self, VqConfig)> {
        let cfg = read_config(folder)?;
        let _rng = crate::device::rng_lock();
        let model = hub::load_weights(VqModel::new(&cfg, device), folder, &[], &[])?;
        Ok((model, cfg))
    }

    /// Writes `config.json` and `diffusion_pytorch_model.safetensors` as diffusers does.
    pub fn save(&self, cfg: &VqConfig, folder: &Path) -> Result<()> {
        hub::save_pretrained_file(self, &cfg.to_json(), folder, WEIGHTS)
    }
}

/// taming's `NLayerDiscriminator` (PatchGAN, Isola et al.): 4×4 convolutions, stride 2 for
/// `n_layers` levels then stride 1, batch norm and LeakyReLU(0.2) between, ending in a
/// one-channel map of logits, one per overlapping patch (70×70 px at 3 layers).
#[derive(Module, Debug)]
pub struct PatchDiscriminator {
    /// The convolutions: the first with a bias, the middle ones without (batch norm follows),
    /// the last to one channel.
    pub convs: Vec<Conv2d>,
    /// Batch norm after each middle convolution.
    pub norms: Vec<burn::nn::BatchNorm>,
}

impl PatchDiscriminator {
    /// `channels` in, `ndf` filters doubling per level up to 8×, `n_layers` stride-2 levels;
    /// taming's initialisation (convolutions N(0, 0.02²), norm scales N(1, 0.02²)).
    pub fn new(channels: usize, ndf: usize, n_layers: usize, device: &Device) -> Self {
        let widths: Vec<usize> = std::iter::once(channels)
            .chain((0..=n_layers).map(|i| ndf * (1usize << i.min(3))))
            .collect();
        let init = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        let mut convs = Vec::new();
        let mut norms = Vec::new();
        for i in 0..=n_layers {
            let stride = if i < n_layers { 2 } else { 1 };
            convs.push(
                Conv2dConfig::new([widths[i], widths[i + 1]], [4, 4])
                    .with_stride([stride, stride])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .with_bias(i == 0)
                    .with_initializer(init.clone())
                    .init(device),
            );
            if i > 0 {
                let mut bn = crate::nn::conv::batch_norm(widths[i + 1], 1e-5, device);
                // A fresh leaf (a sum would stay a node of a graph that the first backward
                // pass consumes, and would never be trained).
                bn.gamma = bn.gamma.map(|g| {
                    let noise = burn::tensor::Distribution::Normal(0.0, 0.02);
                    let v = g.clone() + Tensor::random(g.shape(), noise, &g.device());
                    super::gan::trainable(v.detach())
                });
                norms.push(bn);
            }
        }
        convs.push(
            Conv2dConfig::new([widths[n_layers + 1], 1], [4, 4])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_initializer(init)
                .init(device),
        );
        PatchDiscriminator { convs, norms }
    }

    /// Images `[b, c, h, w]` → patch logits `[b, 1, h', w']`.
    ///
    /// Batch norm always normalises with the batch's statistics, as the discriminator runs in
    /// PyTorch's training mode throughout VQGAN's training (it is never evaluated otherwise).
    /// The running statistics are not updated: nothing reads them, and updating them from the
    /// generator's pass would tie them to a graph that is gone by the next step.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        use burn::tensor::activation::leaky_relu;
        let mut h = leaky_relu(self.convs[0].forward(x), 0.2);
        for (conv, norm) in self.convs[1..self.convs.len() - 1].iter().zip(&self.norms) {
            h = leaky_relu(batch_stats_norm(norm, conv.forward(h)), 0.2);
        }
        self.convs[self.convs.len() - 1].forward(h)
    }

    /// The device it lives on.
    pub fn device(&self) -> Device {
        self.convs[0].weight.device()
    }
}

/// Batch norm with the batch's own statistics (biased variance), then the norm's scale and
/// offset.
fn batch_stats_norm(norm: &burn::nn::BatchNorm, x: Tensor<4>) -> Tensor<4> {
    let c = x.dims()[1];
    let mean = x.clone().mean_dims(&[0, 2, 3]);
    let centred = x - mean;
    let var = centred.clone().square().mean_dims(&[0, 2, 3]);
    let y = centred / (var + norm.epsilon).sqrt();
    let g = norm.gamma.val().reshape([1, c, 1, 1]);
    let b = norm.beta.val().reshape([1, c, 1, 1]);
    y * g + b
}

/// Reads and checks a `VQModel` folder's config.json.
pub fn read_config(folder: &Path) -> Result<VqConfig> {
    let path = folder.join("config.json");
    let v = hub::read_json(&path)?;
    VqConfig::from_json(&v).map_err(|e| Error::config(&path, e))
}

/// Whether `folder` holds a diffusers `VQModel` (its config.json says so).
pub fn is_vq_folder(folder: &Path) -> bool {
    hub::read_json(&folder.join("config.json"))
        .ok()
        .and_then(|v| {
            v.get("_class_name")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .is_some_and(|c| c == CLASS_NAME)
}

/// taming-transformers' VQGAN checkpoints in diffusers' layout: the config inferred from the
/// tensors' shapes (taming's `ddconfig` with GroupNorm(32), `double_z` false) and each tensor's
/// new name, attention's 1×1 convolutions as linear weights.
pub mod taming {
    use std::collections::BTreeMap;

    use super::VqConfig;

    fn shape<'a>(s: &'a BTreeMap<String, Vec<usize>>, name: &str) -> Result<&'a [usize], String> {
        s.get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| format!("no {name}: not a taming-transformers VQGAN"))
    }

    fn count(s: &BTreeMap<String, Vec<usize>>, prefix: &str) -> usize {
        let mut seen = std::collections::BTreeSet::new();
        for k in s.keys() {
            if let Some(rest) = k.strip_prefix(prefix)
                && let Some(i) = rest.split('.').next().and_then(|i| i.parse::<usize>().ok())
            {
                seen.insert(i);
            }
        }
        seen.len()
    }

    /// The `VQModel` config of a taming state dict (tensor shapes by name); `resolution` is the
    /// image side it was trained at (not in the tensors).
    pub fn config(s: &BTreeMap<String, Vec<usize>>, resolution: usize) -> Result<VqConfig, String> {
        let conv_in = shape(s, "encoder.conv_in.weight")?;
        let levels = count(s, "encoder.down.");
        if levels == 0 {
            return Err("no encoder.down.*: not a taming-transformers VQGAN".into());
        }
        let mut widths = Vec::new();
        let mut down = Vec::new();
        let mut up = Vec::new();
        for i in 0..levels {
            widths.push(shape(s, &format!("encoder.down.{i}.block.0.conv1.weight"))?[0]);
            let attn = s.contains_key(&format!("encoder.down.{i}.attn.0.q.weight"));
            down.push(
                if attn {
                    "AttnDownEncoderBlock2D"
                } else {
                    "DownEncoderBlock2D"
                }
                .to_string(),
            );
        }
        for i in (0..levels).rev() {
            let attn = s.contains_key(&format!("decoder.up.{i}.attn.0.q.weight"));
            up.push(
                if attn {
                    "AttnUpDecoderBlock2D"
                } else {
                    "UpDecoderBlock2D"
                }
                .to_string(),
            );
        }
        let embedding = shape(s, "quantize.embedding.weight")?;
        let cfg = VqConfig {
            in_channels: conv_in[1],
            out_channels: shape(s, "decoder.conv_out.weight")?[0],
            down_block_types: down,
            up_block_types: up,
            block_out_channels: widths,
            layers_per_block: count(s, "encoder.down.0.block."),
            latent_channels: shape(s, "encoder.conv_out.weight")?[0],
            sample_size: resolution,
            num_vq_embeddings: embedding[0],
            norm_num_groups: 32,
            vq_embed_dim: Some(embedding[1]),
            mid_block_add_attention: s.contains_key("encoder.mid.attn_1.q.weight"),
            ..VqConfig::default()
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// diffusers' name of a taming tensor, and whether it is an attention projection stored as
    /// a 1×1 convolution (to be reshaped `[c, c, 1, 1]` → `[c, c]`). `None` for the training
    /// losses' tensors (`loss.*`: discriminator and LPIPS), which a `VQModel` does not hold.
    pub fn rename(name: &str, levels: usize) -> Result<Option<(String, bool)>, String> {
        if name.starts_with("loss.") {
            return Ok(None);
        }
        if ["quant_conv.", "post_quant_conv.", "quantize.embedding."]
            .iter()
            .any(|p| name.starts_with(p))
        {
            return Ok(Some((name.to_string(), false)));
        }
        let bad = || format!("{name}: not a tensor of taming-transformers' VQGAN");
        let (side, rest) = name.split_once('.').ok_or_else(bad)?;
        if side != "encoder" && side != "decoder" {
            return Err(bad());
        }
        let parts: Vec<&str> = rest.split('.').collect();
        let attn_leaf = |leaf: &[&str]| -> Result<(String, bool), String> {
            let (what, param) = match leaf {
                [w, p] => (*w, *p),
                _ => return Err(bad()),
            };
            let (new, linear) = match what {
                "norm" => ("group_norm", false),
                "q" => ("to_q", true),
                "k" => ("to_k", true),
                "v" => ("to_v", true),
                "proj_out" => ("to_out.0", true),
                _ => return Err(bad()),
            };
            Ok((format!("{new}.{param}"), linear && param == "weight"))
        };
        let block_leaf = |leaf: &[&str]| leaf.join(".").replace("nin_shortcut", "conv_shortcut");
        let (path, linear) = match parts.as_slice() {
            ["conv_in" | "conv_out", ..] => (rest.to_string(), false),
            ["norm_out", p] => (format!("conv_norm_out.{p}"), false),
            ["mid", "block_1", leaf @ ..] => {
                (format!("mid_block.resnets.0.{}", block_leaf(leaf)), false)
            }
            ["mid", "block_2", leaf @ ..] => {
                (format!("mid_block.resnets.1.{}", block_leaf(leaf)), false)
            }
            ["mid", "attn_1", leaf @ ..] => {
                let (l, lin) = attn_leaf(leaf)?;
                (format!("mid_block.attentions.0.{l}"), lin)
            }
            [level @ ("down" | "up"), i, kind, rest @ ..] => {
                let i: usize = i.parse().map_err(|_| bad())?;
                if i >= levels {
                    return Err(bad());
                }
                // The decoder's `up` is indexed by resolution, finest first; diffusers' by
                // order of use, coarsest first.
                let (blocks, k) = if *level == "down" {
                    ("down_blocks", i)
                } else {
                    ("up_blocks", levels - 1 - i)
                };
                match (*kind, rest) {
                    ("block", [j, leaf @ ..]) => (
                        format!("{blocks}.{k}.resnets.{j}.{}", block_leaf(leaf)),
                        false,
                    ),
                    ("attn", [j, leaf @ ..]) => {
                        let (l, lin) = attn_leaf(leaf)?;
                        (format!("{blocks}.{k}.attentions.{j}.{l}"), lin)
                    }
                    ("downsample", ["conv", p]) => {
                        (format!("{blocks}.{k}.downsamplers.0.conv.{p}"), false)
                    }
                    ("upsample", ["conv", p]) => {
                        (format!("{blocks}.{k}.upsamplers.0.conv.{p}"), false)
                    }
                    _ => return Err(bad()),
                }
            }
            _ => return Err(bad()),
        };
        Ok(Some((format!("{side}.{path}"), linear)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> VqConfig {
        VqConfig {
            block_out_channels: vec![8, 16],
            down_block_types: vec!["DownEncoderBlock2D".into(), "AttnDownEncoderBlock2D".into()],
            up_block_types: vec!["AttnUpDecoderBlock2D".into(), "UpDecoderBlock2D".into()],
            norm_num_groups: 4,
            latent_channels: 4,
            vq_embed_dim: Some(5),
            num_vq_embeddings: 10,
            sample_size: 16,
            ..VqConfig::default()
        }
    }

    #[test]
    fn param_count_matches_the_module() {
        let device = Device::default();
        for cfg in [small(), VqConfig::default()] {
            cfg.validate().unwrap();
            let m = VqModel::new(&cfg, &device);
            assert_eq!(m.num_params(), cfg.num_params());
        }
    }

    #[test]
    fn shapes_and_lookup_agree() {
        let device = Device::default();
        let cfg = small();
        let m = VqModel::new(&cfg, &device);
        let x = Tensor::<4>::random([2, 3, 16, 16], burn::tensor::Distribution::Default, &device);
        let out = m.forward(x);
        assert_eq!(out.sample.dims(), [2, 3, 16, 16]);
        assert_eq!(out.quantized.indices.dims(), [2, 64]);
        let again = m.decode_codes(out.quantized.indices.clone(), 8, 8);
        let diff = (again - out.sample).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn l2_codes_are_unit_vectors_and_the_lookup_uses_them() {
        let device = Device::default();
        let cfg = VqConfig {
            l2_normalized_codes: true,
            ..small()
        };
        let m = VqModel::new(&cfg, &device);
        let x = Tensor::<4>::random([2, 3, 16, 16], burn::tensor::Distribution::Default, &device);
        let q = m.quantize.forward(m.encode(x));
        let norms = q.z_q.clone().square().sum_dim(1).sqrt();
        let off = (norms - 1.0).abs().max().into_scalar::<f32>();
        assert!(off < 1e-5, "{off}");
        // Each chosen code is the nearest by cosine: no other unit code is closer.
        let z = q.z.clone().permute([0, 2, 3, 1]).reshape([128, 5]);
        let sims = z.matmul(m.quantize.codebook().transpose());
        let best = sims.argmax(1).reshape([2, 64]);
        assert_eq!(
            best.into_data().convert::<i64>(),
            q.indices.into_data().convert::<i64>()
        );
        assert!(cfg.to_json()["l2_normalized_codes"].as_bool().unwrap());
    }

    #[test]
    fn bad_configs_are_refused_with_the_field() {
        let mut c = small();
        c.norm_num_groups = 3;
        assert!(c.validate().unwrap_err().contains("norm_num_groups"));
        let mut c = small();
        c.up_block_types.pop();
        assert!(c.validate().unwrap_err().contains("up_block_types"));
        let mut c = small();
        c.norm_type = "spatial".into();
        assert!(c.validate().unwrap_err().contains("spatial"));
        let mut c = small();
        c.sample_size = 15;
        assert!(c.validate().unwrap_err().contains("sample_size"));
    }
}
