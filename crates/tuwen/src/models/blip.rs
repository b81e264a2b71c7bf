//! BLIP: "Bootstrapping Language-Image Pre-training for Unified Vision-Language Understanding
//! and Generation" (Li et al., 2022).
//!
//! A ViT image encoder (pre-norm layers with one fused `qkv` projection, a layer norm after the
//! last layer) and a BERT text side used three ways: a bidirectional text encoder for
//! image-text contrast, the same encoder with cross-attention to the image tokens for matching,
//! and a causal decoder with cross-attention for captions, whose prediction head is tied to the
//! word embeddings. Field names follow transformers' `BlipForConditionalGeneration` and
//! `BlipForImageTextRetrieval`; BERT's `attention.self` and `LayerNorm` are renamed on the way
//! in and out ([`LOAD_RENAMES`], [`SAVE_RENAMES`]).

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, LayerNorm, Linear,
};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::hub::{self, ModelConfig};
use crate::nn::encoder::{Mlp, layer_norm, linear};
use crate::nn::{Activation, scaled_dot_product_attention};
use crate::{Error, Result};

/// transformers' `BlipVisionConfig`, with its defaults.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct BlipVisionConfig {
    /// Token width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Image side in pixels.
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
    /// Dropout on attention probabilities.
    pub attention_dropout: f64,
}

impl Default for BlipVisionConfig {
    fn default() -> Self {
        BlipVisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            image_size: 384,
            patch_size: 16,
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-5,
            attention_dropout: 0.0,
        }
    }
}

/// transformers' `BlipTextConfig`, with its defaults (8 heads, though the hub files say 12).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct BlipTextConfig {
    /// Vocabulary size (BERT's 30522 plus [DEC] and [ENC]).
    pub vocab_size: usize,
    /// Token width.
    pub hidden_size: usize,
    /// Width of the image tokens cross-attention reads (set to the vision width on load, as
    /// transformers' `BlipConfig` does).
    pub encoder_hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Positions.
    pub max_position_embeddings: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
    /// Dropout after each sub-layer.
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    pub attention_probs_dropout_prob: f64,
    /// The decoder's start token ([DEC]).
    pub bos_token_id: i64,
    /// End token of the prompt template.
    pub eos_token_id: i64,
    /// Padding.
    pub pad_token_id: i64,
    /// Where generation stops ([SEP]).
    pub sep_token_id: i64,
    /// Label smoothing of the language-modelling loss.
    pub label_smoothing: f64,
}

impl Default for BlipTextConfig {
    fn default() -> Self {
        BlipTextConfig {
            vocab_size: 30524,
            hidden_size: 768,
            encoder_hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 512,
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-12,
            hidden_dropout_prob: 0.0,
            attention_probs_dropout_prob: 0.0,
            bos_token_id: 30522,
            eos_token_id: 2,
            pad_token_id: 0,
            sep_token_id: 102,
            label_smoothing: 0.0,
        }
    }
}

/// transformers' `BlipConfig`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct BlipConfig {
    /// The text side.
    pub text_config: BlipTextConfig,
    /// The image encoder.
    pub vision_config: BlipVisionConfig,
    /// Width of the image-text contrastive space (`vision_proj`, `text_proj`).
    pub image_text_hidden_size: usize,
    /// Width of `BlipModel`'s projections (not used by captioning or retrieval).
    pub projection_dim: usize,
    /// `BlipModel`'s initial log inverse temperature.
    pub logit_scale_init_value: f64,
    /// Label smoothing of the language-modelling loss.
    pub label_smoothing: f64,
}

impl Default for BlipConfig {
    fn default() -> Self {
        BlipConfig {
            text_config: BlipTextConfig::default(),
            vision_config: BlipVisionConfig::default(),
            image_text_hidden_size: 256,
            projection_dim: 512,
            logit_scale_init_value: 2.6592,
            label_smoothing: 0.0,
        }
    }
}

impl BlipConfig {
    /// Checks that the numbers make a model; cross-attention reads the vision width.
    pub fn validate(&self) -> std::result::Result<(), String> {
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
        super::check_image("vision_config.", 3, v.patch_size, v.image_size)?;
        super::require_sizes(&[(
            "image_text_hidden_size",
            self.image_text_hidden_size,
            super::bounds::WIDTH,
        )])?;
        for (name, id) in [
            ("bos_token_id", t.bos_token_id),
            ("sep_token_id", t.sep_token_id),
            ("pad_token_id", t.pad_token_id),
        ] {
            if id < 0 || id as usize >= t.vocab_size {
                return Err(format!(
                    "text_config.{name} {id} is outside the vocabulary of {}",
                    t.vocab_size
                ));
            }
        }
        Ok(())
    }
}

