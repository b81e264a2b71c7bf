//! ViT: "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2021).
//!
//! The image is cut into patches by a strided convolution (the patch embedding), a learned class
//! token is prepended, learned position embeddings are added, and a pre-norm transformer encoder
//! runs over the sequence. The class token's final state, after a last layer norm, feeds the
//! classifier. Field names are transformers' (`ViTModel`, `ViTForImageClassification`), so
//! checkpoints load by name.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Dropout, DropoutConfig, Initializer, LayerNorm, LayerNormConfig, Linear};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::hub::{self, ModelConfig};
use crate::nn::encoder::{dense, dense_act, dense_add, dense_side_by_side, linear, norm};
use crate::nn::{Activation, pos_embed, scaled_dot_product_attention};
use crate::{Error, Result};

fn d_hidden() -> usize {
    768
}
fn d_layers() -> usize {
    12
}
fn d_heads() -> usize {
    12
}
fn d_intermediate() -> usize {
    3072
}
fn d_eps() -> f64 {
    1e-12
}
fn d_image() -> usize {
    224
}
fn d_patch() -> usize {
    16
}
fn d_channels() -> usize {
    3
}
fn d_true() -> bool {
    true
}
fn d_init_range() -> f64 {
    0.02
}
fn d_pooler_act() -> Activation {
    Activation::Tanh
}

/// transformers' `ViTConfig`, read from config.json.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ViTConfig {
    /// Width of the token representations.
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    /// Number of encoder layers.
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    /// Width of the MLP's hidden layer.
    #[serde(default = "d_intermediate")]
    pub intermediate_size: usize,
    /// The MLP's activation.
    #[serde(default)]
    pub hidden_act: Activation,
    /// Dropout on embeddings and residual branches (training only).
    #[serde(default)]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities (training only).
    #[serde(default)]
    pub attention_probs_dropout_prob: f64,
    /// Standard deviation of the weight initialisation.
    #[serde(default = "d_init_range")]
    pub initializer_range: f64,
    /// Layer-norm epsilon.
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    /// The square image size the position embeddings were learned for.
    #[serde(default = "d_image")]
    pub image_size: usize,
    /// Patch side length.
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    /// Input channels.
    #[serde(default = "d_channels")]
    pub num_channels: usize,
    /// Whether the query, key and value projections have biases.
    #[serde(default = "d_true")]
    pub qkv_bias: bool,
    /// Width of the pooler's output (defaults to `hidden_size`).
    #[serde(default)]
    pub pooler_output_size: Option<usize>,
    /// The pooler's activation.
    #[serde(default = "d_pooler_act")]
    pub pooler_act: Activation,
    /// Class names by index (keys are decimal strings, as in config.json).
    #[serde(default)]
    pub id2label: BTreeMap<String, String>,
    /// Everything else in config.json, kept so that saving writes it back.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for ViTConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialize")
    }
}

/// A standard ViT architecture by its paper name: `vit-b16`, `vit-b32`, `vit-l16`, `vit-l32`,
/// `vit-h14`, with `num_labels` classes and 224px inputs.
pub fn arch(name: &str, num_labels: usize) -> Option<ViTConfig> {
    let (hidden, layers, heads, mlp, patch) = match name {
        "vit-ti16" => (192, 12, 3, 768, 16),
        "vit-s16" => (384, 12, 6, 1536, 16),
        "vit-b16" => (768, 12, 12, 3072, 16),
        "vit-b32" => (768, 12, 12, 3072, 32),
        "vit-l16" => (1024, 24, 16, 4096, 16),
        "vit-l32" => (1024, 24, 16, 4096, 32),
        "vit-h14" => (1280, 32, 16, 5120, 14),
        _ => return None,
    };
    Some(ViTConfig {
        hidden_size: hidden,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        intermediate_size: mlp,
        patch_size: patch,
        id2label: (0..num_labels)
            .map(|i| (i.to_string(), format!("LABEL_{i}")))
            .collect(),
        ..ViTConfig::default()
    })
}

/// The architecture names [`arch`] knows.
pub const ARCHS: &[&str] = &[
    "vit-ti16", "vit-s16", "vit-b16", "vit-b32", "vit-l16", "vit-l32", "vit-h14",
];

