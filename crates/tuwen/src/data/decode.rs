//! Decoding image files into 8-bit RGB, the way PIL's `Image.open(..).convert("RGB")` does after
//! transformers' `load_image` has applied the EXIF orientation.

use std::io::{BufRead, Cursor, Seek};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use crate::{Error, Result};

/// The default cap on an image's declared width × height: Pillow's `Image.MAX_IMAGE_PIXELS`
/// (about 89.5 million, a 0.25 GB RGB image).
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 89_478_485;

static MAX_IMAGE_PIXELS: AtomicU64 = AtomicU64::new(DEFAULT_MAX_IMAGE_PIXELS);

/// Sets the largest width × height an image may declare before it is decoded (for the whole
/// process). A file above it is refused as an unreadable image, before any pixel memory is
/// allocated, so that a small file claiming a huge image (a decompression bomb) cannot exhaust
/// memory. Pillow's `Image.MAX_IMAGE_PIXELS` is the same idea.
pub fn set_max_image_pixels(n: u64) -> Result<()> {
    if n == 0 {
        return Err(Error::InvalidInput(
            "--max-image-pixels must be at least 1".into(),
        ));
    }
    MAX_IMAGE_PIXELS.store(n, Ordering::Relaxed);
    Ok(())
}

/// The current cap on width × height (see [`set_max_image_pixels`]).
pub fn max_image_pixels() -> u64 {
    MAX_IMAGE_PIXELS.load(Ordering::Relaxed)
}

/// Opens and decodes an image file (PNG, JPEG, WebP, GIF, BMP, TIFF), honours its EXIF
/// orientation and converts it to 8-bit RGB with PIL's rules (see [`to_rgb8_like_pil`]).
///
/// Refused, as [`Error::Image`]: anything but a regular file (a FIFO would block), an image
/// declaring more than [`max_image_pixels`] pixels, and a JPEG whose data ends before its end
/// marker (a truncated file, which PIL refuses too).
pub fn open_rgb(path: &Path) -> Result<RgbImage> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::Image {
            path: path.to_path_buf(),
            message: "not a regular file".into(),
        });
    }
    let reader = ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    if reader.format() == Some(ImageFormat::Jpeg) {
        // The JPEG decoder reads the whole file anyway; read it here to check its structure
        // (no bigger than the decoder may allocate: a compressed file is smaller than that).
        let allowed = alloc_limit(max_image_pixels());
        if meta.len() > allowed {
            return Err(Error::Image {
                path: path.to_path_buf(),
                message: format!(
                    "a {} MB JPEG is more than the {} MB the pixel limit allows; raise \
                     --max-image-pixels",
                    meta.len() >> 20,
                    allowed >> 20
                ),
            });
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let reader = ImageReader::new(Cursor::new(&bytes[..])).with_guessed_format();
        let reader = reader.map_err(|e| Error::io(path, e))?;
        return decode(reader, Some(&bytes), path, max_image_pixels());
    }
    decode(reader, None, path, max_image_pixels())
}

/// Decodes an in-memory image file; see [`open_rgb`].
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage> {
    decode_capped(bytes, max_image_pixels())
}

fn decode_capped(bytes: &[u8], cap: u64) -> Result<RgbImage> {
    let path = Path::new("<memory>");
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Image {
            path: path.into(),
            message: e.to_string(),
        })?;
    decode(reader, Some(bytes), path, cap)
}

