//! Measuring image-text models: zero-shot classification, cross-modal retrieval, and a picture
//! of what text queries retrieve.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use serde_json::json;

use crate::data::captions::Sample;
use crate::data::open_rgb;
use crate::pipeline::ImageText;
use crate::pipeline::image_text::dot;
use crate::{Error, Result, draw, hub};

/// Zero-shot predictions on labelled samples.
pub struct ZeroShot {
    /// The class names, in order of first appearance.
    pub labels: Vec<String>,
    /// Each sample's class.
    pub truth: Vec<usize>,
    /// Each sample's classes, best first.
    pub ranked: Vec<Vec<usize>>,
}

impl ZeroShot {
    /// `{"top1", "top5", "n", "per_class"}` over the samples `keep` selects (by index).
    pub fn summary(&self, keep: impl Fn(usize) -> bool) -> serde_json::Value {
        let (mut top1, mut top5, mut n) = (0usize, 0usize, 0usize);
        let mut per_class = vec![(0usize, 0usize); self.labels.len()];
        for (i, (r, &t)) in self.ranked.iter().zip(&self.truth).enumerate() {
            if !keep(i) {
                continue;
            }
            n += 1;
            let hit1 = r[0] == t;
            top1 += usize::from(hit1);
            top5 += usize::from(r.iter().take(5).any(|&o| o == t));
            per_class[t].0 += usize::from(hit1);
            per_class[t].1 += 1;
        }
        let per_class: serde_json::Map<String, serde_json::Value> = self
            .labels
            .iter()
            .zip(&per_class)
            .filter(|(_, (_, total))| *total > 0)
            .map(|(l, (hit, total))| (l.clone(), json!(*hit as f64 / *total as f64)))
            .collect();
        let frac = |k: usize| if n == 0 { 0.0 } else { k as f64 / n as f64 };
        json!({"top1": frac(top1), "top5": frac(top5), "n": n, "per_class": per_class})
    }
}

/// Classifies each sample among all labels in `label_column`, with prompts from `templates`.
pub fn zero_shot(
    model: &ImageText,
    samples: &[Sample],
    label_column: &str,
    templates: &[String],
    batch_size: usize,
) -> Result<ZeroShot> {
    let mut labels: Vec<String> = Vec::new();
    let mut truth = Vec::with_capacity(samples.len());
    for s in samples {
        let l = s.extra.get(label_column).ok_or_else(|| {
            Error::InvalidInput(format!(
                "no column {label_column:?} for {}",
                s.image.display()
            ))
        })?;
        let i = match labels.iter().position(|x| x == l) {
            Some(i) => i,
            None => {
                labels.push(l.clone());
                labels.len() - 1
            }
        };
        truth.push(i);
    }
    let classifier = model.zero_shot(&labels, templates)?;
    let paths: Vec<PathBuf> = samples.iter().map(|s| s.image.clone()).collect();
    let embeds = model.encode_images(&paths, batch_size)?;
    let (logits, _) = classifier.classify(&embeds);
    let ranked = logits
        .iter()
        .map(|l| {
            let mut order: Vec<usize> = (0..l.len()).collect();
            order.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
            order
        })
        .collect();
    Ok(ZeroShot {
        labels,
        truth,
        ranked,
    })
}

/// Zero-shot accuracy on labelled samples: `{"top1", "top5", "n", "per_class"}`.
pub fn zero_shot_eval(
    model: &ImageText,
    samples: &[Sample],
    label_column: &str,
    templates: &[String],
    batch_size: usize,
) -> Result<serde_json::Value> {
    Ok(zero_shot(model, samples, label_column, templates, batch_size)?.summary(|_| true))
}

