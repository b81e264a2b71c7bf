//! SigLIP: "Sigmoid Loss for Language Image Pre-Training" (Zhai et al., 2023).
//!
//! The towers are CLIP's with three differences: the vision tower has no class token and pools
//! with multi-head attention from a learned probe (MAP head); the text tower attends both ways
//! and pools the last position, padded texts included (the models were trained on texts padded
//! to `max_position_embeddings`), then applies a linear head; and the logits get a learned bias
//! as well as a scale, for the pairwise sigmoid loss. Field names follow transformers'
//! `SiglipModel`.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, Initializer, LayerNorm, Linear};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use serde::{Deserialize, Serialize};

use crate::nn::Activation;
use crate::nn::encoder::{Encoder, EncoderSpec, Mlp, layer_norm, linear};
use crate::nn::pos_embed;

fn d_vocab() -> usize {
    32000
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
fn d_64() -> usize {
    64
}
fn d_act() -> Activation {
    Activation::GeluTanh
}
fn d_eps() -> f64 {
    1e-6
}
fn d_3() -> usize {
    3
}
fn d_224() -> usize {
    224
}
fn d_16() -> usize {
    16
}
fn d_pad() -> i64 {
    1
}
fn d_true() -> bool {
    true
}

/// transformers' `SiglipTextConfig`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SiglipTextConfig {
    /// Vocabulary size.
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
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
    /// Text length the model was trained with; texts are padded to it.
    #[serde(default = "d_64")]
    pub max_position_embeddings: usize,
    /// MLP activation.
    #[serde(default = "d_act")]
    pub hidden_act: Activation,
    /// Layer-norm epsilon.
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    /// Attention dropout (training only).
    #[serde(default)]
    pub attention_dropout: f64,
    /// Padding id.
    #[serde(default = "d_pad")]
    pub pad_token_id: i64,
    /// Width of the text head's output (defaults to `hidden_size`).
    #[serde(default)]
    pub projection_size: Option<usize>,
    /// Everything else, written back on save.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// transformers' `SiglipVisionConfig`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SiglipVisionConfig {
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
    #[serde(default = "d_16")]
    pub patch_size: usize,
    /// MLP activation.
    #[serde(default = "d_act")]
    pub hidden_act: Activation,
    /// Layer-norm epsilon.
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    /// Attention dropout (training only).
    #[serde(default)]
    pub attention_dropout: f64,
    /// Whether the tower ends in the attention-pooling head.
    #[serde(default = "d_true")]
    pub vision_use_head: bool,
    /// Everything else, written back on save.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// transformers' `SiglipConfig`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SiglipConfig {
    /// The text tower.
    #[serde(default)]
    pub text_config: SiglipTextConfig,
    /// The vision tower.
    #[serde(default)]
    pub vision_config: SiglipVisionConfig,
    /// Everything else, written back on save.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for SiglipTextConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialize")
    }
}

impl Default for SiglipVisionConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialize")
    }
}

impl SiglipConfig {
    /// Checks that the numbers make a model.
    pub fn validate(&self) -> Result<(), String> {
        let (t, v) = (&self.text_config, &self.vision_config);
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
        if !v.vision_use_head {
            return Err("vision_use_head = false has no pooled image embedding".into());
        }
        Ok(())
    }
}

/// Patch embedding (a strided convolution with bias) and position embeddings; no class token.
#[derive(Module, Debug)]
pub struct SiglipVisionEmbeddings {
    /// Patch projection.
    pub patch_embedding: Conv2d,
    /// One embedding per patch position.
    pub position_embedding: Embedding,
}

impl SiglipVisionEmbeddings {
    /// `[b, c, h, w]` to `[b, patches, hidden]`.
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        let (patches, [gh, gw]) = crate::nn::conv::patch_embed(&self.patch_embedding, pixels);
        let table = self.position_embedding.weight.val();
        let n = table.dims()[0];
        let side = (n as f64).sqrt().round() as usize;
        let pos = pos_embed::resize_grid(table.unsqueeze::<3>(), (side, side), (gh, gw));
        patches + pos
    }
}

/// `torch.nn.MultiheadAttention`'s parameters, as PyTorch stores them: one packed `[3d, d]`
/// input projection and an output projection.
#[derive(Module, Debug)]
pub struct TorchMultiheadAttention {
    /// Query, key and value projections stacked, `[3d, d]` (PyTorch layout).
    pub in_proj_weight: Param<Tensor<2>>,
    /// Their biases, `[3d]`.
    pub in_proj_bias: Param<Tensor<1>>,
    /// Output projection.
    pub out_proj: Linear,
    /// Number of heads.
    pub num_heads: usize,
}

