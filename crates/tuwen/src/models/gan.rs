//! Generative adversarial networks: a generator `G(z)` and a critic (discriminator) `D(x)`.
//!
//! Two families, each saved as one folder (`config.json` + `model.safetensors` with the
//! tensors `generator.*` and `discriminator.*`):
//!
//! - `model_type: "tuwen_gan_mlp"`: MLPs for 1-D and 2-D toy data, as WGAN-GP's `gan_toy.py`
//!   (ReLU MLPs 512 wide, 3 hidden layers, noise as wide as the data).
//! - `model_type: "tuwen_dcgan"`: DCGAN (Radford et al.) for images of 16, 32 or 64 px: a
//!   projection of `z` to 4×4, then stride-2 transposed convolutions with batch norm and ReLU,
//!   `tanh` out; the critic mirrors it with stride-2 convolutions and LeakyReLU(0.2).
//!
//! Both work on flat samples `[n, features]` (images flattened channel-first, values in
//! [-1, 1]), so that training, sampling and distances treat every family alike.
//!
//! **The critic's input gradient** `∇ₓD(x)` is computed by [`Critic::input_grad`] from
//! ordinary tensor ops: the backward pass of each layer (linear, convolution, LeakyReLU/ReLU,
//! layer norm) written as forward ops. A first-order autodiff can then differentiate it with
//! respect to the critic's parameters, which is what the gradient penalty of WGAN-GP and R1
//! need; burn has no double backward. Batch norm couples the samples of a batch, so a critic
//! with it has no per-sample input gradient and is refused there (WGAN-GP's advice as well).

use std::path::Path;

use burn::module::{Module, RunningState};
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::{leaky_relu, relu, tanh};
use burn::tensor::module::{conv_transpose2d, conv2d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result, hub};

/// `model_type` of the MLP GAN.
pub const MLP_TYPE: &str = "tuwen_gan_mlp";
/// `model_type` of DCGAN.
pub const DCGAN_TYPE: &str = "tuwen_dcgan";

/// The critic's normalisation between layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CriticNorm {
    /// None (the MLP default).
    #[default]
    None,
    /// Layer norm over each sample's features (all channels and positions), with a scale and
    /// offset per channel: the gradient-penalty critic's choice.
    Layer,
    /// Batch norm (the DCGAN paper's discriminator); not with a gradient penalty.
    Batch,
}

/// The critic's activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// max(0, x).
    Relu,
    /// x for x > 0, `leaky_slope`·x below.
    LeakyRelu,
}

fn default_hidden() -> usize {
    512
}
fn default_layers() -> usize {
    3
}
fn default_slope() -> f64 {
    0.2
}
fn default_eps() -> f64 {
    1e-5
}
fn default_width() -> usize {
    64
}
fn default_latent_dcgan() -> usize {
    100
}
fn default_image_size() -> usize {
    32
}
fn default_channels() -> usize {
    1
}
fn relu_act() -> Activation {
    Activation::Relu
}
fn leaky_act() -> Activation {
    Activation::LeakyRelu
}

/// An MLP GAN (`tuwen_gan_mlp`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MlpGanConfig {
    /// Features of a sample (2 for points in the plane).
    pub data_dim: usize,
    /// Size of the noise `z` (`gan_toy.py`: as wide as the data).
    pub latent_dim: usize,
    /// Width of every hidden layer of both networks.
    #[serde(default = "default_hidden")]
    pub hidden_size: usize,
    /// Hidden layers of each network.
    #[serde(default = "default_layers")]
    pub num_hidden_layers: usize,
    /// The critic's activation.
    #[serde(default = "relu_act")]
    pub critic_activation: Activation,
    /// Negative slope of LeakyReLU.
    #[serde(default = "default_slope")]
    pub leaky_slope: f64,
    /// The critic's normalisation.
    #[serde(default)]
    pub critic_norm: CriticNorm,
    /// Epsilon of the critic's normalisation.
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    /// Spectral normalisation of the critic's weights.
    #[serde(default)]
    pub spectral_norm: bool,
}

impl MlpGanConfig {
    /// `gan_toy.py`'s networks for data with `data_dim` features.
    pub fn toy(data_dim: usize) -> Self {
        MlpGanConfig {
            data_dim,
            latent_dim: data_dim,
            hidden_size: default_hidden(),
            num_hidden_layers: default_layers(),
            critic_activation: Activation::Relu,
            leaky_slope: default_slope(),
            critic_norm: CriticNorm::None,
            norm_eps: default_eps(),
            spectral_norm: false,
        }
    }
}

/// DCGAN (`tuwen_dcgan`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DcganConfig {
    /// Height and width of the images: 16, 32 or 64.
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    /// Channels of the images (1 grey, 3 colour).
    #[serde(default = "default_channels")]
    pub num_channels: usize,
    /// Size of the noise `z`.
    #[serde(default = "default_latent_dcgan")]
    pub latent_dim: usize,
    /// Channels of the generator's last hidden layer (they double towards 4×4).
    #[serde(default = "default_width")]
    pub generator_width: usize,
    /// Channels of the critic's first layer (they double towards 4×4).
    #[serde(default = "default_width")]
    pub critic_width: usize,
    /// The critic's activation.
    #[serde(default = "leaky_act")]
    pub critic_activation: Activation,
    /// Negative slope of LeakyReLU.
    #[serde(default = "default_slope")]
    pub leaky_slope: f64,
    /// The critic's normalisation (none on its first layer, as DCGAN).
    #[serde(default)]
    pub critic_norm: CriticNorm,
    /// Epsilon of the normalisations.
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    /// Spectral normalisation of the critic's weights.
    #[serde(default)]
    pub spectral_norm: bool,
}

