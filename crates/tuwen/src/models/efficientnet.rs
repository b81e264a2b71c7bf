//! EfficientNet: "Rethinking Model Scaling for Convolutional Neural Networks" (Tan & Le, 2019).
//!
//! A stem convolution, seven stages of MBConv blocks (1×1 expansion, depthwise k×k convolution,
//! squeeze-and-excitation, 1×1 projection, a residual inside each stage), a 1×1 head
//! convolution, global pooling and a linear classifier. One base network (B0) is scaled in
//! width, depth and resolution together by compound coefficients, with the rounding rules of
//! [`round_filters`] and [`round_repeats`]. Field names are transformers'
//! (`EfficientNetForImageClassification`), so checkpoints load by name, and its TF-style
//! padding is reproduced: stride-2 convolutions pad right and bottom more than left and top.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, Dropout, DropoutConfig, Linear};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::hub::{self, ModelConfig};
use crate::nn::Activation;
use crate::nn::conv::{apply as conv2d, batch_norm, conv, norm, pad, stochastic_depth};
use crate::nn::encoder::linear;
use crate::{Error, Result};

fn d_channels() -> usize {
    3
}
fn d_image() -> usize {
    600
}
fn d_width() -> f64 {
    2.0
}
fn d_depth() -> f64 {
    3.1
}
fn d_divisor() -> usize {
    8
}
fn d_kernels() -> Vec<usize> {
    vec![3, 3, 5, 3, 5, 5, 3]
}
fn d_in() -> Vec<usize> {
    vec![32, 16, 24, 40, 80, 112, 192]
}
fn d_out() -> Vec<usize> {
    vec![16, 24, 40, 80, 112, 192, 320]
}
fn d_strides() -> Vec<usize> {
    vec![1, 2, 2, 2, 1, 2, 1]
}
fn d_repeats() -> Vec<usize> {
    vec![1, 2, 2, 3, 3, 4, 1]
}
fn d_expand() -> Vec<usize> {
    vec![1, 6, 6, 6, 6, 6, 6]
}
fn d_se() -> f64 {
    0.25
}
fn d_act() -> Activation {
    Activation::Silu
}
fn d_hidden() -> usize {
    2560
}
fn d_pool() -> String {
    "mean".into()
}
fn d_init() -> f64 {
    0.02
}
fn d_eps() -> f64 {
    1e-3
}
fn d_momentum() -> f64 {
    0.99
}
fn d_dropout() -> f64 {
    0.5
}
fn d_drop_connect() -> f64 {
    0.2
}

/// transformers' `EfficientNetConfig` (its defaults are B7's), read from config.json.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EfficientNetConfig {
    /// Input channels.
    #[serde(default = "d_channels")]
    pub num_channels: usize,
    /// The resolution the model was trained at.
    #[serde(default = "d_image")]
    pub image_size: usize,
    /// Width multiplier (channels).
    #[serde(default = "d_width")]
    pub width_coefficient: f64,
    /// Depth multiplier (blocks per stage).
    #[serde(default = "d_depth")]
    pub depth_coefficient: f64,
    /// Channel counts are multiples of this.
    #[serde(default = "d_divisor")]
    pub depth_divisor: usize,
    /// Depthwise kernel size per stage.
    #[serde(default = "d_kernels")]
    pub kernel_sizes: Vec<usize>,
    /// Input channels per stage (before width scaling).
    #[serde(default = "d_in")]
    pub in_channels: Vec<usize>,
    /// Output channels per stage (before width scaling).
    #[serde(default = "d_out")]
    pub out_channels: Vec<usize>,
    /// Indices of blocks whose stride-2 padding is symmetric.
    #[serde(default)]
    pub depthwise_padding: Vec<usize>,
    /// Stride of each stage's first block.
    #[serde(default = "d_strides")]
    pub strides: Vec<usize>,
    /// Blocks per stage (before depth scaling).
    #[serde(default = "d_repeats")]
    pub num_block_repeats: Vec<usize>,
    /// MBConv expansion ratio per stage.
    #[serde(default = "d_expand")]
    pub expand_ratios: Vec<usize>,
    /// Squeeze-excitation width as a share of the block's input channels.
    #[serde(default = "d_se")]
    pub squeeze_expansion_ratio: f64,
    /// Activation ("swish").
    #[serde(default = "d_act")]
    pub hidden_act: Activation,
    /// Channels of the head convolution (`round_filters(1280)`).
    #[serde(default = "d_hidden")]
    pub hidden_dim: usize,
    /// Final pooling: "mean" or "max".
    #[serde(default = "d_pool")]
    pub pooling_type: String,
    /// Standard deviation of the weight initialisation.
    #[serde(default = "d_init")]
    pub initializer_range: f64,
    /// Batch-norm epsilon.
    #[serde(default = "d_eps")]
    pub batch_norm_eps: f64,
    /// Batch-norm momentum, in TensorFlow's sense (the weight of the running value).
    #[serde(default = "d_momentum")]
    pub batch_norm_momentum: f64,
    /// Dropout before the classifier.
    #[serde(default = "d_dropout")]
    pub dropout_rate: f64,
    /// Stochastic-depth rate of the last block (rising linearly from 0 at the first).
    #[serde(default = "d_drop_connect")]
    pub drop_connect_rate: f64,
    /// Class names by index.
    #[serde(default)]
    pub id2label: BTreeMap<String, String>,
    /// Everything else in config.json, written back on save.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for EfficientNetConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialize")
    }
}

