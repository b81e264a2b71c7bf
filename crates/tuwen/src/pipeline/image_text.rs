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

enum Towers {
    Clip(Box<ClipModel>),
    Siglip(Box<SiglipModel>),
}

/// A loaded image-text model with its image processor and tokenizer.
pub struct ImageText {
    towers: Towers,
    /// The preprocessing the checkpoint expects.
    pub processor: ImageProcessor,
    /// The tokenizer, with the model's length and padding; `Err` holds why there is none
    /// (images can still be embedded).
    pub tokenizer: std::result::Result<TextTokenizer, String>,
    /// config.json as read, written back unchanged on save.
    config: serde_json::Value,
    /// The folder it was loaded from: its tokenizer and preprocessor files go with every save.
    source: PathBuf,
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
                (
                    Towers::Clip(Box::new(model)),
                    tokenizer,
                    "CLIPImageProcessor",
                )
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
                (
                    Towers::Siglip(Box::new(model)),
                    tokenizer,
                    "SiglipImageProcessor",
                )
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
        Ok(ImageText {
            towers,
            processor: image_processor(folder, default_processor)?,
            tokenizer,
            config: mc.json.clone(),
            source: folder.to_path_buf(),
            device: device.clone(),
        })
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

    /// The family's training loss on a batch of matching pairs: CLIP's symmetric softmax
    /// cross-entropy or SigLIP's pairwise sigmoid loss (`chunks` > 1: its chunked form).
    pub fn contrastive_loss(
        &self,
        pixels: Tensor<4>,
        ids: Tensor<2, Int>,
        chunks: usize,
    ) -> Tensor<1> {
        self.contrastive_loss_locked(pixels, ids, chunks, false, false)
    }

    /// [`Self::contrastive_loss`] with towers locked (LiT): a locked tower's embeddings are
    /// detached, so its parameters get no gradient and stay as they are.
    pub fn contrastive_loss_locked(
        &self,
        pixels: Tensor<4>,
        ids: Tensor<2, Int>,
        chunks: usize,
        lock_image: bool,
        lock_text: bool,
    ) -> Tensor<1> {
        let mut img = self.image_embeds(pixels);
        let mut txt = self.text_embeds(ids);
        if lock_image {
            img = img.detach();
        }
        if lock_text {
            txt = txt.detach();
        }
        self.embeds_loss(img, txt, chunks, true)
    }

    /// The family's loss of unit-length embeddings of matching pairs; `live_scale` false
    /// detaches the temperature (and bias) so that they get no gradient from this loss.
    fn embeds_loss(
        &self,
        img: Tensor<2>,
        txt: Tensor<2>,
        chunks: usize,
        live_scale: bool,
    ) -> Tensor<1> {
        let live = |p: Tensor<1>| if live_scale { p } else { p.detach() };
        match &self.towers {
            Towers::Clip(m) => crate::loss::clip_loss(img, txt, live(m.logit_scale.val())),
            Towers::Siglip(m) => {
                let (scale, bias) = (live(m.logit_scale.val()), live(m.logit_bias.val()));
                if chunks > 1 {
                    crate::loss::siglip_loss_chunked(img, txt, scale, bias, chunks)
                } else {
                    crate::loss::siglip_loss(img, txt, scale, bias)
                }
            }
        }
    }

