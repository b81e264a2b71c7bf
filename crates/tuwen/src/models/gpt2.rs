//! GPT-2 (Radford et al. 2019) as transformers' `GPT2LMHeadModel`: token and position
//! embeddings, pre-norm blocks of causal self-attention and a GELU (tanh) MLP, a final layer
//! norm, and a language-model head tied to the token embedding. Its `Conv1D` layers store
//! weights `[in, out]`, which is how they are kept here too.
//!
//! tuwen uses it as VQGAN's second stage, the prior over code indices (see
//! `tuwen train vq-prior`); the folder is a plain transformers GPT-2 checkpoint.

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, LayerNorm};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::nn::activation::Activation;
use crate::{Error, Result, hub};

fn vocab() -> usize {
    50257
}
fn positions() -> usize {
    1024
}
fn embd() -> usize {
    768
}
fn twelve() -> usize {
    12
}
fn gelu_new() -> Activation {
    Activation::GeluTanh
}
fn pdrop() -> f64 {
    0.1
}
fn eps() -> f64 {
    1e-5
}
fn init_range() -> f64 {
    0.02
}
fn yes() -> bool {
    true
}
fn bos() -> i64 {
    50256
}

/// transformers' `GPT2Config`, with its defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    /// Tokens.
    #[serde(default = "vocab")]
    pub vocab_size: usize,
    /// Positions.
    #[serde(default = "positions")]
    pub n_positions: usize,
    /// Width.
    #[serde(default = "embd")]
    pub n_embd: usize,
    /// Blocks.
    #[serde(default = "twelve")]
    pub n_layer: usize,
    /// Attention heads.
    #[serde(default = "twelve")]
    pub n_head: usize,
    /// MLP width (default 4 × `n_embd`).
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// The MLP's activation ("gelu_new").
    #[serde(default = "gelu_new")]
    pub activation_function: Activation,
    /// Dropout after each block's branches.
    #[serde(default = "pdrop")]
    pub resid_pdrop: f64,
    /// Dropout of the embeddings.
    #[serde(default = "pdrop")]
    pub embd_pdrop: f64,
    /// Dropout of the attention probabilities.
    #[serde(default = "pdrop")]
    pub attn_pdrop: f64,
    /// Layer norms' eps.
    #[serde(default = "eps")]
    pub layer_norm_epsilon: f64,
    /// Std of the initial weights.
    #[serde(default = "init_range")]
    pub initializer_range: f64,
    /// Scores divided by √head_dim.
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
    /// Scores also divided by the layer's number (refused: not supported).
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    /// The start token.
    #[serde(default = "bos")]
    pub bos_token_id: i64,
    /// The end token.
    #[serde(default = "bos")]
    pub eos_token_id: i64,
    /// The head shares the token embedding.
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
}

impl Default for Gpt2Config {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults deserialize")
    }
}

impl Gpt2Config {
    /// The MLP's width.
    pub fn inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// Checks sizes before anything is built.
    pub fn validate(&self) -> std::result::Result<(), String> {
        super::check_tower("", self.n_embd, self.inner(), self.n_layer, self.n_head)
            .map_err(|e| e.replace("hidden_size", "n_embd"))?;
        super::check_text("", self.vocab_size, self.n_positions)?;
        for (name, p) in [
            ("resid_pdrop", self.resid_pdrop),
            ("embd_pdrop", self.embd_pdrop),
            ("attn_pdrop", self.attn_pdrop),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("{name} {p} must be in [0, 1)"));
            }
        }
        if self.scale_attn_by_inverse_layer_idx {
            return Err("scale_attn_by_inverse_layer_idx is not supported".into());
        }
        if !self.tie_word_embeddings {
            return Err("tie_word_embeddings false is not supported".into());
        }
        Ok(())
    }
}

/// transformers' `Conv1D`: `x · W + b` with `W` stored `[in, out]`.
#[derive(Module, Debug)]
pub struct Conv1D {
    /// `[in, out]`.
    pub weight: Param<Tensor<2>>,
    /// `[out]`.
    pub bias: Param<Tensor<1>>,
}

impl Conv1D {
    fn new(i: usize, o: usize, std: f64, device: &Device) -> Self {
        Conv1D {
            weight: Initializer::Normal { mean: 0.0, std }.init([i, o], device),
            bias: Initializer::Zeros.init([o], device),
        }
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        x.matmul(self.weight.val().unsqueeze()) + self.bias.val().unsqueeze()
    }
}

