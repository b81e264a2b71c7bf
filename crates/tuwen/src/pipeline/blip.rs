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
