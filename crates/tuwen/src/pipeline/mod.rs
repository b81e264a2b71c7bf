//! Ready-to-use tasks that tie a checkpoint, its image processor and its labels together, for
//! programs and for the CLI.

pub mod blip;
pub mod gan;
pub mod image_text;
pub mod mae;
pub mod vqgan;

pub use image_text::{ImageText, ZeroShotClassifier};

use std::path::{Path, PathBuf};

use burn::prelude::*;

use crate::data::ImageProcessor;
use crate::hub::{self, ModelConfig};
use crate::models::vit::ViTForImageClassification;
use crate::{Error, Result};

/// Copies a float tensor's values to the host, row-major.
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| Error::InvalidInput(format!("tensor readback failed: {e:?}")))
}

/// The preprocessor_config.json of a folder, or the family's defaults when it has none.
pub fn image_processor(folder: &Path, default_type: &str) -> Result<ImageProcessor> {
    let path = folder.join("preprocessor_config.json");
    if path.exists() {
        ImageProcessor::from_file(&path)
    } else {
        ImageProcessor::for_type(default_type).map_err(|m| Error::config(&path, m))
    }
}

/// The classifier networks [`ImageClassification`] runs.
enum Classifier {
    Vit(Box<ViTForImageClassification>),
    EfficientNet(Box<crate::models::efficientnet::EfficientNetForImageClassification>),
}

/// An image classifier: a checkpoint, its preprocessing and its class names.
pub struct ImageClassification {
    model: Classifier,
    patch_size: usize,
    /// The preprocessing the checkpoint expects.
    pub processor: ImageProcessor,
    /// Class names in id order.
    pub labels: Vec<String>,
    /// `f32` values alive per image in a forward pass (see [`crate::memory`]).
    per_image_floats: u128,
    device: Device,
}

impl ImageClassification {
    /// Loads a classifier from a folder or HF repo id.
    pub fn load(model: &str, device: &Device) -> Result<Self> {
        Self::load_folder(&hub::resolve(model)?, device)
    }

    /// Loads a classifier checkpoint folder.
    pub fn load_folder(folder: &Path, device: &Device) -> Result<Self> {
        let folder = folder.to_path_buf();
        let mc = ModelConfig::read(&folder)?;
        match mc.model_type.as_str() {
            "vit" => {
                let (model, cfg) = ViTForImageClassification::load(&folder, device)?;
                let labels = cfg.labels().map_err(|m| Error::config(&mc.path, m))?;
                if cfg.num_channels != 3 {
                    return Err(Error::Unsupported(format!(
                        "{}: the model takes {} input channels; images are fed as RGB",
                        mc.path.display(),
                        cfg.num_channels
                    )));
                }
                let per_image_floats = crate::memory::Encoder {
                    layers: cfg.num_hidden_layers,
                    tokens: cfg.grid() * cfg.grid() + 1,
                    hidden: cfg.hidden_size,
                    intermediate: cfg.intermediate_size,
                    heads: cfg.num_attention_heads,
                }
                .inference_floats();
                Ok(ImageClassification {
                    per_image_floats,
                    model: Classifier::Vit(Box::new(model)),
                    patch_size: cfg.patch_size,
                    processor: image_processor(&folder, "ViTImageProcessor")?,
                    labels,
                    device: device.clone(),
                })
            }
            "efficientnet" => {
                use crate::models::efficientnet::EfficientNetForImageClassification;
                let (model, cfg) = EfficientNetForImageClassification::load(&folder, device)?;
                let labels = cfg.labels().map_err(|m| Error::config(&mc.path, m))?;
                if cfg.num_channels != 3 || labels.is_empty() {
                    return Err(Error::Unsupported(format!(
                        "{}: not an RGB image classifier (channels {}, {} labels)",
                        mc.path.display(),
                        cfg.num_channels,
                        labels.len()
                    )));
                }
                Ok(ImageClassification {
                    // At inference a block's input and output are alive at once: about a
                    // tenth of what training keeps (three tensors a layer, all layers).
                    per_image_floats: cfg.training_floats() / 10,
                    model: Classifier::EfficientNet(Box::new(model)),
                    // The stem and four stride-2 stages: 32 px is the least that keeps a pixel.
                    patch_size: 1,
                    processor: image_processor(&folder, "EfficientNetImageProcessor")?,
                    labels,
                    device: device.clone(),
                })
            }
            other => Err(Error::Unsupported(format!(
                "{}: image classification supports model_type \"vit\" and \"efficientnet\", not {other:?}",
                mc.path.display()
            ))),
        }
    }