/// Causal self-attention.
#[derive(Module, Debug)]
pub struct Attention {
    /// Queries, keys and values in one `[d, 3d]`.
    pub c_attn: Conv1D,
    /// Output projection.
    pub c_proj: Conv1D,
    attn_dropout: Dropout,
    resid_dropout: Dropout,
    #[module(skip)]
    heads: usize,
    #[module(skip)]
    scale: bool,
}

/// The keys and values a block has seen `[rows, heads, n, head_dim]`.
#[derive(Clone, Debug)]
pub struct LayerCache {
    /// Keys.
    pub keys: Tensor<4>,
    /// Values.
    pub values: Tensor<4>,
}

impl Attention {
    fn forward(&self, x: Tensor<3>, cache: Option<&mut Option<LayerCache>>) -> Tensor<3> {
        let [b, n, d] = x.dims();
        let h = self.heads;
        let hd = d / h;
        let qkv = self.c_attn.forward(x);
        let split = |i: usize| {
            qkv.clone()
                .narrow(2, i * d, d)
                .reshape([b, n, h, hd])
                .swap_dims(1, 2)
        };
        let (q, mut k, mut v) = (split(0), split(1), split(2));
        let mut past = 0;
        if let Some(c) = cache {
            if let Some(old) = c.take() {
                past = old.keys.dims()[2];
                k = Tensor::cat(vec![old.keys, k], 2);
                v = Tensor::cat(vec![old.values, v], 2);
            }
            *c = Some(LayerCache {
                keys: k.clone(),
                values: v.clone(),
            });
        }
        let total = past + n;
        let mut scores = q.matmul(k.swap_dims(2, 3));
        if self.scale {
            scores = scores * (hd as f64).powf(-0.5);
        }
        // New token i (at position past + i) sees positions up to its own.
        let mask: Vec<f32> = (0..n)
            .flat_map(|i| {
                (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })
            })
            .collect();
        let mask =
            Tensor::<1>::from_floats(mask.as_slice(), &scores.device()).reshape([1, 1, n, total]);
        let probs = self.attn_dropout.forward(softmax(scores + mask, 3));
        let out = probs.matmul(v).swap_dims(1, 2).reshape([b, n, d]);
        self.resid_dropout.forward(self.c_proj.forward(out))
    }
}

/// The MLP.
#[derive(Module, Debug)]
pub struct Mlp {
    /// `[d, inner]`.
    pub c_fc: Conv1D,
    /// `[inner, d]`.
    pub c_proj: Conv1D,
    dropout: Dropout,
    #[module(skip)]
    act: Activation,
}

/// One block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
#[derive(Module, Debug)]
pub struct Block {
    /// Norm before attention.
    pub ln_1: LayerNorm,
    /// Attention.
    pub attn: Attention,
    /// Norm before the MLP.
    pub ln_2: LayerNorm,
    /// MLP.
    pub mlp: Mlp,
}

/// `GPT2Model`.
#[derive(Module, Debug)]
pub struct Gpt2Model {
    /// Token embedding (also the output layer).
    pub wte: Embedding,
    /// Position embedding.
    pub wpe: Embedding,
    /// Blocks.
    pub h: Vec<Block>,
    /// Final norm.
    pub ln_f: LayerNorm,
    drop: Dropout,
}

/// `GPT2LMHeadModel` (the head is the transposed token embedding).
#[derive(Module, Debug)]
pub struct Gpt2LMHeadModel {
    /// The transformer.
    pub transformer: Gpt2Model,
}

impl Gpt2LMHeadModel {
    /// A freshly initialised model (GPT-2's init: N(0, 0.02²), residual projections scaled by
    /// 1/√(2·n_layer)).
    pub fn new(cfg: &Gpt2Config, device: &Device) -> Self {
        let std = cfg.initializer_range;
        let proj_std = std / (2.0 * cfg.n_layer as f64).sqrt();
        let d = cfg.n_embd;
        let ln = || crate::nn::encoder::layer_norm(d, cfg.layer_norm_epsilon, device);
        let drop = |p: f64| DropoutConfig::new(p).init();
        let emb = |n: usize| {
            EmbeddingConfig::new(n, d)
                .with_initializer(Initializer::Normal { mean: 0.0, std })
                .init(device)
        };
        let h = (0..cfg.n_layer)
            .map(|_| Block {
                ln_1: ln(),
                attn: Attention {
                    c_attn: Conv1D::new(d, 3 * d, std, device),
                    c_proj: Conv1D::new(d, d, proj_std, device),
                    attn_dropout: drop(cfg.attn_pdrop),
                    resid_dropout: drop(cfg.resid_pdrop),
                    heads: cfg.n_head,
                    scale: cfg.scale_attn_weights,
                },
                ln_2: ln(),
                mlp: Mlp {
                    c_fc: Conv1D::new(d, cfg.inner(), std, device),
                    c_proj: Conv1D::new(cfg.inner(), d, proj_std, device),
                    dropout: drop(cfg.resid_pdrop),
                    act: cfg.activation_function,
                },
            })
            .collect();
        Gpt2LMHeadModel {
            transformer: Gpt2Model {
                wte: emb(cfg.vocab_size),
                wpe: emb(cfg.n_positions),
                h,
                ln_f: ln(),
                drop: drop(cfg.embd_pdrop),
            },
        }
    }