impl TorchMultiheadAttention {
    /// Attention of `query` `[b, nq, d]` over `kv` `[b, nk, d]`.
    pub fn forward(&self, query: Tensor<3>, kv: Tensor<3>) -> Tensor<3> {
        let w = self.in_proj_weight.val();
        let bias = self.in_proj_bias.val();
        let d = w.dims()[1];
        let proj = |x: Tensor<3>, i: usize| {
            let wi = w.clone().slice(s![i * d..(i + 1) * d, ..]);
            let bi = bias.clone().slice(s![i * d..(i + 1) * d]);
            x.matmul(wi.transpose().unsqueeze::<3>()) + bi.unsqueeze::<3>()
        };
        let (q, k, v) = (proj(query, 0), proj(kv.clone(), 1), proj(kv, 2));
        let [b, nq, _] = q.dims();
        let nk = k.dims()[1];
        let hd = d / self.num_heads;
        let split = |t: Tensor<3>, n: usize| t.reshape([b, n, self.num_heads, hd]).swap_dims(1, 2);
        let scores = split(q, nq).matmul(split(k, nk).swap_dims(2, 3)) * (hd as f64).powf(-0.5);
        let ctx = softmax(scores, 3).matmul(split(v, nk));
        self.out_proj
            .forward(ctx.swap_dims(1, 2).reshape([b, nq, d]))
    }
}

/// Multi-head attention pooling: a learned probe attends over the tokens, then a residual MLP.
#[derive(Module, Debug)]
pub struct SiglipMultiheadAttentionPoolingHead {
    /// The learned query, `[1, 1, hidden]`.
    pub probe: Param<Tensor<3>>,
    /// Attention from the probe to the tokens.
    pub attention: TorchMultiheadAttention,
    /// Norm before the MLP.
    pub layernorm: LayerNorm,
    /// The MLP.
    pub mlp: Mlp,
}

impl SiglipMultiheadAttentionPoolingHead {
    /// `[b, t, d]` to `[b, d]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<2> {
        let [b, _, d] = x.dims();
        let probe = self.probe.val().expand([b, 1, d]);
        let h = self.attention.forward(probe, x);
        let h = h.clone() + self.mlp.forward(self.layernorm.forward(h));
        h.reshape([b, d])
    }
}

/// The SigLIP image encoder.
#[derive(Module, Debug)]
pub struct SiglipVisionTransformer {
    /// Embeddings.
    pub embeddings: SiglipVisionEmbeddings,
    /// The encoder.
    pub encoder: Encoder,
    /// Final norm.
    pub post_layernorm: LayerNorm,
    /// Attention pooling.
    pub head: SiglipMultiheadAttentionPoolingHead,
    /// FLIP patch dropout: the share of patch tokens dropped in training (0: none).
    pub patch_dropout: f64,
    /// The seed of patch dropout's draws.
    #[module(skip)]
    pub draws: pos_embed::DrawSeed,
}

impl SiglipVisionTransformer {
    /// `[b, c, h, w]` to (last hidden state, pooled `[b, d]`).
    pub fn forward(&self, pixels: Tensor<4>) -> (Tensor<3>, Tensor<2>) {
        let x = pos_embed::patch_dropout(
            self.embeddings.forward(pixels),
            self.patch_dropout,
            0,
            self.draws.next(),
        );
        let x = self.encoder.forward(x, None);
        let x = self.post_layernorm.forward(x);
        let pooled = self.head.forward(x.clone());
        (x, pooled)
    }
}

/// Token and position embeddings.
#[derive(Module, Debug)]
pub struct SiglipTextEmbeddings {
    /// One vector per token id.
    pub token_embedding: Embedding,
    /// One vector per position.
    pub position_embedding: Embedding,
}

/// The SigLIP text encoder.
#[derive(Module, Debug)]
pub struct SiglipTextTransformer {
    /// Embeddings.
    pub embeddings: SiglipTextEmbeddings,
    /// The (bidirectional) encoder.
    pub encoder: Encoder,
    /// Final norm.
    pub final_layer_norm: LayerNorm,
    /// Projection of the last position.
    pub head: Linear,
}

impl SiglipTextTransformer {
    /// Token ids `[b, n]` to (last hidden state, pooled `[b, projection]`).
    pub fn forward(&self, ids: Tensor<2, Int>) -> (Tensor<3>, Tensor<2>) {
        let [_, n] = ids.dims();
        let device = ids.device();
        let pos = Tensor::<1, Int>::arange(0..n as i64, &device).reshape([1, n]);
        let x = self.embeddings.token_embedding.forward(ids)
            + self.embeddings.position_embedding.forward(pos);
        let x = self.final_layer_norm.forward(self.encoder.forward(x, None));
        let [b, _, d] = x.dims();
        let last = x.clone().slice(s![.., n - 1..n, ..]).reshape([b, d]);
        (x, self.head.forward(last))
    }
}

/// transformers' `SiglipModel`.
#[derive(Module, Debug)]
pub struct SiglipModel {
    /// The text tower.
    pub text_model: SiglipTextTransformer,
    /// The image tower.
    pub vision_model: SiglipVisionTransformer,
    /// Log of the logit scale, `[1]`.
    pub logit_scale: Param<Tensor<1>>,
    /// The logit bias, `[1]`.
    pub logit_bias: Param<Tensor<1>>,
}

