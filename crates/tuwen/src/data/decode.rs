//! Decoding image files into 8-bit RGB, the way PIL's `Image.open(..).convert("RGB")` does after
//! transformers' `load_image` has applied the EXIF orientation.

use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use crate::{Error, Result};

/// Opens and decodes an image file (PNG, JPEG, WebP, GIF, BMP, TIFF), honours its EXIF
/// orientation and converts it to 8-bit RGB with PIL's rules (see [`to_rgb8_like_pil`]).
pub fn open_rgb(path: &Path) -> Result<RgbImage> {
    let bad = |message: String| Error::Image {
        path: path.to_path_buf(),
        message,
    };
    let reader = ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    if reader.format().is_none() {
        return Err(bad("not a PNG, JPEG, WebP, GIF, BMP or TIFF file".into()));
    }
    let mut decoder = reader.into_decoder().map_err(|e| bad(e.to_string()))?;
    let orientation = decoder.orientation().map_err(|e| bad(e.to_string()))?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| bad(e.to_string()))?;
    img.apply_orientation(orientation);
    Ok(to_rgb8_like_pil(img))
}

/// Decodes an in-memory image file; see [`open_rgb`].
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage> {
    let bad = |message: String| Error::Image {
        path: "<memory>".into(),
        message,
    };
    let reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?;
    let mut decoder = reader.into_decoder().map_err(|e| bad(e.to_string()))?;
    let orientation = decoder.orientation().map_err(|e| bad(e.to_string()))?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| bad(e.to_string()))?;
    img.apply_orientation(orientation);
    Ok(to_rgb8_like_pil(img))
}

/// Converts any decoded image to 8-bit RGB as PIL's `convert("RGB")` does on what PIL would
/// have opened:
/// - alpha is dropped, not composited (PIL ignores it when converting to RGB);
/// - grayscale is replicated into the three channels;
/// - 16-bit RGB(A) and gray+alpha keep the high byte (PIL opens them as 8-bit modes);
/// - 16-bit grayscale opens as PIL mode `I;16`, whose conversion clips values above 255.
pub fn to_rgb8_like_pil(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let gray = |v: u8| [v, v, v];
    let pixels: Vec<u8> = match img {
        DynamicImage::ImageRgb8(b) => return b,
        DynamicImage::ImageRgba8(b) => b.pixels().flat_map(|p| [p[0], p[1], p[2]]).collect(),
        DynamicImage::ImageLuma8(b) => b.pixels().flat_map(|p| gray(p[0])).collect(),
        DynamicImage::ImageLumaA8(b) => b.pixels().flat_map(|p| gray(p[0])).collect(),
        DynamicImage::ImageLuma16(b) => {
            b.pixels().flat_map(|p| gray(p[0].min(255) as u8)).collect()
        }
        DynamicImage::ImageLumaA16(b) => b.pixels().flat_map(|p| gray((p[0] >> 8) as u8)).collect(),
        DynamicImage::ImageRgb16(b) => b
            .pixels()
            .flat_map(|p| p.0.map(|v| (v >> 8) as u8))
            .collect(),
        DynamicImage::ImageRgba16(b) => b
            .pixels()
            .flat_map(|p| [p[0], p[1], p[2]].map(|v| (v >> 8) as u8))
            .collect(),
        other => return other.to_rgb8(),
    };
    RgbImage::from_raw(w, h, pixels).expect("buffer has w*h*3 bytes")
}
