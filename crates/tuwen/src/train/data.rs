//! Training data for every family's loop: where the images come from (a list of pairs or
//! streamed shards), which ones each step takes, their decoding in parallel and augmentation.

use std::path::Path;

use rayon::prelude::*;

use crate::Result;
use crate::data::augment::Augment;
use crate::data::captions::Sample;
use crate::data::processor::ImageProcessor;
use crate::data::shapes::SplitMix64;
use crate::data::webdataset::ShardStream;
use crate::data::{decode_rgb, open_rgb};

/// One preprocessed image: channel-first values and their shape.
pub type Pixels = (Vec<f32>, [usize; 3]);

/// Where training pairs come from.
pub enum TrainData<'a> {
    /// A list of pairs, reshuffled each epoch.
    Samples(&'a [Sample]),
    /// WebDataset shards, streamed through a shuffle buffer.
    Shards(ShardStream),
    /// Rows of numbers (e.g. points in the plane), `dims` per row, reshuffled each epoch.
    Rows {
        /// Row-major values.
        data: &'a [f32],
        /// Values per row.
        dims: usize,
    },
    /// Nothing stored: each step draws its own samples (e.g. from a known distribution) with
    /// the step's seeds; a batch only says how many.
    Drawn,
}

impl<'a> From<&'a [Sample]> for TrainData<'a> {
    fn from(s: &'a [Sample]) -> Self {
        TrainData::Samples(s)
    }
}

impl<'a> From<&'a Vec<Sample>> for TrainData<'a> {
    fn from(s: &'a Vec<Sample>) -> Self {
        TrainData::Samples(s)
    }
}

/// An image to decode: a file, or bytes from a shard.
enum Encoded<'a> {
    File(&'a Path),
    Bytes(Vec<u8>),
}

/// The deterministic order of samples: a fresh seeded shuffle per epoch.
pub fn batch_indices(n: usize, batch: usize, step: usize, seed: u64) -> Vec<usize> {
    let per_epoch = (n / batch).max(1);
    let (epoch, k) = (step / per_epoch, step % per_epoch);
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::new(seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9));
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    order
        .into_iter()
        .cycle()
        .skip(k * batch)
        .take(batch)
        .collect()
}

/// The seed of the random draws (patch dropout) of micro-batch `j` of step `step`: a function
/// of the position alone, so that a resumed run draws what the uninterrupted one would.
pub fn step_seed(seed: u64, step: usize, j: usize) -> u64 {
    let mut rng = SplitMix64::new(
        seed ^ ((step as u64) << 20 | j as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    rng.next_u64()
}

impl TrainData<'_> {
    /// Moves a stream past `n` samples (a resumed run reads past what it used); a list needs
    /// nothing, its order being a function of the step.
    pub fn skip(&mut self, n: usize) -> Result<()> {
        if let TrainData::Shards(stream) = self {
            for _ in 0..n {
                stream.next_sample()?;
            }
        }
        Ok(())
    }

    /// Where a stream stands, to [`Self::seek`] back to (null for a list).
    pub fn position(&self) -> serde_json::Value {
        match self {
            TrainData::Shards(s) => s.position(),
            _ => serde_json::Value::Null,
        }
    }

    /// Moves a stream to a saved [`Self::position`] without re-reading what it used.
    pub fn seek(&mut self, position: &serde_json::Value) -> Result<()> {
        match self {
            TrainData::Shards(s) => s.seek(position),
            _ => Ok(()),
        }
    }

    /// Samples a stream skipped so far because they could not be read (0 for a list).
    pub fn stream_skipped(&self) -> usize {
        match self {
            TrainData::Shards(s) => s.skipped,
            _ => 0,
        }
    }
}

/// The rows of batch number `draw` from row-major `data` (`dims` values a row), in the same
/// seeded epoch order as images.
pub fn row_batch(data: &[f32], dims: usize, draw: usize, batch: usize, seed: u64) -> Vec<Vec<f32>> {
    let n = data.len() / dims.max(1);
    batch_indices(n, batch, draw, seed)
        .into_iter()
        .map(|i| data[i * dims..(i + 1) * dims].to_vec())
        .collect()
}

/// The images (preprocessed, augmented with draws from the step's seed) and captions of batch
/// number `step` (the step's index when a step takes one batch); `None` for an image that
/// could not be read. Rows and drawn data hold no images: an empty list.
pub fn next_batch(
    data: &mut TrainData,
    step: usize,
    batch: usize,
    seed: u64,
    augment: &Augment,
    processor: &ImageProcessor,
) -> Result<Vec<Option<(Pixels, String)>>> {
    let encoded: Vec<(Encoded, String)> = match data {
        TrainData::Samples(samples) => batch_indices(samples.len(), batch, step, seed)
            .into_iter()
            .map(|i| (Encoded::File(&samples[i].image), samples[i].caption.clone()))
            .collect(),
        TrainData::Shards(stream) => (0..batch)
            .map(|_| {
                stream
                    .next_sample()
                    .map(|s| (Encoded::Bytes(s.image), s.caption))
            })
            .collect::<Result<_>>()?,
        TrainData::Rows { .. } | TrainData::Drawn => Vec::new(),
    };
    Ok(encoded
        .into_par_iter()
        .enumerate()
        .map(|(k, (enc, caption))| {
            let img = match enc {
                Encoded::File(p) => open_rgb(p),
                Encoded::Bytes(b) => decode_rgb(&b),
            }
            .ok()?;
            let img = if augment.is_identity() {
                img
            } else {
                let mut rng = SplitMix64::new(step_seed(seed, step, 1000 + k));
                augment.apply(img, &mut rng)
            };
            Some((processor.preprocess(&img), caption))
        })
        .collect())
}