    /// Logits `[b, n, vocab]` of the token after each of `ids` `[b, n]`, which follow `cache`'s
    /// positions (all `None` for a fresh sequence); the cache is extended when given.
    pub fn forward_cached(
        &self,
        ids: Tensor<2, Int>,
        cache: Option<&mut Vec<Option<LayerCache>>>,
    ) -> Tensor<3> {
        let t = &self.transformer;
        let [b, n] = ids.dims();
        let device = ids.device();
        let mut cache = cache;
        let past = cache
            .as_ref()
            .and_then(|c| c.first())
            .and_then(|c| c.as_ref())
            .map_or(0, |c| c.keys.dims()[2]);
        let pos = Tensor::<1, Int>::arange(past as i64..(past + n) as i64, &device).reshape([1, n]);
        let mut x = t.drop.forward(t.wte.forward(ids) + t.wpe.forward(pos));
        for (i, block) in t.h.iter().enumerate() {
            let c = cache.as_deref_mut().map(|c| &mut c[i]);
            x = x.clone() + block.attn.forward(block.ln_1.forward(x), c);
            let m = &block.mlp;
            let hdn = m.act.forward(m.c_fc.forward(block.ln_2.forward(x.clone())));
            x = x + m.dropout.forward(m.c_proj.forward(hdn));
        }
        let x = t.ln_f.forward(x);
        let d = x.dims()[2];
        let w = t.wte.weight.val();
        x.reshape([b * n, d])
            .matmul(w.transpose())
            .reshape([b, n, t.wte.weight.dims()[0]])
    }

    /// Logits `[b, n, vocab]` of a whole sequence.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.forward_cached(ids, None)
    }

    /// The device it lives on.
    pub fn device(&self) -> Device {
        self.transformer.wte.weight.device()
    }

    /// Loads a transformers GPT-2 folder (`transformer.` prefix optional, as `GPT2Model`
    /// checkpoints lack it; `lm_head.weight`, when written, must be the embedding).
    pub fn load(folder: &Path, device: &Device) -> Result<(Self, Gpt2Config, Value)> {
        let path = folder.join("config.json");
        let json = hub::read_json(&path)?;
        let cfg: Gpt2Config = serde_json::from_value(json.clone())
            .map_err(|e| Error::config(&path, e.to_string()))?;
        cfg.validate().map_err(|e| Error::config(&path, e))?;
        let names = hub::safetensors_header(&hub::weight_files(folder)?[0])?;
        let bare = !names.keys().any(|k| k.starts_with("transformer."));
        let renames: &[(&str, &str)] = if bare {
            &[(r"^(wte|wpe|h|ln_f)\.", "transformer.$1.")]
        } else {
            &[]
        };
        let _rng = crate::device::rng_lock();
        let m = hub::load_weights(Gpt2LMHeadModel::new(&cfg, device), folder, renames, &[])?;
        Ok((m, cfg, json))
    }

    /// Writes config.json (`extra` keys merged in) and model.safetensors with transformers'
    /// names; transformers ties the head to `transformer.wte.weight`.
    pub fn save(&self, cfg: &Gpt2Config, extra: &Value, folder: &Path) -> Result<()> {
        let mut json = serde_json::to_value(cfg).expect("configs serialise");
        json["model_type"] = Value::from("gpt2");
        json["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
        if let (Some(obj), Some(more)) = (json.as_object_mut(), extra.as_object()) {
            for (k, v) in more {
                obj.insert(k.clone(), v.clone());
            }
        }
        hub::save_pretrained(self, &json, folder)
    }
}