impl ViTConfig {
    /// Checks the numbers make a model; the error names the bad field.
    pub fn validate(&self) -> Result<(), String> {
        let (h, i, l) = (
            self.hidden_size,
            self.intermediate_size,
            self.num_hidden_layers,
        );
        super::check_tower("", h, i, l, self.num_attention_heads)?;
        super::check_image("", self.num_channels, self.patch_size, self.image_size)?;
        if let Some(p) = self.pooler_output_size {
            super::require_sizes(&[("pooler_output_size", p, super::bounds::WIDTH)])?;
        }
        super::check_num_labels(self.id2label.len())?;
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("{name} must be in [0, 1), got {p}"));
            }
        }
        if self.layer_norm_eps.is_nan() || self.layer_norm_eps <= 0.0 {
            return Err("layer_norm_eps must be positive".into());
        }
        self.labels().map(|_| ())
    }

    /// Number of classes, from `id2label`.
    pub fn num_labels(&self) -> usize {
        self.id2label.len()
    }

    /// Class names in id order; `id2label` must map exactly 0..n.
    pub fn labels(&self) -> Result<Vec<String>, String> {
        crate::hub::labels_from_id2label(&self.id2label)
    }

    /// Patches along each side of the image.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Parameter count of `ViTForImageClassification` (`classifier = true`, no pooler, as
    /// transformers builds it) or of `ViTModel` with its pooler.
    pub fn num_params(&self, classifier: bool) -> u64 {
        let (d, i, c, p) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.num_channels as u64,
            self.patch_size as u64,
        );
        let tokens = (self.grid() * self.grid()) as u64 + 1;
        let qkv_bias = if self.qkv_bias { 3 * d } else { 0 };
        let embeddings = c * p * p * d + d + d + tokens * d;
        let layer = 3 * d * d + qkv_bias + d * d + d + d * i + i + i * d + d + 4 * d;
        let head = if classifier {
            (d + 1) * self.num_labels() as u64
        } else {
            let out = self.pooler_output_size.unwrap_or(self.hidden_size) as u64;
            d * out + out
        };
        embeddings + layer * self.num_hidden_layers as u64 + 2 * d + head
    }

    /// Multiply-accumulates of one forward pass on one `image_size` image (matrix products and
    /// the patch convolution; norms, softmax and activations are not counted).
    ///
    /// Counted in `u128`: a config within the bounds of [`validate`](Self::validate) cannot
    /// overflow it, though it may exceed `u64`.
    pub fn macs(&self, classifier: bool) -> u128 {
        let w = |x: usize| x as u128;
        let (d, i) = (w(self.hidden_size), w(self.intermediate_size));
        let n = w(self.grid()) * w(self.grid());
        let t = n + 1;
        let patch = n * d * w(self.num_channels) * w(self.patch_size) * w(self.patch_size);
        let layer = 4 * t * d * d + 2 * t * t * d + 2 * t * d * i;
        let head = if classifier {
            d * w(self.num_labels())
        } else {
            d * w(self.pooler_output_size.unwrap_or(self.hidden_size))
        };
        patch + layer * w(self.num_hidden_layers) + head
    }

    /// The config as config.json writes it, with `model_type` and `architectures`.
    pub fn to_json(&self, architecture: &str) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serializes");
        let obj = v.as_object_mut().expect("object");
        obj.insert("model_type".into(), "vit".into());
        obj.insert("architectures".into(), serde_json::json!([architecture]));
        let label2id: serde_json::Map<String, serde_json::Value> = self
            .id2label
            .iter()
            .map(|(k, v)| (v.clone(), k.parse::<u64>().unwrap_or(0).into()))
            .collect();
        obj.insert("label2id".into(), label2id.into());
        v
    }
}

/// Cuts the image into patches and projects each to `hidden_size` (one strided convolution).
#[derive(Module, Debug)]
pub struct ViTPatchEmbeddings {
    /// Kernel and stride `patch_size`.
    pub projection: Conv2d,
}

impl ViTPatchEmbeddings {
    /// `[b, c, h, w]` pixels to `[b, (h/p)*(w/p), hidden]` patch tokens, row-major.
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        crate::nn::conv::patch_embed(&self.projection, pixels).0
    }
}

/// Patch tokens, the class token and the position embeddings.
#[derive(Module, Debug)]
pub struct ViTEmbeddings {
    /// The learned class token, `[1, 1, hidden]`.
    pub cls_token: Param<Tensor<3>>,
    /// Learned position embeddings for the class token and the pretraining grid.
    pub position_embeddings: Param<Tensor<3>>,
    /// The patch projection.
    pub patch_embeddings: ViTPatchEmbeddings,
    /// Dropout after adding positions.
    pub dropout: Dropout,
    /// Patch side length.
    pub patch_size: usize,
}

