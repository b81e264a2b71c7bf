//! BLIP's ready tasks: captions (greedy, beam search or sampling, with an optional prompt) and
//! image-text matching (ITM probabilities and ITC cosines).

use std::path::{Path, PathBuf};

use burn::prelude::*;

use super::{image_processor, to_vec};
use crate::data::ImageProcessor;
use crate::generate::{Settings, generate};
use crate::models::blip::{
    BlipConfig, BlipForConditionalGeneration, BlipForImageTextRetrieval, Captioner,
};
use crate::text::{Padding, TextTokenizer};
use crate::{Error, Result, hub};

/// A BLIP captioning checkpoint with its preprocessing and tokenizer.
pub struct ImageCaptioning {
    /// The model.
    pub model: BlipForConditionalGeneration,
    /// Its config.
    pub config: BlipConfig,
    /// The preprocessing the checkpoint expects.
    pub processor: ImageProcessor,
    /// BERT's WordPiece with [DEC].
    pub tokenizer: TextTokenizer,
    device: Device,
}

/// Captions of a batch of images.
#[derive(Clone, Debug, PartialEq)]
pub struct Captions {
    /// The decoded captions (special tokens left out), one per image.
    pub captions: Vec<String>,
    /// The full sequences transformers' `generate` returns (start token and prompt included).
    pub token_ids: Vec<Vec<i64>>,
}

fn tokenizer(folder: &Path, cfg: &BlipConfig) -> Result<TextTokenizer> {
    let t = &cfg.text_config;
    TextTokenizer::load(
        folder,
        t.max_position_embeddings,
        Padding::Longest,
        Some(t.pad_token_id),
    )
}

impl ImageCaptioning {
    /// Loads a `BlipForConditionalGeneration` checkpoint (folder or HF repo id).
    pub fn load(model: &str, device: &Device) -> Result<Self> {
        Self::load_folder(&hub::resolve(model)?, device)
    }

    /// Loads a checkpoint folder.
    pub fn load_folder(folder: &Path, device: &Device) -> Result<Self> {
        let (model, config) = BlipForConditionalGeneration::load(folder, device)?;
        Ok(ImageCaptioning {
            tokenizer: tokenizer(folder, &config)?,
            processor: image_processor(folder, "BlipImageProcessor")?,
            model,
            config,
            device: device.clone(),
        })
    }

    /// The decoder's start: `[DEC]`, then the prompt's tokens without its final `[SEP]`, as
    /// transformers' `BlipForConditionalGeneration.generate` builds it.
    pub fn start_tokens(&self, prompt: Option<&str>) -> Result<Vec<i64>> {
        let bos = self.config.text_config.bos_token_id;
        let Some(prompt) = prompt else {
            return Ok(vec![bos]);
        };
        let (mut ids, _, _) = self.tokenizer.encode(&[prompt.to_string()])?;
        if ids.len() < 2 {
            return Err(Error::InvalidInput(format!(
                "--prompt {prompt:?} has no tokens"
            )));
        }
        ids[0] = bos;
        ids.pop();
        Ok(ids)
    }

    /// Captions of preprocessed images `[n, 3, h, w]`; `settings` decides the search (its end
    /// and pad tokens are set from the config).
    pub fn caption_pixels(
        &self,
        pixels: Tensor<4>,
        prompt: Option<&str>,
        settings: &Settings,
    ) -> Result<Captions> {
        let t = &self.config.text_config;
        let settings = Settings {
            eos_token_id: t.sep_token_id,
            pad_token_id: t.pad_token_id,
            ..settings.clone()
        };
        let start = self.start_tokens(prompt)?;
        // The last new token is returned, never fed back: it needs no position.
        let positions = (start.len() - 1).saturating_add(settings.max_new_tokens);
        if positions > t.max_position_embeddings {
            return Err(Error::InvalidInput(format!(
                "the prompt and --max-new-tokens make {positions} tokens; the model has {} positions",
                t.max_position_embeddings
            )));
        }
        let image = self.model.vision_model.forward(pixels);
        let n = image.dims()[0];
        let beams = settings.num_beams.max(1);
        let idx: Vec<i64> = (0..n as i64).flat_map(|i| vec![i; beams]).collect();
        let rows = image.select(0, Tensor::<1, Int>::from_ints(idx.as_slice(), &self.device));
        let captioner = Captioner { model: &self.model };
        let token_ids = generate(
            &captioner,
            captioner.start(rows),
            &vec![start; n],
            &settings,
        )?;
        let captions = token_ids
            .iter()
            .map(|ids| self.tokenizer.decode(ids))
            .collect::<Result<_>>()?;
        Ok(Captions {
            captions,
            token_ids,
        })
    }