impl DcganConfig {
    /// Stride-2 stages between 4×4 and the image size.
    pub fn stages(&self) -> usize {
        (self.image_size / 4).trailing_zeros() as usize
    }

    /// Features of one image (`channels · size²`).
    pub fn features(&self) -> usize {
        self.num_channels * self.image_size * self.image_size
    }
}

/// A GAN's configuration: which family and its sizes.
#[derive(Clone, Debug, PartialEq)]
pub enum GanConfig {
    /// MLPs.
    Mlp(MlpGanConfig),
    /// DCGAN.
    Dcgan(DcganConfig),
}

impl GanConfig {
    /// Features of one sample.
    pub fn features(&self) -> usize {
        match self {
            GanConfig::Mlp(c) => c.data_dim,
            GanConfig::Dcgan(c) => c.features(),
        }
    }

    /// Size of the noise.
    pub fn latent_dim(&self) -> usize {
        match self {
            GanConfig::Mlp(c) => c.latent_dim,
            GanConfig::Dcgan(c) => c.latent_dim,
        }
    }

    /// `(channels, height, width)` of an image model; `None` for the MLP.
    pub fn image_shape(&self) -> Option<[usize; 3]> {
        match self {
            GanConfig::Mlp(_) => None,
            GanConfig::Dcgan(c) => Some([c.num_channels, c.image_size, c.image_size]),
        }
    }

    /// The critic's normalisation.
    pub fn critic_norm(&self) -> CriticNorm {
        match self {
            GanConfig::Mlp(c) => c.critic_norm,
            GanConfig::Dcgan(c) => c.critic_norm,
        }
    }

    /// Whether the critic's weights are spectrally normalised.
    pub fn spectral_norm(&self) -> bool {
        match self {
            GanConfig::Mlp(c) => c.spectral_norm,
            GanConfig::Dcgan(c) => c.spectral_norm,
        }
    }

    /// Checks sizes before any module is built.
    pub fn validate(&self) -> std::result::Result<(), String> {
        use super::bounds::*;
        let slope_eps = |slope: f64, eps: f64| {
            if !(slope.is_finite() && (0.0..1.0).contains(&slope)) {
                return Err(format!("leaky_slope {slope} must be in [0, 1)"));
            }
            if !(eps.is_finite() && eps > 0.0) {
                return Err(format!("norm_eps {eps} must be positive"));
            }
            Ok(())
        };
        match self {
            GanConfig::Mlp(c) => {
                super::require_sizes(&[
                    ("data_dim", c.data_dim, WIDTH),
                    ("latent_dim", c.latent_dim, WIDTH),
                    ("hidden_size", c.hidden_size, WIDTH),
                    ("num_hidden_layers", c.num_hidden_layers, LAYERS),
                ])?;
                slope_eps(c.leaky_slope, c.norm_eps)?;
                if c.critic_norm == CriticNorm::Batch {
                    return Err("critic_norm \"batch\" is only for DCGAN".into());
                }
            }
            GanConfig::Dcgan(c) => {
                super::require_sizes(&[
                    ("num_channels", c.num_channels, CHANNELS),
                    ("latent_dim", c.latent_dim, WIDTH),
                    ("generator_width", c.generator_width, 1 << 14),
                    ("critic_width", c.critic_width, 1 << 14),
                ])?;
                if ![16, 32, 64].contains(&c.image_size) {
                    return Err(format!(
                        "image_size {} must be 16, 32 or 64 (4×4 doubled by stride-2 stages)",
                        c.image_size
                    ));
                }
                slope_eps(c.leaky_slope, c.norm_eps)?;
            }
        }
        Ok(())
    }

    /// Parameters of the generator and the critic together, from the sizes alone (before any
    /// module is built, so that a size that cannot fit is refused without allocating it):
    /// exact for the MLP, the weights without norms and biases (a lower bound) for DCGAN.
    pub fn num_params(&self) -> u128 {
        let u = |x: usize| x as u128;
        match self {
            GanConfig::Mlp(c) => {
                let (h, l) = (u(c.hidden_size), u(c.num_hidden_layers));
                let mlp = |i: u128, o: u128| {
                    let hidden = if l == 0 {
                        0
                    } else {
                        (i + 1) * h + (l - 1) * (h + 1) * h
                    };
                    hidden + (if l == 0 { i } else { h } + 1) * o
                };
                let norms = if c.critic_norm == CriticNorm::Layer {
                    2 * l * h
                } else {
                    0
                };
                mlp(u(c.latent_dim), u(c.data_dim)) + mlp(u(c.data_dim), 1) + norms
            }
            GanConfig::Dcgan(c) => {
                let stages = c.stages() as u32;
                let top = u(c.generator_width) << (stages - 1);
                // The projection, the 4×4 transposed convolutions halving the channels, the
                // last one to the image.
                let mut n =
                    u(c.latent_dim) * top * 16 + u(c.generator_width) * u(c.num_channels) * 16;
                for k in 0..stages - 1 {
                    n += 16 * (top >> k) * (top >> (k + 1));
                }
                // The critic's 4×4 convolutions doubling the channels, and its head.
                let mut i = u(c.num_channels);
                for k in 0..stages {
                    let o = u(c.critic_width) << k;
                    n += 16 * i * o;
                    i = o;
                }
                n + i * 16
            }
        }
    }