impl ViTEmbeddings {
    /// `[b, c, h, w]` to `[b, 1 + patches, hidden]`. Other sizes than the pretraining size get
    /// bicubically resized position embeddings, as transformers' `interpolate_pos_encoding`.
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        let [_, _, h, w] = pixels.dims();
        let patches = self.patch_embeddings.forward(pixels);
        let [b, _, d] = patches.dims();
        let cls = self.cls_token.val().expand([b, 1, d]);
        let x = Tensor::cat(vec![cls, patches], 1);
        let pos = self.position_embeddings(h / self.patch_size, w / self.patch_size);
        self.dropout.forward(x + pos)
    }

    /// Position embeddings for a `gh` x `gw` patch grid.
    pub fn position_embeddings(&self, gh: usize, gw: usize) -> Tensor<3> {
        let pos = self.position_embeddings.val();
        let [_, t, d] = pos.dims();
        let side = ((t - 1) as f64).sqrt().round() as usize;
        if (gh, gw) == (side, side) {
            return pos;
        }
        let cls = pos.clone().slice(s![.., 0..1, ..]);
        let grid = pos.slice(s![.., 1..t, ..]);
        let grid = pos_embed::resize_grid(grid, (side, side), (gh, gw));
        Tensor::cat(vec![cls, grid.reshape([1, gh * gw, d])], 1)
    }
}

/// Query, key and value projections (`attention.attention` in transformers' names).
#[derive(Module, Debug)]
pub struct ViTSelfAttention {
    /// Query projection.
    pub query: Linear,
    /// Key projection.
    pub key: Linear,
    /// Value projection.
    pub value: Linear,
    /// Dropout on attention probabilities.
    pub dropout: Dropout,
    /// Number of heads.
    pub num_heads: usize,
}

/// The output projection of the attention block.
#[derive(Module, Debug)]
pub struct ViTSelfOutput {
    /// Output projection.
    pub dense: Linear,
}

/// Multi-head self-attention.
#[derive(Module, Debug)]
pub struct ViTAttention {
    /// Projections in.
    pub attention: ViTSelfAttention,
    /// Projection out.
    pub output: ViTSelfOutput,
}

impl ViTAttention {
    /// `[b, t, d]` to `[b, t, d]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        dense(&self.output.dense, self.context(x))
    }

    /// `residual + forward(x)`, the sum made as the output projection writes its output
    /// (inference: no dropout applies to it there).
    pub fn forward_add(&self, x: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        dense_add(&self.output.dense, self.context(x), residual)
    }

    /// The heads' outputs side by side, before the output projection.
    fn context(&self, x: Tensor<3>) -> Tensor<3> {
        let a = &self.attention;
        let [q, k, v] = dense_side_by_side([&a.query, &a.key, &a.value], x);
        scaled_dot_product_attention(q, k, v, a.num_heads, None, &a.dropout)
    }
}

/// The MLP's first layer (transformers: `intermediate.dense`).
#[derive(Module, Debug)]
pub struct ViTIntermediate {
    /// `hidden -> intermediate`.
    pub dense: Linear,
}

/// The MLP's second layer (transformers: `output.dense`).
#[derive(Module, Debug)]
pub struct ViTOutput {
    /// `intermediate -> hidden`.
    pub dense: Linear,
}

/// One pre-norm encoder layer: `x + attn(ln(x))`, then `x + mlp(ln(x))`.
#[derive(Module, Debug)]
pub struct ViTLayer {
    /// Self-attention.
    pub attention: ViTAttention,
    /// MLP in.
    pub intermediate: ViTIntermediate,
    /// MLP out.
    pub output: ViTOutput,
    /// Norm before attention.
    pub layernorm_before: LayerNorm,
    /// Norm before the MLP.
    pub layernorm_after: LayerNorm,
    /// Dropout on both residual branches.
    pub dropout: Dropout,
    /// The MLP's activation.
    #[module(skip)]
    pub act: Activation,
    /// The norms' ε (burn's `LayerNorm` keeps its own private).
    #[module(skip)]
    pub eps: f64,
}

