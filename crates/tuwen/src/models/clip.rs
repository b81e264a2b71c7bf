//! CLIP: "Learning Transferable Visual Models From Natural Language Supervision" (Radford et
//! al., 2021).
//!
//! Two towers map images and texts into one space. The vision tower is a ViT with a layer norm
//! before the encoder (`pre_layrnorm`, transformers' spelling) and one after it on the class
//! token; the text tower is a causal transformer pooled at the end-of-text token. Linear
//! projections without bias map both into the joint space, where cosine similarity times
//! `exp(logit_scale)` gives the logits. Field names follow transformers' `CLIPModel`.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, Initializer, LayerNorm, Linear};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::nn::encoder::{Encoder, EncoderSpec, causal_mask, layer_norm, linear};
use crate::nn::{Activation, pos_embed};

fn d_text_vocab() -> usize {
    49408
}
fn d_512() -> usize {
    512
}
fn d_2048() -> usize {
    2048
}
fn d_768() -> usize {
    768
}
fn d_3072() -> usize {
    3072
}
fn d_12() -> usize {
    12
}
fn d_8() -> usize {
    8
}
fn d_77() -> usize {
    77
}
fn d_eps() -> f64 {
    1e-5
}
fn d_quick_gelu() -> Activation {
    Activation::QuickGelu
}
fn d_224() -> usize {
    224
}
fn d_32() -> usize {
    32
}
fn d_3() -> usize {
    3
}
fn d_eos() -> i64 {
    49407
}
fn d_logit_scale() -> f64 {
    2.6592
}
fn d_init() -> f64 {
    0.02
}

/// transformers' `CLIPTextConfig`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClipTextConfig {
    /// Vocabulary size.
    #[serde(default = "d_text_vocab")]
    pub vocab_size: usize,
    /// Token width.
    #[serde(default = "d_512")]
    pub hidden_size: usize,
    /// MLP width.
    #[serde(default = "d_2048")]
    pub intermediate_size: usize,
    /// Number of layers.
    #[serde(default = "d_12")]
    pub num_hidden_layers: usize,
    /// Attention heads.
    #[serde(default = "d_8")]
    pub num_attention_heads: usize,
    /// Longest text, in tokens.
    #[serde(default = "d_77")]
    pub max_position_embeddings: usize,
    /// MLP activation.
    #[serde(default = "d_quick_gelu")]
    pub hidden_act: Activation,
    /// Layer-norm epsilon.
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    /// Attention dropout (training only).
    #[serde(default)]
    pub attention_dropout: f64,
    /// End-of-text id; 2 means the legacy rule (pool at the largest token id).
    #[serde(default = "d_eos")]
    pub eos_token_id: i64,
    /// Padding id.
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    /// Everything else, written back on save.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// transformers' `CLIPVisionConfig`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClipVisionConfig {
    /// Token width.
    #[serde(default = "d_768")]
    pub hidden_size: usize,
    /// MLP width.
    #[serde(default = "d_3072")]
    pub intermediate_size: usize,
    /// Number of layers.
    #[serde(default = "d_12")]
    pub num_hidden_layers: usize,
    /// Attention heads.
    #[serde(default = "d_12")]
    pub num_attention_heads: usize,
    /// Input channels.
    #[serde(default = "d_3")]
    pub num_channels: usize,
    /// Square input size.
    #[serde(default = "d_224")]
    pub image_size: usize,
    /// Patch side.
    #[serde(default = "d_32")]
    pub patch_size: usize,
    /// MLP activation.
    #[serde(default = "d_quick_gelu")]
    pub hidden_act: Activation,
    /// Layer-norm epsilon.
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    /// Attention dropout (training only).
    #[serde(default)]
    pub attention_dropout: f64,
    /// Everything else, written back on save.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// transformers' `CLIPConfig`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClipConfig {
    /// The text tower.
    #[serde(default)]
    pub text_config: ClipTextConfig,
    /// The vision tower.
    #[serde(default)]
    pub vision_config: ClipVisionConfig,
    /// Width of the joint embedding space.
    #[serde(default = "d_512")]
    pub projection_dim: usize,
    /// Initial `logit_scale` (log of the inverse temperature).
    #[serde(default = "d_logit_scale")]
    pub logit_scale_init_value: f64,
    /// Standard deviation of the weight initialisation.
    #[serde(default = "d_init")]
    pub initializer_range: f64,
    /// Everything else, written back on save.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialize")
    }
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialize")
    }
}

impl ClipConfig {
    /// Checks that the numbers make a model.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.text_config;
        let v = &self.vision_config;
        let (th, ti, tl, ta) = (
            t.hidden_size,
            t.intermediate_size,
            t.num_hidden_layers,
            t.num_attention_heads,
        );
        super::check_tower("text_config.", th, ti, tl, ta)?;
        super::check_text("text_config.", t.vocab_size, t.max_position_embeddings)?;
        let (vh, vi, vl, va) = (
            v.hidden_size,
            v.intermediate_size,
            v.num_hidden_layers,
            v.num_attention_heads,
        );
        super::check_tower("vision_config.", vh, vi, vl, va)?;
        super::check_image("vision_config.", v.num_channels, v.patch_size, v.image_size)?;
        super::require_sizes(&[("projection_dim", self.projection_dim, super::bounds::WIDTH)])
    }
}