/// The paper's compound-scaled family: (width, depth, resolution, dropout) of B0..B7.
pub const FAMILY: [(f64, f64, usize, f64); 8] = [
    (1.0, 1.0, 224, 0.2),
    (1.0, 1.1, 240, 0.2),
    (1.1, 1.2, 260, 0.3),
    (1.2, 1.4, 300, 0.3),
    (1.4, 1.8, 380, 0.4),
    (1.6, 2.2, 456, 0.4),
    (1.8, 2.6, 528, 0.5),
    (2.0, 3.1, 600, 0.5),
];

/// `efficientnet-b0` .. `efficientnet-b7` with `num_labels` classes, as transformers and timm
/// build them (B0 and B1 keep symmetric padding in the blocks transformers lists).
pub fn arch(name: &str, num_labels: usize) -> Option<EfficientNetConfig> {
    let n: usize = name.strip_prefix("efficientnet-b")?.parse().ok()?;
    let &(w, d, r, drop) = FAMILY.get(n)?;
    Some(custom(w, d, r, drop, num_labels))
}

/// Any point of the family: width and depth coefficients, resolution, classifier dropout.
pub fn custom(
    width: f64,
    depth: f64,
    resolution: usize,
    dropout: f64,
    num_labels: usize,
) -> EfficientNetConfig {
    let mut cfg = EfficientNetConfig {
        width_coefficient: width,
        depth_coefficient: depth,
        image_size: resolution,
        dropout_rate: dropout,
        id2label: (0..num_labels)
            .map(|i| (i.to_string(), format!("LABEL_{i}")))
            .collect(),
        ..EfficientNetConfig::default()
    };
    cfg.hidden_dim = round_filters(&cfg, 1280);
    cfg
}

/// The architecture names [`arch`] knows.
pub const ARCHS: &[&str] = &[
    "efficientnet-b0",
    "efficientnet-b1",
    "efficientnet-b2",
    "efficientnet-b3",
    "efficientnet-b4",
    "efficientnet-b5",
    "efficientnet-b6",
    "efficientnet-b7",
];

/// Channels scaled by the width coefficient and rounded to the nearest multiple of the divisor
/// (never below the divisor, never more than 10% below the scaled value).
pub fn round_filters(cfg: &EfficientNetConfig, channels: usize) -> usize {
    let divisor = cfg.depth_divisor as f64;
    let scaled = channels as f64 * cfg.width_coefficient;
    // `as usize` saturates on huge or infinite values; `validate` refuses those configs.
    let divisor_u = cfg.depth_divisor.max(1);
    let mut new = ((scaled + divisor / 2.0) as usize / divisor_u * divisor_u).max(divisor_u);
    if (new as f64) < 0.9 * scaled {
        new = new.saturating_add(divisor_u);
    }
    new
}

/// Blocks of a stage scaled by the depth coefficient, rounded up.
pub fn round_repeats(cfg: &EfficientNetConfig, repeats: usize) -> usize {
    (cfg.depth_coefficient * repeats as f64).ceil() as usize
}