impl ViTLayer {
    /// A layer of `config`'s sizes, initialised as transformers initialises it.
    pub fn new(config: &ViTConfig, device: &Device) -> Self {
        let (d, std) = (config.hidden_size, config.initializer_range);
        let ln = || {
            LayerNormConfig::new(d)
                .with_epsilon(config.layer_norm_eps)
                .init(device)
        };
        ViTLayer {
            attention: ViTAttention {
                attention: ViTSelfAttention {
                    query: linear(d, d, config.qkv_bias, std, device),
                    key: linear(d, d, config.qkv_bias, std, device),
                    value: linear(d, d, config.qkv_bias, std, device),
                    dropout: DropoutConfig::new(config.attention_probs_dropout_prob).init(),
                    num_heads: config.num_attention_heads,
                },
                output: ViTSelfOutput {
                    dense: linear(d, d, true, std, device),
                },
            },
            intermediate: ViTIntermediate {
                dense: linear(d, config.intermediate_size, true, std, device),
            },
            output: ViTOutput {
                dense: linear(config.intermediate_size, d, true, std, device),
            },
            layernorm_before: ln(),
            layernorm_after: ln(),
            dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
            act: config.hidden_act,
            eps: config.layer_norm_eps,
        }
    }

    /// `[b, t, d]` to `[b, t, d]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = norm(&self.layernorm_before, self.eps, x.clone());
        // Dropout on the sublayers' outputs: the sums fused into the output layers only where
        // it does nothing (dropout acts only on an autodiff device; the fused sums decline one).
        let x = if self.dropout.prob == 0.0 || !x.device().is_autodiff() {
            self.attention.forward_add(h, x)
        } else {
            x + self.dropout.forward(self.attention.forward(h))
        };
        let h = norm(&self.layernorm_after, self.eps, x.clone());
        let h = dense_act(&self.intermediate.dense, h, self.act);
        if self.dropout.prob == 0.0 || !x.device().is_autodiff() {
            return dense_add(&self.output.dense, h, x);
        }
        x + self.dropout.forward(dense(&self.output.dense, h))
    }
}

/// The stack of encoder layers.
#[derive(Module, Debug)]
pub struct ViTEncoder {
    /// The layers, in order.
    pub layer: Vec<ViTLayer>,
}

/// `dense` + activation on the class token.
#[derive(Module, Debug)]
pub struct ViTPooler {
    /// `hidden -> pooler_output_size`.
    pub dense: Linear,
    /// Usually tanh.
    #[module(skip)]
    pub act: Activation,
}

/// The bare ViT encoder (transformers' `ViTModel`).
#[derive(Module, Debug)]
pub struct ViTModel {
    /// Patch, class-token and position embeddings.
    pub embeddings: ViTEmbeddings,
    /// The transformer encoder.
    pub encoder: ViTEncoder,
    /// Final layer norm.
    pub layernorm: LayerNorm,
    /// Optional pooler (absent in the classifier).
    pub pooler: Option<ViTPooler>,
}

/// What [`ViTModel::forward`] returns, named as transformers names it.
#[derive(Debug, Clone)]
pub struct ViTOutputs {
    /// `[b, 1 + patches, hidden]` after the final norm.
    pub last_hidden_state: Tensor<3>,
    /// `[b, pooler_output_size]`, when the model has a pooler.
    pub pooler_output: Option<Tensor<2>>,
}

impl ViTModel {
    /// A randomly initialised model (transformers' initialisation: normal(0, initializer_range)
    /// weights, zero biases, unit norms).
    pub fn new(config: &ViTConfig, add_pooling_layer: bool, device: &Device) -> Self {
        let (d, std) = (config.hidden_size, config.initializer_range);
        let grid = config.grid();
        let normal = Initializer::Normal { mean: 0.0, std };
        let ln = || {
            LayerNormConfig::new(d)
                .with_epsilon(config.layer_norm_eps)
                .init(device)
        };
        let hidden_dropout = || DropoutConfig::new(config.hidden_dropout_prob).init();
        let p = config.patch_size;
        let embeddings = ViTEmbeddings {
            cls_token: normal.init([1, 1, d], device),
            position_embeddings: normal.init([1, grid * grid + 1, d], device),
            patch_embeddings: ViTPatchEmbeddings {
                projection: Conv2dConfig::new([config.num_channels, d], [p, p])
                    .with_stride([p, p])
                    .with_initializer(normal.clone())
                    .init(device),
            },
            dropout: hidden_dropout(),
            patch_size: p,
        };
        let layer = (0..config.num_hidden_layers)
            .map(|_| ViTLayer::new(config, device))
            .collect();
        let pooler = add_pooling_layer.then(|| ViTPooler {
            dense: linear(d, config.pooler_output_size.unwrap_or(d), true, std, device),
            act: config.pooler_act,
        });
        ViTModel {
            embeddings,
            encoder: ViTEncoder { layer },
            layernorm: ln(),
            pooler,
        }
    }