/// Class embedding, patch embedding (a bias-free strided convolution) and position embeddings.
#[derive(Module, Debug)]
pub struct ClipVisionEmbeddings {
    /// The class token, `[hidden]`.
    pub class_embedding: Param<Tensor<1>>,
    /// Patch projection.
    pub patch_embedding: Conv2d,
    /// One embedding per position (class token first).
    pub position_embedding: Embedding,
}

impl ClipVisionEmbeddings {
    /// `[b, c, h, w]` to `[b, 1 + patches, hidden]`.
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        let (patches, [gh, gw]) = crate::nn::conv::patch_embed(&self.patch_embedding, pixels);
        let [b, _, d] = patches.dims();
        let cls = self
            .class_embedding
            .val()
            .reshape([1, 1, d])
            .expand([b, 1, d]);
        let x = Tensor::cat(vec![cls, patches], 1);
        x + grid_positions(self.position_embedding.weight.val(), gh, gw)
    }
}

/// `[1 + n, d]` learned positions (class token first) for a `gh` x `gw` grid, resized
/// bicubically when the grid differs from the one they were learned for.
pub(crate) fn grid_positions(table: Tensor<2>, gh: usize, gw: usize) -> Tensor<3> {
    let [t, d] = table.dims();
    let side = ((t - 1) as f64).sqrt().round() as usize;
    let table = table.unsqueeze::<3>();
    if (gh, gw) == (side, side) {
        return table;
    }
    let cls = table.clone().slice(s![.., 0..1, ..]);
    let grid = pos_embed::resize_grid(table.slice(s![.., 1..t, ..]), (side, side), (gh, gw));
    Tensor::cat(vec![cls, grid.reshape([1, gh * gw, d])], 1)
}

/// The CLIP image encoder.
#[derive(Module, Debug)]
pub struct ClipVisionTransformer {
    /// Embeddings.
    pub embeddings: ClipVisionEmbeddings,
    /// Norm before the encoder (transformers' spelling).
    pub pre_layrnorm: LayerNorm,
    /// The encoder.
    pub encoder: Encoder,
    /// Norm of the pooled class token.
    pub post_layernorm: LayerNorm,
    /// FLIP patch dropout: the share of patch tokens dropped in training (0: none).
    pub patch_dropout: f64,
    /// The seed of patch dropout's draws.
    #[module(skip)]
    pub draws: pos_embed::DrawSeed,
}

impl ClipVisionTransformer {
    /// `[b, c, h, w]` to (last hidden state `[b, t, d]`, pooled `[b, d]`).
    pub fn forward(&self, pixels: Tensor<4>) -> (Tensor<3>, Tensor<2>) {
        let x = pos_embed::patch_dropout(
            self.embeddings.forward(pixels),
            self.patch_dropout,
            1,
            self.draws.next(),
        );
        let x = self.pre_layrnorm.forward(x);
        let x = self.encoder.forward(x, None);
        let [b, _, d] = x.dims();
        let pooled = self
            .post_layernorm
            .forward(x.clone().slice(s![.., 0..1, ..]).reshape([b, d]));
        (x, pooled)
    }
}

/// Token and position embeddings.
#[derive(Module, Debug)]
pub struct ClipTextEmbeddings {
    /// One vector per token id.
    pub token_embedding: Embedding,
    /// One vector per position.
    pub position_embedding: Embedding,
}

/// The CLIP text encoder.
#[derive(Module, Debug)]
pub struct ClipTextTransformer {
    /// Embeddings.
    pub embeddings: ClipTextEmbeddings,
    /// The causal encoder.
    pub encoder: Encoder,
    /// Final norm.
    pub final_layer_norm: LayerNorm,
    /// End-of-text id (2: the legacy largest-id rule).
    pub eos_token_id: i64,
}

impl ClipTextTransformer {
    /// Token ids `[b, n]` (each row holding an end-of-text token) to (last hidden state,
    /// pooled `[b, d]`).
    pub fn forward(&self, ids: Tensor<2, Int>) -> (Tensor<3>, Tensor<2>) {
        let [b, n] = ids.dims();
        let device = ids.device();
        let pos = Tensor::<1, Int>::arange(0..n as i64, &device).reshape([1, n]);
        let x = self.embeddings.token_embedding.forward(ids.clone())
            + self.embeddings.position_embedding.forward(pos);
        let x = self.encoder.forward(x, Some(causal_mask(n, &device)));
        let x = self.final_layer_norm.forward(x);
        let d = x.dims()[2];
        let idx = self.pool_index(ids);
        let pooled = x
            .clone()
            .gather(1, idx.reshape([b, 1, 1]).expand([b, 1, d]))
            .reshape([b, d]);
        (x, pooled)
    }