/// The shape of one MBConv block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockSpec {
    /// Input channels.
    pub in_dim: usize,
    /// Output channels.
    pub out_dim: usize,
    /// Expansion ratio.
    pub expand: usize,
    /// Depthwise kernel size.
    pub kernel: usize,
    /// Depthwise stride.
    pub stride: usize,
    /// First block of its stage (no residual).
    pub first: bool,
    /// Stride-2 padding puts the extra row and column at the end (TensorFlow's "same").
    pub adjust_padding: bool,
    /// Stochastic-depth rate.
    pub drop_rate: f64,
}

impl EfficientNetConfig {
    /// Every block's shape, in order.
    pub fn blocks(&self) -> Vec<BlockSpec> {
        let total: usize = self
            .num_block_repeats
            .iter()
            .map(|&r| round_repeats(self, r))
            .sum();
        let mut out = Vec::with_capacity(total);
        for s in 0..self.in_channels.len() {
            let out_dim = round_filters(self, self.out_channels[s]);
            for j in 0..round_repeats(self, self.num_block_repeats[s]) {
                let n = out.len();
                out.push(BlockSpec {
                    in_dim: if j == 0 {
                        round_filters(self, self.in_channels[s])
                    } else {
                        out_dim
                    },
                    out_dim,
                    expand: self.expand_ratios[s],
                    kernel: self.kernel_sizes[s],
                    stride: if j == 0 { self.strides[s] } else { 1 },
                    first: j == 0,
                    adjust_padding: !self.depthwise_padding.contains(&n),
                    drop_rate: self.drop_connect_rate * n as f64 / total as f64,
                });
            }
        }
        out
    }

