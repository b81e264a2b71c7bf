//! Reading a SentencePiece `spiece.model` (a protobuf `ModelProto`) into a `tokenizers`
//! Unigram tokenizer, for checkpoints that ship no tokenizer.json (SigLIP v1, T5-style).
//!
//! Only what encoding needs is read: the pieces with their scores and types, the model type,
//! byte fallback, and the normaliser's precompiled character map (NFKC and the NMT rules),
//! which the `tokenizers` crate applies exactly as SentencePiece does.

use std::path::Path;

use tokenizers::Tokenizer;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::{Precompiled, Replace, Sequence};
use tokenizers::processors::template::TemplateProcessing;

use crate::{Error, Result};

/// One vocabulary entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// The piece's text, with `▁` for a space.
    pub piece: String,
    /// Its log-probability.
    pub score: f32,
    /// SentencePiece's type: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub kind: u64,
}

/// The parts of a `ModelProto` that encoding needs.
#[derive(Debug, Default)]
pub struct SpModel {
    /// The vocabulary, in id order.
    pub pieces: Vec<Piece>,
    /// 1 unigram, 2 BPE, 3 word, 4 char.
    pub model_type: u64,
    /// Unknown bytes become `<0xNN>` pieces instead of `<unk>`.
    pub byte_fallback: bool,
    /// The normaliser's compiled character map (empty for identity).
    pub charsmap: Vec<u8>,
}

/// A protobuf reader over one message's bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }

    /// The next (field number, value) pair; `None` at the end, `Some(Err)` on bad bytes.
    fn field(&mut self) -> Option<std::result::Result<(u64, Value<'a>), ()>> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let parsed = (|| {
            let key = self.varint()?;
            let value = match key & 7 {
                0 => Value::Int(self.varint()?),
                1 => Value::Fixed(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?)),
                2 => {
                    let n = usize::try_from(self.varint()?).ok()?;
                    Value::Bytes(self.bytes(n)?)
                }
                5 => Value::Fixed(u64::from(u32::from_le_bytes(
                    self.bytes(4)?.try_into().ok()?,
                ))),
                _ => return None,
            };
            Some((key >> 3, value))
        })();
        Some(parsed.ok_or(()))
    }
}

enum Value<'a> {
    Int(u64),
    Fixed(u64),
    Bytes(&'a [u8]),
}

fn fields<'a>(buf: &'a [u8]) -> impl Iterator<Item = std::result::Result<(u64, Value<'a>), ()>> {
    let mut r = Reader { buf, pos: 0 };
    std::iter::from_fn(move || r.field())
}

/// Parses the bytes of a `spiece.model`.
pub fn parse(bytes: &[u8]) -> std::result::Result<SpModel, String> {
    let bad = || "not a SentencePiece model (malformed protobuf)".to_string();
    let mut m = SpModel {
        model_type: 1,
        ..Default::default()
    };
    for f in fields(bytes) {
        match f.map_err(|_| bad())? {
            (1, Value::Bytes(b)) => {
                let mut p = Piece {
                    piece: String::new(),
                    score: 0.0,
                    kind: 1,
                };
                for g in fields(b) {
                    match g.map_err(|_| bad())? {
                        (1, Value::Bytes(s)) => {
                            p.piece = String::from_utf8(s.to_vec()).map_err(|_| bad())?
                        }
                        (2, Value::Fixed(v)) => p.score = f32::from_bits(v as u32),
                        (3, Value::Int(v)) => p.kind = v,
                        _ => {}
                    }
                }
                m.pieces.push(p);
            }
            (2, Value::Bytes(b)) => {
                for g in fields(b) {
                    match g.map_err(|_| bad())? {
                        (3, Value::Int(v)) => m.model_type = v,
                        (35, Value::Int(v)) => m.byte_fallback = v != 0,
                        _ => {}
                    }
                }
            }
            (3, Value::Bytes(b)) => {
                for g in fields(b) {
                    if let (2, Value::Bytes(c)) = g.map_err(|_| bad())? {
                        m.charsmap = c.to_vec();
                    }
                }
            }
            _ => {}
        }
    }
    if m.pieces.is_empty() {
        return Err(bad());
    }
    Ok(m)
}

/// A `tokenizers` tokenizer equivalent to SentencePiece encoding with `spiece.model` (without
/// the dummy prefix, which transformers turns off), appending `eos` when given.
pub fn load(path: &Path, eos: Option<&str>) -> Result<Tokenizer> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let m = parse(&bytes).map_err(|e| Error::config(path, e))?;
    if m.model_type != 1 {
        return Err(Error::Unsupported(format!(
            "{}: SentencePiece model type {} (only unigram is supported)",
            path.display(),
            m.model_type
        )));
    }
    let unk = m.pieces.iter().position(|p| p.kind == 2);
    let vocab: Vec<(String, f64)> = m
        .pieces
        .iter()
        .map(|p| (p.piece.clone(), f64::from(p.score)))
        .collect();
    let model = Unigram::from(vocab, unk, m.byte_fallback)
        .map_err(|e| Error::config(path, e.to_string()))?;
    let mut tok = Tokenizer::new(model);
    let space = Replace::new(" ", "▁").map_err(|e| Error::config(path, e.to_string()))?;
    let normalizer = if m.charsmap.is_empty() {
        Sequence::new(vec![space.into()])
    } else {
        let pre = Precompiled::from(&m.charsmap)
            .map_err(|e| Error::config(path, format!("bad normalizer: {e}")))?;
        Sequence::new(vec![pre.into(), space.into()])
    };
    tok.with_normalizer(Some(normalizer))
        .map_err(|e| Error::config(path, e.to_string()))?;
    if let Some(eos) = eos {
        let id = m
            .pieces
            .iter()
            .position(|p| p.piece == eos)
            .ok_or_else(|| {
                Error::config(path, format!("no end token {eos:?} in the vocabulary"))
            })?;
        let post = TemplateProcessing::builder()
            .try_single(format!("$A {eos}"))
            .map_err(|e| Error::config(path, e.to_string()))?
            .special_tokens(vec![(eos.to_string(), id as u32)])
            .build()
            .map_err(|e| Error::config(path, e.to_string()))?;
        tok.with_post_processor(Some(post));
    }
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage() {
        assert!(parse(b"").is_err());
        assert!(parse(b"\xff\xff\xff").is_err());
        assert!(parse(b"hello world").is_err());
    }

    #[test]
    fn reads_a_hand_made_model() {
        // pieces: {"<unk>", 0.0, UNKNOWN}, {"▁a", -1.5, NORMAL}; trainer_spec {model_type: 1}
        let piece = |s: &str, score: f32, kind: u8| {
            let mut p = vec![0x0a, s.len() as u8];
            p.extend_from_slice(s.as_bytes());
            p.push(0x15);
            p.extend_from_slice(&score.to_le_bytes());
            p.extend_from_slice(&[0x18, kind]);
            let mut f = vec![0x0a, p.len() as u8];
            f.extend(p);
            f
        };
        let mut b = piece("<unk>", 0.0, 2);
        b.extend(piece("▁a", -1.5, 1));
        b.extend([0x12, 0x02, 0x18, 0x01]);
        let m = parse(&b).unwrap();
        assert_eq!(m.pieces.len(), 2);
        assert_eq!(
            m.pieces[1],
            Piece {
                piece: "▁a".into(),
                score: -1.5,
                kind: 1
            }
        );
        assert_eq!(m.model_type, 1);
    }
}
