//! Text to token ids, from a checkpoint's tokenizer.json (the `tokenizers` crate), with the
//! truncation, padding and canonicalisation transformers applies for each family.

use std::path::Path;

use serde_json::Value;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::hub::read_json;
use crate::{Error, Result};

pub mod sentencepiece;

/// How a family wants its texts laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// Pad each batch to its longest text (CLIP: pooling at the end token ignores padding).
    Longest,
    /// Pad every text to the model's length (SigLIP: trained that way, pooled at the last slot).
    MaxLength,
}

/// A tokenizer with its model's length limit and padding.
#[derive(Clone)]
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    /// The longest token sequence the model takes.
    pub max_len: usize,
    /// The id texts are padded with.
    pub pad_id: u32,
    padding: Padding,
    /// SigLIP's canonicalisation (lower case, no punctuation, single spaces), when its
    /// tokenizer class applies it.
    canonicalize: Option<bool>,
    /// Prepend `▁` (SentencePiece's space) to each text, as transformers' SentencePiece
    /// tokenizers do.
    underline_prefix: bool,
}

fn token_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl TextTokenizer {
    /// Loads `<folder>/tokenizer.json` and, when present, tokenizer_config.json.
    /// `max_positions` is the model's position-embedding count; `config_pad` its pad id.
    pub fn load(
        folder: &Path,
        max_positions: usize,
        padding: Padding,
        config_pad: Option<i64>,
    ) -> Result<Self> {
        let cfg_path = folder.join("tokenizer_config.json");
        let cfg = if cfg_path.exists() {
            read_json(&cfg_path)?
        } else {
            Value::Null
        };
        let mut path = folder.join("tokenizer.json");
        let spiece = folder.join("spiece.model");
        let underline_prefix = !path.exists() && spiece.exists();
        let vocab = folder.join("vocab.txt");
        let mut tokenizer = if path.exists() {
            Tokenizer::from_file(&path).map_err(|e| Error::config(&path, e.to_string()))?
        } else if !underline_prefix && vocab.exists() {
            let lower = cfg
                .get("do_lower_case")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            path = vocab;
            bert_from_vocab(folder, lower)?
        } else if underline_prefix {
            let eos = cfg
                .get("eos_token")
                .and_then(token_string)
                .unwrap_or_else(|| "</s>".into());
            path = spiece.clone();
            sentencepiece::load(&spiece, Some(&eos))?
        } else {
            return Err(Error::Unsupported(format!(
                "{}: no tokenizer.json, vocab.txt or spiece.model, so texts cannot be tokenized",
                folder.display()
            )));
        };
        let mut max_len = max_positions;
        if let Some(m) = cfg.get("model_max_length").and_then(Value::as_u64) {
            max_len = max_len.min(m as usize);
        }
        let pad_id = cfg
            .get("pad_token")
            .and_then(token_string)
            .and_then(|t| tokenizer.token_to_id(&t))
            .or_else(|| config_pad.and_then(|p| u32::try_from(p).ok()))
            .unwrap_or(0);
        let class = cfg
            .get("tokenizer_class")
            .and_then(Value::as_str)
            .unwrap_or("");
        let canonicalize = class.starts_with("SiglipTokenizer").then(|| {
            cfg.get("do_lower_case")
                .and_then(Value::as_bool)
                .unwrap_or(true)
        });
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                direction: TruncationDirection::Right,
                stride: 0,
            }))
            .map_err(|e| Error::config(&path, e.to_string()))?;
        tokenizer.with_padding(None);
        Ok(TextTokenizer {
            tokenizer,
            max_len,
            pad_id,
            padding,
            canonicalize,
            underline_prefix,
        })
    }

    /// Token ids for `texts`, one row each, padded as the family wants: `(ids, rows, cols)`.
    pub fn encode(&self, texts: &[String]) -> Result<(Vec<i64>, usize, usize)> {
        let (ids, _, rows, cols) = self.encode_with_mask(texts)?;
        Ok((ids, rows, cols))
    }

    /// [`encode`](Self::encode) with the attention mask (1 for a token, 0 for padding), as
    /// `(ids, mask, rows, cols)`.
    pub fn encode_with_mask(&self, texts: &[String]) -> Result<(Vec<i64>, Vec<f32>, usize, usize)> {
        let rows: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| {
                let mut text = match self.canonicalize {
                    Some(lower) => canonicalize_siglip(t, lower),
                    None => t.clone(),
                };
                if self.underline_prefix {
                    text = format!("\u{2581}{}", text.replace('\u{2581}', " "));
                }
                self.tokenizer
                    .encode(text, true)
                    .map(|e| e.get_ids().to_vec())
                    .map_err(|e| Error::InvalidInput(format!("cannot tokenize {t:?}: {e}")))
            })
            .collect::<Result<_>>()?;
        let cols = match self.padding {
            Padding::MaxLength => self.max_len,
            Padding::Longest => rows.iter().map(Vec::len).max().unwrap_or(0).max(1),
        };
        let mut ids = Vec::with_capacity(rows.len() * cols);
        let mut mask = Vec::with_capacity(rows.len() * cols);
        for row in &rows {
            ids.extend(row.iter().map(|&i| i64::from(i)));
            ids.extend(std::iter::repeat_n(
                i64::from(self.pad_id),
                cols - row.len(),
            ));
            mask.extend((0..cols).map(|j| if j < row.len() { 1.0 } else { 0.0 }));
        }
        Ok((ids, mask, rows.len(), cols))
    }

    /// The id of a token, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.tokenizer.token_to_id(token).map(i64::from)
    }

    /// Text of token ids, special tokens left out (transformers' `skip_special_tokens=True`).
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids: Vec<u32> = ids.iter().filter_map(|&i| u32::try_from(i).ok()).collect();
        self.tokenizer
            .decode(&ids, true)
            .map_err(|e| Error::InvalidInput(format!("cannot decode tokens: {e}")))
    }
}