    /// config.json of this model.
    pub fn to_json(&self) -> Value {
        let (mut v, t) = match self {
            GanConfig::Mlp(c) => (serde_json::to_value(c), MLP_TYPE),
            GanConfig::Dcgan(c) => (serde_json::to_value(c), DCGAN_TYPE),
        };
        let v = v.as_mut().expect("configs serialise");
        v["model_type"] = Value::from(t);
        v["architectures"] = serde_json::json!(["Gan"]);
        v.clone()
    }

    /// Reads a config.json value.
    pub fn from_json(v: &Value) -> std::result::Result<Self, String> {
        let cfg = match v["model_type"].as_str() {
            Some(MLP_TYPE) => {
                GanConfig::Mlp(serde_json::from_value(v.clone()).map_err(|e| e.to_string())?)
            }
            Some(DCGAN_TYPE) => {
                GanConfig::Dcgan(serde_json::from_value(v.clone()).map_err(|e| e.to_string())?)
            }
            other => {
                return Err(format!(
                    "model_type {other:?} is not a GAN ({MLP_TYPE:?} or {DCGAN_TYPE:?})"
                ));
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// A linear layer drawn as DCGAN draws (N(0, 0.02²), zero bias) or as PyTorch's default.
fn linear(i: usize, o: usize, dcgan: bool, device: &Device) -> Linear {
    let cfg = LinearConfig::new(i, o);
    let cfg = if dcgan {
        cfg.with_initializer(Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        })
    } else {
        // PyTorch's nn.Linear: kaiming-uniform with a = √5, i.e. U(±1/√in) for the weight.
        let k = 1.0 / (i as f64).sqrt();
        cfg.with_initializer(Initializer::Uniform { min: -k, max: k })
    };
    cfg.init(device)
}

/// A parameter value that stays trainable: burn marks a mapped parameter trainable only when
/// the new tensor requires a gradient, which a fresh `zeros_like` or `random` does not.
pub fn trainable<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    if t.device().is_autodiff() {
        t.require_grad()
    } else {
        t
    }
}

fn bias_zero(mut l: Linear) -> Linear {
    l.bias = l.bias.map(|b| b.map(|t| trainable(t.zeros_like())));
    l
}

fn bn(c: usize, eps: f64, device: &Device) -> BatchNorm {
    let mut b = BatchNormConfig::new(c)
        .with_epsilon(eps)
        .with_momentum(0.1)
        .init(device);
    // DCGAN draws the scale from N(1, 0.02²).
    b.gamma = b.gamma.map(|g| {
        trainable(Tensor::random(
            g.shape(),
            Distribution::Normal(1.0, 0.02),
            &g.device(),
        ))
    });
    b
}

/// Per-channel scale and offset of a layer norm over each sample's features.
#[derive(Module, Debug)]
pub struct FeatureNorm {
    /// Scale, one per channel.
    pub weight: burn::module::Param<Tensor<1>>,
    /// Offset, one per channel.
    pub bias: burn::module::Param<Tensor<1>>,
}

impl FeatureNorm {
    fn new(c: usize, device: &Device) -> Self {
        FeatureNorm {
            weight: burn::module::Param::from_tensor(Tensor::ones([c], device)),
            bias: burn::module::Param::from_tensor(Tensor::zeros([c], device)),
        }
    }

    /// Scale and offset per feature `[1, c·spatial]` (channel-major features).
    fn per_feature(&self, spatial: usize) -> (Tensor<2>, Tensor<2>) {
        let c = self.weight.dims()[0];
        let expand = |t: Tensor<1>| {
            t.reshape([c, 1])
                .repeat_dim(1, spatial)
                .reshape([1, c * spatial])
        };
        (expand(self.weight.val()), expand(self.bias.val()))
    }
}

/// What a layer norm's backward needs: the normalised input and 1/σ per sample.
struct NormSaved {
    xhat: Tensor<2>,
    inv_std: Tensor<2>,
}

/// Layer norm of `x` `[n, features]` over each row, then `γ`, `β` per channel.
fn layer_norm(
    x: Tensor<2>,
    norm: &FeatureNorm,
    spatial: usize,
    eps: f64,
) -> (Tensor<2>, NormSaved) {
    let mean = x.clone().mean_dim(1);
    let centred = x - mean;
    let var = centred.clone().powi_scalar(2).mean_dim(1);
    let inv_std = (var + eps).sqrt().recip();
    let xhat = centred * inv_std.clone();
    let (g, b) = norm.per_feature(spatial);
    (xhat.clone() * g + b, NormSaved { xhat, inv_std })
}

/// The backward of [`layer_norm`] as forward ops: `dL/dx` from `dL/dy`.
fn layer_norm_backward(
    dy: Tensor<2>,
    norm: &FeatureNorm,
    spatial: usize,
    s: &NormSaved,
) -> Tensor<2> {
    let (g, _) = norm.per_feature(spatial);
    let dxhat = dy * g;
    let m1 = dxhat.clone().mean_dim(1);
    let m2 = (dxhat.clone() * s.xhat.clone()).mean_dim(1);
    (dxhat - m1 - s.xhat.clone() * m2) * s.inv_std.clone()
}

/// The activation's derivative at `x` (a constant mask: its own derivative is zero almost
/// everywhere).
fn act_grad<const D: usize>(x: Tensor<D>, act: Activation, slope: f64) -> Tensor<D> {
    let pos = x.greater_elem(0.0).float();
    match act {
        Activation::Relu => pos,
        Activation::LeakyRelu => pos.clone() + (pos.ones_like() - pos) * slope,
    }
}

fn act<const D: usize>(x: Tensor<D>, a: Activation, slope: f64) -> Tensor<D> {
    match a {
        Activation::Relu => relu(x),
        Activation::LeakyRelu => leaky_relu(x, slope),
    }
}

/// The persistent left singular vector estimate of a spectrally normalised weight.
#[derive(Module, Debug)]
pub struct SpectralState {
    /// `u`, as wide as the weight's first axis (burn's layout).
    pub u: RunningState<Tensor<1>>,
}

impl SpectralState {
    fn new(rows: usize, device: &Device) -> Self {
        let u = Tensor::<1>::random([rows], Distribution::Normal(0.0, 1.0), device);
        let u = u.clone() / (u.powi_scalar(2).sum().sqrt() + 1e-12);
        SpectralState {
            u: RunningState::new(u),
        }
    }

    /// `w / σ(w)` for `w` viewed as a `[rows, cols]` matrix: one power iteration from the kept
    /// `u` (moved on only while training, as PyTorch's `spectral_norm`), `σ = uᵀ W v` with `u`
    /// and `v` held constant.
    fn normalise(&self, w: Tensor<2>, training: bool) -> Tensor<2> {
        let device = w.device();
        let wd = w.clone().detach();
        // `value_sync`: the last update, not the one before (which `value` may return), so
        // that a run resumed from a checkpoint reads what the uninterrupted run reads.
        let u = self.u.value_sync().to_device(&device).detach();
        let (u, v) = if training {
            let [rows, cols] = wd.dims();
            let v = u
                .clone()
                .reshape([1, rows])
                .matmul(wd.clone())
                .reshape([cols]);
            let v = v.clone() / (v.powi_scalar(2).sum().sqrt() + 1e-12);
            let u = wd.matmul(v.clone().reshape([cols, 1])).reshape([rows]);
            let u = u.clone() / (u.powi_scalar(2).sum().sqrt() + 1e-12);
            self.u.update(u.clone().detach());
            (u, v)
        } else {
            let [rows, cols] = wd.dims();
            let v = u.clone().reshape([1, rows]).matmul(wd).reshape([cols]);
            (u, v.clone() / (v.powi_scalar(2).sum().sqrt() + 1e-12))
        };
        let [rows, cols] = w.dims();
        let sigma = u
            .reshape([1, rows])
            .matmul(w.clone())
            .matmul(v.reshape([cols, 1]))
            .reshape([1, 1]);
        w / sigma
    }
}

// ---------------------------------------------------------------------------------------
// Generators

/// The MLP generator: `num_hidden_layers` ReLU layers and a linear output.
#[derive(Module, Debug)]
pub struct MlpGenerator {
    /// Hidden layers.
    pub layers: Vec<Linear>,
    /// Output layer.
    pub head: Linear,
}

impl MlpGenerator {
    fn new(c: &MlpGanConfig, device: &Device) -> Self {
        let mut i = c.latent_dim;
        let layers = (0..c.num_hidden_layers)
            .map(|_| {
                let l = linear(i, c.hidden_size, false, device);
                i = c.hidden_size;
                l
            })
            .collect();
        MlpGenerator {
            layers,
            head: linear(i, c.data_dim, false, device),
        }
    }

    fn forward(&self, z: Tensor<2>) -> Tensor<2> {
        let mut h = z;
        for l in &self.layers {
            h = relu(l.forward(h));
        }
        self.head.forward(h)
    }
}

/// One up-sampling stage of DCGAN's generator: a 4×4 stride-2 transposed convolution,
/// batch norm and ReLU.
#[derive(Module, Debug)]
pub struct UpBlock {
    /// The transposed convolution (no bias: batch norm follows).
    pub conv: ConvTranspose2d,
    /// Batch norm.
    pub norm: BatchNorm,
}

/// DCGAN's generator.
#[derive(Module, Debug)]
pub struct DcganGenerator {
    /// `z` to `[4·4·channels]`.
    pub project: Linear,
    /// Batch norm after the projection.
    pub project_norm: BatchNorm,
    /// Stride-2 stages but the last.
    pub blocks: Vec<UpBlock>,
    /// The last transposed convolution, to the image's channels (then tanh).
    pub to_image: ConvTranspose2d,
}

fn up(i: usize, o: usize, bias: bool, device: &Device) -> ConvTranspose2d {
    ConvTranspose2dConfig::new([i, o], [4, 4])
        .with_stride([2, 2])
        .with_padding([1, 1])
        .with_bias(bias)
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        })
        .init(device)
}

