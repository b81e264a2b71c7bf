//! Training curves as a PNG: the raw loss per step (light) and its running mean (dark), on
//! axes scaled to the data and labelled with their ranges; metrics.jsonl holds the numbers.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::hub::write_atomic;
use crate::{Error, Result};

const W: u32 = 640;
const H: u32 = 360;
const MARGIN: u32 = 24;
/// Room left of the plot for the axis labels.
const LEFT: u32 = 136;

fn line(img: &mut RgbImage, (x0, y0): (f32, f32), (x1, y1): (f32, f32), color: [u8; 3]) {
    let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
    for i in 0..=steps {
        let t = i as f32 / steps as f32;
        let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
        if x >= 0.0 && y >= 0.0 && (x as u32) < W && (y as u32) < H {
            img.put_pixel(x as u32, y as u32, Rgb(color));
        }
    }
}

/// Draws the loss curve of `losses` (`(step, loss)`) and writes it to `path` atomically.
pub fn loss_curve_png(losses: &[(usize, f32)], path: &Path) -> Result<()> {
    let finite: Vec<(usize, f32)> = losses.iter().copied().filter(|l| l.1.is_finite()).collect();
    if finite.len() < 2 {
        return Err(Error::InvalidInput(
            "need at least two finite losses to plot".into(),
        ));
    }
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let (lo, hi) = finite
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), l| {
            (a.min(l.1), b.max(l.1))
        });
    let span = (hi - lo).max(1e-6);
    let last_step = finite.last().expect("two or more").0.max(1) as f32;
    let (pw, ph) = ((W - LEFT - MARGIN) as f32, (H - 2 * MARGIN) as f32);
    let at = |step: usize, loss: f32| {
        (
            LEFT as f32 + step as f32 / last_step * pw,
            MARGIN as f32 + (hi - loss) / span * ph,
        )
    };
    let axis = [90, 90, 90];
    line(&mut img, at(0, lo), at(last_step as usize, lo), axis);
    line(&mut img, at(0, lo), at(0, hi), axis);
    for w in finite.windows(2) {
        line(
            &mut img,
            at(w[0].0, w[0].1),
            at(w[1].0, w[1].1),
            [160, 190, 235],
        );
    }
    let mut ema = finite[0].1;
    let mut prev = at(finite[0].0, ema);
    for &(s, l) in &finite[1..] {
        ema = 0.9 * ema + 0.1 * l;
        let p = at(s, ema);
        line(&mut img, prev, p, [20, 60, 160]);
        prev = p;
    }
    let ink = [40, 40, 40];
    let (top, bottom) = (at(0, hi), at(0, lo));
    crate::draw::text(&mut img, 4, top.1 as i64 - 4, &format!("{hi:.3}"), 1, ink);
    crate::draw::text(
        &mut img,
        4,
        bottom.1 as i64 - 4,
        &format!("{lo:.3}"),
        1,
        ink,
    );
    crate::draw::text(&mut img, 4, (H / 2) as i64 - 4, "loss", 1, ink);
    let end = format!("step {}", last_step as usize);
    let end_x = (W - MARGIN) as i64 - crate::draw::text_width(&end, 1) as i64;
    crate::draw::text(&mut img, end_x, bottom.1 as i64 + 6, &end, 1, ink);
    crate::draw::text(&mut img, LEFT as i64, bottom.1 as i64 + 6, "0", 1, ink);
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| Error::InvalidInput(format!("cannot encode PNG: {e}")))?;
    write_atomic(path, &png)
}

/// A bar chart of `bars` (label, value in [0, 1], drawn as a percentage), with an optional
/// horizontal reference line (label, value), a title, written to `path` atomically.
pub fn bar_chart_png(
    bars: &[(String, f64)],
    reference: Option<(&str, f64)>,
    title: &str,
    path: &Path,
) -> Result<()> {
    if bars.is_empty() {
        return Err(Error::InvalidInput("a bar chart needs bars".into()));
    }
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let ink = [40, 40, 40];
    let (top, bottom) = (MARGIN + 16, H - MARGIN - 16);
    let (left, right) = (LEFT, W - MARGIN);
    // The axis starts at the tenth below the lowest value, so that differences show.
    let lowest = bars
        .iter()
        .map(|b| b.1)
        .chain(reference.map(|r| r.1))
        .fold(1.0f64, f64::min);
    let floor = ((lowest - 0.05) * 10.0).floor().clamp(0.0, 9.0) / 10.0;
    let y_of = |v: f64| {
        let t = ((v.clamp(0.0, 1.0) - floor) / (1.0 - floor)).max(0.0);
        bottom as f32 - t as f32 * (bottom - top) as f32
    };
    crate::draw::text(&mut img, LEFT as i64, 6, title, 1, ink);
    for k in 0..=4 {
        let pct = floor + (1.0 - floor) * f64::from(k) / 4.0;
        let y = y_of(pct);
        line(
            &mut img,
            (left as f32, y),
            (right as f32, y),
            [225, 225, 225],
        );
        let label = format!("{:>4.0}%", pct * 100.0);
        crate::draw::text(&mut img, 8, y as i64 - 4, &label, 1, ink);
    }
    let slot = (right - left) / bars.len() as u32;
    for (k, (label, v)) in bars.iter().enumerate() {
        let x0 = left + k as u32 * slot + slot / 4;
        let x1 = left + (k as u32 + 1) * slot - slot / 4;
        let y = y_of(*v) as u32;
        for x in x0..x1 {
            for yy in y..bottom {
                img.put_pixel(x, yy, Rgb([70, 110, 190]));
            }
        }
        let value = format!("{:.1}%", v * 100.0);
        let cx = ((x0 + x1) / 2) as i64;
        crate::draw::text(
            &mut img,
            cx - crate::draw::text_width(&value, 1) as i64 / 2,
            y as i64 - 12,
            &value,
            1,
            ink,
        );
        crate::draw::text(
            &mut img,
            cx - crate::draw::text_width(label, 1) as i64 / 2,
            bottom as i64 + 6,
            label,
            1,
            ink,
        );
    }
    if let Some((label, v)) = reference {
        let y = y_of(v);
        let mut x = left as f32;
        while x < right as f32 {
            line(
                &mut img,
                (x, y),
                ((x + 6.0).min(right as f32), y),
                [200, 60, 50],
            );
            x += 10.0;
        }
        // The label sits in the margin left of the plot, under the axis values' column.
        let text = format!("{label} {:.1}%", v * 100.0);
        crate::draw::text(&mut img, 4, y as i64 + 6, &text, 1, [200, 60, 50]);
    }
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| Error::InvalidInput(format!("cannot encode PNG: {e}")))?;
    write_atomic(path, &png)
}

