//! LPIPS (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual
//! Metric"), VGG variant, as taming-transformers and the `lpips` package compute it: VGG-16's
//! features after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 of both images, each
//! normalised to unit length over channels, squared differences weighted per channel by a
//! learned 1×1 convolution (`lin0`…`lin4`), averaged over positions and summed over layers.
//!
//! tuwen ships no weights: [`Lpips::load`] reads one safetensors file with the `lpips`
//! package's (and taming's) state-dict names, `scaling_layer.{shift,scale}`,
//! `net.slice{1..5}.{i}.{weight,bias}`, `lin{0..4}.model.1.weight` (`.model.0.` without dropout)
//! (`python/export_lpips.py` writes it from `lpips.LPIPS(net="vgg")`). The widths are read
//! from the file, so smaller networks of the same shape load too.

use std::path::Path;

use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::{Error, Result, hub};

/// VGG-16's `features` indices of the 13 convolutions, by slice (`net.sliceK.i`).
const VGG_CONVS: [(usize, usize); 13] = [
    (1, 0),
    (1, 2),
    (2, 5),
    (2, 7),
    (3, 10),
    (3, 12),
    (3, 14),
    (4, 17),
    (4, 19),
    (4, 21),
    (5, 24),
    (5, 26),
    (5, 28),
];
/// Convolutions per slice (a max-pool starts every slice but the first).
const PER_SLICE: [usize; 5] = [2, 2, 3, 3, 3];

/// LPIPS with a VGG-16 trunk.
#[derive(Module, Debug)]
pub struct Lpips {
    /// The input shift per channel (`scaling_layer.shift`, `[1, 3, 1, 1]`).
    pub shift: burn::module::Param<Tensor<4>>,
    /// The input scale per channel (`scaling_layer.scale`, `[1, 3, 1, 1]`).
    pub scale: burn::module::Param<Tensor<4>>,
    /// VGG-16's 13 convolutions, in order.
    pub convs: Vec<Conv2d>,
    /// The 1×1 channel weights of each of the 5 layers (no bias).
    pub lins: Vec<Conv2d>,
    pool: MaxPool2d,
}

impl Lpips {
    fn new(widths: &[usize; 14], device: &Device) -> Self {
        let conv = |i: usize, o: usize, k: usize, bias: bool| {
            Conv2dConfig::new([i, o], [k, k])
                .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
                .with_bias(bias)
                .init(device)
        };
        let convs = (0..13)
            .map(|i| conv(widths[i], widths[i + 1], 3, true))
            .collect();
        let mut ends = Vec::new();
        let mut at = 0;
        for n in PER_SLICE {
            at += n;
            ends.push(widths[at]);
        }
        let lins = ends.iter().map(|&c| conv(c, 1, 1, false)).collect();
        let p = |v: [f32; 3]| {
            burn::module::Param::from_tensor(
                Tensor::<1>::from_floats(v, device).reshape([1, 3, 1, 1]),
            )
        };
        Lpips {
            shift: p([-0.030, -0.088, -0.188]),
            scale: p([0.458, 0.448, 0.450]),
            convs,
            lins,
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
        }
    }

    /// Loads LPIPS weights from a safetensors file with the `lpips` package's names; the
    /// network is frozen (it takes no gradient).
    pub fn load(file: &Path, device: &Device) -> Result<Self> {
        let shapes = hub::safetensors_header(file)?;
        let bad = |m: String| Error::Weights {
            path: file.to_path_buf(),
            message: m,
        };
        let mut widths = [0usize; 14];
        for (i, (s, k)) in VGG_CONVS.iter().enumerate() {
            let name = format!("net.slice{s}.{k}.weight");
            let shape = shapes
                .get(&name)
                .ok_or_else(|| bad(format!("no {name}: not an LPIPS (VGG) file")))?;
            if shape.len() != 4 || shape[2] != 3 || shape[3] != 3 {
                return Err(bad(format!(
                    "{name} has shape {shape:?}, not [out, in, 3, 3]"
                )));
            }
            if i == 0 {
                widths[0] = shape[1];
            } else if shape[1] != widths[i] {
                return Err(bad(format!(
                    "{name} takes {} channels, not {}",
                    shape[1], widths[i]
                )));
            }
            widths[i + 1] = shape[0];
        }
        if widths[0] != 3 {
            return Err(bad(format!(
                "the first convolution takes {} channels, not 3",
                widths[0]
            )));
        }
        let mut renames: Vec<(String, String)> = VGG_CONVS
            .iter()
            .enumerate()
            .map(|(i, (s, k))| (format!(r"^net\.slice{s}\.{k}\."), format!("convs.{i}.")))
            .collect();
        renames.push((r"^lin(\d)\.model\.\d\.".into(), "lins.$1.".into()));
        renames.push((r"^scaling_layer\.".into(), String::new()));
        let renames: Vec<(&str, &str)> = renames
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let _rng = crate::device::rng_lock();
        let m = hub::load_weights_file(Lpips::new(&widths, device), file, &renames, &[])?;
        Ok(m.no_grad())
    }

    /// The five layers' features of images in [-1, 1].
    fn features(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        let mut h = (x - self.shift.val()) / self.scale.val();
        let mut out = Vec::new();
        let mut c = 0;
        for (s, n) in PER_SLICE.iter().enumerate() {
            if s > 0 {
                h = self.pool.forward(h);
            }
            for _ in 0..*n {
                h = relu(self.convs[c].forward(h));
                c += 1;
            }
            out.push(h.clone());
        }
        out
    }

    /// The LPIPS distance of each pair `[b]`, images `[b, 3, h, w]` in [-1, 1].
    pub fn forward(&self, a: Tensor<4>, b: Tensor<4>) -> Tensor<1> {
        let n = a.dims()[0];
        let unit = |f: Tensor<4>| {
            let norm = f.clone().square().sum_dim(1).sqrt();
            f / (norm + 1e-10)
        };
        let mut total: Option<Tensor<1>> = None;
        for ((fa, fb), lin) in self
            .features(a)
            .into_iter()
            .zip(self.features(b))
            .zip(&self.lins)
        {
            let d = (unit(fa) - unit(fb)).square();
            let v = lin.forward(d).mean_dims(&[2, 3]).reshape([n]);
            total = Some(match total {
                Some(t) => t + v,
                None => v,
            });
        }
        total.expect("five layers")
    }
}