impl DcganGenerator {
    fn new(c: &DcganConfig, device: &Device) -> Self {
        let stages = c.stages();
        let top = c.generator_width << (stages - 1);
        let blocks = (0..stages - 1)
            .map(|k| {
                let i = top >> k;
                UpBlock {
                    conv: up(i, i / 2, false, device),
                    norm: bn(i / 2, c.norm_eps, device),
                }
            })
            .collect();
        DcganGenerator {
            project: bias_zero(linear(c.latent_dim, top * 16, true, device)),
            project_norm: bn(top, c.norm_eps, device),
            blocks,
            to_image: {
                let mut t = up(c.generator_width, c.num_channels, true, device);
                t.bias = t.bias.map(|b| b.map(|t| trainable(t.zeros_like())));
                t
            },
        }
    }

    fn forward(&self, z: Tensor<2>) -> Tensor<2> {
        let n = z.dims()[0];
        let top = self.project_norm.gamma.dims()[0];
        let h = self.project.forward(z).reshape([n, top, 4, 4]);
        let mut h = relu(self.project_norm.forward(h));
        for b in &self.blocks {
            h = relu(b.norm.forward(b.conv.forward(h)));
        }
        let x = tanh(self.to_image.forward(h));
        x.flatten(1, 3)
    }
}