/// Reads and validates a BLIP config.json; `encoder_hidden_size` follows the vision width.
pub fn read_config(folder: &Path) -> Result<(ModelConfig, BlipConfig)> {
    let mc = ModelConfig::read(folder)?;
    if mc.model_type != "blip" {
        return Err(Error::Unsupported(format!(
            "{}: model_type {:?} is not BLIP",
            mc.path.display(),
            mc.model_type
        )));
    }
    let mut cfg: BlipConfig = mc.parse()?;
    cfg.text_config.encoder_hidden_size = cfg.vision_config.hidden_size;
    cfg.validate().map_err(|m| Error::config(&mc.path, m))?;
    Ok((mc, cfg))
}

impl BlipConfig {
    /// config.json as transformers writes it, for `architecture`.
    pub fn to_json(&self, architecture: &str) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serializes");
        v["model_type"] = "blip".into();
        v["architectures"] = serde_json::json!([architecture]);
        v["text_config"]["model_type"] = "blip_text_model".into();
        v["text_config"]["is_decoder"] = true.into();
        v["vision_config"]["model_type"] = "blip_vision_model".into();
        v
    }
}

/// transformers' names to ours on load: `attention.self` is a Rust keyword, `LayerNorm` not a
/// Rust field name.
pub const LOAD_RENAMES: &[(&str, &str)] = &[
    (r"attention\.self\.", "attention.attn."),
    (r"\.LayerNorm\.", ".layer_norm."),
];

/// Ours back to transformers' on save.
pub const SAVE_RENAMES: &[(&str, &str)] = &[
    (r"attention\.attn\.", "attention.self."),
    (r"\.layer_norm\.", ".LayerNorm."),
];

// ---------------------------------------------------------------------------------------------
// The image encoder.

/// Class token, patch embedding (a strided convolution with bias) and learned positions.
#[derive(Module, Debug)]
pub struct BlipVisionEmbeddings {
    /// The class token, `[1, 1, d]`.
    pub class_embedding: Param<Tensor<3>>,
    /// Patch projection.
    pub patch_embedding: Conv2d,
    /// One embedding per position (class token first), `[1, 1 + patches, d]`.
    pub position_embedding: Param<Tensor<3>>,
}

impl BlipVisionEmbeddings {
    /// `[b, 3, h, w]` to `[b, 1 + patches, d]`.
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        let (patches, _) = crate::nn::conv::patch_embed(&self.patch_embedding, pixels);
        let [b, _, d] = patches.dims();
        let cls = self.class_embedding.val().expand([b, 1, d]);
        let x = Tensor::cat(vec![cls, patches], 1);
        let n = x.dims()[1];
        x + self.position_embedding.val().slice([0..1, 0..n, 0..d])
    }
}

/// Self-attention with one fused `qkv` projection (queries, keys, values in that order).
#[derive(Module, Debug)]
pub struct BlipAttention {
    /// `d -> 3d`.
    pub qkv: Linear,
    /// Output projection.
    pub projection: Linear,
    /// Dropout on attention probabilities.
    pub dropout: Dropout,
    /// Heads.
    pub num_heads: usize,
}

impl BlipAttention {
    /// `[b, t, d]` to `[b, t, d]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let qkv = self.qkv.forward(x);
        let part = |i: usize| qkv.clone().slice([0..b, 0..t, i * d..(i + 1) * d]);
        let ctx = scaled_dot_product_attention(
            part(0),
            part(1),
            part(2),
            self.num_heads,
            None,
            &self.dropout,
        );
        self.projection.forward(ctx)
    }
}

/// `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Module, Debug)]
pub struct BlipEncoderLayer {
    /// Self-attention.
    pub self_attn: BlipAttention,
    /// Norm before attention.
    pub layer_norm1: LayerNorm,
    /// The MLP.
    pub mlp: Mlp,
    /// Norm before the MLP.
    pub layer_norm2: LayerNorm,
}

/// The layers of the image encoder.
#[derive(Module, Debug)]
pub struct BlipEncoder {
    /// In order.
    pub layers: Vec<BlipEncoderLayer>,
}

/// transformers' `BlipVisionModel`.
#[derive(Module, Debug)]
pub struct BlipVisionModel {
    /// Patches and positions.
    pub embeddings: BlipVisionEmbeddings,
    /// The layers.
    pub encoder: BlipEncoder,
    /// Norm after the last layer.
    pub post_layernorm: LayerNorm,
}