    /// The loss of a batch and its gradients computed in `micro` micro-batches, the GradCache
    /// way open_clip's `--accum-freq` works: the embeddings of the whole batch are computed
    /// first without a graph; then each micro-batch is embedded again with one, and the loss
    /// over the whole batch (all negatives) is back-propagated through that micro-batch only.
    /// The temperature and bias take their gradient from the first pass alone, so the summed
    /// gradients equal the full batch's. `reseed(j)` is called before each embedding of
    /// micro-batch `j`, so that random draws (patch dropout) are the same both times.
    #[allow(clippy::too_many_arguments)]
    pub fn accumulated_grads(
        &self,
        pixels: Tensor<4>,
        ids: Tensor<2, Int>,
        micro: usize,
        chunks: usize,
        lock_image: bool,
        lock_text: bool,
        reseed: impl Fn(usize),
    ) -> (f32, burn::optim::GradientsParams) {
        use burn::optim::GradientsParams;
        let n = pixels.dims()[0];
        let micro = micro.clamp(1, n);
        let bounds: Vec<(usize, usize)> = (0..micro)
            .map(|j| (j * n / micro, (j + 1) * n / micro))
            .filter(|(a, b)| b > a)
            .collect();
        if bounds.len() == 1 {
            // One micro-batch: no cache to build, a single forward and backward.
            reseed(0);
            let loss = self.contrastive_loss_locked(pixels, ids, chunks, lock_image, lock_text);
            let loss_value = loss.clone().into_scalar();
            return (loss_value, self.grads_of(loss));
        }
        let part4 = |t: &Tensor<4>, (a, b): (usize, usize)| t.clone().slice(a..b);
        let part2 = |t: &Tensor<2, Int>, (a, b): (usize, usize)| t.clone().slice(a..b);
        let mut cached_img = Vec::new();
        let mut cached_txt = Vec::new();
        for (j, &r) in bounds.iter().enumerate() {
            reseed(j);
            cached_img.push(self.image_embeds(part4(&pixels, r)).detach());
            cached_txt.push(self.text_embeds(part2(&ids, r)).detach());
        }
        let mut total = GradientsParams::new();
        let mut loss_value = f32::NAN;
        for (j, &r) in bounds.iter().enumerate() {
            reseed(j);
            let mut img = cached_img.clone();
            let mut txt = cached_txt.clone();
            if !lock_image {
                img[j] = self.image_embeds(part4(&pixels, r));
            }
            if !lock_text {
                txt[j] = self.text_embeds(part2(&ids, r));
            }
            let loss = self.embeds_loss(Tensor::cat(img, 0), Tensor::cat(txt, 0), chunks, j == 0);
            if j == 0 {
                loss_value = loss.clone().into_scalar();
            }
            let grads = loss.backward();
            let g = match &self.towers {
                Towers::Clip(m) => GradientsParams::from_grads(grads, &**m),
                Towers::Siglip(m) => GradientsParams::from_grads(grads, &**m),
            };
            total = if j == 0 { g } else { self.add_grads(total, g) };
        }
        (loss_value, total)
    }

    /// `a + b`, parameter by parameter.
    fn add_grads(
        &self,
        a: burn::optim::GradientsParams,
        b: burn::optim::GradientsParams,
    ) -> burn::optim::GradientsParams {
        use burn::optim::GradientsAccumulator;
        match &self.towers {
            Towers::Clip(m) => {
                let mut acc = GradientsAccumulator::new();
                acc.accumulate(&**m, a);
                acc.accumulate(&**m, b);
                acc.grads()
            }
            Towers::Siglip(m) => {
                let mut acc = GradientsAccumulator::new();
                acc.accumulate(&**m, a);
                acc.accumulate(&**m, b);
                acc.grads()
            }
        }
    }

    /// The gradients of `loss` by parameter.
    pub fn grads_of(&self, loss: Tensor<1>) -> burn::optim::GradientsParams {
        use burn::optim::GradientsParams;
        let grads = loss.backward();
        match &self.towers {
            Towers::Clip(m) => GradientsParams::from_grads(grads, &**m),
            Towers::Siglip(m) => GradientsParams::from_grads(grads, &**m),
        }
    }

    /// Gives every parameter an id derived from its name, so that an optimiser state saved
    /// with one instance of the model applies to another loaded from the same checkpoint.
    pub fn with_stable_param_ids(mut self) -> Self {
        self.towers = match self.towers {
            Towers::Clip(m) => Towers::Clip(Box::new(crate::train::stable_param_ids(*m))),
            Towers::Siglip(m) => Towers::Siglip(Box::new(crate::train::stable_param_ids(*m))),
        };
        self
    }

    /// A copy on the device without autodiff, for evaluation during training.
    pub fn valid(&self) -> ImageText {
        use burn::module::Module;
        let mut towers = match &self.towers {
            Towers::Clip(m) => Towers::Clip(Box::new(m.valid())),
            Towers::Siglip(m) => Towers::Siglip(Box::new(m.valid())),
        };
        match &mut towers {
            Towers::Clip(m) => m.vision_model.patch_dropout = 0.0,
            Towers::Siglip(m) => m.vision_model.patch_dropout = 0.0,
        }
        ImageText {
            towers,
            processor: self.processor.clone(),
            tokenizer: self.tokenizer.clone(),
            config: self.config.clone(),
            source: self.source.clone(),
            device: self.device.clone().inner(),
        }
    }

    /// AdamW over the model's parameters, without decay on norms, biases, embeddings and
    /// the temperature (see [`crate::train::adamw`]).
    pub fn optimizer(&self, weight_decay: f64) -> burn::optim::ModuleOptimizer {
        match &self.towers {
            Towers::Clip(m) => crate::train::adamw(&**m, weight_decay),
            Towers::Siglip(m) => crate::train::adamw(&**m, weight_decay),
        }
    }

