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
    /// Each sample's classes, best first; empty for a sample whose image could not be read.
    pub ranked: Vec<Vec<usize>>,
}

impl ZeroShot {
    /// `{"top1", "top5", "n", "per_class", "skipped"}` over the samples `keep` selects (by
    /// index); `skipped` counts those whose image could not be read, which are left out.
    pub fn summary(&self, keep: impl Fn(usize) -> bool) -> serde_json::Value {
        let (mut top1, mut top5, mut n, mut skipped) = (0usize, 0usize, 0usize, 0usize);
        let mut per_class = vec![(0usize, 0usize); self.labels.len()];
        for (i, (r, &t)) in self.ranked.iter().zip(&self.truth).enumerate() {
            if !keep(i) {
                continue;
            }
            if r.is_empty() {
                skipped += 1;
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
        json!({"top1": frac(top1), "top5": frac(top5), "n": n, "per_class": per_class,
               "skipped": skipped})
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
    let (kept, embeds) = readable_embeds(model, &paths, batch_size)?;
    let (logits, _) = classifier.classify(&embeds);
    let mut ranked = vec![Vec::new(); samples.len()];
    for (&i, l) in kept.iter().zip(&logits) {
        let mut order: Vec<usize> = (0..l.len()).collect();
        order.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
        ranked[i] = order;
    }
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
    let (kept, images) = readable_embeds(model, &paths, batch_size)?;
    // A pair whose image cannot be read is left out, caption included.
    let captions: Vec<String> = kept.iter().map(|&i| samples[i].caption.clone()).collect();
    let texts = model.encode_texts(&captions, batch_size)?;
    let sims: Vec<Vec<f32>> = images
        .iter()
        .map(|i| texts.iter().map(|t| dot(i, t)).collect())
        .collect();
    let mut r = retrieval_recall(&sims);
    r["skipped"] = json!(samples.len() - kept.len());
    Ok(r)
}

/// Embeddings of the readable images among `paths`, with their indices; unreadable ones are
/// skipped with a warning, and none readable is an error.
fn readable_embeds(
    model: &ImageText,
    paths: &[PathBuf],
    batch_size: usize,
) -> Result<(Vec<usize>, Vec<Vec<f32>>)> {
    let (kept, embeds) = model.encode_images_lenient(
        paths,
        batch_size,
        |p, e| tracing::warn!("skipping {}: {e}", p.display()),
        |_| {},
    )?;
    none_readable(kept.len(), paths.len())?;
    Ok((kept, embeds))
}

fn none_readable(kept: usize, total: usize) -> Result<()> {
    if kept == 0 && total > 0 {
        return Err(Error::InvalidInput(format!(
            "none of the {total} images could be read"
        )));
    }
    Ok(())
}

/// Recall@1/5/10 both ways of a square similarity matrix `sims[image][text]` whose diagonal
/// holds the matching pairs: `{"n", "image_to_text": {"R@1", ...}, "text_to_image": {...}}`.
/// Ties count against the query.
pub fn retrieval_recall(sims: &[Vec<f32>]) -> serde_json::Value {
    let n = sims.len();
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
    json!({
        "n": n,
        "image_to_text": {"R@1": recall(&i2t, 1), "R@5": recall(&i2t, 5), "R@10": recall(&i2t, 10)},
        "text_to_image": {"R@1": recall(&t2i, 1), "R@5": recall(&t2i, 5), "R@10": recall(&t2i, 10)},
    })
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

/// Top-1 accuracy of a classifier on labelled images, per class, with the confusion matrix
/// (`confusion[true][predicted]`, classes in the model's order): `{"top1", "top5", "n",
/// "per_class"}`.
pub fn classification_eval(
    model: &crate::pipeline::ImageClassification,
    samples: &[Sample],
    label_column: &str,
    batch_size: usize,
) -> Result<(serde_json::Value, Vec<Vec<usize>>)> {
    let k = model.labels.len();
    let mut truth = Vec::with_capacity(samples.len());
    for s in samples {
        let l = s.extra.get(label_column).ok_or_else(|| {
            Error::InvalidInput(format!(
                "no column {label_column:?} for {}",
                s.image.display()
            ))
        })?;
        let i = model.labels.iter().position(|m| m == l).ok_or_else(|| {
            Error::InvalidInput(format!(
                "{}: label {l:?} is not one of the model's {k} classes",
                s.image.display()
            ))
        })?;
        truth.push(i);
    }
    let paths: Vec<PathBuf> = samples.iter().map(|s| s.image.clone()).collect();
    let (kept, logits) = model.logits_lenient(&paths, batch_size, |p, e| {
        tracing::warn!("skipping {}: {e}", p.display())
    })?;
    none_readable(kept.len(), paths.len())?;
    let truth: Vec<usize> = kept.iter().map(|&i| truth[i]).collect();
    let (mut r, confusion) = classification_scores(&model.labels, &logits, &truth);
    r["skipped"] = json!(samples.len() - kept.len());
    Ok((r, confusion))
}

/// Top-1, top-5 and per-class accuracy of `logits` (one row per sample) against each sample's
/// true class, with the confusion matrix `confusion[true][predicted]`. Ties go to the lower
/// class index.
pub fn classification_scores(
    labels: &[String],
    logits: &[Vec<f32>],
    truth: &[usize],
) -> (serde_json::Value, Vec<Vec<usize>>) {
    let k = labels.len();
    let mut confusion = vec![vec![0usize; k]; k];
    let mut top5 = 0usize;
    for (row, &t) in logits.iter().zip(truth) {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        confusion[t][order[0]] += 1;
        top5 += usize::from(order.iter().take(5).any(|&o| o == t));
    }
    let n = truth.len();
    let hits: usize = (0..k).map(|i| confusion[i][i]).sum();
    let per_class: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .enumerate()
        .filter(|(i, _)| confusion[*i].iter().sum::<usize>() > 0)
        .map(|(i, l)| {
            let total: usize = confusion[i].iter().sum();
            (l.clone(), json!(confusion[i][i] as f64 / total as f64))
        })
        .collect();
    (
        json!({"top1": hits as f64 / n.max(1) as f64, "top5": top5 as f64 / n.max(1) as f64,
               "n": n, "per_class": per_class}),
        confusion,
    )
}

/// The confusion matrix as a PNG: rows are true classes, columns predictions, each cell shaded
/// by its share of the row and labelled with its count.
pub fn confusion_png(labels: &[String], confusion: &[Vec<usize>], path: &Path) -> Result<()> {
    let k = labels.len().max(1) as u32;
    let cell: u32 = if k <= 12 { 40 } else { (480 / k).max(8) };
    // Rows are "index label"; columns carry the index.
    let row_labels: Vec<String> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| format!("{i} {l}"))
        .collect();
    let label_w = row_labels
        .iter()
        .map(|l| draw::text_width(l, 1))
        .max()
        .unwrap_or(0)
        + 12;
    let top = 40;
    let (w, h) = (label_w + k * cell + 8, top + k * cell + 8);
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    draw::text(&mut img, label_w as i64, 6, "predicted ->", 1, [40, 40, 40]);
    if cell >= 16 {
        for j in 0..labels.len() {
            let t = j.to_string();
            let x =
                (label_w + j as u32 * cell + cell / 2) as i64 - draw::text_width(&t, 1) as i64 / 2;
            draw::text(&mut img, x, 24, &t, 1, [40, 40, 40]);
        }
    }
    for (i, row) in confusion.iter().enumerate() {
        let total = row.iter().sum::<usize>().max(1) as f32;
        let y = top + i as u32 * cell;
        draw::text(
            &mut img,
            4,
            (y + cell / 2) as i64 - 4,
            &row_labels[i],
            1,
            [40, 40, 40],
        );
        for (j, &c) in row.iter().enumerate() {
            let share = c as f32 / total;
            let shade = |base: u8| (255.0 - share * (255.0 - f32::from(base))) as u8;
            let color = if i == j {
                [shade(30), shade(140), shade(60)]
            } else {
                [shade(200), shade(50), shade(40)]
            };
            let x = label_w + j as u32 * cell;
            for yy in y + 1..y + cell {
                for xx in x + 1..x + cell {
                    img.put_pixel(xx, yy, Rgb(color));
                }
            }
            if cell >= 24 && c > 0 {
                let t = c.to_string();
                let ink = if share > 0.5 {
                    [255, 255, 255]
                } else {
                    [30, 30, 30]
                };
                let tx = (x + cell / 2) as i64 - draw::text_width(&t, 1) as i64 / 2;
                draw::text(&mut img, tx, (y + cell / 2) as i64 - 4, &t, 1, ink);
            }
        }
    }
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| Error::InvalidInput(format!("cannot encode PNG: {e}")))?;
    hub::write_atomic(path, &bytes)
}

/// Features of a classifier (see [`crate::pipeline::ImageClassification::features`]) for images
/// given as rows `[n, c·h·w]` with values in [-1, 1] (a GAN's samples; grey images are fed
/// as RGB): each becomes an 8-bit picture, then goes through the classifier's own
/// preprocessing, so real and generated images take the same path.
pub fn classifier_features(
    classifier: &crate::pipeline::ImageClassification,
    rows: &[f32],
    shape: [usize; 3],
) -> Result<(Vec<f32>, usize)> {
    classifier_pass(classifier, rows, shape, |x| classifier.features(x))
}

/// The class index a classifier predicts for each image (rows as in [`classifier_features`]).
pub fn classifier_predictions(
    classifier: &crate::pipeline::ImageClassification,
    rows: &[f32],
    shape: [usize; 3],
) -> Result<Vec<usize>> {
    let (logits, k) = classifier_pass(classifier, rows, shape, |x| classifier.forward(x))?;
    Ok(logits
        .chunks(k.max(1))
        .map(|row| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            best
        })
        .collect())
}

/// Runs images (rows `[n, c·h·w]` in [-1, 1]) through the classifier's preprocessing and
/// `f`, 64 at a time; the outputs row-major and their width.
fn classifier_pass(
    classifier: &crate::pipeline::ImageClassification,
    rows: &[f32],
    [c, h, w]: [usize; 3],
    f: impl Fn(burn::prelude::Tensor<4>) -> burn::prelude::Tensor<2>,
) -> Result<(Vec<f32>, usize)> {
    let per = c * h * w;
    if per == 0 || !rows.len().is_multiple_of(per) || !(c == 1 || c == 3) {
        return Err(Error::InvalidInput(format!(
            "images of {c}x{h}x{w} cannot be read from {} values",
            rows.len()
        )));
    }
    let byte = |v: f32| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
    let mut feats = Vec::new();
    let mut dims = 0;
    for chunk in rows.chunks(64 * per) {
        let items: Vec<(Vec<f32>, [usize; 3])> = chunk
            .chunks_exact(per)
            .map(|s| {
                let img = RgbImage::from_fn(w as u32, h as u32, |x, y| {
                    let at = |ch: usize| s[ch * h * w + y as usize * w + x as usize];
                    if c == 1 {
                        let g = byte(at(0));
                        Rgb([g, g, g])
                    } else {
                        Rgb([byte(at(0)), byte(at(1)), byte(at(2))])
                    }
                });
                classifier.processor.preprocess(&img)
            })
            .collect();
        let x = crate::data::processor::batch_tensor(items, classifier.device())?;
        let out = f(x);
        dims = out.dims()[1];
        feats.extend(crate::pipeline::to_vec(out)?);
    }
    Ok((feats, dims))
}

/// Mean and covariance (divided by n − 1, as numpy's `cov`) of `n` rows of `dims` values.
fn gaussian_fit(x: &[f32], dims: usize) -> (nalgebra::DVector<f64>, nalgebra::DMatrix<f64>) {
    let n = x.len() / dims;
    let m = nalgebra::DMatrix::from_row_iterator(n, dims, x.iter().map(|&v| f64::from(v)));
    let mean = m.row_mean().transpose();
    let mut centred = m;
    for mut row in centred.row_iter_mut() {
        row -= mean.transpose();
    }
    let cov = centred.transpose() * &centred / (n.max(2) - 1) as f64;
    (mean, cov)
}

/// The Fréchet distance between Gaussians fitted to two sets of feature rows (FID's formula,
/// `‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½)`), on whatever features the caller gives (FID proper
/// uses Inception-v3's; tuwen uses a classifier it trained, so values are comparable only
/// between runs that use the same classifier). `Tr((Σ₁Σ₂)^½)` is computed as the trace of the
/// square root of the symmetric `Σ₁^½ Σ₂ Σ₁^½`, whose eigenvalues are those of `Σ₁Σ₂`.
pub fn frechet_distance(a: &[f32], b: &[f32], dims: usize) -> Result<f64> {
    if dims == 0 || !a.len().is_multiple_of(dims) || !b.len().is_multiple_of(dims) {
        return Err(Error::InvalidInput(
            "feature rows of different widths".into(),
        ));
    }
    if a.len() / dims < 2 || b.len() / dims < 2 {
        return Err(Error::InvalidInput(
            "a Fréchet distance needs at least two samples a side".into(),
        ));
    }
    if a.iter().chain(b).any(|v| !v.is_finite()) {
        return Err(Error::InvalidInput("features hold NaN or infinity".into()));
    }
    let (m1, s1) = gaussian_fit(a, dims);
    let (m2, s2) = gaussian_fit(b, dims);
    let e1 = nalgebra::SymmetricEigen::new(s1.clone());
    let root = &e1.eigenvectors
        * nalgebra::DMatrix::from_diagonal(&e1.eigenvalues.map(|l| l.max(0.0).sqrt()))
        * e1.eigenvectors.transpose();
    let inner = &root * &s2 * &root;
    let inner = (&inner + inner.transpose()) * 0.5;
    let tr_sqrt: f64 = nalgebra::SymmetricEigen::new(inner)
        .eigenvalues
        .iter()
        .map(|l| l.max(0.0).sqrt())
        .sum();
    Ok((m1 - m2).norm_squared() + s1.trace() + s2.trace() - 2.0 * tr_sqrt)
}

/// PSNR in dB of a reconstruction `b` of `a`, both in [-1, 1] (clamped there, measured on
/// [0, 1]): `10 log10(1 / MSE)`, at most 100 dB (identical images).
pub fn psnr(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len()).max(1) as f64;
    let mse: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = (f64::from(x.clamp(-1.0, 1.0)) - f64::from(y.clamp(-1.0, 1.0))) / 2.0;
            d * d
        })
        .sum::<f64>()
        / n;
    if mse <= 1e-10 {
        100.0
    } else {
        -10.0 * mse.log10()
    }
}

