//! Image-text models (CLIP, SigLIP): embeddings, similarity and zero-shot classification.

use std::path::{Path, PathBuf};

use burn::prelude::*;

use super::{image_processor, to_vec};
use crate::data::{ImageProcessor, decode_rgb, processor::batch_tensor};
use crate::hub::{self, ModelConfig};
use crate::models::clip::{ClipConfig, ClipModel};
use crate::models::siglip::{SiglipConfig, SiglipModel};
use crate::text::{Padding, TextTokenizer};
use crate::{Error, Result};

/// The family of an image-text model, which decides how logits become probabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Softmax over the texts.
    Clip,
    /// An independent sigmoid per image-text pair.
    Siglip,
}

impl Family {
    /// Probabilities from one image's logits over texts: softmax (CLIP) or an independent
    /// sigmoid per text (SigLIP).
    pub fn probabilities(self, logits: &[f32]) -> Vec<f32> {
        match self {
            Family::Clip => super::softmax(logits),
            Family::Siglip => logits.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect(),
        }
    }
}

/// The two towers of an image-text model, of one family or the other.
#[derive(burn::module::Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Towers {
    /// CLIP's.
    Clip(ClipModel),
    /// SigLIP's.
    Siglip(SiglipModel),
}

/// A loaded image-text model with its image processor and tokenizer.
pub struct ImageText {
    /// The networks.
    pub towers: Towers,
    /// The preprocessing the checkpoint expects.
    pub processor: ImageProcessor,
    /// The tokenizer, with the model's length and padding; `Err` holds why there is none
    /// (images can still be embedded).
    pub tokenizer: std::result::Result<TextTokenizer, String>,
    /// config.json as read, written back unchanged on save.
    config: serde_json::Value,
    /// The tokenizer and preprocessor files of the folder it was loaded from, as read then:
    /// they go with every save, even once that folder is gone.
    side_files: std::sync::Arc<Vec<(&'static str, Vec<u8>)>>,
    device: Device,
}

/// Tensor names transformers stores as 0-d scalars.
const CLIP_SCALARS: &[&str] = &["logit_scale"];

/// The 80 prompt templates of the CLIP paper's ImageNet ensemble.
pub const IMAGENET_TEMPLATES: [&str; 80] = [
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
];

/// The default zero-shot template.
pub const DEFAULT_TEMPLATE: &str = "a photo of a {}.";

/// Fills a template: `{}` alone is the bare label; otherwise `{}` is replaced by the label.
pub fn fill_template(template: &str, label: &str) -> String {
    template.replace("{}", label)
}

/// Scales each row to unit length.
pub fn l2_normalize(rows: &mut [Vec<f32>]) {
    for r in rows {
        let n = r
            .iter()
            .map(|x| f64::from(*x) * f64::from(*x))
            .sum::<f64>()
            .sqrt() as f32;
        if n > 0.0 {
            r.iter_mut().for_each(|x| *x /= n);
        }
    }
}

fn normalize_tensor(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt();
    x / norm
}

fn rows(values: Vec<f32>, width: usize) -> Vec<Vec<f32>> {
    values.chunks(width).map(<[f32]>::to_vec).collect()
}

impl ImageText {
    /// Loads a CLIP or SigLIP checkpoint (folder or HF repo id).
    pub fn load(model: &str, device: &Device) -> Result<Self> {
        let folder = hub::resolve(model)?;
        Self::load_folder(&folder, device)
    }

    /// Loads a CLIP or SigLIP checkpoint folder.
    pub fn load_folder(folder: &Path, device: &Device) -> Result<Self> {
        let mc = ModelConfig::read(folder)?;
        let (towers, tokenizer, default_processor) = match mc.model_type.as_str() {
            "clip" => {
                let cfg: ClipConfig = mc.parse()?;
                cfg.validate().map_err(|m| Error::config(&mc.path, m))?;
                let t = &cfg.text_config;
                let tokenizer = TextTokenizer::load(
                    folder,
                    t.max_position_embeddings,
                    Padding::Longest,
                    t.pad_token_id,
                );
                let model = hub::load_weights(ClipModel::new(&cfg, device), folder, &[], &[])?;
                (Towers::Clip(model), tokenizer, "CLIPImageProcessor")
            }
            "siglip" => {
                let cfg: SiglipConfig = mc.parse()?;
                cfg.validate().map_err(|m| Error::config(&mc.path, m))?;
                let t = &cfg.text_config;
                let tokenizer = TextTokenizer::load(
                    folder,
                    t.max_position_embeddings,
                    Padding::MaxLength,
                    Some(t.pad_token_id),
                );
                let model = hub::load_weights(SiglipModel::new(&cfg, device), folder, &[], &[])?;
                (Towers::Siglip(model), tokenizer, "SiglipImageProcessor")
            }
            other => {
                return Err(Error::Unsupported(format!(
                    "{}: model_type {other:?} is not an image-text model (supported: clip, siglip)",
                    mc.path.display()
                )));
            }
        };
        // A missing tokenizer is only an error once texts are asked for; a broken one is one now.
        let tokenizer = match tokenizer {
            Ok(t) => Ok(t),
            Err(e @ Error::Unsupported(_)) => Err(e.to_string()),
            Err(e) => return Err(e),
        };
        let mut side_files = Vec::new();
        for name in hub::SIDE_FILES {
            let src = folder.join(name);
            if src.is_file() {
                side_files.push((*name, std::fs::read(&src).map_err(|e| Error::io(&src, e))?));
            }
        }
        Ok(ImageText {
            towers,
            processor: image_processor(folder, default_processor)?,
            tokenizer,
            config: mc.json.clone(),
            side_files: std::sync::Arc::new(side_files),
            device: device.clone(),
        })
    }