impl BlipVisionModel {
    /// A randomly initialised image encoder.
    pub fn new(v: &BlipVisionConfig, device: &Device) -> Self {
        let (d, std) = (v.hidden_size, 0.02);
        let normal = Initializer::Normal { mean: 0.0, std };
        let grid = v.image_size / v.patch_size;
        let layers = (0..v.num_hidden_layers)
            .map(|_| BlipEncoderLayer {
                self_attn: BlipAttention {
                    qkv: linear(d, 3 * d, true, std, device),
                    projection: linear(d, d, true, std, device),
                    dropout: DropoutConfig::new(v.attention_dropout).init(),
                    num_heads: v.num_attention_heads,
                },
                layer_norm1: layer_norm(d, v.layer_norm_eps, device),
                mlp: Mlp::new(d, v.intermediate_size, v.hidden_act, std, device),
                layer_norm2: layer_norm(d, v.layer_norm_eps, device),
            })
            .collect();
        BlipVisionModel {
            embeddings: BlipVisionEmbeddings {
                class_embedding: normal.init([1, 1, d], device),
                patch_embedding: Conv2dConfig::new([3, d], [v.patch_size, v.patch_size])
                    .with_stride([v.patch_size, v.patch_size])
                    .with_initializer(normal.clone())
                    .init(device),
                position_embedding: normal.init([1, grid * grid + 1, d], device),
            },
            encoder: BlipEncoder { layers },
            post_layernorm: layer_norm(d, v.layer_norm_eps, device),
        }
    }

    /// Pixels `[b, 3, h, w]` to the image tokens `[b, 1 + patches, d]` (after the final norm),
    /// which the text side reads.
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        let mut x = self.embeddings.forward(pixels);
        for l in &self.encoder.layers {
            x = x.clone() + l.self_attn.forward(l.layer_norm1.forward(x));
            x = x.clone() + l.mlp.forward(l.layer_norm2.forward(x));
        }
        self.post_layernorm.forward(x)
    }
}

// ---------------------------------------------------------------------------------------------
// The BERT text side.

/// Word and position embeddings, summed and normalised.
#[derive(Module, Debug)]
pub struct BertEmbeddings {
    /// Token embeddings (tied to the decoder's output layer).
    pub word_embeddings: Embedding,
    /// Position embeddings.
    pub position_embeddings: Embedding,
    /// transformers' `LayerNorm`.
    pub layer_norm: LayerNorm,
    /// Dropout.
    pub dropout: Dropout,
}

/// The query, key and value projections (transformers' `attention.self`).
#[derive(Module, Debug)]
pub struct BertSelfAttention {
    /// Queries from the text.
    pub query: Linear,
    /// Keys from the text (self-attention) or the image tokens (cross-attention).
    pub key: Linear,
    /// Values, likewise.
    pub value: Linear,
    /// Dropout on attention probabilities.
    pub dropout: Dropout,
    /// Heads.
    pub num_heads: usize,
}

/// Output projection, dropout, residual and post-norm.
#[derive(Module, Debug)]
pub struct BertSelfOutput {
    /// Output projection.
    pub dense: Linear,
    /// transformers' `LayerNorm`.
    pub layer_norm: LayerNorm,
    /// Dropout.
    pub dropout: Dropout,
}

/// Attention (self or cross) with its post-norm residual block.
#[derive(Module, Debug)]
pub struct BertAttention {
    /// Projections (transformers' `self`).
    pub attn: BertSelfAttention,
    /// Output block.
    pub output: BertSelfOutput,
}

impl BertAttention {
    /// `ln(x + dense(attn(x, source)))`: self-attention when `source` is `x`, cross-attention
    /// when it is the image tokens; `mask` is added to the scores.
    pub fn forward(&self, x: Tensor<3>, source: Tensor<3>, mask: Option<Tensor<4>>) -> Tensor<3> {
        let a = &self.attn;
        let ctx = scaled_dot_product_attention(
            a.query.forward(x.clone()),
            a.key.forward(source.clone()),
            a.value.forward(source),
            a.num_heads,
            mask,
            &a.dropout,
        );
        let o = &self.output;
        o.layer_norm
            .forward(x + o.dropout.forward(o.dense.forward(ctx)))
    }
}

/// The MLP's first half.
#[derive(Module, Debug)]
pub struct BertIntermediate {
    /// `d -> intermediate`.
    pub dense: Linear,
    /// Activation.
    #[module(skip)]
    pub act: Activation,
}

/// The MLP's second half with its post-norm residual.
#[derive(Module, Debug)]
pub struct BertOutput {
    /// `intermediate -> d`.
    pub dense: Linear,
    /// transformers' `LayerNorm`.
    pub layer_norm: LayerNorm,
    /// Dropout.
    pub dropout: Dropout,
}

/// Self-attention, cross-attention to the image (when given), MLP; each post-norm.
#[derive(Module, Debug)]
pub struct BertLayer {
    /// Self-attention (causal in the decoder, bidirectional in the encoder).
    pub attention: BertAttention,
    /// Cross-attention to the image tokens.
    pub crossattention: BertAttention,
    /// MLP, first half.
    pub intermediate: BertIntermediate,
    /// MLP, second half.
    pub output: BertOutput,
}