    /// Captions of image files, `batch_size` at a time.
    pub fn caption(
        &self,
        paths: &[PathBuf],
        prompt: Option<&str>,
        settings: &Settings,
        batch_size: usize,
    ) -> Result<Captions> {
        if batch_size == 0 {
            return Err(Error::InvalidInput(
                "--batch-size must be at least 1".into(),
            ));
        }
        let mut out = Captions {
            captions: Vec::new(),
            token_ids: Vec::new(),
        };
        for chunk in paths.chunks(batch_size) {
            let pixels = self.processor.load_batch(chunk, &self.device)?;
            let c = self.caption_pixels(pixels, prompt, settings)?;
            out.captions.extend(c.captions);
            out.token_ids.extend(c.token_ids);
        }
        Ok(out)
    }
}

/// A BLIP retrieval checkpoint: image-text matching and contrast.
pub struct ImageTextMatching {
    /// The model.
    pub model: BlipForImageTextRetrieval,
    /// Its config.
    pub config: BlipConfig,
    /// The preprocessing the checkpoint expects.
    pub processor: ImageProcessor,
    /// BERT's WordPiece.
    pub tokenizer: TextTokenizer,
    device: Device,
}

/// Scores of every image against every text.
#[derive(Clone, Debug, PartialEq)]
pub struct MatchScores {
    /// ITM: the probability of the "match" class, `[image][text]`.
    pub itm_probs: Vec<Vec<f32>>,
    /// ITC: cosine of the projected features, `[image][text]`.
    pub itc_scores: Vec<Vec<f32>>,
}

impl ImageTextMatching {
    /// Loads a `BlipForImageTextRetrieval` checkpoint (folder or HF repo id).
    pub fn load(model: &str, device: &Device) -> Result<Self> {
        Self::load_folder(&hub::resolve(model)?, device)
    }

    /// Loads a checkpoint folder.
    pub fn load_folder(folder: &Path, device: &Device) -> Result<Self> {
        let (model, config) = BlipForImageTextRetrieval::load(folder, device)?;
        Ok(ImageTextMatching {
            tokenizer: tokenizer(folder, &config)?,
            processor: image_processor(folder, "BlipImageProcessor")?,
            model,
            config,
            device: device.clone(),
        })
    }

    /// ITM and ITC scores of preprocessed images `[n, 3, h, w]` against `texts`.
    pub fn score_pixels(&self, pixels: Tensor<4>, texts: &[String]) -> Result<MatchScores> {
        if texts.is_empty() {
            return Err(Error::InvalidInput("give at least one --text".into()));
        }
        let (ids, mask, k, len) = self.tokenizer.encode_with_mask(texts)?;
        let ids = Tensor::<1, Int>::from_ints(ids.as_slice(), &self.device).reshape([k, len]);
        let mask = Tensor::<1>::from_floats(mask.as_slice(), &self.device).reshape([k, len]);
        let image = self.model.vision_model.forward(pixels);
        let [n, t, d] = image.dims();
        let mut itm_probs = Vec::with_capacity(n);
        for i in 0..n {
            let one = image
                .clone()
                .slice([i..i + 1, 0..t, 0..d])
                .expand([k, t, d]);
            let logits = self.model.itm_logits(one, ids.clone(), Some(mask.clone()));
            let probs = burn::tensor::activation::softmax(logits, 1).slice([0..k, 1..2]);
            itm_probs.push(to_vec(probs)?);
        }
        let img = self.model.image_features(image);
        let txt = self.model.text_features(ids, Some(mask));
        let itc = to_vec(img.matmul(txt.transpose()))?;
        Ok(MatchScores {
            itm_probs,
            itc_scores: itc.chunks(k).map(<[f32]>::to_vec).collect(),
        })
    }