/// BERT's uncased WordPiece from a `vocab.txt` (when a checkpoint has no tokenizer.json):
/// BERT's normaliser and pre-tokenizer, `[CLS] text [SEP]`, and the WordPiece decoder; the
/// tokens of `added_tokens.json` (BLIP's `[DEC]`, `[ENC]`) are added as special tokens.
pub fn bert_from_vocab(folder: &Path, lowercase: bool) -> Result<Tokenizer> {
    use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::template::TemplateProcessing;
    let vocab = folder.join("vocab.txt");
    let bad = |m: String| Error::config(&vocab, m);
    let text = crate::hub::read_text(&vocab)?;
    let map: std::collections::HashMap<String, u32> = text
        .lines()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let id = |t: &str| {
        map.get(t)
            .copied()
            .ok_or_else(|| bad(format!("no {t} in the vocabulary")))
    };
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    let file = vocab
        .to_str()
        .ok_or_else(|| bad("not a UTF-8 path".into()))?;
    let model = WordPiece::from_file(file)
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let mut tok = Tokenizer::new(model);
    tok.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
        .map_err(|e| bad(e.to_string()))?;
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    let post = TemplateProcessing::builder()
        .try_single("[CLS] $A [SEP]")
        .map_err(|e| bad(e.to_string()))?
        .special_tokens(vec![("[CLS]", cls), ("[SEP]", sep)])
        .build()
        .map_err(|e| bad(e.to_string()))?;
    tok.with_post_processor(Some(post));
    tok.with_decoder(Some(WordPieceDecoder::default()));
    // BERT's own specials are in the vocabulary; marked special, decoding leaves them out.
    let specials: Vec<tokenizers::AddedToken> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .into_iter()
        .filter(|t| map.contains_key(*t))
        .map(|t| tokenizers::AddedToken::from(t, true))
        .collect();
    tok.add_special_tokens(specials)
        .map_err(|e| bad(e.to_string()))?;
    let added = folder.join("added_tokens.json");
    if added.exists() {
        let extra = read_json(&added)?;
        let mut extra: Vec<(String, u64)> = extra
            .as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                    .collect()
            })
            .unwrap_or_default();
        extra.sort_by_key(|e| e.1);
        let tokens: Vec<tokenizers::AddedToken> = extra
            .iter()
            .map(|(t, _)| tokenizers::AddedToken::from(t.clone(), true))
            .collect();
        tok.add_special_tokens(tokens)
            .map_err(|e| bad(e.to_string()))?;
        for (t, id) in &extra {
            if tok.token_to_id(t).map(u64::from) != Some(*id) {
                return Err(Error::config(
                    &added,
                    format!("{t} should have id {id}: the added tokens do not follow vocab.txt"),
                ));
            }
        }
    }
    Ok(tok)
}

/// SigLIP's text canonicalisation (big_vision's, as transformers' `SiglipTokenizer` applies it):
/// optionally lower-case, drop ASCII punctuation, collapse whitespace, trim.
pub fn canonicalize_siglip(text: &str, lower: bool) -> String {
    let text = if lower {
        text.to_lowercase()
    } else {
        text.to_string()
    };
    let kept: String = text.chars().filter(|c| !c.is_ascii_punctuation()).collect();
    kept.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalizes_like_big_vision() {
        assert_eq!(
            canonicalize_siglip("  A Close-up PHOTO,\tof a cat!! ", true),
            "a closeup photo of a cat"
        );
        assert_eq!(canonicalize_siglip("Hi!", false), "Hi");
    }
}

/// The special tokens of a tokenizer trained by [`train_word_tokenizer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Specials {
    /// Padding.
    pub pad: (String, u32),
    /// End of text (CLIP pools there).
    pub eos: (String, u32),
    /// Start of text, when the family uses one.
    pub bos: Option<(String, u32)>,
}

