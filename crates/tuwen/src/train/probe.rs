//! Linear probing: how linearly separable a frozen encoder's features are. As in the MAE paper,
//! the head is a batch norm without affine parameters (here with the statistics of the training
//! features, fixed) and a linear layer, trained with the encoder frozen.

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;

use crate::{Error, Result};

/// A trained probe: feature standardisation and the linear layer.
pub struct LinearProbe {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    linear: Linear,
    classes: usize,
}

fn standardise(x: &[Vec<f32>], mean: &[f32], inv_std: &[f32]) -> Vec<f32> {
    x.iter()
        .flat_map(|row| {
            row.iter()
                .zip(mean)
                .zip(inv_std)
                .map(|((v, m), s)| (v - m) * s)
        })
        .collect()
}

impl LinearProbe {
    /// Trains the probe on `features` (one row per image) with class indices `labels`, full
    /// batch, `epochs` AdamW steps at `lr` (cosine to 0), weight decay `weight_decay`; `seed`
    /// draws the initial weights.
    pub fn train(
        features: &[Vec<f32>],
        labels: &[usize],
        epochs: usize,
        lr: f64,
        weight_decay: f64,
        seed: u64,
    ) -> Result<Self> {
        let n = features.len();
        if n == 0 || n != labels.len() {
            return Err(Error::InvalidInput(
                "a linear probe needs as many labels as feature rows, and at least one".into(),
            ));
        }
        let d = features[0].len();
        let classes = labels.iter().max().map_or(0, |m| m + 1);
        let mut mean = vec![0f32; d];
        for row in features {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += v / n as f32;
            }
        }
        let mut var = vec![0f32; d];
        for row in features {
            for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
                *s += (v - m).powi(2) / n as f32;
            }
        }
        let inv_std: Vec<f32> = var.iter().map(|v| 1.0 / (v + 1e-6).sqrt()).collect();
        let device = Device::flex().autodiff();
        let _rng = super::engine::device_rng();
        device.seed(seed);
        let x = Tensor::<2>::from_data(
            TensorData::new(standardise(features, &mean, &inv_std), [n, d]),
            &device,
        );
        let y = Tensor::<1, Int>::from_data(
            TensorData::new(labels.iter().map(|&l| l as i64).collect(), [n]),
            &device,
        );
        let mut linear = LinearConfig::new(d, classes).init(&device);
        let mut optim = AdamWConfig::new()
            .with_weight_decay(weight_decay as f32)
            .init();
        let loss_fn = CrossEntropyLossConfig::new().init(&device);
        for epoch in 0..epochs {
            let loss = loss_fn.forward(linear.forward(x.clone()), y.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &linear);
            let lr = super::warmup_cosine(epoch, lr, 0, epochs);
            linear = optim.step(lr, linear, grads);
        }
        Ok(LinearProbe {
            mean,
            inv_std,
            linear: linear.valid(),
            classes,
        })
    }

    /// The probe as one linear layer on raw features (the standardisation folded in): weights
    /// `[features, classes]` (burn's layout) and biases.
    pub fn folded(&self, classes: usize) -> (Vec<f32>, Vec<f32>) {
        let w = crate::pipeline::to_vec(self.linear.weight.val()).unwrap_or_default();
        let b = self
            .linear
            .bias
            .as_ref()
            .and_then(|b| crate::pipeline::to_vec(b.val()).ok())
            .unwrap_or_else(|| vec![0.0; classes]);
        let mut fw = vec![0f32; w.len()];
        let mut fb = b.clone();
        for (j, (m, s)) in self.mean.iter().zip(&self.inv_std).enumerate() {
            for c in 0..classes {
                let wj = w[j * classes + c];
                fw[j * classes + c] = wj * s;
                fb[c] -= wj * s * m;
            }
        }
        (fw, fb)
    }

    /// The predicted class of each feature row.
    pub fn predict(&self, features: &[Vec<f32>]) -> Vec<usize> {
        if features.is_empty() {
            return Vec::new();
        }
        let d = self.mean.len();
        let device = Device::flex();
        let x = Tensor::<2>::from_data(
            TensorData::new(
                standardise(features, &self.mean, &self.inv_std),
                [features.len(), d],
            ),
            &device,
        );
        let logits = crate::pipeline::to_vec(self.linear.forward(x)).unwrap_or_default();
        logits
            .chunks(self.classes.max(1))
            .map(|row| {
                (0..row.len())
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                    .unwrap_or(0)
            })
            .collect()
    }

    /// Top-1 accuracy on `features` with true classes `labels`.
    pub fn accuracy(&self, features: &[Vec<f32>], labels: &[usize]) -> f64 {
        let p = self.predict(features);
        let hits = p.iter().zip(labels).filter(|(a, b)| a == b).count();
        hits as f64 / labels.len().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_what_is_linearly_separable_and_not_more() {
        // Class = sign of feature 0 (scaled oddly, offset); feature 1 is noise.
        let mut rng = crate::data::shapes::SplitMix64::new(1);
        let mut make = |n: usize| {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            for _ in 0..n {
                let a = rng.unit() * 2.0 - 1.0;
                x.push(vec![100.0 + 50.0 * a, rng.unit()]);
                y.push(usize::from(a > 0.0));
            }
            (x, y)
        };
        let (x, y) = make(300);
        let (tx, ty) = make(200);
        let probe = LinearProbe::train(&x, &y, 300, 0.1, 0.0, 0).unwrap();
        assert!(probe.accuracy(&tx, &ty) > 0.95);
        // Labels unrelated to the features: near chance on new data.
        let noise: Vec<usize> = (0..300).map(|i| (i * 7919 % 13) % 2).collect();
        let probe = LinearProbe::train(&x, &noise, 300, 0.1, 0.0, 0).unwrap();
        let tnoise: Vec<usize> = (0..200).map(|i| (i * 104_729 % 17) % 2).collect();
        assert!(probe.accuracy(&tx, &tnoise) < 0.7);
    }

    #[test]
    fn folded_head_predicts_what_the_probe_predicts() {
        let mut rng = crate::data::shapes::SplitMix64::new(5);
        let x: Vec<Vec<f32>> = (0..120)
            .map(|_| {
                (0..4)
                    .map(|k| rng.unit() * (k as f32 + 1.0) + 3.0)
                    .collect()
            })
            .collect();
        let y: Vec<usize> = x
            .iter()
            .map(|r| usize::from(r[0] > 3.5) + usize::from(r[3] > 5.0))
            .collect();
        let probe = LinearProbe::train(&x, &y, 200, 0.05, 0.0, 1).unwrap();
        let (w, b) = probe.folded(3);
        for row in &x {
            let logits: Vec<f32> = (0..3)
                .map(|c| {
                    b[c] + row
                        .iter()
                        .enumerate()
                        .map(|(j, v)| v * w[j * 3 + c])
                        .sum::<f32>()
                })
                .collect();
            let best = (0..3)
                .max_by(|&a, &c| logits[a].total_cmp(&logits[c]))
                .unwrap();
            assert_eq!(best, probe.predict(std::slice::from_ref(row))[0]);
        }
    }
}