    /// The sizes of the image and text encoders that decide their memory (see
    /// [`crate::memory`]).
    pub fn encoders(&self) -> (crate::memory::Encoder, crate::memory::Encoder) {
        use crate::memory::Encoder;
        // The config was parsed and validated when the model was loaded.
        let enc = |layers, tokens, hidden, intermediate, heads| Encoder {
            layers,
            tokens,
            hidden,
            intermediate,
            heads,
        };
        match self.family() {
            Family::Clip => {
                let Ok(c) = serde_json::from_value::<ClipConfig>(self.config.clone()) else {
                    return (enc(0, 0, 0, 0, 0), enc(0, 0, 0, 0, 0));
                };
                let (v, t) = (&c.vision_config, &c.text_config);
                let grid = v.image_size / v.patch_size.max(1);
                (
                    enc(
                        v.num_hidden_layers,
                        grid * grid + 1,
                        v.hidden_size,
                        v.intermediate_size,
                        v.num_attention_heads,
                    ),
                    enc(
                        t.num_hidden_layers,
                        t.max_position_embeddings,
                        t.hidden_size,
                        t.intermediate_size,
                        t.num_attention_heads,
                    ),
                )
            }
            Family::Siglip => {
                let Ok(c) = serde_json::from_value::<SiglipConfig>(self.config.clone()) else {
                    return (enc(0, 0, 0, 0, 0), enc(0, 0, 0, 0, 0));
                };
                let (v, t) = (&c.vision_config, &c.text_config);
                let grid = v.image_size / v.patch_size.max(1);
                (
                    enc(
                        v.num_hidden_layers,
                        grid * grid,
                        v.hidden_size,
                        v.intermediate_size,
                        v.num_attention_heads,
                    ),
                    enc(
                        t.num_hidden_layers,
                        t.max_position_embeddings,
                        t.hidden_size,
                        t.intermediate_size,
                        t.num_attention_heads,
                    ),
                )
            }
        }
    }

    /// Refuses an inference batch of `n` images (or texts) that cannot fit in memory.
    fn check_memory(&self, n: usize, images: bool) -> Result<()> {
        let (vision, text) = self.encoders();
        let per = if images { vision } else { text }.inference_floats();
        crate::memory::check(
            &self.device,
            crate::memory::f32_bytes(per.saturating_mul(n as u128)),
            &format!("a batch of {n} {}", if images { "images" } else { "texts" }),
            "--batch-size",
        )
    }

    /// Which family the model is.
    pub fn family(&self) -> Family {
        match self.towers {
            Towers::Clip(_) => Family::Clip,
            Towers::Siglip(_) => Family::Siglip,
        }
    }

    /// Unit-length image embeddings `[n, d]` of preprocessed pixels `[n, 3, h, w]`.
    pub fn image_embeds(&self, pixels: Tensor<4>) -> Tensor<2> {
        normalize_tensor(match &self.towers {
            Towers::Clip(m) => m.image_features(pixels),
            Towers::Siglip(m) => m.image_features(pixels),
        })
    }

    /// Unit-length text embeddings `[n, d]` of token ids `[n, len]`.
    pub fn text_embeds(&self, ids: Tensor<2, Int>) -> Tensor<2> {
        normalize_tensor(match &self.towers {
            Towers::Clip(m) => m.text_features(ids),
            Towers::Siglip(m) => m.text_features(ids),
        })
    }

    /// A copy on the device without autodiff, for evaluation during training.
    pub fn valid(&self) -> ImageText {
        use burn::module::Module;
        let mut towers = self.towers.valid();
        match &mut towers {
            Towers::Clip(m) => m.vision_model.patch_dropout = 0.0,
            Towers::Siglip(m) => m.vision_model.patch_dropout = 0.0,
        }
        ImageText {
            towers,
            processor: self.processor.clone(),
            tokenizer: self.tokenizer.clone(),
            config: self.config.clone(),
            side_files: self.side_files.clone(),
            device: self.device.clone().inner(),
        }
    }

