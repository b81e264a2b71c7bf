//! The pre-norm transformer encoder of CLIP, SigLIP (and BLIP's vision tower), with transformers'
//! names: `layers.N.{self_attn.{q,k,v,out}_proj, layer_norm1, mlp.{fc1,fc2}, layer_norm2}`.

use burn::nn::{
    Dropout, DropoutConfig, Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig,
};
use burn::prelude::*;

use super::{Activation, scaled_dot_product_attention};

/// Sizes of an encoder.
#[derive(Clone, Copy, Debug)]
pub struct EncoderSpec {
    /// Token width.
    pub hidden: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Number of layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP activation.
    pub act: Activation,
    /// Layer-norm epsilon.
    pub eps: f64,
    /// Dropout on attention probabilities (training only).
    pub attention_dropout: f64,
    /// Standard deviation of the weight initialisation.
    pub init_std: f64,
}

/// A linear layer initialised as transformers initialises one: normal weights, zero bias.
pub fn linear(d_in: usize, d_out: usize, bias: bool, std: f64, device: &Device) -> Linear {
    LinearConfig::new(d_in, d_out)
        .with_bias(bias)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device)
}

/// `l` applied to `x`: the fused CPU layer ([`super::cpu::linear`]) where it applies, burn's
/// `Linear::forward` otherwise.
pub fn dense<const D: usize>(l: &Linear, x: Tensor<D>) -> Tensor<D> {
    let w = l.weight.val();
    let b = l.bias.as_ref().map(|b| b.val());
    super::cpu::linear(&x, &w, b.as_ref()).unwrap_or_else(|| l.forward(x))
}

/// `residual + l(x)`: at inference on the CPU in one pass ([`super::cpu::linear_add`]),
/// otherwise [`dense`] then the sum.
pub fn dense_add<const D: usize>(l: &Linear, x: Tensor<D>, residual: Tensor<D>) -> Tensor<D> {
    let w = l.weight.val();
    let b = l.bias.as_ref().map(|b| b.val());
    if let Some(y) = super::cpu::linear_add(&x, &w, b.as_ref(), &residual) {
        return y;
    }
    residual + dense(l, x)
}

/// Several layers of the same input, `[l_1(x), l_2(x), ..]`: at inference on the CPU as one
/// product against their weights side by side ([`super::cpu::linear_side_by_side`]; the
/// results are views of one output), otherwise [`dense`] layer by layer.
pub fn dense_side_by_side<const D: usize, const N: usize>(
    layers: [&Linear; N],
    x: Tensor<D>,
) -> [Tensor<D>; N] {
    let ws = layers.map(|l| l.weight.val());
    let bs = layers.map(|l| l.bias.as_ref().map(|b| b.val()));
    let pairs: Vec<_> = ws.iter().zip(&bs).map(|(w, b)| (w, b.as_ref())).collect();
    if let Some(ys) = super::cpu::linear_side_by_side(&x, &pairs)
        && let Ok(ys) = <[Tensor<D>; N]>::try_from(ys)
    {
        return ys;
    }
    layers.map(|l| dense(l, x.clone()))
}

/// `act(l(x))`: at inference on the CPU in one pass ([`super::cpu::linear_then`]), otherwise
/// [`dense`] then the activation.
pub fn dense_act<const D: usize>(l: &Linear, x: Tensor<D>, act: Activation) -> Tensor<D> {
    if let Some(kernel) = act.kernel() {
        let w = l.weight.val();
        let b = l.bias.as_ref().map(|b| b.val());
        if let Some(y) = super::cpu::linear_then(&x, &w, b.as_ref(), kernel) {
            return y;
        }
    }
    act.forward(dense(l, x))
}

/// Multi-head self-attention with separate q, k, v and output projections.
#[derive(Module, Debug)]
pub struct SelfAttention {
    /// Query projection.
    pub q_proj: Linear,
    /// Key projection.
    pub k_proj: Linear,
    /// Value projection.
    pub v_proj: Linear,
    /// Output projection.
    pub out_proj: Linear,
    /// Dropout on attention probabilities.
    pub dropout: Dropout,
    /// Number of heads.
    pub num_heads: usize,
}

impl SelfAttention {
    /// `[b, t, d]` to `[b, t, d]`; `mask` is added to the attention scores.
    pub fn forward(&self, x: Tensor<3>, mask: Option<Tensor<4>>) -> Tensor<3> {
        dense(&self.out_proj, self.context(x, mask))
    }

    /// `residual + forward(x, mask)`, the sum made as the output projection writes its
    /// output ([`dense_add`]).
    pub fn forward_add(
        &self,
        x: Tensor<3>,
        mask: Option<Tensor<4>>,
        residual: Tensor<3>,
    ) -> Tensor<3> {
        dense_add(&self.out_proj, self.context(x, mask), residual)
    }