impl SiglipModel {
    /// A randomly initialised model (logit scale log 10, bias -10, as in the paper).
    pub fn new(cfg: &SiglipConfig, device: &Device) -> Self {
        let (t, v) = (&cfg.text_config, &cfg.vision_config);
        let std = 0.02;
        let normal = Initializer::Normal { mean: 0.0, std };
        let spec = |h, i, l, n, act, eps, dropout| EncoderSpec {
            hidden: h,
            intermediate: i,
            layers: l,
            heads: n,
            act,
            eps,
            attention_dropout: dropout,
            init_std: std,
        };
        let embedding = |n: usize, d: usize| {
            EmbeddingConfig::new(n, d)
                .with_initializer(normal.clone())
                .init(device)
        };
        let grid = v.image_size / v.patch_size;
        let d = v.hidden_size;
        SiglipModel {
            text_model: SiglipTextTransformer {
                embeddings: SiglipTextEmbeddings {
                    token_embedding: embedding(t.vocab_size, t.hidden_size),
                    position_embedding: embedding(t.max_position_embeddings, t.hidden_size),
                },
                encoder: Encoder::new(
                    &spec(
                        t.hidden_size,
                        t.intermediate_size,
                        t.num_hidden_layers,
                        t.num_attention_heads,
                        t.hidden_act,
                        t.layer_norm_eps,
                        t.attention_dropout,
                    ),
                    device,
                ),
                final_layer_norm: layer_norm(t.hidden_size, t.layer_norm_eps, device),
                head: linear(
                    t.hidden_size,
                    t.projection_size.unwrap_or(t.hidden_size),
                    true,
                    std,
                    device,
                ),
            },
            vision_model: SiglipVisionTransformer {
                embeddings: SiglipVisionEmbeddings {
                    patch_embedding: Conv2dConfig::new(
                        [v.num_channels, d],
                        [v.patch_size, v.patch_size],
                    )
                    .with_stride([v.patch_size, v.patch_size])
                    .with_initializer(normal.clone())
                    .init(device),
                    position_embedding: embedding(grid * grid, d),
                },
                encoder: Encoder::new(
                    &spec(
                        d,
                        v.intermediate_size,
                        v.num_hidden_layers,
                        v.num_attention_heads,
                        v.hidden_act,
                        v.layer_norm_eps,
                        v.attention_dropout,
                    ),
                    device,
                ),
                post_layernorm: layer_norm(d, v.layer_norm_eps, device),
                head: SiglipMultiheadAttentionPoolingHead {
                    probe: normal.init([1, 1, d], device),
                    attention: TorchMultiheadAttention {
                        in_proj_weight: normal.init([3 * d, d], device),
                        in_proj_bias: Initializer::Zeros.init([3 * d], device),
                        out_proj: linear(d, d, true, std, device),
                        num_heads: v.num_attention_heads,
                    },
                    layernorm: layer_norm(d, v.layer_norm_eps, device),
                    mlp: Mlp::new(d, v.intermediate_size, v.hidden_act, std, device),
                },
                patch_dropout: 0.0,
                draws: pos_embed::DrawSeed::default(),
            },
            logit_scale: Param::from_tensor(Tensor::from_floats([10f32.ln()], device)),
            logit_bias: Param::from_tensor(Tensor::from_floats([-10f32], device)),
        }
    }

    /// Pooled image embeddings `[b, d]` (not normalised).
    pub fn image_features(&self, pixels: Tensor<4>) -> Tensor<2> {
        self.vision_model.forward(pixels).1
    }

    /// Pooled text embeddings `[b, d]` (not normalised).
    pub fn text_features(&self, ids: Tensor<2, Int>) -> Tensor<2> {
        self.text_model.forward(ids).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_minimal_config_takes_transformers_defaults() {
        // google/siglip-base-patch16-224's config.json, as published.
        let cfg: SiglipConfig = serde_json::from_str(
            r#"{"architectures": ["SiglipModel"], "initializer_factor": 1.0, "model_type": "siglip",
                "text_config": {"model_type": "siglip_text_model"},
                "vision_config": {"model_type": "siglip_vision_model"}}"#,
        )
        .unwrap();
        let (t, v) = (&cfg.text_config, &cfg.vision_config);
        assert_eq!(
            (t.vocab_size, t.hidden_size, t.max_position_embeddings),
            (32000, 768, 64)
        );
        assert_eq!((t.pad_token_id, t.hidden_act), (1, Activation::GeluTanh));
        assert_eq!(
            (v.image_size, v.patch_size, v.num_hidden_layers),
            (224, 16, 12)
        );
        assert!(v.vision_use_head && cfg.validate().is_ok());
    }
}