    /// Logits for preprocessed pixels `[n, 3, h, w]`: `[n, num_labels]`.
    pub fn forward(&self, pixel_values: Tensor<4>) -> Tensor<2> {
        match &self.model {
            Classifier::Vit(m) => m.forward(pixel_values),
            Classifier::EfficientNet(m) => m.forward(pixel_values),
        }
    }

    /// What the classification head sees `[n, features]`: ViT's final class token,
    /// EfficientNet's pooled features (the features of a Fréchet distance).
    pub fn features(&self, pixel_values: Tensor<4>) -> Tensor<2> {
        match &self.model {
            Classifier::Vit(m) => m.features(pixel_values),
            Classifier::EfficientNet(m) => m.efficientnet.forward(pixel_values).1,
        }
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// [`logits`](Self::logits) that skips unreadable images: the indices of the images kept
    /// and their logits; `on_skip` is told each skipped path and why.
    pub fn logits_lenient(
        &self,
        images: &[PathBuf],
        batch_size: usize,
        mut on_skip: impl FnMut(&Path, &Error),
    ) -> Result<(Vec<usize>, Vec<Vec<f32>>)> {
        let mut kept = Vec::new();
        let out = self.run_batches(
            images,
            batch_size,
            |_| {},
            |chunk, c, pixels_of| {
                let (ok, pixels) = pixels_of(chunk, &mut |i, e| on_skip(&chunk[i], e))?;
                kept.extend(ok.into_iter().map(|i| c * batch_size + i));
                Ok(pixels)
            },
        )?;
        Ok((kept, out))
    }

    /// Logits per image file, in the order given, `batch_size` images per forward pass;
    /// `progress` is told how many images each finished batch held. An unreadable image is
    /// an error naming it.
    pub fn logits(
        &self,
        images: &[PathBuf],
        batch_size: usize,
        progress: impl FnMut(usize),
    ) -> Result<Vec<Vec<f32>>> {
        self.run_batches(images, batch_size, progress, |chunk, _, _| {
            Ok(Some(self.processor.load_batch(chunk, &self.device)?))
        })
    }

    /// The batches of `images` through the network: `load` makes each chunk's pixels (given
    /// the chunk, its number and the lenient loader), after the batch was checked to fit.
    fn run_batches(
        &self,
        images: &[PathBuf],
        batch_size: usize,
        mut progress: impl FnMut(usize),
        mut load: impl FnMut(&[PathBuf], usize, &LenientLoader) -> Result<Option<Tensor<4>>>,
    ) -> Result<Vec<Vec<f32>>> {
        if batch_size == 0 {
            return Err(Error::InvalidInput("batch size must be at least 1".into()));
        }
        let n = batch_size.min(images.len());
        crate::memory::check(
            &self.device,
            crate::memory::f32_bytes(self.per_image_floats.saturating_mul(n as u128)),
            &format!("a batch of {n} images"),
            "--batch-size",
        )?;
        let k = self.labels.len();
        let lenient = |chunk: &[PathBuf], on_skip: &mut dyn FnMut(usize, &Error)| {
            self.processor
                .load_batch_lenient(chunk, &self.device, on_skip)
        };
        let mut out = Vec::with_capacity(images.len());
        for (c, chunk) in images.chunks(batch_size).enumerate() {
            if let Some(pixels) = load(chunk, c, &lenient)? {
                let [_, _, h, w] = pixels.dims();
                if h < self.patch_size || w < self.patch_size {
                    return Err(Error::InvalidInput(format!(
                        "images preprocess to {h}x{w}, smaller than one {p}x{p} patch",
                        p = self.patch_size
                    )));
                }
                let values = to_vec(self.forward(pixels))?;
                out.extend(values.chunks(k).map(<[f32]>::to_vec));
            }
            progress(chunk.len());
        }
        Ok(out)
    }
}

/// Loads a chunk of image files, skipping (and reporting) those that cannot be read.
type LenientLoader<'a> = dyn Fn(&[PathBuf], &mut dyn FnMut(usize, &Error)) -> Result<(Vec<usize>, Option<Tensor<4>>)>
    + 'a;

/// Softmax of one row of logits, computed in f64.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = logits.iter().map(|&x| f64::from(x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|&x| (x / s) as f32).collect()
}