    /// Runs the encoder on `[b, channels, h, w]` pixel values.
    pub fn forward(&self, pixel_values: Tensor<4>) -> ViTOutputs {
        let mut x = self.embeddings.forward(pixel_values);
        for layer in &self.encoder.layer {
            x = layer.forward(x);
        }
        let x = self.layernorm.forward(x);
        let pooler_output = self.pooler.as_ref().map(|p| {
            let [b, _, d] = x.dims();
            let cls = x.clone().slice(s![.., 0..1, ..]).reshape([b, d]);
            p.act.forward(p.dense.forward(cls))
        });
        ViTOutputs {
            last_hidden_state: x,
            pooler_output,
        }
    }
}

/// ViT with a linear classifier on the class token (transformers' `ViTForImageClassification`).
#[derive(Module, Debug)]
pub struct ViTForImageClassification {
    /// The encoder, without pooler.
    pub vit: ViTModel,
    /// `hidden -> num_labels`.
    pub classifier: Linear,
}

impl ViTForImageClassification {
    /// A randomly initialised classifier with `config.num_labels()` classes.
    pub fn new(config: &ViTConfig, device: &Device) -> Self {
        ViTForImageClassification {
            vit: ViTModel::new(config, false, device),
            classifier: linear(
                config.hidden_size,
                config.num_labels(),
                true,
                config.initializer_range,
                device,
            ),
        }
    }

    /// `[b, c, h, w]` pixel values to `[b, num_labels]` logits.
    pub fn forward(&self, pixel_values: Tensor<4>) -> Tensor<2> {
        self.classifier.forward(self.features(pixel_values))
    }

    /// What the classifier head sees: the final class token `[b, hidden]`.
    pub fn features(&self, pixel_values: Tensor<4>) -> Tensor<2> {
        let x = self.vit.forward(pixel_values).last_hidden_state;
        let [b, _, d] = x.dims();
        x.slice(s![.., 0..1, ..]).reshape([b, d])
    }
}