impl BertLayer {
    fn forward(
        &self,
        x: Tensor<3>,
        mask: Option<Tensor<4>>,
        image: Option<Tensor<3>>,
    ) -> Tensor<3> {
        let mut x = self.attention.forward(x.clone(), x, mask);
        if let Some(image) = image {
            x = self.crossattention.forward(x, image, None);
        }
        let h = self
            .intermediate
            .act
            .forward(self.intermediate.dense.forward(x.clone()));
        let o = &self.output;
        o.layer_norm
            .forward(x + o.dropout.forward(o.dense.forward(h)))
    }
}

/// The layers of the text side.
#[derive(Module, Debug)]
pub struct BertEncoder {
    /// In order.
    pub layer: Vec<BertLayer>,
}

/// transformers' `BlipTextModel` (without the pooler, which captioning and retrieval do not use).
#[derive(Module, Debug)]
pub struct BlipTextModel {
    /// Embeddings.
    pub embeddings: BertEmbeddings,
    /// Layers.
    pub encoder: BertEncoder,
}

/// A large negative added to masked attention scores.
const MASKED: f32 = -1e30;

impl BlipTextModel {
    /// A randomly initialised text side.
    pub fn new(t: &BlipTextConfig, device: &Device) -> Self {
        let (d, std) = (t.hidden_size, 0.02);
        let normal = Initializer::Normal { mean: 0.0, std };
        let embedding = |n: usize| {
            EmbeddingConfig::new(n, d)
                .with_initializer(normal.clone())
                .init(device)
        };
        let drop = || DropoutConfig::new(t.hidden_dropout_prob).init();
        let attention = |kv: usize| BertAttention {
            attn: BertSelfAttention {
                query: linear(d, d, true, std, device),
                key: linear(kv, d, true, std, device),
                value: linear(kv, d, true, std, device),
                dropout: DropoutConfig::new(t.attention_probs_dropout_prob).init(),
                num_heads: t.num_attention_heads,
            },
            output: BertSelfOutput {
                dense: linear(d, d, true, std, device),
                layer_norm: layer_norm(d, t.layer_norm_eps, device),
                dropout: drop(),
            },
        };
        BlipTextModel {
            embeddings: BertEmbeddings {
                word_embeddings: embedding(t.vocab_size),
                position_embeddings: embedding(t.max_position_embeddings),
                layer_norm: layer_norm(d, t.layer_norm_eps, device),
                dropout: drop(),
            },
            encoder: BertEncoder {
                layer: (0..t.num_hidden_layers)
                    .map(|_| BertLayer {
                        attention: attention(d),
                        crossattention: attention(t.encoder_hidden_size),
                        intermediate: BertIntermediate {
                            dense: linear(d, t.intermediate_size, true, std, device),
                            act: t.hidden_act,
                        },
                        output: BertOutput {
                            dense: linear(t.intermediate_size, d, true, std, device),
                            layer_norm: layer_norm(d, t.layer_norm_eps, device),
                            dropout: drop(),
                        },
                    })
                    .collect(),
            },
        }
    }

    /// Token ids `[b, n]` to hidden states `[b, n, d]`. `attention_mask` (`[b, n]`, 1 for a
    /// token, 0 for padding) hides padding; `causal` makes it a decoder; `image` (the image
    /// tokens) switches cross-attention on.
    pub fn forward(
        &self,
        ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2>>,
        image: Option<Tensor<3>>,
        causal: bool,
    ) -> Tensor<3> {
        let [b, n] = ids.dims();
        let device = ids.device();
        let pos = Tensor::<1, Int>::arange(0..n as i64, &device).reshape([1, n]);
        let e = &self.embeddings;
        let x = e.word_embeddings.forward(ids) + e.position_embeddings.forward(pos);
        let mut x = e.dropout.forward(e.layer_norm.forward(x));
        let mut mask: Option<Tensor<4>> =
            attention_mask.map(|m| (m.neg() + 1.0).reshape([b, 1, 1, n]) * MASKED);
        if causal {
            let c = crate::nn::encoder::causal_mask(n, &device).clamp_min(MASKED);
            mask = Some(match mask {
                Some(m) => m + c,
                None => c,
            });
        }
        for layer in &self.encoder.layer {
            x = layer.forward(x, mask.clone(), image.clone());
        }
        x
    }
}

/// The language-modelling head: transform, then scores against the word embeddings (tied)
/// plus a bias.
#[derive(Module, Debug)]
pub struct BlipLmHead {
    /// transformers' `predictions.transform`.
    pub transform: BlipHeadTransform,
    /// transformers' `predictions.bias`, `[vocab]`.
    pub bias: Param<Tensor<1>>,
}

/// Dense, activation, norm.
#[derive(Module, Debug)]
pub struct BlipHeadTransform {
    /// `d -> d`.
    pub dense: Linear,
    /// transformers' `LayerNorm`.
    pub layer_norm: LayerNorm,
    /// Activation.
    #[module(skip)]
    pub act: Activation,
}

/// transformers' `cls` of `BlipTextLMHeadModel`.
#[derive(Module, Debug)]
pub struct BlipCls {
    /// transformers' `predictions`.
    pub predictions: BlipLmHead,
}