/// One curve of [`series_png`]: its label, its points `(step, value)` and its colour.
pub type Series<'a> = (&'a str, &'a [(usize, f32)], [u8; 3]);

/// Several curves `(label, points (step, value), colour)` on shared axes, with a legend and a
/// title, written to `path` atomically (e.g. the critic's W estimate against the exact W1).
pub fn series_png(title: &str, series: &[Series], path: &Path) -> Result<()> {
    let finite: Vec<(usize, f32)> = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .filter(|p| p.1.is_finite())
        .collect();
    if finite.len() < 2 {
        return Err(Error::InvalidInput(
            "need at least two finite points to plot".into(),
        ));
    }
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let (lo, hi) = finite
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), p| {
            (a.min(p.1), b.max(p.1))
        });
    let lo = lo.min(0.0);
    let span = (hi - lo).max(1e-6);
    let last = finite.iter().map(|p| p.0).max().unwrap_or(1).max(1) as f32;
    let (pw, ph) = ((W - LEFT - MARGIN) as f32, (H - 3 * MARGIN) as f32);
    let top = 2 * MARGIN;
    let at = |step: usize, v: f32| {
        (
            LEFT as f32 + step as f32 / last * pw,
            top as f32 + (hi - v) / span * ph,
        )
    };
    let axis = [90, 90, 90];
    line(&mut img, at(0, lo), at(last as usize, lo), axis);
    line(&mut img, at(0, lo), at(0, hi), axis);
    let ink = [40, 40, 40];
    crate::draw::text(&mut img, LEFT as i64, 6, title, 1, ink);
    for (k, (label, points, color)) in series.iter().enumerate() {
        let pts: Vec<(usize, f32)> = points.iter().copied().filter(|p| p.1.is_finite()).collect();
        for w in pts.windows(2) {
            let (a, b) = (at(w[0].0, w[0].1), at(w[1].0, w[1].1));
            line(&mut img, a, b, *color);
            line(&mut img, (a.0, a.1 + 1.0), (b.0, b.1 + 1.0), *color);
        }
        let y = 22 + 12 * k as i64;
        for d in 0..16 {
            img.put_pixel(LEFT + d, y as u32 + 3, Rgb(*color));
        }
        crate::draw::text(&mut img, LEFT as i64 + 22, y, label, 1, *color);
    }
    let (t, b) = (at(0, hi), at(0, lo));
    crate::draw::text(&mut img, 4, t.1 as i64 - 4, &format!("{hi:.3}"), 1, ink);
    crate::draw::text(&mut img, 4, b.1 as i64 - 4, &format!("{lo:.3}"), 1, ink);
    let end = format!("step {}", last as usize);
    let end_x = (W - MARGIN) as i64 - crate::draw::text_width(&end, 1) as i64;
    crate::draw::text(&mut img, end_x, b.1 as i64 + 6, &end, 1, ink);
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| Error::InvalidInput(format!("cannot encode PNG: {e}")))?;
    write_atomic(path, &png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_falling_curve() {
        let losses: Vec<(usize, f32)> = (0..100)
            .map(|s| (s, 4.0 * (-(s as f32) / 30.0).exp() + 1.0))
            .collect();
        let p = std::env::temp_dir().join(format!("tuwen-curve-{}.png", std::process::id()));
        loss_curve_png(&losses, &p).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (W, H));
        // The curve starts high on the left and ends low on the right.
        let dark = |x: u32| (0..H).find(|&y| img.get_pixel(x, y).0 == [160, 190, 235]);
        let (left, right) = (dark(LEFT + 2).unwrap(), dark(W - MARGIN - 2).unwrap());
        assert!(left < right, "{left} {right}");
        assert!(loss_curve_png(&losses[..1], &p).is_err());
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn bar_chart_draws_bars_by_value() {
        let p = std::env::temp_dir().join(format!("tuwen-bars-{}.png", std::process::id()));
        let bars = vec![("a".to_string(), 0.2), ("b".to_string(), 0.9)];
        bar_chart_png(&bars, Some(("ref", 0.5)), "title", &p).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        let bar = [70, 110, 190];
        let height = |x: u32| (0..H).filter(|&y| img.get_pixel(x, y).0 == bar).count();
        let slot = (W - MARGIN - LEFT) / 2;
        let (a, b) = (height(LEFT + slot / 2), height(LEFT + slot + slot / 2));
        assert!(a > 0 && b > 4 * a, "{a} {b}");
        assert!(bar_chart_png(&[], None, "t", &p).is_err());
        std::fs::remove_file(&p).unwrap();
    }
}