    /// A replica on `device` for data-parallel training: the same parameter ids, its own
    /// autodiff leaves ([`burn::module::Module::fork`]).
    pub fn fork(&self, device: &Device) -> ImageText {
        use burn::module::Module;
        ImageText {
            towers: self.towers.clone().fork(device),
            processor: self.processor.clone(),
            tokenizer: self.tokenizer.clone(),
            config: self.config.clone(),
            side_files: self.side_files.clone(),
            device: device.clone(),
        }
    }

    /// config.json as read (written back unchanged on save).
    pub fn config(&self) -> &serde_json::Value {
        &self.config
    }

    /// The compute device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Token ids `[n, len]` for texts, padded as the family wants.
    pub fn tokenize(&self, texts: &[String]) -> Result<Tensor<2, Int>> {
        let tokenizer = self
            .tokenizer
            .as_ref()
            .map_err(|m| Error::Unsupported(m.clone()))?;
        let (ids, n, len) = tokenizer.encode(texts)?;
        Ok(Tensor::from_data(
            TensorData::new(ids, [n, len]),
            &self.device,
        ))
    }

    /// Unit-length embeddings of image files, `batch_size` at a time.
    pub fn encode_images(&self, paths: &[PathBuf], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        check_batch(batch_size)?;
        self.check_memory(batch_size.min(paths.len()), true)?;
        let mut out = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(batch_size) {
            let pixels = self.processor.load_batch(chunk, &self.device)?;
            out.extend(self.embed_pixels(pixels)?);
        }
        Ok(out)
    }

    /// Unit-length embeddings of encoded images (PNG, JPEG, ... bytes).
    pub fn encode_image_bytes(&self, images: &[&[u8]], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        check_batch(batch_size)?;
        self.check_memory(batch_size.min(images.len()), true)?;
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(batch_size) {
            let items = chunk
                .iter()
                .map(|b| decode_rgb(b).map(|img| self.processor.preprocess(&img)))
                .collect::<Result<Vec<_>>>()?;
            out.extend(self.embed_pixels(batch_tensor(items, &self.device)?)?);
        }
        Ok(out)
    }

    /// Embeds many image files with bounded memory, `batch_size` at a time, skipping files
    /// that cannot be read or decoded. `on_skip` hears about each skipped file and
    /// `on_progress` how many files each batch covered. Returns the indices (into `paths`) of
    /// the embedded files and their unit-length embeddings, in input order.
    pub fn encode_images_lenient(
        &self,
        paths: &[PathBuf],
        batch_size: usize,
        mut on_skip: impl FnMut(&Path, &Error),
        mut on_progress: impl FnMut(usize),
    ) -> Result<(Vec<usize>, Vec<Vec<f32>>)> {
        check_batch(batch_size)?;
        self.check_memory(batch_size.min(paths.len()), true)?;
        let (mut kept, mut embeds) = (Vec::new(), Vec::new());
        for (c, chunk) in paths.chunks(batch_size).enumerate() {
            let (ok, pixels) = self
                .processor
                .load_batch_lenient(chunk, &self.device, |i, e| on_skip(&chunk[i], e))?;
            kept.extend(ok.into_iter().map(|i| c * batch_size + i));
            if let Some(pixels) = pixels {
                embeds.extend(self.embed_pixels(pixels)?);
            }
            on_progress(chunk.len());
        }
        Ok((kept, embeds))
    }

    /// Embeds preprocessed pixels, as host rows.
    pub fn embed_pixels(&self, pixels: Tensor<4>) -> Result<Vec<Vec<f32>>> {
        let e = self.image_embeds(pixels);
        let d = e.dims()[1];
        Ok(rows(to_vec(e)?, d))
    }