/// A GAN's generator.
// burn's Module derive does not take boxed fields: the variants stay unboxed (one per model).
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Generator {
    /// MLP.
    Mlp(MlpGenerator),
    /// DCGAN.
    Dcgan(DcganGenerator),
}

impl Generator {
    /// Samples `[n, features]` from noise `z` `[n, latent]`.
    pub fn forward(&self, z: Tensor<2>) -> Tensor<2> {
        match self {
            Generator::Mlp(g) => g.forward(z),
            Generator::Dcgan(g) => g.forward(z),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Critics

/// The MLP critic: hidden layers (linear, optional layer norm, activation) and a linear
/// output without sigmoid.
#[derive(Module, Debug)]
pub struct MlpCritic {
    /// Hidden layers.
    pub layers: Vec<Linear>,
    /// Layer norms after each hidden layer (empty without).
    pub norms: Vec<FeatureNorm>,
    /// Output layer (one number per sample).
    pub head: Linear,
    /// Spectral-norm state of every weight, `layers` then `head` (empty without).
    pub spectral: Vec<SpectralState>,
}

/// One stage of DCGAN's critic: a 4×4 stride-2 convolution, an optional norm, the
/// activation.
#[derive(Module, Debug)]
pub struct DownBlock {
    /// The convolution.
    pub conv: Conv2d,
    /// Layer norm (the gradient-penalty critic's).
    pub layer_norm: Option<FeatureNorm>,
    /// Batch norm (the DCGAN paper's discriminator).
    pub batch_norm: Option<BatchNorm>,
}

/// DCGAN's critic.
#[derive(Module, Debug)]
pub struct DcganCritic {
    /// Stride-2 stages down to 4×4.
    pub blocks: Vec<DownBlock>,
    /// `[4·4·channels]` to one number per sample.
    pub head: Linear,
    /// Spectral-norm state of every weight, `blocks` then `head` (empty without).
    pub spectral: Vec<SpectralState>,
}

/// A GAN's critic (discriminator): a real number per sample, no sigmoid.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Critic {
    /// MLP.
    Mlp(MlpCritic),
    /// DCGAN.
    Dcgan(DcganCritic),
}

/// Settings a critic's forward pass needs besides its weights.
#[derive(Clone, Copy, Debug)]
struct Shape {
    act: Activation,
    slope: f64,
    eps: f64,
    /// `(channels, size)` of DCGAN's images.
    image: Option<(usize, usize)>,
}

/// What the explicit backward needs from the forward pass, layer by layer.
struct Saved {
    /// Input of each layer (its shape, for the transposed convolution).
    input_dims: Vec<[usize; 4]>,
    /// Output of each layer: `[n, channels, h, w]` (`[n, features, 1, 1]` for the MLP).
    output_dims: Vec<[usize; 4]>,
    /// Effective weight of each layer (spectrally normalised when asked).
    weights: Vec<Tensor<4>>,
    /// Layer norm of each hidden layer.
    norms: Vec<Option<NormSaved>>,
    /// Pre-activation of each hidden layer `[n, features]`.
    pre_act: Vec<Tensor<2>>,
    /// Effective weight of the output layer `[in, 1]`.
    head: Tensor<2>,
}

impl MlpCritic {
    fn new(c: &MlpGanConfig, device: &Device) -> Self {
        let mut i = c.data_dim;
        let mut layers = Vec::new();
        let mut norms = Vec::new();
        let mut spectral = Vec::new();
        for _ in 0..c.num_hidden_layers {
            layers.push(linear(i, c.hidden_size, false, device));
            if c.critic_norm == CriticNorm::Layer {
                norms.push(FeatureNorm::new(c.hidden_size, device));
            }
            if c.spectral_norm {
                spectral.push(SpectralState::new(i, device));
            }
            i = c.hidden_size;
        }
        if c.spectral_norm {
            spectral.push(SpectralState::new(i, device));
        }
        MlpCritic {
            layers,
            norms,
            head: linear(i, 1, false, device),
            spectral,
        }
    }
}

impl DcganCritic {
    fn new(c: &DcganConfig, device: &Device) -> Self {
        let stages = c.stages();
        let mut blocks = Vec::new();
        let mut spectral = Vec::new();
        let mut i = c.num_channels;
        for k in 0..stages {
            let o = c.critic_width << k;
            let conv = Conv2dConfig::new([i, o], [4, 4])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                })
                .init(device);
            let mut conv = conv;
            conv.bias = conv.bias.map(|b| b.map(|t| trainable(t.zeros_like())));
            let first = k == 0;
            blocks.push(DownBlock {
                conv,
                layer_norm: (!first && c.critic_norm == CriticNorm::Layer)
                    .then(|| FeatureNorm::new(o, device)),
                batch_norm: (!first && c.critic_norm == CriticNorm::Batch)
                    .then(|| bn(o, c.norm_eps, device)),
            });
            if c.spectral_norm {
                spectral.push(SpectralState::new(o, device));
            }
            i = o;
        }
        let features = i * 16;
        if c.spectral_norm {
            spectral.push(SpectralState::new(features, device));
        }
        DcganCritic {
            blocks,
            head: bias_zero(linear(features, 1, true, device)),
            spectral,
        }
    }
}