    /// One optimiser step: gradients clipped to `max_norm` globally, then applied at `lr`.
    /// Returns the updated model and the gradient norm before clipping.
    pub fn step(
        mut self,
        optim: &mut burn::optim::ModuleOptimizer,
        lr: f64,
        mut grads: burn::optim::GradientsParams,
        max_norm: f64,
    ) -> (Self, f64) {
        let norm;
        self.towers = match self.towers {
            Towers::Clip(m) => {
                norm = crate::train::clip_global_norm(&*m, &mut grads, max_norm);
                Towers::Clip(Box::new(optim.step(lr, *m, grads)))
            }
            Towers::Siglip(m) => {
                norm = crate::train::clip_global_norm(&*m, &mut grads, max_norm);
                Towers::Siglip(Box::new(optim.step(lr, *m, grads)))
            }
        };
        (self, norm)
    }

    /// Sets FLIP patch dropout: the share of image patches dropped in training steps.
    pub fn set_patch_dropout(&mut self, p: f64) {
        match &mut self.towers {
            Towers::Clip(m) => m.vision_model.patch_dropout = p,
            Towers::Siglip(m) => m.vision_model.patch_dropout = p,
        }
    }

    /// Sets the seed of the next random draw of patch dropout (each draw advances it).
    pub fn set_draw_seed(&self, seed: u64) {
        match &self.towers {
            Towers::Clip(m) => m.vision_model.draws.set(seed),
            Towers::Siglip(m) => m.vision_model.draws.set(seed),
        }
    }

    /// Whether the forward pass draws from the device's generator in training (attention
    /// dropout set in the config).
    pub fn draws_from_device(&self) -> bool {
        ["text_config", "vision_config"].iter().any(|tower| {
            self.config[tower]["attention_dropout"]
                .as_f64()
                .is_some_and(|p| p > 0.0)
        })
    }

    /// The compute device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every parameter's gradient by transformers' name, in PyTorch's layout.
    pub fn named_grads(
        &self,
        grads: &burn::tensor::Gradients,
    ) -> std::collections::BTreeMap<String, (Vec<f32>, Vec<usize>)> {
        match &self.towers {
            Towers::Clip(m) => crate::train::named_grads(&**m, grads),
            Towers::Siglip(m) => crate::train::named_grads(&**m, grads),
        }
    }

    /// [`Self::named_grads`] of gradients gathered by parameter.
    pub fn named_param_grads(
        &self,
        grads: &burn::optim::GradientsParams,
    ) -> std::collections::BTreeMap<String, (Vec<f32>, Vec<usize>)> {
        match &self.towers {
            Towers::Clip(m) => crate::train::grads::named_param_grads(&**m, grads),
            Towers::Siglip(m) => crate::train::grads::named_param_grads(&**m, grads),
        }
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
    /// `on_progress` how many files each batch covered. Returns the embedded paths and their
    /// unit-length embeddings, in input order.
    pub fn encode_images_lenient(
        &self,
        paths: &[PathBuf],
        batch_size: usize,
        mut on_skip: impl FnMut(&Path, &Error),
        mut on_progress: impl FnMut(usize),
    ) -> Result<(Vec<PathBuf>, Vec<Vec<f32>>)> {
        use rayon::prelude::*;
        check_batch(batch_size)?;
        let (mut kept, mut embeds) = (Vec::new(), Vec::new());
        for chunk in paths.chunks(batch_size) {
            let loaded: Vec<Result<(Vec<f32>, [usize; 3])>> = chunk
                .par_iter()
                .map(|p| crate::data::open_rgb(p).map(|img| self.processor.preprocess(&img)))
                .collect();
            let mut items = Vec::new();
            for (path, item) in chunk.iter().zip(loaded) {
                match item {
                    Ok(item) => {
                        kept.push(path.clone());
                        items.push(item);
                    }
                    Err(e) => on_skip(path, &e),
                }
            }
            if !items.is_empty() {
                embeds.extend(self.embed_pixels(batch_tensor(items, &self.device)?)?);
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
            Towers::Clip(m) => {
                hub::save_pretrained_with_scalars(&**m, config, folder, CLIP_SCALARS)?
            }
            Towers::Siglip(m) => hub::save_pretrained(&**m, config, folder)?,
        }
        // The tokenizer and preprocessor files travel with the weights.
        let same = std::fs::canonicalize(folder).ok() == std::fs::canonicalize(&self.source).ok();
        if !same {
            for name in hub::SIDE_FILES {
                let src = self.source.join(name);
                if src.is_file() {
                    let bytes = std::fs::read(&src).map_err(|e| Error::io(&src, e))?;
                    hub::write_atomic(&folder.join(name), &bytes)?;
                }
            }
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