/// Loads a checkpoint and writes it again as one model.safetensors with transformers' tensor
/// names (merging shards, renaming transformers 5's internal names to the published ones), with
/// its config and the processor and tokenizer files next to it.
pub fn convert(model: &str, out: &Path, device: &Device) -> Result<()> {
    use crate::models::vit::ViTModel;
    let folder = hub::resolve(model)?;
    let mc = ModelConfig::read(&folder)?;
    if !matches!(
        mc.model_type.as_str(),
        "vit" | "vit_mae" | "efficientnet" | "clip" | "siglip" | "blip"
    ) {
        return Err(Error::Unsupported(format!(
            "{}: convert supports model_type vit, vit_mae, efficientnet, clip, siglip and blip, not {:?}",
            mc.path.display(),
            mc.model_type
        )));
    }
    if out.exists() && std::fs::canonicalize(out).ok() == std::fs::canonicalize(&folder).ok() {
        return Err(Error::InvalidInput(
            "--out must differ from the input folder".into(),
        ));
    }
    let classifier = mc.architecture.as_deref() == Some("ViTForImageClassification");
    if mc.model_type == "blip" {
        use crate::models::blip::{BlipForConditionalGeneration, BlipForImageTextRetrieval};
        match mc.architecture.as_deref() {
            Some("BlipForImageTextRetrieval") => {
                let (m, cfg) = BlipForImageTextRetrieval::load(&folder, device)?;
                m.save(&cfg, out)?;
            }
            Some("BlipForConditionalGeneration") | None => {
                let (m, cfg) = BlipForConditionalGeneration::load(&folder, device)?;
                m.save(&cfg, out)?;
            }
            Some(other) => {
                return Err(Error::Unsupported(format!(
                    "{}: BLIP architecture {other:?} (supported: BlipForConditionalGeneration, \
                     BlipForImageTextRetrieval)",
                    mc.path.display()
                )));
            }
        }
    } else if mc.model_type == "efficientnet" {
        let (m, cfg) =
            crate::models::efficientnet::EfficientNetForImageClassification::load(&folder, device)?;
        m.save(&cfg, out)?;
    } else if mc.model_type == "vit_mae" {
        let (m, cfg) = crate::models::vit_mae::ViTMAEForPreTraining::load(&folder, device)?;
        m.save(&cfg, out)?;
    } else if mc.model_type != "vit" {
        ImageText::load_folder(&folder, device)?.save(out)?;
    } else if classifier {
        let (m, cfg) = ViTForImageClassification::load(&folder, device)?;
        m.save(&cfg, out)?;
    } else {
        let (m, cfg) = ViTModel::load(&folder, device)?;
        m.save(&cfg, out)?;
    }
    for extra in hub::SIDE_FILES {
        let src = folder.join(extra);
        if src.exists() {
            let bytes = std::fs::read(&src).map_err(|e| Error::io(&src, e))?;
            hub::write_atomic(&out.join(extra), &bytes)?;
        }
    }
    Ok(())
}
