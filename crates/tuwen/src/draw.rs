//! Drawing for the pictures tuwen writes: text in an 8×8 bitmap font (public-domain
//! `font8x8`), image tiles scaled into cells, and frames.

use image::{Rgb, RgbImage};

/// Width in pixels of `s` drawn at `scale`.
pub fn text_width(s: &str, scale: u32) -> u32 {
    s.chars().count() as u32 * 8 * scale
}

/// Draws `s` with its top-left corner at `(x, y)`, each font pixel a `scale`×`scale` block;
/// characters outside ASCII are drawn as `?`. What falls outside the image is clipped.
pub fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, scale: u32, color: [u8; 3]) {
    let scale = scale.max(1) as i64;
    for (k, c) in s.chars().enumerate() {
        let code = if c.is_ascii() {
            c as usize
        } else {
            '?' as usize
        };
        let glyph = font8x8::legacy::BASIC_LEGACY[code];
        let x0 = x + k as i64 * 8 * scale;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits >> col & 1 == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        put(
                            img,
                            x0 + col * scale + dx,
                            y + row as i64 * scale + dy,
                            color,
                        );
                    }
                }
            }
        }
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, color: [u8; 3]) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, Rgb(color));
    }
}

/// Copies `tile` scaled (nearest neighbour, aspect kept) into the `size`×`size` cell at
/// `(x, y)`, centred.
pub fn paste_fit(img: &mut RgbImage, tile: &RgbImage, x: u32, y: u32, size: u32) {
    let (w, h) = tile.dimensions();
    if w == 0 || h == 0 {
        return;
    }
    let f = size as f32 / w.max(h) as f32;
    let (tw, th) = (
        ((w as f32 * f).round() as u32).max(1),
        ((h as f32 * f).round() as u32).max(1),
    );
    let (ox, oy) = (x + (size - tw.min(size)) / 2, y + (size - th.min(size)) / 2);
    for j in 0..th.min(size) {
        for i in 0..tw.min(size) {
            let sx = ((i as f32 + 0.5) / f) as u32;
            let sy = ((j as f32 + 0.5) / f) as u32;
            let p = *tile.get_pixel(sx.min(w - 1), sy.min(h - 1));
            put(img, (ox + i) as i64, (oy + j) as i64, p.0);
        }
    }
}

/// A frame `width` pixels thick just inside the rectangle at `(x, y)` of side `w`×`h`.
pub fn frame(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, width: u32, color: [u8; 3]) {
    for j in 0..h {
        for i in 0..w {
            if i < width || j < width || i + width >= w || j + width >= h {
                put(img, (x + i) as i64, (y + j) as i64, color);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_draws_glyphs_and_clips() {
        let mut img = RgbImage::from_pixel(40, 10, Rgb([255, 255, 255]));
        text(&mut img, 1, 1, "I.", 1, [0, 0, 0]);
        let dark = img.pixels().filter(|p| p.0 == [0, 0, 0]).count();
        assert!(dark > 10, "{dark} pixels drawn");
        // Nothing right of the two characters.
        assert!((17..40).all(|x| (0..10).all(|y| img.get_pixel(x, y).0 == [255; 3])));
        text(&mut img, 35, 5, "WWW", 2, [0, 0, 0]);
        assert_eq!(text_width("abc", 2), 48);
    }

    #[test]
    fn paste_fit_scales_into_the_cell() {
        let tile = RgbImage::from_pixel(4, 2, Rgb([9, 8, 7]));
        let mut img = RgbImage::new(10, 10);
        paste_fit(&mut img, &tile, 1, 1, 8);
        // 8×4 centred vertically: rows 3..7, columns 1..9.
        assert_eq!(img.get_pixel(1, 3).0, [9, 8, 7]);
        assert_eq!(img.get_pixel(8, 6).0, [9, 8, 7]);
        assert_eq!(img.get_pixel(4, 2).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(4, 7).0, [0, 0, 0]);
        frame(&mut img, 0, 0, 10, 10, 1, [1, 1, 1]);
        assert_eq!(img.get_pixel(9, 5).0, [1, 1, 1]);
        assert_eq!(img.get_pixel(5, 5).0, [9, 8, 7]);
    }
}