fn conv_options(stride: usize, pad: usize) -> ConvOptions<2> {
    ConvOptions::new([stride, stride], [pad, pad], [1, 1], 1)
}

impl Critic {
    fn shape(&self, cfg: &GanConfig) -> Shape {
        match cfg {
            GanConfig::Mlp(c) => Shape {
                act: c.critic_activation,
                slope: c.leaky_slope,
                eps: c.norm_eps,
                image: None,
            },
            GanConfig::Dcgan(c) => Shape {
                act: c.critic_activation,
                slope: c.leaky_slope,
                eps: c.norm_eps,
                image: Some((c.num_channels, c.image_size)),
            },
        }
    }

    /// `D(x)` `[n, 1]` for samples `x` `[n, features]`.
    pub fn forward(&self, cfg: &GanConfig, x: Tensor<2>) -> Tensor<2> {
        self.forward_saved(cfg, x).0
    }

    /// `D(x)` and `∇ₓ Σᵢ D(xᵢ)` `[n, features]` (each row is that sample's input gradient),
    /// built from differentiable ops: on an autodiff device, a loss of the gradient (a
    /// penalty) has gradients with respect to the critic's parameters. An error for a critic
    /// with batch norm.
    pub fn input_grad(&self, cfg: &GanConfig, x: Tensor<2>) -> Result<(Tensor<2>, Tensor<2>)> {
        if cfg.critic_norm() == CriticNorm::Batch {
            return Err(Error::InvalidInput(
                "a critic with batch norm has no per-sample input gradient: use \
                 critic_norm \"layer\" or \"none\" with a gradient penalty"
                    .into(),
            ));
        }
        let (out, saved) = self.forward_saved(cfg, x);
        let shape = self.shape(cfg);
        let n = out.dims()[0];
        // d out / d h_last: the output layer's weight, the same for every sample.
        let mut g = Tensor::<2>::ones([n, 1], &out.device()).matmul(saved.head.clone().transpose());
        let norms: Vec<Option<&FeatureNorm>> = match self {
            Critic::Mlp(m) => (0..m.layers.len()).map(|k| m.norms.get(k)).collect(),
            Critic::Dcgan(d) => d.blocks.iter().map(|b| b.layer_norm.as_ref()).collect(),
        };
        for k in (0..saved.pre_act.len()).rev() {
            g = g * act_grad(saved.pre_act[k].clone(), shape.act, shape.slope);
            let [_, co, ho, wo] = saved.output_dims[k];
            if let (Some(norm), Some(s)) = (norms[k], &saved.norms[k]) {
                g = layer_norm_backward(g, norm, ho * wo, s);
            }
            let weight = saved.weights[k].clone();
            g = match self {
                Critic::Mlp(_) => {
                    let [i, o, _, _] = weight.dims();
                    g.matmul(weight.reshape([i, o]).transpose())
                }
                Critic::Dcgan(_) => {
                    let [_, ci, hi, wi] = saved.input_dims[k];
                    let kh = weight.dims()[2];
                    // conv2d's input gradient: the transposed convolution with the same
                    // weight, padded on the far side back to the input's exact size.
                    let pad_out = |inp: usize, out: usize| inp + 2 - (out - 1) * 2 - kh;
                    let opts = ConvTransposeOptions::new(
                        [2, 2],
                        [1, 1],
                        [pad_out(hi, ho), pad_out(wi, wo)],
                        [1, 1],
                        1,
                    );
                    let g4 = g.reshape([n, co, ho, wo]);
                    conv_transpose2d(g4, weight, None, opts).reshape([n, ci * hi * wi])
                }
            };
        }
        Ok((out, g))
    }