    /// ITM and ITC scores of image files against `texts`.
    pub fn score(&self, paths: &[PathBuf], texts: &[String]) -> Result<MatchScores> {
        let pixels = self.processor.load_batch(paths, &self.device)?;
        self.score_pixels(pixels, texts)
    }
}

/// CapFilt (the paper's §3.3): a captioner writes synthetic captions for web images, and a
/// matching model filters both the original and the synthetic captions.
#[derive(Clone, Debug)]
pub struct CapFiltSettings {
    /// Synthetic captions per image (nucleus-sampled).
    pub captions_per_image: usize,
    /// A caption is kept when its ITM match probability reaches this.
    pub threshold: f32,
    /// The sampling of synthetic captions (BLIP: top-p 0.9); each caption of an image gets
    /// its own seed.
    pub sampling: crate::generate::Sampling,
    /// Tokens per synthetic caption at most, and at least.
    pub max_new_tokens: usize,
    /// At least this many tokens per synthetic caption.
    pub min_new_tokens: usize,
    /// The captioner's prompt (BLIP: "a picture of "), removed from the synthetic captions.
    pub prompt: String,
}

impl Default for CapFiltSettings {
    fn default() -> Self {
        CapFiltSettings {
            captions_per_image: 1,
            threshold: 0.5,
            sampling: crate::generate::Sampling {
                temperature: 1.0,
                top_k: 0,
                top_p: 0.9,
                seed: 0,
            },
            max_new_tokens: 20,
            min_new_tokens: 5,
            prompt: "a picture of ".into(),
        }
    }
}

/// What CapFilt decided for one image.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CapFiltRow {
    /// The image.
    pub image: PathBuf,
    /// The original caption, its match probability and whether it is kept.
    pub original: (String, f32, bool),
    /// The synthetic captions, likewise.
    pub synthetic: Vec<(String, f32, bool)>,
}

/// Runs CapFilt over `(image, caption)` pairs; `on_skip` hears of unreadable images (left
/// out), `on_progress` of each image done.
pub fn capfilt(
    captioner: &ImageCaptioning,
    filter: &ImageTextMatching,
    pairs: &[(PathBuf, String)],
    s: &CapFiltSettings,
    mut on_skip: impl FnMut(&Path, &Error),
    mut on_progress: impl FnMut(),
) -> Result<Vec<CapFiltRow>> {
    if !(0.0..=1.0).contains(&s.threshold) {
        return Err(Error::InvalidInput(format!(
            "--threshold {} must be in [0, 1]",
            s.threshold
        )));
    }
    let prompt = s.prompt.trim();
    let mut rows = Vec::with_capacity(pairs.len());
    for (i, (image, caption)) in pairs.iter().enumerate() {
        let pixels = match crate::data::open_rgb(image) {
            Ok(img) => {
                let item = captioner.processor.preprocess(&img);
                crate::data::processor::batch_tensor(vec![item], &captioner.device)?
            }
            Err(e) => {
                on_skip(image, &e);
                on_progress();
                continue;
            }
        };
        let mut texts = vec![caption.clone()];
        for k in 0..s.captions_per_image {
            let settings = Settings {
                max_new_tokens: s.max_new_tokens,
                min_new_tokens: s.min_new_tokens,
                sampling: Some(crate::generate::Sampling {
                    seed: s
                        .sampling
                        .seed
                        .wrapping_add((i * s.captions_per_image + k) as u64),
                    ..s.sampling.clone()
                }),
                ..Settings::default()
            };
            let c = captioner.caption_pixels(
                pixels.clone(),
                (!prompt.is_empty()).then_some(prompt),
                &settings,
            )?;
            let text = c.captions[0].trim();
            let text = text.strip_prefix(prompt).unwrap_or(text).trim().to_string();
            texts.push(text);
        }
        let fpixels = filter
            .processor
            .load_batch(std::slice::from_ref(image), &filter.device)?;
        let scores = filter.score_pixels(fpixels, &texts)?;
        let mut judged = texts.into_iter().zip(&scores.itm_probs[0]).map(|(t, &p)| {
            let keep = p >= s.threshold && !t.is_empty();
            (t, p, keep)
        });
        let original = judged.next().expect("the original caption");
        rows.push(CapFiltRow {
            image: image.clone(),
            original,
            synthetic: judged.collect(),
        });
        on_progress();
    }
    Ok(rows)
}