    /// The pooled position per row, by transformers' rule: with `eos_token_id == 2` (configs
    /// from before the fix) the position of the largest id, otherwise the first end-of-text.
    fn pool_index(&self, ids: Tensor<2, Int>) -> Tensor<1, Int> {
        let [b, _] = ids.dims();
        let key = if self.eos_token_id == 2 {
            ids
        } else {
            ids.equal_elem(self.eos_token_id).int()
        };
        // argmax returns the first maximum, as torch does.
        key.argmax(1).reshape([b])
    }
}

/// transformers' `CLIPModel`: both towers and their projections.
#[derive(Module, Debug)]
pub struct ClipModel {
    /// The text tower.
    pub text_model: ClipTextTransformer,
    /// The image tower.
    pub vision_model: ClipVisionTransformer,
    /// Image features to the joint space.
    pub visual_projection: Linear,
    /// Text features to the joint space.
    pub text_projection: Linear,
    /// Log inverse temperature (a scalar in transformers' files).
    pub logit_scale: Param<Tensor<1>>,
}

impl ClipModel {
    /// A randomly initialised model.
    pub fn new(cfg: &ClipConfig, device: &Device) -> Self {
        let (t, v, std) = (&cfg.text_config, &cfg.vision_config, cfg.initializer_range);
        let normal = Initializer::Normal { mean: 0.0, std };
        let text_spec = EncoderSpec {
            hidden: t.hidden_size,
            intermediate: t.intermediate_size,
            layers: t.num_hidden_layers,
            heads: t.num_attention_heads,
            act: t.hidden_act,
            eps: t.layer_norm_eps,
            attention_dropout: t.attention_dropout,
            init_std: std,
        };
        let vision_spec = EncoderSpec {
            hidden: v.hidden_size,
            intermediate: v.intermediate_size,
            layers: v.num_hidden_layers,
            heads: v.num_attention_heads,
            act: v.hidden_act,
            eps: v.layer_norm_eps,
            attention_dropout: v.attention_dropout,
            init_std: std,
        };
        let grid = v.image_size / v.patch_size;
        let embedding = |n: usize, d: usize| {
            EmbeddingConfig::new(n, d)
                .with_initializer(normal.clone())
                .init(device)
        };
        ClipModel {
            text_model: ClipTextTransformer {
                embeddings: ClipTextEmbeddings {
                    token_embedding: embedding(t.vocab_size, t.hidden_size),
                    position_embedding: embedding(t.max_position_embeddings, t.hidden_size),
                },
                encoder: Encoder::new(&text_spec, device),
                final_layer_norm: layer_norm(t.hidden_size, t.layer_norm_eps, device),
                eos_token_id: t.eos_token_id,
            },
            vision_model: ClipVisionTransformer {
                embeddings: ClipVisionEmbeddings {
                    class_embedding: normal.init([v.hidden_size], device),
                    patch_embedding: Conv2dConfig::new(
                        [v.num_channels, v.hidden_size],
                        [v.patch_size, v.patch_size],
                    )
                    .with_stride([v.patch_size, v.patch_size])
                    .with_bias(false)
                    .with_initializer(normal.clone())
                    .init(device),
                    position_embedding: embedding(grid * grid + 1, v.hidden_size),
                },
                pre_layrnorm: layer_norm(v.hidden_size, v.layer_norm_eps, device),
                encoder: Encoder::new(&vision_spec, device),
                post_layernorm: layer_norm(v.hidden_size, v.layer_norm_eps, device),
                patch_dropout: 0.0,
                draws: pos_embed::DrawSeed::default(),
            },
            visual_projection: linear(v.hidden_size, cfg.projection_dim, false, std, device),
            text_projection: linear(t.hidden_size, cfg.projection_dim, false, std, device),
            logit_scale: Param::from_tensor(Tensor::from_floats(
                [cfg.logit_scale_init_value as f32],
                device,
            )),
        }
    }

    /// Projected (not normalised) image features `[b, projection_dim]`.
    pub fn image_features(&self, pixels: Tensor<4>) -> Tensor<2> {
        self.visual_projection
            .forward(self.vision_model.forward(pixels).1)
    }

    /// Projected (not normalised) text features `[b, projection_dim]`.
    pub fn text_features(&self, ids: Tensor<2, Int>) -> Tensor<2> {
        self.text_projection.forward(self.text_model.forward(ids).1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_transformers_defaults() {
        let cfg: ClipConfig = serde_json::from_str(r#"{"model_type": "clip"}"#).unwrap();
        let (t, v) = (&cfg.text_config, &cfg.vision_config);
        assert_eq!(
            (t.vocab_size, t.hidden_size, t.max_position_embeddings),
            (49408, 512, 77)
        );
        assert_eq!(
            (t.eos_token_id, t.hidden_act),
            (49407, Activation::QuickGelu)
        );
        assert_eq!((v.hidden_size, v.patch_size, v.image_size), (768, 32, 224));
        assert_eq!(cfg.projection_dim, 512);
        assert!(cfg.validate().is_ok());
    }
}