    /// Checks the numbers make a model; the error names the bad field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let n = self.in_channels.len();
        for (name, len) in [
            ("kernel_sizes", self.kernel_sizes.len()),
            ("out_channels", self.out_channels.len()),
            ("strides", self.strides.len()),
            ("num_block_repeats", self.num_block_repeats.len()),
            ("expand_ratios", self.expand_ratios.len()),
        ] {
            if len != n {
                return Err(format!("{name} has {len} entries, in_channels {n}"));
            }
        }
        if n == 0 {
            return Err("in_channels is empty".into());
        }
        use super::bounds::*;
        super::require_sizes(&[
            ("num_channels", self.num_channels, CHANNELS),
            ("image_size", self.image_size, IMAGE_SIZE),
            ("depth_divisor", self.depth_divisor, WIDTH),
            ("hidden_dim", self.hidden_dim, WIDTH),
        ])?;
        super::check_num_labels(self.id2label.len())?;
        if !(self.squeeze_expansion_ratio > 0.0 && self.squeeze_expansion_ratio <= 1.0) {
            return Err(format!(
                "squeeze_expansion_ratio must be in (0, 1], got {}",
                self.squeeze_expansion_ratio
            ));
        }
        let usable = |c: f64| c > 0.0 && c.is_finite();
        if !(usable(self.width_coefficient) && usable(self.depth_coefficient)) {
            return Err("width_coefficient and depth_coefficient must be positive".into());
        }
        // Sizes the coefficients scale, counted in floating point before any is rounded to an
        // integer (a huge coefficient would overflow it).
        let blocks: f64 = self
            .num_block_repeats
            .iter()
            .map(|&r| (self.depth_coefficient * r as f64).ceil())
            .sum();
        if blocks > LAYERS as f64 {
            return Err(format!(
                "depth_coefficient {} makes {blocks} blocks, more than {LAYERS}",
                self.depth_coefficient
            ));
        }
        let widest = self
            .in_channels
            .iter()
            .chain(&self.out_channels)
            .chain([&32])
            .max();
        let widest = *widest.expect("in_channels is not empty") as f64 * self.width_coefficient;
        if widest > WIDTH as f64 {
            return Err(format!(
                "width_coefficient {} makes {widest} channels, more than {WIDTH}",
                self.width_coefficient
            ));
        }
        if self.expand_ratios.iter().any(|&e| e > 64) || self.kernel_sizes.iter().any(|&k| k > 63) {
            return Err("expand_ratios above 64 or kernel_sizes above 63".into());
        }
        if self.kernel_sizes.iter().any(|&k| k == 0 || k % 2 == 0) {
            return Err("kernel_sizes must be odd".into());
        }
        if self.strides.iter().any(|&s| s != 1 && s != 2) {
            return Err("strides must be 1 or 2".into());
        }
        if self.expand_ratios.contains(&0) {
            return Err("expand_ratios must be positive".into());
        }
        if !matches!(self.pooling_type.as_str(), "mean" | "max") {
            return Err(format!(
                "pooling_type must be mean or max, got {:?}",
                self.pooling_type
            ));
        }
        for (name, p) in [
            ("dropout_rate", self.dropout_rate),
            ("drop_connect_rate", self.drop_connect_rate),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("{name} must be in [0, 1), got {p}"));
            }
        }
        self.labels().map(|_| ())
    }

    /// Class names in id order.
    pub fn labels(&self) -> std::result::Result<Vec<String>, String> {
        crate::hub::labels_from_id2label(&self.id2label)
    }

    /// Parameters of `EfficientNetForImageClassification` (weights, biases, batch-norm scales
    /// and shifts; running statistics are not parameters).
    pub fn num_params(&self) -> u64 {
        let bn = |c: usize| 2 * c as u64;
        let stem = round_filters(self, 32);
        let mut n = (self.num_channels * stem * 9) as u64 + bn(stem);
        let mut last = stem;
        for b in self.blocks() {
            let mid = b.in_dim * b.expand;
            if b.expand != 1 {
                n += (b.in_dim * mid) as u64 + bn(mid);
            }
            n += (mid * b.kernel * b.kernel) as u64 + bn(mid);
            let se = ((b.in_dim as f64 * self.squeeze_expansion_ratio) as usize).max(1);
            n += (mid * se + se) as u64 + (se * mid + mid) as u64;
            n += (mid * b.out_dim) as u64 + bn(b.out_dim);
            last = b.out_dim;
        }
        n += (last * self.hidden_dim) as u64 + bn(self.hidden_dim);
        n + (self.hidden_dim * self.id2label.len() + self.id2label.len()) as u64
    }

    /// Multiply-accumulates per image at `image_size` (convolutions and the classifier).
    ///
    /// Counted in `u128`: a config within the bounds of [`validate`](Self::validate) cannot
    /// overflow it, though it may exceed `u64`.
    pub fn macs(&self) -> u128 {
        let w = |x: usize| x as u128;
        let mut side = w(self.image_size.div_ceil(2));
        let stem = w(round_filters(self, 32));
        let mut m = side * side * stem * w(self.num_channels) * 9;
        let mut last = stem;
        for b in self.blocks() {
            let mid = w(b.in_dim) * w(b.expand);
            if b.expand != 1 {
                m += side * side * w(b.in_dim) * mid;
            }
            side = side.div_ceil(w(b.stride));
            m += side * side * mid * w(b.kernel) * w(b.kernel);
            let se = w(((b.in_dim as f64 * self.squeeze_expansion_ratio) as usize).max(1));
            m += 2 * mid * se;
            m += side * side * mid * w(b.out_dim);
            last = w(b.out_dim);
        }
        m + side * side * last * w(self.hidden_dim) + w(self.hidden_dim) * w(self.id2label.len())
    }

    /// `f32` activations per image a training step keeps for the backward pass (a lower
    /// bound): per block, the expansion's output with its norm and activation, the depthwise
    /// convolution's with its norm and activation, and the projection's with its norm.
    pub fn training_floats(&self) -> u128 {
        let w = |x: usize| x as u128;
        let mut side = w(self.image_size.div_ceil(2));
        let mut n = 3 * side * side * w(round_filters(self, 32));
        for b in self.blocks() {
            let mid = w(b.in_dim) * w(b.expand);
            if b.expand != 1 {
                n += 3 * side * side * mid;
            }
            side = side.div_ceil(w(b.stride));
            n += 3 * side * side * mid + 2 * side * side * w(b.out_dim);
        }
        n + 3 * side * side * w(self.hidden_dim)
    }

    /// config.json as transformers writes it.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serialises");
        v["model_type"] = "efficientnet".into();
        v["architectures"] = serde_json::json!(["EfficientNetForImageClassification"]);
        v
    }
}