/// SSIM (Wang et al. 2004) of two channel-first images `[c, h, w]` in [-1, 1], measured on
/// [0, 1]: an 11×11 Gaussian window of σ 1.5, K1 0.01, K2 0.03, population covariances, the
/// mean over the positions whose window lies inside the image and over the channels, as
/// `skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
/// use_sample_covariance=False, data_range=1)` computes it. NaN when a side is under 11 px.
pub fn ssim(a: &[f32], b: &[f32], c: usize, h: usize, w: usize) -> f64 {
    const R: usize = 5;
    if h < 2 * R + 1 || w < 2 * R + 1 || a.len() < c * h * w || b.len() < c * h * w {
        return f64::NAN;
    }
    let sigma = 1.5f64;
    let k: Vec<f64> = (0..=2 * R)
        .map(|i| (-0.5 * ((i as f64 - R as f64) / sigma).powi(2)).exp())
        .collect();
    let ksum: f64 = k.iter().sum();
    let k: Vec<f64> = k.iter().map(|v| v / ksum).collect();
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let unit = |v: f32| (f64::from(v.clamp(-1.0, 1.0)) + 1.0) / 2.0;
    // Separable weighted means of x over the interior positions.
    let blur = |img: &dyn Fn(usize, usize) -> f64| -> Vec<f64> {
        let (ih, iw) = (h - 2 * R, w - 2 * R);
        let mut rows = vec![0.0; h * iw];
        for y in 0..h {
            for x in 0..iw {
                rows[y * iw + x] = (0..=2 * R).map(|j| k[j] * img(y, x + j)).sum();
            }
        }
        let mut out = vec![0.0; ih * iw];
        for y in 0..ih {
            for x in 0..iw {
                out[y * iw + x] = (0..=2 * R).map(|j| k[j] * rows[(y + j) * iw + x]).sum();
            }
        }
        out
    };
    let mut total = 0.0;
    for ch in 0..c {
        let off = ch * h * w;
        let pa = |y: usize, x: usize| unit(a[off + y * w + x]);
        let pb = |y: usize, x: usize| unit(b[off + y * w + x]);
        let ux = blur(&pa);
        let uy = blur(&pb);
        let uxx = blur(&|y, x| pa(y, x) * pa(y, x));
        let uyy = blur(&|y, x| pb(y, x) * pb(y, x));
        let uxy = blur(&|y, x| pa(y, x) * pb(y, x));
        let mut s = 0.0;
        for i in 0..ux.len() {
            let (vx, vy, vxy) = (
                uxx[i] - ux[i] * ux[i],
                uyy[i] - uy[i] * uy[i],
                uxy[i] - ux[i] * uy[i],
            );
            s += ((2.0 * ux[i] * uy[i] + c1) * (2.0 * vxy + c2))
                / ((ux[i] * ux[i] + uy[i] * uy[i] + c1) * (vx + vy + c2));
        }
        total += s / ux.len() as f64;
    }
    total / c as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_at_k_of_a_hand_made_matrix() {
        // Image 0 finds its text first; image 1 ranks its own text second (behind text 0);
        // image 2 ties its own text with text 0 (ties count against the query).
        let sims = vec![
            vec![0.9, 0.1, 0.0],
            vec![0.8, 0.5, 0.1],
            vec![0.4, 0.3, 0.4],
        ];
        let r = retrieval_recall(&sims);
        assert_eq!(r["n"], 3);
        let third = 1.0 / 3.0;
        assert!((r["image_to_text"]["R@1"].as_f64().unwrap() - third).abs() < 1e-12);
        assert_eq!(r["image_to_text"]["R@5"].as_f64(), Some(1.0));
        // Text 0 finds image 0 first; text 1's best image is 1; text 2's is 2.
        assert_eq!(r["text_to_image"]["R@1"].as_f64(), Some(1.0));
        let anti = vec![vec![0.0, 1.0], vec![1.0, 0.0]];
        let r = retrieval_recall(&anti);
        assert_eq!(r["image_to_text"]["R@1"].as_f64(), Some(0.0));
        assert_eq!(r["text_to_image"]["R@1"].as_f64(), Some(0.0));
    }

    #[test]
    fn top_k_and_confusion_of_hand_made_logits() {
        let labels: Vec<String> = ["a", "b", "c", "d", "e", "f"].map(String::from).to_vec();
        let logits = vec![
            vec![5.0, 1.0, 0.0, 0.0, 0.0, 0.0], // true 0, predicted 0
            vec![5.0, 4.0, 0.0, 0.0, 0.0, 0.0], // true 1, predicted 0, top-2
            vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0], // true 0, predicted 5, rank 6: not in top-5
            vec![0.0, 0.0, 9.0, 0.0, 0.0, 0.0], // true 2, predicted 2
        ];
        let (r, confusion) = classification_scores(&labels, &logits, &[0, 1, 0, 2]);
        assert_eq!(r["n"], 4);
        assert_eq!(r["top1"].as_f64(), Some(0.5));
        assert_eq!(r["top5"].as_f64(), Some(0.75));
        assert_eq!(r["per_class"]["a"].as_f64(), Some(0.5));
        assert_eq!(r["per_class"]["b"].as_f64(), Some(0.0));
        assert_eq!(r["per_class"]["c"].as_f64(), Some(1.0));
        assert!(r["per_class"].get("d").is_none());
        let mut expect = vec![vec![0usize; 6]; 6];
        expect[0][0] = 1;
        expect[1][0] = 1;
        expect[0][5] = 1;
        expect[2][2] = 1;
        assert_eq!(confusion, expect);
    }

    #[test]
    fn zero_shot_summary_of_hand_made_rankings() {
        let zs = ZeroShot {
            labels: vec!["cat".into(), "dog".into()],
            truth: vec![0, 1, 1, 0],
            ranked: vec![vec![0, 1], vec![0, 1], vec![1, 0], vec![1, 0]],
        };
        let all = zs.summary(|_| true);
        assert_eq!(all["skipped"], 0);
        assert_eq!(all["top1"].as_f64(), Some(0.5));
        assert_eq!(all["top5"].as_f64(), Some(1.0));
        assert_eq!(all["per_class"]["cat"].as_f64(), Some(0.5));
        let first_two = zs.summary(|i| i < 2);
        assert_eq!(first_two["n"], 2);
        assert_eq!(first_two["per_class"]["dog"].as_f64(), Some(0.0));
        // An unreadable sample (no ranking) is counted as skipped, not scored.
        let mut zs = zs;
        zs.truth.push(1);
        zs.ranked.push(Vec::new());
        let with_bad = zs.summary(|_| true);
        assert_eq!(
            (with_bad["n"].clone(), with_bad["skipped"].clone()),
            (json!(4), json!(1))
        );
        assert_eq!(with_bad["top1"].as_f64(), Some(0.5));
    }
}