/// Trains a word-level tokenizer on captions (lower-cased, split on whitespace and
/// punctuation), laid out as the family expects: CLIP `<|startoftext|> text <|endoftext|>`,
/// SigLIP `text </s>`. Returns the tokenizer and its special tokens.
pub fn train_word_tokenizer(
    captions: &[String],
    clip_style: bool,
    vocab_size: usize,
) -> Result<(Tokenizer, Specials)> {
    use tokenizers::processors::template::TemplateProcessing;

    // CLIP: end token first (id 0, so never the legacy id 2), pad = end as in OpenAI's CLIP.
    let specials: Vec<&str> = if clip_style {
        vec!["<|endoftext|>", "<|startoftext|>", "<unk>"]
    } else {
        vec!["<pad>", "</s>", "<unk>"]
    };
    let mut tok = word_level(captions, &specials, "<unk>", vocab_size)?;
    let id = |t: &str| tok.token_to_id(t).expect("special token in vocabulary");
    let (single, tokens, specials) = if clip_style {
        let (bos, eos) = (id("<|startoftext|>"), id("<|endoftext|>"));
        (
            "<|startoftext|> $A <|endoftext|>",
            vec![
                ("<|startoftext|>".to_string(), bos),
                ("<|endoftext|>".to_string(), eos),
            ],
            Specials {
                pad: ("<|endoftext|>".into(), eos),
                eos: ("<|endoftext|>".into(), eos),
                bos: Some(("<|startoftext|>".into(), bos)),
            },
        )
    } else {
        let eos = id("</s>");
        (
            "$A </s>",
            vec![("</s>".to_string(), eos)],
            Specials {
                pad: ("<pad>".into(), id("<pad>")),
                eos: ("</s>".into(), eos),
                bos: None,
            },
        )
    };
    let post = TemplateProcessing::builder()
        .try_single(single)
        .map_err(|e| Error::InvalidInput(e.to_string()))?
        .special_tokens(tokens)
        .build()
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    tok.with_post_processor(Some(post));
    Ok((tok, specials))
}

/// A lower-cased word-level tokenizer (words and punctuation split) learnt from `captions`,
/// with `specials` first.
fn word_level(
    captions: &[String],
    specials: &[&str],
    unk: &str,
    vocab_size: usize,
) -> Result<Tokenizer> {
    use tokenizers::AddedToken;
    use tokenizers::models::TrainerWrapper;
    use tokenizers::models::wordlevel::{WordLevel, WordLevelTrainer};
    use tokenizers::normalizers::Lowercase;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;
    let fail =
        |e: tokenizers::Error| Error::InvalidInput(format!("tokenizer training failed: {e}"));
    let mut trainer: TrainerWrapper = WordLevelTrainer::builder()
        .vocab_size(vocab_size)
        .show_progress(false)
        .special_tokens(
            specials
                .iter()
                .map(|s| AddedToken::from(*s, true))
                .collect(),
        )
        .build()
        .map_err(|e| Error::InvalidInput(e.to_string()))?
        .into();
    let model = WordLevel::builder()
        .unk_token(unk.into())
        .build()
        .map_err(fail)?;
    let mut tok = Tokenizer::new(model);
    tok.with_normalizer(Some(Lowercase)).map_err(fail)?;
    tok.with_pre_tokenizer(Some(Whitespace {}));
    tok.train(&mut trainer, captions.iter()).map_err(fail)?;
    Ok(tok)
}

/// A word-level tokenizer learnt from `captions` in BERT's layout, for a BLIP trained from
/// scratch: `[PAD]`, `[UNK]`, `[CLS]`, `[SEP]`, `[MASK]` first (ids 0 to 4), the words, then
/// `[DEC]`; lower case, words and punctuation split; `[CLS] text [SEP]`.
pub fn train_bert_word_tokenizer(captions: &[String], vocab_size: usize) -> Result<Tokenizer> {
    use tokenizers::AddedToken;
    use tokenizers::processors::template::TemplateProcessing;
    let fail =
        |e: tokenizers::Error| Error::InvalidInput(format!("tokenizer training failed: {e}"));
    let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    let mut tok = word_level(captions, &specials, "[UNK]", vocab_size)?;
    tok.add_special_tokens(vec![AddedToken::from("[DEC]", true)])
        .map_err(fail)?;
    let id = |t: &str| tok.token_to_id(t).expect("special token in vocabulary");
    let post = TemplateProcessing::builder()
        .try_single("[CLS] $A [SEP]")
        .map_err(|e| Error::InvalidInput(e.to_string()))?
        .special_tokens(vec![("[CLS]", id("[CLS]")), ("[SEP]", id("[SEP]"))])
        .build()
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    tok.with_post_processor(Some(post));
    Ok(tok)
}