fn bn(c: usize, cfg: &EfficientNetConfig, device: &Device) -> BatchNorm {
    batch_norm(c, cfg.batch_norm_eps, device)
}

/// The stem: a 3×3 stride-2 convolution (padded right and bottom), batch norm, activation.
#[derive(Module, Debug)]
pub struct EfficientNetEmbeddings {
    /// The convolution.
    pub convolution: Conv2d,
    /// Its batch norm.
    pub batchnorm: BatchNorm,
    /// The activation.
    #[module(skip)]
    pub act: Activation,
}

/// 1×1 expansion to `expand × in` channels.
#[derive(Module, Debug)]
pub struct EfficientNetExpansionLayer {
    /// The convolution.
    pub expand_conv: Conv2d,
    /// Its batch norm.
    pub expand_bn: BatchNorm,
}

/// The depthwise k×k convolution.
#[derive(Module, Debug)]
pub struct EfficientNetDepthwiseLayer {
    /// The convolution (one filter per channel).
    pub depthwise_conv: Conv2d,
    /// Its batch norm.
    pub depthwise_norm: BatchNorm,
    /// Stride.
    pub stride: usize,
    /// Zero padding before a stride-2 convolution `(top, bottom, left, right)`.
    pub stride_pad: [usize; 4],
}

/// Squeeze-and-excitation: channel weights from the pooled features.
#[derive(Module, Debug)]
pub struct EfficientNetSqueezeExciteLayer {
    /// Channels to the squeezed width.
    pub reduce: Conv2d,
    /// Back to the channels.
    pub expand: Conv2d,
}

/// 1×1 projection, batch norm, and (inside a stage) the residual with stochastic depth.
#[derive(Module, Debug)]
pub struct EfficientNetFinalBlockLayer {
    /// The convolution.
    pub project_conv: Conv2d,
    /// Its batch norm.
    pub project_bn: BatchNorm,
    /// Whether the input is added back.
    pub residual: bool,
    /// Stochastic-depth rate of the residual branch (training only).
    pub drop_rate: f64,
}

/// One MBConv block.
#[derive(Module, Debug)]
pub struct EfficientNetBlock {
    /// Expansion (absent when the ratio is 1).
    pub expansion: Option<EfficientNetExpansionLayer>,
    /// Depthwise convolution.
    pub depthwise_conv: EfficientNetDepthwiseLayer,
    /// Squeeze-and-excitation.
    pub squeeze_excite: EfficientNetSqueezeExciteLayer,
    /// Projection and residual.
    pub projection: EfficientNetFinalBlockLayer,
    /// The activation.
    #[module(skip)]
    pub act: Activation,
}

impl EfficientNetBlock {
    fn new(cfg: &EfficientNetConfig, b: &BlockSpec, device: &Device) -> Self {
        let std = cfg.initializer_range;
        let mid = b.in_dim * b.expand;
        let se = ((b.in_dim as f64 * cfg.squeeze_expansion_ratio) as usize).max(1);
        let k = b.kernel;
        let stride_pad = if b.stride == 2 {
            let c = k / 2;
            if b.adjust_padding {
                [c - 1, c, c - 1, c]
            } else {
                [c, c, c, c]
            }
        } else {
            [0; 4]
        };
        EfficientNetBlock {
            expansion: (b.expand != 1).then(|| EfficientNetExpansionLayer {
                expand_conv: conv((b.in_dim, mid), 1, 1, 1, false, std, device),
                expand_bn: bn(mid, cfg, device),
            }),
            depthwise_conv: EfficientNetDepthwiseLayer {
                depthwise_conv: conv((mid, mid), k, b.stride, mid, false, std, device),
                depthwise_norm: bn(mid, cfg, device),
                stride: b.stride,
                stride_pad,
            },
            squeeze_excite: EfficientNetSqueezeExciteLayer {
                reduce: conv((mid, se), 1, 1, 1, true, std, device),
                expand: conv((se, mid), 1, 1, 1, true, std, device),
            },
            projection: EfficientNetFinalBlockLayer {
                project_conv: conv((mid, b.out_dim), 1, 1, 1, false, std, device),
                project_bn: bn(b.out_dim, cfg, device),
                residual: b.stride == 1 && !b.first,
                drop_rate: b.drop_rate,
            },
            act: cfg.hidden_act,
        }
    }