/// Renames from transformers 5's internal ViT names to the published checkpoint names, so that
/// folders saved with `save_original_format=False` load too.
pub(crate) const NEW_TO_LEGACY: &[(&str, &str)] = &[
    (r"(^|\.)layers\.(\d+)\.", "${1}encoder.layer.${2}."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
];

/// Reads and validates a ViT config.json.
pub fn read_config(folder: &Path) -> Result<(ModelConfig, ViTConfig)> {
    let mc = ModelConfig::read(folder)?;
    if mc.model_type != "vit" {
        return Err(Error::Unsupported(format!(
            "{}: model_type {:?} is not a ViT",
            mc.path.display(),
            mc.model_type
        )));
    }
    let cfg: ViTConfig = mc.parse()?;
    cfg.validate().map_err(|m| Error::config(&mc.path, m))?;
    Ok((mc, cfg))
}

fn has_prefix(folder: &Path, prefix: &str) -> Result<bool> {
    let first = hub::weight_files(folder)?;
    let names = hub::safetensors_header(&first[0])?;
    Ok(names.keys().any(|k| k.starts_with(prefix)))
}

fn load_renamed<M: Module>(
    module: M,
    folder: &Path,
    prefix_fix: Option<(&str, &str)>,
) -> Result<M> {
    let renames: Vec<(&str, &str)> = prefix_fix
        .into_iter()
        .chain(NEW_TO_LEGACY.iter().copied())
        .collect();
    hub::load_weights(module, folder, &renames, &[])
}

impl ViTForImageClassification {
    /// Loads a classifier checkpoint folder (config.json + safetensors).
    pub fn load(folder: &Path, device: &Device) -> Result<(Self, ViTConfig)> {
        let (mc, cfg) = read_config(folder)?;
        if cfg.num_labels() == 0 {
            return Err(Error::Unsupported(format!(
                "{}: no id2label, so this is not an image classifier",
                mc.path.display()
            )));
        }
        let files = hub::weight_files(folder)?;
        let names = files
            .iter()
            .map(|f| hub::safetensors_header(f))
            .collect::<Result<Vec<_>>>()?;
        if !names.iter().any(|n| n.contains_key("classifier.weight")) {
            return Err(Error::Unsupported(format!(
                "{}: the checkpoint has no classifier.weight (a ViTModel, not a classifier)",
                folder.display()
            )));
        }
        let model = load_renamed(Self::new(&cfg, device), folder, None)?;
        Ok((model, cfg))
    }

    /// Writes a folder that transformers' `ViTForImageClassification.from_pretrained` loads.
    pub fn save(&self, config: &ViTConfig, folder: &Path) -> Result<()> {
        hub::save_pretrained(self, &config.to_json("ViTForImageClassification"), folder)
    }
}

impl ViTModel {
    /// Loads the encoder of a `ViTModel` or `ViTForImageClassification` checkpoint folder.
    pub fn load(folder: &Path, device: &Device) -> Result<(Self, ViTConfig)> {
        let (_, cfg) = read_config(folder)?;
        let prefixed = has_prefix(folder, "vit.")?;
        let files = hub::weight_files(folder)?;
        let has_pooler = files
            .iter()
            .map(|f| hub::safetensors_header(f))
            .collect::<Result<Vec<_>>>()?
            .iter()
            .any(|n| n.keys().any(|k| k.contains("pooler.dense")));
        let model = Self::new(&cfg, has_pooler, device);
        let fix = prefixed.then_some((r"^vit\.", ""));
        Ok((load_renamed(model, folder, fix)?, cfg))
    }

    /// Writes a folder that transformers' `ViTModel.from_pretrained` loads.
    pub fn save(&self, config: &ViTConfig, folder: &Path) -> Result<()> {
        hub::save_pretrained(self, &config.to_json("ViTModel"), folder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_parameter_counts() {
        // As transformers builds ViTForImageClassification with 1000 classes.
        for (name, params) in [
            ("vit-ti16", 5_717_416),
            ("vit-s16", 22_050_664),
            ("vit-b16", 86_567_656),
            ("vit-b32", 88_224_232),
            ("vit-l16", 304_326_632),
            ("vit-h14", 632_045_800),
        ] {
            assert_eq!(arch(name, 1000).unwrap().num_params(true), params, "{name}");
        }
        // ViT-B/16 at 224px: the 17.6 GMACs usually quoted.
        assert_eq!(arch("vit-b16", 1000).unwrap().macs(true) / 100_000_000, 175);
    }

    #[test]
    fn counted_parameters_match_the_built_model() {
        let device = Device::flex();
        let cfg = ViTConfig {
            hidden_size: 24,
            num_hidden_layers: 2,
            num_attention_heads: 3,
            intermediate_size: 40,
            image_size: 32,
            patch_size: 8,
            qkv_bias: false,
            pooler_output_size: Some(7),
            id2label: (0..5).map(|i| (i.to_string(), format!("c{i}"))).collect(),
            ..ViTConfig::default()
        };
        let clf = ViTForImageClassification::new(&cfg, &device);
        assert_eq!(clf.num_params() as u64, cfg.num_params(true));
        let base = ViTModel::new(&cfg, true, &device);
        assert_eq!(base.num_params() as u64, cfg.num_params(false));
        let logits = clf.forward(Tensor::random(
            [2, 3, 32, 32],
            burn::tensor::Distribution::Default,
            &device,
        ));
        assert_eq!(logits.dims(), [2, 5]);
        // Another input size works through resized position embeddings.
        let logits = clf.forward(Tensor::random(
            [1, 3, 48, 24],
            burn::tensor::Distribution::Default,
            &device,
        ));
        assert_eq!(logits.dims(), [1, 5]);
    }

    #[test]
    fn config_errors_name_the_field() {
        let bad = ViTConfig {
            hidden_size: 10,
            num_attention_heads: 3,
            ..ViTConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("num_attention_heads"));
        let bad: ViTConfig = serde_json::from_str(r#"{"id2label": {"0": "a", "2": "b"}}"#).unwrap();
        assert!(bad.validate().is_err());
        assert!(serde_json::from_str::<ViTConfig>(r#"{"hidden_act": "wobble"}"#).is_err());
    }
}