/// transformers' `BlipTextLMHeadModel`: the causal decoder and its tied prediction head.
#[derive(Module, Debug)]
pub struct BlipTextLmHeadModel {
    /// The text side.
    pub bert: BlipTextModel,
    /// The prediction head.
    pub cls: BlipCls,
}

impl BlipTextLmHeadModel {
    /// Logits `[b, n, vocab]` for every position of `ids`, reading the image tokens.
    pub fn forward(
        &self,
        ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2>>,
        image: Tensor<3>,
    ) -> Tensor<3> {
        let h = self.bert.forward(ids, attention_mask, Some(image), true);
        self.logits(h)
    }

    /// Prediction scores of hidden states `[b, n, d]`.
    pub fn logits(&self, h: Tensor<3>) -> Tensor<3> {
        let p = &self.cls.predictions;
        let t = &p.transform;
        let h = t.layer_norm.forward(t.act.forward(t.dense.forward(h)));
        let [b, n, d] = h.dims();
        let words = self.bert.embeddings.word_embeddings.weight.val();
        let v = words.dims()[0];
        let scores = h.reshape([b * n, d]).matmul(words.transpose());
        (scores + p.bias.val().reshape([1, v])).reshape([b, n, v])
    }
}

/// transformers' `BlipForConditionalGeneration`: image encoder and caption decoder.
#[derive(Module, Debug)]
pub struct BlipForConditionalGeneration {
    /// The image encoder.
    pub vision_model: BlipVisionModel,
    /// The caption decoder.
    pub text_decoder: BlipTextLmHeadModel,
}

impl BlipForConditionalGeneration {
    /// A randomly initialised model.
    pub fn new(cfg: &BlipConfig, device: &Device) -> Self {
        let t = &cfg.text_config;
        BlipForConditionalGeneration {
            vision_model: BlipVisionModel::new(&cfg.vision_config, device),
            text_decoder: BlipTextLmHeadModel {
                bert: BlipTextModel::new(t, device),
                cls: BlipCls {
                    predictions: BlipLmHead {
                        transform: BlipHeadTransform {
                            dense: linear(t.hidden_size, t.hidden_size, true, 0.02, device),
                            layer_norm: layer_norm(t.hidden_size, t.layer_norm_eps, device),
                            act: t.hidden_act,
                        },
                        bias: Initializer::Zeros.init([t.vocab_size], device),
                    },
                },
            },
        }
    }

    /// Loads a checkpoint folder (config.json and safetensors in transformers' layout).
    pub fn load(folder: &Path, device: &Device) -> Result<(Self, BlipConfig)> {
        let (_, cfg) = read_config(folder)?;
        let model = hub::load_weights(Self::new(&cfg, device), folder, LOAD_RENAMES, &[])?;
        Ok((model, cfg))
    }

    /// Writes a folder `BlipForConditionalGeneration.from_pretrained` loads. The tied output
    /// layer is written too (`cls.predictions.decoder.{weight,bias}`), for readers that expect
    /// it.
    pub fn save(&self, cfg: &BlipConfig, folder: &Path) -> Result<()> {
        let json = cfg.to_json("BlipForConditionalGeneration");
        hub::save_pretrained_renamed(self, &json, folder, &[], SAVE_RENAMES)?;
        hub::add_tensor_copies(
            &folder.join(hub::WEIGHTS),
            &[
                (
                    "text_decoder.cls.predictions.decoder.weight",
                    "text_decoder.bert.embeddings.word_embeddings.weight",
                ),
                (
                    "text_decoder.cls.predictions.decoder.bias",
                    "text_decoder.cls.predictions.bias",
                ),
            ],
        )
    }
}

/// transformers' `BlipForImageTextRetrieval`: image encoder, text encoder, the contrastive
/// projections and the matching head.
#[derive(Module, Debug)]
pub struct BlipForImageTextRetrieval {
    /// The image encoder.
    pub vision_model: BlipVisionModel,
    /// The text encoder (cross-attention used for matching only).
    pub text_encoder: BlipTextModel,
    /// Image class token to the contrastive space.
    pub vision_proj: Linear,
    /// Text class token to the contrastive space.
    pub text_proj: Linear,
    /// Match / no match, from the image-grounded class token.
    pub itm_head: Linear,
}

impl BlipForImageTextRetrieval {
    /// A randomly initialised model.
    pub fn new(cfg: &BlipConfig, device: &Device) -> Self {
        let (t, v, e) = (
            &cfg.text_config,
            &cfg.vision_config,
            cfg.image_text_hidden_size,
        );
        BlipForImageTextRetrieval {
            vision_model: BlipVisionModel::new(v, device),
            text_encoder: BlipTextModel::new(t, device),
            vision_proj: linear(v.hidden_size, e, true, 0.02, device),
            text_proj: linear(t.hidden_size, e, true, 0.02, device),
            itm_head: linear(t.hidden_size, 2, true, 0.02, device),
        }
    }