    /// `[b, in, h, w]` to `[b, out, h / stride, w / stride]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut h = x.clone();
        if let Some(e) = &self.expansion {
            h = self
                .act
                .forward(norm(&e.expand_bn, conv2d(&e.expand_conv, h)));
        }
        let d = &self.depthwise_conv;
        if d.stride == 2 {
            let [t, b, l, r] = d.stride_pad;
            h = pad(h, (t, b, l, r));
        }
        h = self
            .act
            .forward(norm(&d.depthwise_norm, conv2d(&d.depthwise_conv, h)));
        let se = &self.squeeze_excite;
        let [bsz, c, _, _] = h.dims();
        let pooled = h.clone().mean_dim(3).mean_dim(2).reshape([bsz, c, 1, 1]);
        let w = crate::nn::activation::sigmoid(conv2d(
            &se.expand,
            self.act.forward(conv2d(&se.reduce, pooled)),
        ));
        h = h * w;
        let p = &self.projection;
        h = norm(&p.project_bn, conv2d(&p.project_conv, h));
        if !p.residual {
            return h;
        }
        x + stochastic_depth(h, p.drop_rate)
    }
}

/// The blocks and the head convolution.
#[derive(Module, Debug)]
pub struct EfficientNetEncoder {
    /// MBConv blocks, in order.
    pub blocks: Vec<EfficientNetBlock>,
    /// 1×1 head convolution.
    pub top_conv: Conv2d,
    /// Its batch norm.
    pub top_bn: BatchNorm,
    /// The activation.
    #[module(skip)]
    pub act: Activation,
}

/// The feature extractor (transformers' `EfficientNetModel`).
#[derive(Module, Debug)]
pub struct EfficientNetModel {
    /// Stem.
    pub embeddings: EfficientNetEmbeddings,
    /// Blocks and head.
    pub encoder: EfficientNetEncoder,
    /// "mean" pooling (or max).
    pub max_pool: bool,
}

/// EfficientNet with its classifier (transformers' `EfficientNetForImageClassification`).
#[derive(Module, Debug)]
pub struct EfficientNetForImageClassification {
    /// The feature extractor.
    pub efficientnet: EfficientNetModel,
    /// Dropout before the classifier (training only).
    pub dropout: Dropout,
    /// `hidden_dim -> num_labels`.
    pub classifier: Linear,
}

impl EfficientNetModel {
    /// A randomly initialised network (transformers' initialisation).
    pub fn new(cfg: &EfficientNetConfig, device: &Device) -> Self {
        let std = cfg.initializer_range;
        let stem = round_filters(cfg, 32);
        let blocks = cfg.blocks();
        let last = blocks.last().map_or(stem, |b| b.out_dim);
        EfficientNetModel {
            embeddings: EfficientNetEmbeddings {
                convolution: conv((cfg.num_channels, stem), 3, 2, 1, false, std, device),
                batchnorm: bn(stem, cfg, device),
                act: cfg.hidden_act,
            },
            encoder: EfficientNetEncoder {
                blocks: blocks
                    .iter()
                    .map(|b| EfficientNetBlock::new(cfg, b, device))
                    .collect(),
                top_conv: conv((last, cfg.hidden_dim), 1, 1, 1, false, std, device),
                top_bn: bn(cfg.hidden_dim, cfg, device),
                act: cfg.hidden_act,
            },
            max_pool: cfg.pooling_type == "max",
        }
    }

    /// `[b, c, h, w]` pixels to (`[b, hidden, h', w']` features, `[b, hidden]` pooled).
    pub fn forward(&self, pixels: Tensor<4>) -> (Tensor<4>, Tensor<2>) {
        let e = &self.embeddings;
        let x = pad(pixels, (0, 1, 0, 1));
        let mut x = e.act.forward(norm(&e.batchnorm, conv2d(&e.convolution, x)));
        for b in &self.encoder.blocks {
            x = b.forward(x);
        }
        let enc = &self.encoder;
        let x = enc.act.forward(norm(&enc.top_bn, conv2d(&enc.top_conv, x)));
        let [b, c, h, w] = x.dims();
        let flat = x.clone().reshape([b, c, h * w]);
        let pooled = if self.max_pool {
            flat.max_dim(2)
        } else {
            flat.mean_dim(2)
        };
        (x, pooled.reshape([b, c]))
    }
}