/// Recall@1/5/10 in both directions on image-caption pairs: for image→text, an image counts as
/// found when its own caption ranks among the top k of all captions (and the reverse).
pub fn retrieval_eval(
    model: &ImageText,
    samples: &[Sample],
    batch_size: usize,
) -> Result<serde_json::Value> {
    let paths: Vec<PathBuf> = samples.iter().map(|s| s.image.clone()).collect();
    let captions: Vec<String> = samples.iter().map(|s| s.caption.clone()).collect();
    let images = model.encode_images(&paths, batch_size)?;
    let texts = model.encode_texts(&captions, batch_size)?;
    let sims: Vec<Vec<f32>> = images
        .iter()
        .map(|i| texts.iter().map(|t| dot(i, t)).collect())
        .collect();
    let n = samples.len();
    // The rank of entry `own` in `row` (0 = best); ties count against the query.
    let rank = |row: &[f32], own: usize| row.iter().filter(|&&x| x >= row[own]).count() - 1;
    let recall =
        |ranks: &[usize], k: usize| ranks.iter().filter(|&&r| r < k).count() as f64 / n as f64;
    let i2t: Vec<usize> = (0..n).map(|i| rank(&sims[i], i)).collect();
    let t2i: Vec<usize> = (0..n)
        .map(|j| {
            let col: Vec<f32> = sims.iter().map(|r| r[j]).collect();
            rank(&col, j)
        })
        .collect();
    Ok(json!({
        "n": n,
        "image_to_text": {"R@1": recall(&i2t, 1), "R@5": recall(&i2t, 5), "R@10": recall(&i2t, 10)},
        "text_to_image": {"R@1": recall(&t2i, 1), "R@5": recall(&t2i, 5), "R@10": recall(&t2i, 10)},
    }))
}

/// Writes a PNG with one row per text query: the query, then its `k` best images among
/// `samples`, framed green where `relevant(query, sample)` holds and red where not. Returns the
/// share of relevant images among all shown (precision@k over the queries).
pub fn retrieval_grid_png(
    model: &ImageText,
    queries: &[String],
    samples: &[Sample],
    k: usize,
    relevant: impl Fn(usize, &Sample) -> bool,
    path: &Path,
) -> Result<f64> {
    const CELL: u32 = 64;
    const PAD: u32 = 6;
    if queries.is_empty() || samples.is_empty() || k == 0 {
        return Err(Error::InvalidInput(
            "a retrieval grid needs queries, images and k > 0".into(),
        ));
    }
    let paths: Vec<PathBuf> = samples.iter().map(|s| s.image.clone()).collect();
    let images = model.encode_images(&paths, 64)?;
    let texts = model.encode_texts(queries, 64)?;
    let k = k.min(samples.len());
    let label_w = queries
        .iter()
        .map(|q| draw::text_width(q, 1))
        .max()
        .unwrap_or(0)
        + 2 * PAD;
    let width = label_w + k as u32 * (CELL + PAD) + PAD;
    let height = queries.len() as u32 * (CELL + PAD) + PAD;
    let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let mut hits = 0;
    for (qi, (q, t)) in queries.iter().zip(&texts).enumerate() {
        let y = PAD + qi as u32 * (CELL + PAD);
        draw::text(
            &mut img,
            PAD as i64,
            (y + CELL / 2 - 4) as i64,
            q,
            1,
            [20, 20, 20],
        );
        let mut order: Vec<usize> = (0..samples.len()).collect();
        let score: Vec<f32> = images.iter().map(|i| dot(i, t)).collect();
        order.sort_by(|&a, &b| score[b].total_cmp(&score[a]));
        for (j, &s) in order.iter().take(k).enumerate() {
            let x = label_w + j as u32 * (CELL + PAD);
            if let Ok(tile) = open_rgb(&samples[s].image) {
                draw::paste_fit(&mut img, &tile, x + 3, y + 3, CELL - 6);
            }
            let ok = relevant(qi, &samples[s]);
            hits += usize::from(ok);
            let color = if ok { [40, 170, 60] } else { [210, 50, 40] };
            draw::frame(&mut img, x, y, CELL, CELL, 3, color);
        }
    }
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| Error::InvalidInput(format!("cannot encode PNG: {e}")))?;
    hub::write_atomic(path, &bytes)?;
    Ok(hits as f64 / (queries.len() * k) as f64)
}