    /// The heads' outputs side by side, before the output projection.
    fn context(&self, x: Tensor<3>, mask: Option<Tensor<4>>) -> Tensor<3> {
        let [q, k, v] = dense_side_by_side([&self.q_proj, &self.k_proj, &self.v_proj], x);
        scaled_dot_product_attention(q, k, v, self.num_heads, mask, &self.dropout)
    }
}

/// Two linear layers with an activation between.
#[derive(Module, Debug)]
pub struct Mlp {
    /// `hidden -> intermediate`.
    pub fc1: Linear,
    /// `intermediate -> hidden`.
    pub fc2: Linear,
    /// The activation.
    #[module(skip)]
    pub act: Activation,
}

impl Mlp {
    /// A randomly initialised MLP.
    pub fn new(d: usize, inner: usize, act: Activation, std: f64, device: &Device) -> Self {
        Mlp {
            fc1: linear(d, inner, true, std, device),
            fc2: linear(inner, d, true, std, device),
            act,
        }
    }

    /// `[.., d]` to `[.., d]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        dense(&self.fc2, dense_act(&self.fc1, x, self.act))
    }

    /// `residual + forward(x)`, the sum made as `fc2` writes its output ([`dense_add`]).
    pub fn forward_add<const D: usize>(&self, x: Tensor<D>, residual: Tensor<D>) -> Tensor<D> {
        dense_add(&self.fc2, dense_act(&self.fc1, x, self.act), residual)
    }
}

/// `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Module, Debug)]
pub struct EncoderLayer {
    /// Self-attention.
    pub self_attn: SelfAttention,
    /// Norm before attention.
    pub layer_norm1: LayerNorm,
    /// The MLP.
    pub mlp: Mlp,
    /// Norm before the MLP.
    pub layer_norm2: LayerNorm,
    /// The norms' ε (burn's `LayerNorm` keeps its own private).
    #[module(skip)]
    pub eps: f64,
}

impl EncoderLayer {
    /// `[b, t, d]` to `[b, t, d]`.
    pub fn forward(&self, x: Tensor<3>, mask: Option<Tensor<4>>) -> Tensor<3> {
        let h = norm(&self.layer_norm1, self.eps, x.clone());
        let x = self.self_attn.forward_add(h, mask, x);
        let h = norm(&self.layer_norm2, self.eps, x.clone());
        self.mlp.forward_add(h, x)
    }
}

/// `ln` (built with `eps`) applied to `x`: the fused CPU norm ([`super::cpu::layer_norm`])
/// where it applies, burn's `LayerNorm::forward` otherwise.
pub fn norm<const D: usize>(ln: &LayerNorm, eps: f64, x: Tensor<D>) -> Tensor<D> {
    let gamma = ln.gamma.val();
    let beta = ln.beta.as_ref().map(|b| b.val());
    super::cpu::layer_norm(&x, &gamma, beta.as_ref(), eps).unwrap_or_else(|| ln.forward(x))
}

/// A stack of [`EncoderLayer`]s.
#[derive(Module, Debug)]
pub struct Encoder {
    /// The layers, in order.
    pub layers: Vec<EncoderLayer>,
}

/// A layer norm of width `d`.
pub fn layer_norm(d: usize, eps: f64, device: &Device) -> LayerNorm {
    LayerNormConfig::new(d).with_epsilon(eps).init(device)
}

impl Encoder {
    /// A randomly initialised encoder.
    pub fn new(spec: &EncoderSpec, device: &Device) -> Self {
        let (d, std) = (spec.hidden, spec.init_std);
        let layers = (0..spec.layers)
            .map(|_| EncoderLayer {
                self_attn: SelfAttention {
                    q_proj: linear(d, d, true, std, device),
                    k_proj: linear(d, d, true, std, device),
                    v_proj: linear(d, d, true, std, device),
                    out_proj: linear(d, d, true, std, device),
                    dropout: DropoutConfig::new(spec.attention_dropout).init(),
                    num_heads: spec.heads,
                },
                layer_norm1: layer_norm(d, spec.eps, device),
                mlp: Mlp::new(d, spec.intermediate, spec.act, std, device),
                layer_norm2: layer_norm(d, spec.eps, device),
                eps: spec.eps,
            })
            .collect();
        Encoder { layers }
    }

    /// Runs every layer; `mask` is added to every layer's attention scores.
    pub fn forward(&self, mut x: Tensor<3>, mask: Option<Tensor<4>>) -> Tensor<3> {
        for layer in &self.layers {
            x = layer.forward(x, mask.clone());
        }
        x
    }
}

/// The additive causal mask `[1, 1, n, n]`: 0 on and below the diagonal, a large negative above.
pub fn causal_mask(n: usize, device: &Device) -> Tensor<4> {
    let values: Vec<f32> = (0..n * n)
        .map(|i| if i % n > i / n { f32::MIN } else { 0.0 })
        .collect();
    Tensor::<2>::from_data(TensorData::new(values, [n, n]), device).reshape([1, 1, n, n])
}
