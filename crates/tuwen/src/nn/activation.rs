//! The activations transformers' configs name in `hidden_act`.

use burn::prelude::*;
use burn::tensor::activation;
use serde::{Deserialize, Serialize};

/// An activation function, by transformers' name for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Activation {
    /// Exact GELU, `x * Φ(x)` ("gelu").
    #[default]
    #[serde(rename = "gelu")]
    Gelu,
    /// GELU's tanh approximation ("gelu_new", "gelu_pytorch_tanh", "gelu_fast").
    #[serde(alias = "gelu_new", alias = "gelu_fast", rename = "gelu_pytorch_tanh")]
    GeluTanh,
    /// `x * sigmoid(1.702 x)`, as in OpenAI's CLIP ("quick_gelu").
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// "relu".
    #[serde(rename = "relu")]
    Relu,
    /// `x * sigmoid(x)` ("silu", "swish").
    #[serde(rename = "silu", alias = "swish")]
    Silu,
    /// "tanh".
    #[serde(rename = "tanh")]
    Tanh,
}

impl Activation {
    /// Applies the activation elementwise.
    pub fn forward<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self.kernel() {
            Some(k) => match super::cpu::apply(k, x) {
                Ok(y) => y,
                Err(x) => self.plain(*x),
            },
            None => self.plain(x),
        }
    }

    /// The fused CPU kernel of this activation, where there is one.
    pub fn kernel(self) -> Option<super::cpu::Kernel> {
        use super::cpu::Kernel;
        match self {
            Activation::Gelu => Some(Kernel::Gelu),
            Activation::GeluTanh => Some(Kernel::GeluTanh),
            Activation::QuickGelu => Some(Kernel::QuickGelu),
            Activation::Silu => Some(Kernel::Silu),
            Activation::Relu | Activation::Tanh => None,
        }
    }

    /// [`Self::forward`] with burn's ops alone (the reference of the fused CPU kernels).
    pub fn plain<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::Gelu => activation::gelu(x),
            Activation::GeluTanh => {
                // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
                let inner = (x.clone() + x.clone().powi_scalar(3) * 0.044_715)
                    * (2.0f64 / std::f64::consts::PI).sqrt();
                x * (inner.tanh() + 1.0) * 0.5
            }
            Activation::QuickGelu => x.clone() * activation::sigmoid(x * 1.702),
            Activation::Relu => activation::relu(x),
            Activation::Silu => activation::silu(x),
            Activation::Tanh => x.tanh(),
        }
    }
}

/// `σ(x)`, fused on the CPU backend at inference (see [`super::cpu`]).
pub fn sigmoid<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    super::cpu::apply(super::cpu::Kernel::Sigmoid, x).unwrap_or_else(|x| activation::sigmoid(*x))
}