    /// Unit-length embeddings of texts, `batch_size` at a time.
    pub fn encode_texts(&self, texts: &[String], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        check_batch(batch_size)?;
        self.check_memory(batch_size.min(texts.len()), false)?;
        let mut out = Vec::with_capacity(texts.len());
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let tokenizer = self
            .tokenizer
            .as_ref()
            .map_err(|m| Error::Unsupported(m.clone()))?;
        for chunk in texts.chunks(batch_size) {
            let (ids, n, len) = tokenizer.encode(chunk)?;
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [n, len]), &self.device);
            let e = self.text_embeds(ids);
            let d = e.dims()[1];
            out.extend(rows(to_vec(e)?, d));
        }
        Ok(out)
    }

    /// `exp(logit_scale)` and the logit bias (0 for CLIP).
    pub fn scale_and_bias(&self) -> Result<(f32, f32)> {
        match &self.towers {
            Towers::Clip(m) => Ok((to_vec(m.logit_scale.val())?[0].exp(), 0.0)),
            Towers::Siglip(m) => Ok((
                to_vec(m.logit_scale.val())?[0].exp(),
                to_vec(m.logit_bias.val())?[0],
            )),
        }
    }

    /// `logits_per_image[i][j] = scale * <image_i, text_j> + bias`.
    pub fn logits(&self, images: &[Vec<f32>], texts: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        let (scale, bias) = self.scale_and_bias()?;
        Ok(images
            .iter()
            .map(|i| texts.iter().map(|t| scale * dot(i, t) + bias).collect())
            .collect())
    }

    /// Probabilities from one image's logits: softmax over texts (CLIP) or a sigmoid per text
    /// (SigLIP).
    pub fn probs(&self, logits: &[f32]) -> Vec<f32> {
        self.family().probabilities(logits)
    }

    /// A zero-shot classifier: each label's text embedding is the renormalised mean of its
    /// normalised template embeddings.
    pub fn zero_shot(&self, labels: &[String], templates: &[String]) -> Result<ZeroShotClassifier> {
        if labels.is_empty() {
            return Err(Error::InvalidInput("no labels given".into()));
        }
        if templates.is_empty() {
            return Err(Error::InvalidInput("no templates given".into()));
        }
        if let Some(bad) = templates.iter().find(|t| !t.contains("{}")) {
            return Err(Error::InvalidInput(format!(
                "template {bad:?} has no {{}} for the label"
            )));
        }
        let mut classes = Vec::with_capacity(labels.len());
        for label in labels {
            let prompts: Vec<String> = templates.iter().map(|t| fill_template(t, label)).collect();
            let embeds = self.encode_texts(&prompts, 64)?;
            let mut mean = vec![0f32; embeds[0].len()];
            for e in &embeds {
                mean.iter_mut()
                    .zip(e)
                    .for_each(|(m, x)| *m += x / embeds.len() as f32);
            }
            classes.push(mean);
        }
        l2_normalize(&mut classes);
        let (scale, bias) = self.scale_and_bias()?;
        Ok(ZeroShotClassifier {
            labels: labels.to_vec(),
            class_embeds: classes,
            scale,
            bias,
            family: self.family(),
        })
    }
}

fn check_batch(batch_size: usize) -> Result<()> {
    if batch_size == 0 {
        Err(Error::InvalidInput("batch size must be at least 1".into()))
    } else {
        Ok(())
    }
}

/// The dot product of two embeddings (their cosine when both have unit length).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Class text embeddings ready to score image embeddings; build it once, use it for many images.
#[derive(Clone, Debug)]
pub struct ZeroShotClassifier {
    /// The class names.
    pub labels: Vec<String>,
    /// One unit-length text embedding per class.
    pub class_embeds: Vec<Vec<f32>>,
    scale: f32,
    bias: f32,
    family: Family,
}

impl ZeroShotClassifier {
    /// `(logits_per_image, probs)` for unit-length image embeddings.
    pub fn classify(&self, image_embeds: &[Vec<f32>]) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let logits: Vec<Vec<f32>> = image_embeds
            .iter()
            .map(|i| {
                self.class_embeds
                    .iter()
                    .map(|c| self.scale * dot(i, c) + self.bias)
                    .collect()
            })
            .collect();
        let probs = logits
            .iter()
            .map(|l| self.family.probabilities(l))
            .collect();
        (logits, probs)
    }
}

impl ImageText {
    /// Writes the model as a folder transformers loads (config.json, model.safetensors).
    pub fn save(&self, folder: &Path) -> Result<()> {
        let config = &self.config;
        match &self.towers {
            Towers::Clip(m) => hub::save_pretrained_with_scalars(m, config, folder, CLIP_SCALARS)?,
            Towers::Siglip(m) => hub::save_pretrained(m, config, folder)?,
        }
        // The tokenizer and preprocessor files travel with the weights.
        for (name, bytes) in self.side_files.iter() {
            hub::write_atomic(&folder.join(name), bytes)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        assert_eq!(IMAGENET_TEMPLATES.len(), 80);
        assert!(
            IMAGENET_TEMPLATES
                .iter()
                .all(|t| t.matches("{}").count() == 1)
        );
        let unique: std::collections::BTreeSet<_> = IMAGENET_TEMPLATES.iter().collect();
        assert_eq!(unique.len(), 80);
        assert_eq!(fill_template("{}", "cat"), "cat");
        assert_eq!(fill_template(DEFAULT_TEMPLATE, "cat"), "a photo of a cat.");
    }
}