    fn forward_saved(&self, cfg: &GanConfig, x: Tensor<2>) -> (Tensor<2>, Saved) {
        let shape = self.shape(cfg);
        let training = x.device().is_autodiff();
        let n = x.dims()[0];
        let mut saved = Saved {
            input_dims: Vec::new(),
            output_dims: Vec::new(),
            weights: Vec::new(),
            norms: Vec::new(),
            pre_act: Vec::new(),
            head: Tensor::zeros([1, 1], &x.device()),
        };
        let sn = |spectral: &Vec<SpectralState>, k: usize, w: Tensor<2>| match spectral.get(k) {
            Some(s) => s.normalise(w, training),
            None => w,
        };
        match self {
            Critic::Mlp(m) => {
                let mut h = x;
                for (k, l) in m.layers.iter().enumerate() {
                    let w = sn(&m.spectral, k, l.weight.val());
                    let [i, o] = w.dims();
                    saved.input_dims.push([n, i, 1, 1]);
                    saved.output_dims.push([n, o, 1, 1]);
                    saved.weights.push(w.clone().reshape([i, o, 1, 1]));
                    let mut a = h.matmul(w);
                    if let Some(b) = &l.bias {
                        a = a + b.val().unsqueeze();
                    }
                    let s = m.norms.get(k).map(|norm| {
                        let (y, s) = layer_norm(a.clone(), norm, 1, shape.eps);
                        a = y;
                        s
                    });
                    saved.norms.push(s);
                    saved.pre_act.push(a.clone());
                    h = act(a, shape.act, shape.slope);
                }
                let w = sn(&m.spectral, m.layers.len(), m.head.weight.val());
                saved.head = w.clone();
                let mut out = h.matmul(w);
                if let Some(b) = &m.head.bias {
                    out = out + b.val().unsqueeze();
                }
                (out, saved)
            }
            Critic::Dcgan(d) => {
                let (c, s) = shape.image.expect("DCGAN has an image shape");
                let mut h = x.reshape([n, c, s, s]);
                for (k, b) in d.blocks.iter().enumerate() {
                    let w = b.conv.weight.val();
                    let dims = w.dims();
                    let w = if d.spectral.is_empty() {
                        w
                    } else {
                        let flat = w.reshape([dims[0], dims[1] * dims[2] * dims[3]]);
                        sn(&d.spectral, k, flat).reshape(dims)
                    };
                    saved.input_dims.push(h.dims());
                    saved.weights.push(w.clone());
                    let a = conv2d(
                        h,
                        w,
                        b.conv.bias.as_ref().map(|p| p.val()),
                        conv_options(2, 1),
                    );
                    let [_, co, ho, wo] = a.dims();
                    saved.output_dims.push(a.dims());
                    let a = if let Some(bnorm) = &b.batch_norm {
                        saved.norms.push(None);
                        bnorm.forward(a).reshape([n, co * ho * wo])
                    } else if let Some(norm) = &b.layer_norm {
                        let (y, s) =
                            layer_norm(a.reshape([n, co * ho * wo]), norm, ho * wo, shape.eps);
                        saved.norms.push(Some(s));
                        y
                    } else {
                        saved.norms.push(None);
                        a.reshape([n, co * ho * wo])
                    };
                    saved.pre_act.push(a.clone());
                    h = act(a, shape.act, shape.slope).reshape([n, co, ho, wo]);
                }
                let w = sn(&d.spectral, d.blocks.len(), d.head.weight.val());
                saved.head = w.clone();
                let mut out = h.flatten(1, 3).matmul(w);
                if let Some(b) = &d.head.bias {
                    out = out + b.val().unsqueeze();
                }
                (out, saved)
            }
        }
    }

    /// Clamps every weight to [-c, c] (WGAN's Lipschitz constraint by clipping); normalisation
    /// scales and offsets included, as the paper clips all parameters.
    pub fn clip_weights(self, c: f64) -> Self {
        struct Clip(f64);
        impl burn::module::ModuleMapper for Clip {
            fn map_float<const D: usize>(
                &mut self,
                p: burn::module::Param<Tensor<D>>,
            ) -> burn::module::Param<Tensor<D>> {
                let c = self.0;
                // A fresh leaf: the clamp must not join the next step's graph.
                p.map(|t| trainable(t.clamp(-c, c).detach()))
            }
        }
        self.map(&mut Clip(c))
    }
}

/// A GAN: the generator and its critic.
#[derive(Module, Debug)]
pub struct Gan {
    /// The generator.
    pub generator: Generator,
    /// The critic (discriminator).
    pub discriminator: Critic,
}

impl Gan {
    /// A freshly initialised GAN (draws from the device's generator).
    pub fn new(cfg: &GanConfig, device: &Device) -> Self {
        match cfg {
            GanConfig::Mlp(c) => Gan {
                generator: Generator::Mlp(MlpGenerator::new(c, device)),
                discriminator: Critic::Mlp(MlpCritic::new(c, device)),
            },
            GanConfig::Dcgan(c) => Gan {
                generator: Generator::Dcgan(DcganGenerator::new(c, device)),
                discriminator: Critic::Dcgan(DcganCritic::new(c, device)),
            },
        }
    }