    /// Loads a checkpoint folder (config.json and safetensors in transformers' layout).
    pub fn load(folder: &Path, device: &Device) -> Result<(Self, BlipConfig)> {
        let (_, cfg) = read_config(folder)?;
        let model = hub::load_weights(Self::new(&cfg, device), folder, LOAD_RENAMES, &[])?;
        Ok((model, cfg))
    }

    /// Writes a folder `BlipForImageTextRetrieval.from_pretrained` loads.
    pub fn save(&self, cfg: &BlipConfig, folder: &Path) -> Result<()> {
        let json = cfg.to_json("BlipForImageTextRetrieval");
        hub::save_pretrained_renamed(self, &json, folder, &[], SAVE_RENAMES)
    }

    /// Matching logits `[b, 2]` (no match, match) of image tokens `[b, t, d]` and texts.
    pub fn itm_logits(
        &self,
        image: Tensor<3>,
        ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2>>,
    ) -> Tensor<2> {
        let h = self
            .text_encoder
            .forward(ids, attention_mask, Some(image), false);
        let [b, _, d] = h.dims();
        self.itm_head
            .forward(h.slice([0..b, 0..1, 0..d]).reshape([b, d]))
    }

    /// Unit-length contrastive features of images (from their tokens) `[b, e]`.
    pub fn image_features(&self, image: Tensor<3>) -> Tensor<2> {
        let [b, _, d] = image.dims();
        unit(
            self.vision_proj
                .forward(image.slice([0..b, 0..1, 0..d]).reshape([b, d])),
        )
    }

    /// Unit-length contrastive features of texts (the encoder without the image) `[b, e]`.
    pub fn text_features(
        &self,
        ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2>>,
    ) -> Tensor<2> {
        let h = self.text_encoder.forward(ids, attention_mask, None, false);
        let [b, _, d] = h.dims();
        unit(
            self.text_proj
                .forward(h.slice([0..b, 0..1, 0..d]).reshape([b, d])),
        )
    }
}

/// Rows scaled to unit length, as `torch.nn.functional.normalize` (eps 1e-12).
fn unit(x: Tensor<2>) -> Tensor<2> {
    let norm = x
        .clone()
        .powf_scalar(2.0)
        .sum_dim(1)
        .sqrt()
        .clamp_min(1e-12);
    x / norm
}

// ---------------------------------------------------------------------------------------------
// Caption decoding with a key/value cache.

/// One decoder layer's cache: the self-attention keys and values of every token so far, and
/// the cross-attention keys and values of the image tokens (computed once).
#[derive(Clone, Debug)]
struct LayerCache {
    keys: Option<Tensor<3>>,
    values: Option<Tensor<3>>,
    image_keys: Tensor<3>,
    image_values: Tensor<3>,
}

/// The decoder's state while captioning: per-layer caches of every row, and the tokens seen.
#[derive(Clone, Debug)]
pub struct CaptionState {
    layers: Vec<LayerCache>,
    seen: usize,
}

/// Captions from image tokens: [`crate::generate::Decoder`] over the decoder with a cache.
pub struct Captioner<'a> {
    /// The model.
    pub model: &'a BlipForConditionalGeneration,
}

impl Captioner<'_> {
    /// The initial state for image tokens `[rows, t, d]` (one row per sequence decoded: repeat
    /// an image's tokens for its beams).
    pub fn start(&self, image: Tensor<3>) -> CaptionState {
        let layers = self
            .model
            .text_decoder
            .bert
            .encoder
            .layer
            .iter()
            .map(|l| {
                let a = &l.crossattention.attn;
                LayerCache {
                    keys: None,
                    values: None,
                    image_keys: a.key.forward(image.clone()),
                    image_values: a.value.forward(image.clone()),
                }
            })
            .collect();
        CaptionState { layers, seen: 0 }
    }
}

impl BertAttention {
    /// The output block on attention of `x` over precomputed keys and values.
    fn attend(
        &self,
        x: Tensor<3>,
        keys: Tensor<3>,
        values: Tensor<3>,
        mask: Option<Tensor<4>>,
    ) -> Tensor<3> {
        let a = &self.attn;
        let ctx = scaled_dot_product_attention(
            a.query.forward(x.clone()),
            keys,
            values,
            a.num_heads,
            mask,
            &a.dropout,
        );
        let o = &self.output;
        o.layer_norm
            .forward(x + o.dropout.forward(o.dense.forward(ctx)))
    }
}

/// Refuses a sequence longer than the decoder's position table.
fn check_positions(decoder: &BlipTextLmHeadModel, n: usize) -> Result<()> {
    let max = decoder.bert.embeddings.position_embeddings.weight.dims()[0];
    if n > max {
        return Err(Error::InvalidInput(format!(
            "{n} tokens are more than the decoder's {max} positions"
        )));
    }
    Ok(())
}