/// Decodes with the limits: the declared size is checked before any pixel buffer exists.
fn decode<R: BufRead + Seek>(
    mut reader: ImageReader<R>,
    bytes: Option<&[u8]>,
    path: &Path,
    cap: u64,
) -> Result<RgbImage> {
    let bad = |message: String| Error::Image {
        path: path.to_path_buf(),
        message,
    };
    let Some(format) = reader.format() else {
        return Err(bad("not a PNG, JPEG, WebP, GIF, BMP or TIFF file".into()));
    };
    if format == ImageFormat::Jpeg
        && let Some(bytes) = bytes
        && !jpeg_is_complete(bytes)
    {
        return Err(bad("the JPEG data ends early (a truncated file)".into()));
    }
    // The decoder's own allocations (and the decoded buffer) may hold 8 bytes a pixel at most:
    // 16-bit RGBA at the pixel cap.
    let mut limits = Limits::default();
    limits.max_alloc = Some(alloc_limit(cap));
    reader.limits(limits.clone());
    let mut decoder = reader.into_decoder().map_err(|e| bad(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if pixels > cap {
        return Err(bad(format!(
            "{w}x{h} = {pixels} pixels is more than the limit of {cap} (a decompression bomb?); \
             raise it with --max-image-pixels"
        )));
    }
    if w == 0 || h == 0 {
        return Err(bad(format!("the image is {w}x{h} pixels")));
    }
    limits
        .reserve(decoder.total_bytes())
        .map_err(|e| bad(e.to_string()))?;
    let orientation = decoder.orientation().map_err(|e| bad(e.to_string()))?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| bad(e.to_string()))?;
    img.apply_orientation(orientation);
    Ok(to_rgb8_like_pil(img))
}

/// The bytes a decoder may allocate for an image of `cap` pixels: 16-bit RGBA (8 bytes a
/// pixel), at least 64 MB.
fn alloc_limit(cap: u64) -> u64 {
    cap.saturating_mul(8).max(64 << 20)
}

/// Whether a JPEG's marker structure reaches its end-of-image marker: segments are skipped by
/// their lengths, entropy-coded data up to the next marker, so an embedded thumbnail or bytes
/// after the end marker do not matter. A file cut anywhere before its end marker fails.
fn jpeg_is_complete(b: &[u8]) -> bool {
    if b.len() < 4 || b[0] != 0xFF || b[1] != 0xD8 {
        return false;
    }
    let mut i = 2;
    loop {
        // Stray bytes between segments are skipped up to the next 0xFF (as libjpeg does), and
        // fill bytes (more 0xFF) may precede a marker.
        while i < b.len() && b[i] != 0xFF {
            i += 1;
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = b.get(i) else {
            return false;
        };
        i += 1;
        match marker {
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = b
            .get(i..i + 2)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        else {
            return false;
        };
        if len < 2 || i + len > b.len() {
            return false;
        }
        i += len;
        if marker == 0xDA {
            // Entropy-coded data runs to the next marker that is not a stuffed 0xFF00 or a
            // restart marker.
            loop {
                match b.get(i..i + 2) {
                    None => return false,
                    Some([0xFF, 0x00]) | Some([0xFF, 0xD0..=0xD7]) => i += 2,
                    Some([0xFF, _]) => break,
                    Some(_) => i += 1,
                }
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 13) as u8, 99]));
        let mut out = Vec::new();
        DynamicImage::ImageRgb8(img)
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Jpeg)
            .unwrap();
        out
    }

    #[test]
    fn a_truncated_jpeg_is_refused_and_a_complete_one_with_a_trailer_is_not() {
        let full = jpeg(64, 48);
        assert!(decode_rgb(&full).is_ok());
        // Stray bytes between two segments are passed over, as libjpeg does.
        let first = 4 + usize::from(u16::from_be_bytes([full[4], full[5]]));
        let mut padded = full[..first].to_vec();
        padded.extend_from_slice(b"\x00\x00junk");
        padded.extend_from_slice(&full[first..]);
        assert_eq!(
            decode_rgb(&padded).map(|i| i.dimensions()).ok(),
            Some((64, 48))
        );
        assert!(jpeg_is_complete(&padded));
        let mut trailer = full.clone();
        trailer.extend_from_slice(b"\xFF\xDAtrailing bytes after the end marker");
        assert_eq!(decode_rgb(&trailer).unwrap().dimensions(), (64, 48));
        for cut in [full.len() - 2, full.len() - 40, full.len() / 2] {
            let err = decode_rgb(&full[..cut]).unwrap_err().to_string();
            assert!(err.contains("truncated"), "{err}");
        }
    }

    #[test]
    fn declared_size_above_the_cap_is_refused_before_decoding() {
        // (A 100-byte PNG declaring 100000 x 100000 pixels is refused in tests/hostile.rs.)
        // A JPEG within the cap decodes; one pixel more than the cap is refused.
        let small = jpeg(40, 30);
        assert!(decode_capped(&small, 1200).is_ok());
        let err = decode_capped(&small, 1199).unwrap_err().to_string();
        assert!(
            err.contains("40x30 = 1200 pixels") && err.contains("1199"),
            "{err}"
        );
        assert!(set_max_image_pixels(0).is_err());
    }

    #[test]
    fn only_regular_files_are_opened() {
        let dir = std::env::temp_dir().join(format!("tuwen-decode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = open_rgb(&dir).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