    /// Reads a GAN folder.
    pub fn load(folder: &Path, device: &Device) -> Result<(Self, GanConfig)> {
        let cfg = read_config(folder)?;
        // Building the module and loading into it may draw its lazy initial values from the
        // device's generator: hold it, so that a seeded run elsewhere in the process is not
        // disturbed.
        let _rng = crate::device::rng_lock();
        let gan = hub::load_weights_skipping_variants(Gan::new(&cfg, device), folder, &[])?;
        Ok((gan, cfg))
    }

    /// Writes `config.json` and `model.safetensors`.
    pub fn save(&self, cfg: &GanConfig, folder: &Path) -> Result<()> {
        hub::save_pretrained(self, &cfg.to_json(), folder)
    }

    /// The device the networks live on.
    pub fn device(&self) -> Device {
        match &self.generator {
            Generator::Mlp(g) => g.head.weight.device(),
            Generator::Dcgan(g) => g.project.weight.device(),
        }
    }

    /// `n` samples `[n, features]` from noise drawn with `seed` (standard normal, drawn on
    /// the CPU so that a seed gives the same samples on every device).
    pub fn sample(&self, cfg: &GanConfig, n: usize, seed: u64) -> Tensor<2> {
        let z = noise(n, cfg.latent_dim(), seed, &self.device());
        self.generator.forward(z)
    }
}

/// `[n, dim]` standard-normal noise from `seed`, drawn on the CPU (Box-Muller over
/// SplitMix64), the same on every device.
pub fn noise(n: usize, dim: usize, seed: u64, device: &Device) -> Tensor<2> {
    let mut rng = crate::data::shapes::SplitMix64::new(seed);
    let v = normals(&mut rng, n * dim);
    Tensor::<1>::from_floats(v.as_slice(), device).reshape([n, dim])
}

/// `k` standard-normal draws (Box-Muller).
pub fn normals(rng: &mut crate::data::shapes::SplitMix64, k: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(k + 1);
    while v.len() < k {
        let u1 = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        v.push((r * t.cos()) as f32);
        v.push((r * t.sin()) as f32);
    }
    v.truncate(k);
    v
}

/// Reads and validates a GAN folder's config.json.
pub fn read_config(folder: &Path) -> Result<GanConfig> {
    let mc = hub::ModelConfig::read(folder)?;
    GanConfig::from_json(&mc.json).map_err(|m| Error::config(&mc.path, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Power iteration from the kept `u` converges to the largest singular value: the
    /// normalised weight's spectral norm (by SVD) is 1.
    #[test]
    fn spectral_normalisation_divides_by_the_largest_singular_value() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let w = Tensor::<2>::random([6, 4], Distribution::Normal(0.0, 1.0), &device);
        let state = SpectralState::new(6, &device);
        let mut normalised = w.clone();
        for _ in 0..30 {
            normalised = state.normalise(w.clone(), true);
        }
        let values = crate::pipeline::to_vec(normalised).unwrap();
        let m = nalgebra::DMatrix::from_row_slice(6, 4, &values);
        let sigma = m.map(f64::from).singular_values().max();
        assert!((sigma - 1.0).abs() < 1e-4, "spectral norm {sigma}");
        // Without training the kept u does not move.
        let before = crate::pipeline::to_vec(state.u.value_sync()).unwrap();
        let _ = state.normalise(w, false);
        assert_eq!(
            crate::pipeline::to_vec(state.u.value_sync()).unwrap(),
            before
        );
    }

    /// The count from the sizes alone: exact for the MLP, a close lower bound for DCGAN.
    #[test]
    fn parameter_count_from_the_config() {
        let device = Device::flex();
        let mut c = MlpGanConfig::toy(3);
        c.hidden_size = 9;
        c.critic_norm = CriticNorm::Layer;
        let mlp = GanConfig::Mlp(c);
        assert_eq!(
            mlp.num_params(),
            Gan::new(&mlp, &device).num_params() as u128
        );
        let d: GanConfig = GanConfig::from_json(&serde_json::json!({"model_type": DCGAN_TYPE,
            "image_size": 32, "generator_width": 8, "critic_width": 6, "num_channels": 3}))
        .unwrap();
        let (est, real) = (d.num_params(), Gan::new(&d, &device).num_params() as u128);
        assert!(est <= real && est * 100 >= real * 97, "{est} vs {real}");
    }

    #[test]
    fn configs_round_trip_and_bad_sizes_are_refused() {
        let mlp = GanConfig::Mlp(MlpGanConfig::toy(2));
        assert_eq!(GanConfig::from_json(&mlp.to_json()).unwrap(), mlp);
        let mut v = mlp.to_json();
        v["hidden_size"] = 0.into();
        assert!(
            GanConfig::from_json(&v)
                .unwrap_err()
                .contains("hidden_size")
        );
        let mut d = serde_json::json!({"model_type": DCGAN_TYPE, "image_size": 24});
        assert!(
            GanConfig::from_json(&d)
                .unwrap_err()
                .contains("16, 32 or 64")
        );
        d["image_size"] = 64.into();
        let cfg = GanConfig::from_json(&d).unwrap();
        assert_eq!(cfg.image_shape(), Some([1, 64, 64]));
        assert!(GanConfig::from_json(&serde_json::json!({"model_type": "vit"})).is_err());
    }
}