/// The last position's logits `[rows, 1, vocab]` as host rows.
fn host_rows(logits: Tensor<3>) -> Result<Vec<Vec<f32>>> {
    let v = logits.dims()[2];
    let values = logits
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| Error::InvalidInput(format!("cannot read logits: {e:?}")))?;
    Ok(values.chunks(v).map(<[f32]>::to_vec).collect())
}

impl crate::generate::Decoder for Captioner<'_> {
    type State = CaptionState;

    fn step(&self, tokens: &[Vec<i64>], state: &mut CaptionState) -> Result<Vec<Vec<f32>>> {
        let decoder = &self.model.text_decoder;
        let device = decoder.cls.predictions.bias.val().device();
        let (rows, n) = (tokens.len(), tokens.first().map_or(0, Vec::len));
        let past = state.seen;
        check_positions(decoder, past + n)?;
        let flat: Vec<i64> = tokens.iter().flatten().copied().collect();
        let ids = Tensor::<1, Int>::from_ints(flat.as_slice(), &device).reshape([rows, n]);
        let pos = Tensor::<1, Int>::arange(past as i64..(past + n) as i64, &device).reshape([1, n]);
        let e = &decoder.bert.embeddings;
        let x = e.word_embeddings.forward(ids) + e.position_embeddings.forward(pos);
        let mut x = e.layer_norm.forward(x);
        // New token i sees the past and the new tokens up to itself.
        let mask = (n > 1).then(|| {
            let values: Vec<f32> = (0..n * (past + n))
                .map(|k| {
                    if k % (past + n) > past + k / (past + n) {
                        MASKED
                    } else {
                        0.0
                    }
                })
                .collect();
            Tensor::<1>::from_floats(values.as_slice(), &device).reshape([1, 1, n, past + n])
        });
        for (layer, cache) in decoder.bert.encoder.layer.iter().zip(&mut state.layers) {
            let a = &layer.attention.attn;
            let (k, v) = (a.key.forward(x.clone()), a.value.forward(x.clone()));
            let k = match cache.keys.take() {
                Some(old) => Tensor::cat(vec![old, k], 1),
                None => k,
            };
            let v = match cache.values.take() {
                Some(old) => Tensor::cat(vec![old, v], 1),
                None => v,
            };
            cache.keys = Some(k.clone());
            cache.values = Some(v.clone());
            x = layer.attention.attend(x, k, v, mask.clone());
            x = layer.crossattention.attend(
                x,
                cache.image_keys.clone(),
                cache.image_values.clone(),
                None,
            );
            let h = layer
                .intermediate
                .act
                .forward(layer.intermediate.dense.forward(x.clone()));
            let o = &layer.output;
            x = o.layer_norm.forward(x + o.dense.forward(h));
        }
        state.seen += n;
        let d = x.dims()[2];
        let last = x.slice([0..rows, n - 1..n, 0..d]);
        host_rows(decoder.logits(last))
    }

    fn select(&self, state: &mut CaptionState, rows: &[usize]) -> Result<()> {
        let device = self.model.text_decoder.cls.predictions.bias.val().device();
        let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let idx = Tensor::<1, Int>::from_ints(idx.as_slice(), &device);
        for c in &mut state.layers {
            c.keys = c.keys.take().map(|t| t.select(0, idx.clone()));
            c.values = c.values.take().map(|t| t.select(0, idx.clone()));
            c.image_keys = c.image_keys.clone().select(0, idx.clone());
            c.image_values = c.image_values.clone().select(0, idx.clone());
        }
        Ok(())
    }
}

/// The same decoding without a cache: every step runs the decoder over the whole sequence
/// (what a cache saves; kept for measurement and as a check of the cached path).
pub struct UncachedCaptioner<'a> {
    /// The model.
    pub model: &'a BlipForConditionalGeneration,
}

/// Every row's tokens so far and its image tokens.
#[derive(Clone, Debug)]
pub struct UncachedState {
    tokens: Vec<Vec<i64>>,
    image: Tensor<3>,
}

impl UncachedCaptioner<'_> {
    /// The initial state for image tokens `[rows, t, d]`.
    pub fn start(&self, image: Tensor<3>) -> UncachedState {
        let rows = image.dims()[0];
        UncachedState {
            tokens: vec![Vec::new(); rows],
            image,
        }
    }
}