impl EfficientNetForImageClassification {
    /// A randomly initialised classifier with `cfg.id2label.len()` classes.
    pub fn new(cfg: &EfficientNetConfig, device: &Device) -> Self {
        EfficientNetForImageClassification {
            efficientnet: EfficientNetModel::new(cfg, device),
            dropout: DropoutConfig::new(cfg.dropout_rate).init(),
            classifier: linear(
                cfg.hidden_dim,
                cfg.id2label.len(),
                true,
                cfg.initializer_range,
                device,
            ),
        }
    }

    /// `[b, c, h, w]` pixel values to `[b, num_labels]` logits.
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<2> {
        let (_, pooled) = self.efficientnet.forward(pixels);
        self.classifier.forward(self.dropout.forward(pooled))
    }

    /// Loads a classifier checkpoint folder.
    pub fn load(folder: &Path, device: &Device) -> Result<(Self, EfficientNetConfig)> {
        let (_, cfg) = read_config(folder)?;
        let model = hub::load_weights(Self::new(&cfg, device), folder, &[], &[])?;
        Ok((model, cfg))
    }

    /// Writes a folder transformers' `EfficientNetForImageClassification` loads.
    pub fn save(&self, cfg: &EfficientNetConfig, folder: &Path) -> Result<()> {
        hub::save_pretrained(self, &cfg.to_json(), folder)
    }
}

/// Reads and validates an EfficientNet config.json.
pub fn read_config(folder: &Path) -> Result<(ModelConfig, EfficientNetConfig)> {
    let mc = ModelConfig::read(folder)?;
    if mc.model_type != "efficientnet" {
        return Err(Error::Unsupported(format!(
            "{}: model_type {:?} is not an EfficientNet",
            mc.path.display(),
            mc.model_type
        )));
    }
    let cfg: EfficientNetConfig = mc.parse()?;
    cfg.validate().map_err(|m| Error::config(&mc.path, m))?;
    Ok((mc, cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_the_paper_table() {
        // As timm and transformers build them, with 1000 classes.
        let expect = [
            5_288_548, 7_794_184, 9_109_994, 12_233_232, 19_341_616, 30_389_784, 43_040_704,
            66_347_960,
        ];
        for (n, &p) in expect.iter().enumerate() {
            let cfg = arch(&format!("efficientnet-b{n}"), 1000).unwrap();
            assert_eq!(cfg.num_params(), p, "B{n}");
        }
        // B0 at 224 px: about 0.39 GFLOPs (multiply-adds) as the paper counts.
        let macs = arch("efficientnet-b0", 1000).unwrap().macs();
        assert!((380_000_000..410_000_000).contains(&macs), "{macs}");
    }

    #[test]
    fn built_model_has_the_counted_parameters_and_shapes() {
        let device = Device::flex();
        let mut cfg = custom(0.5, 0.5, 64, 0.2, 7);
        cfg.depthwise_padding = vec![1];
        let m = EfficientNetForImageClassification::new(&cfg, &device);
        // burn counts running statistics as well: two per batch-norm channel.
        let running: usize = count_bn_channels(&cfg) * 2;
        assert_eq!(m.num_params() as u64, cfg.num_params() + running as u64);
        let logits = m.forward(Tensor::random(
            [2, 3, 64, 64],
            burn::tensor::Distribution::Default,
            &device,
        ));
        assert_eq!(logits.dims(), [2, 7]);
        let logits = m.forward(Tensor::random(
            [1, 3, 45, 37],
            burn::tensor::Distribution::Default,
            &device,
        ));
        assert_eq!(logits.dims(), [1, 7]);
    }

    fn count_bn_channels(cfg: &EfficientNetConfig) -> usize {
        let mut n = round_filters(cfg, 32) + cfg.hidden_dim;
        for b in cfg.blocks() {
            let mid = b.in_dim * b.expand;
            n += if b.expand != 1 { mid } else { 0 } + mid + b.out_dim;
        }
        n
    }
}