impl crate::generate::Decoder for UncachedCaptioner<'_> {
    type State = UncachedState;

    fn step(&self, tokens: &[Vec<i64>], state: &mut UncachedState) -> Result<Vec<Vec<f32>>> {
        for (seq, new) in state.tokens.iter_mut().zip(tokens) {
            seq.extend(new);
        }
        let device = state.image.device();
        let (rows, n) = (state.tokens.len(), state.tokens.first().map_or(0, Vec::len));
        check_positions(&self.model.text_decoder, n)?;
        let flat: Vec<i64> = state.tokens.iter().flatten().copied().collect();
        let ids = Tensor::<1, Int>::from_ints(flat.as_slice(), &device).reshape([rows, n]);
        let logits = self
            .model
            .text_decoder
            .forward(ids, None, state.image.clone());
        let v = logits.dims()[2];
        host_rows(logits.slice([0..rows, n - 1..n, 0..v]))
    }

    fn select(&self, state: &mut UncachedState, rows: &[usize]) -> Result<()> {
        let device = state.image.device();
        state.tokens = rows.iter().map(|&r| state.tokens[r].clone()).collect();
        let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        state.image = state
            .image
            .clone()
            .select(0, Tensor::<1, Int>::from_ints(idx.as_slice(), &device));
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Pre-training: one text side used three ways.

/// BLIP as the paper pre-trains it: the image encoder; one text encoder (embeddings,
/// cross-attention and MLPs) shared by the matching encoder and the caption decoder, which has
/// its own causal self-attention per layer and the prediction head; the contrastive
/// projections, the matching head and a learned temperature. It saves as both transformers
/// models ([`BlipPretrain::captioner`], [`BlipPretrain::retrieval`]).
#[derive(Module, Debug)]
pub struct BlipPretrain {
    /// The image encoder.
    pub vision_model: BlipVisionModel,
    /// The shared text side (bidirectional self-attention is the encoder's).
    pub text_encoder: BlipTextModel,
    /// The decoder's causal self-attention, one per layer.
    pub decoder_self_attention: Vec<BertAttention>,
    /// The decoder's prediction head (tied to the shared word embeddings).
    pub cls: BlipCls,
    /// Image class token to the contrastive space.
    pub vision_proj: Linear,
    /// Text class token to the contrastive space.
    pub text_proj: Linear,
    /// Match / no match.
    pub itm_head: Linear,
    /// Contrastive temperature (BLIP: 0.07, kept in [0.001, 0.5]).
    pub temp: Param<Tensor<1>>,
}

impl BlipPretrain {
    /// From a retrieval model (encoder, projections, matching head) and a captioner (its
    /// self-attention and prediction head; its other text weights give way to the encoder's).
    pub fn from_parts(
        retrieval: BlipForImageTextRetrieval,
        captioner: BlipForConditionalGeneration,
        temp: f32,
    ) -> Self {
        let device = retrieval.itm_head.weight.val().device();
        let decoder = captioner.text_decoder;
        BlipPretrain {
            vision_model: retrieval.vision_model,
            text_encoder: retrieval.text_encoder,
            decoder_self_attention: decoder
                .bert
                .encoder
                .layer
                .into_iter()
                .map(|l| l.attention)
                .collect(),
            cls: decoder.cls,
            vision_proj: retrieval.vision_proj,
            text_proj: retrieval.text_proj,
            itm_head: retrieval.itm_head,
            temp: Param::from_tensor(Tensor::from_floats([temp], &device)),
        }
    }

    /// A randomly initialised model.
    pub fn new(cfg: &BlipConfig, device: &Device) -> Self {
        Self::from_parts(
            BlipForImageTextRetrieval::new(cfg, device),
            BlipForConditionalGeneration::new(cfg, device),
            0.07,
        )
    }

    /// The captioner this model is: shared embeddings, cross-attention and MLPs, the
    /// decoder's own self-attention and head.
    pub fn captioner(&self) -> BlipForConditionalGeneration {
        let enc = &self.text_encoder;
        BlipForConditionalGeneration {
            vision_model: self.vision_model.clone(),
            text_decoder: BlipTextLmHeadModel {
                bert: BlipTextModel {
                    embeddings: enc.embeddings.clone(),
                    encoder: BertEncoder {
                        layer: enc
                            .encoder
                            .layer
                            .iter()
                            .zip(&self.decoder_self_attention)
                            .map(|(l, sa)| BertLayer {
                                attention: sa.clone(),
                                ..l.clone()
                            })
                            .collect(),
                    },
                },
                cls: self.cls.clone(),
            },
        }
    }

    /// The retrieval model this model is.
    pub fn retrieval(&self) -> BlipForImageTextRetrieval {
        BlipForImageTextRetrieval {
            vision_model: self.vision_model.clone(),
            text_encoder: self.text_encoder.clone(),
            vision_proj: self.vision_proj.clone(),
            text_proj: self.text_proj.clone(),
            itm_head: self.itm_head.clone(),
        }
    }

    /// Writes `folder/captioning` and `folder/retrieval`, each a transformers checkpoint.
    pub fn save(&self, cfg: &BlipConfig, folder: &Path) -> Result<()> {
        self.captioner().save(cfg, &folder.join("captioning"))?;
        self.retrieval().save(cfg, &folder.join("retrieval"))
    }
}
