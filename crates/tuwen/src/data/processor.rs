//! transformers' image-processor semantics, read from preprocessor_config.json.
//!
//! The steps run in transformers' order: convert to RGB, resize, center crop, rescale,
//! normalize (EfficientNet: rescale with offset, then normalize once more by the std when
//! `include_top`). Resizing is PIL's (see [`super::resize`]), as in transformers' PIL backend.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use image::RgbImage;
use rayon::prelude::*;
use serde::Deserialize;
use serde_json::Value;

use super::decode::open_rgb;
use super::resize::{Resample, resize};
use crate::{Error, Result};

/// The target of the resize step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// Exactly this height and width.
    Exact {
        /// Output height.
        height: u32,
        /// Output width.
        width: u32,
    },
    /// Scale so the shorter side has this length, keeping the aspect ratio.
    ShortestEdge(u32),
}

/// A parsed preprocessor_config.json: every step and its parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageProcessor {
    /// transformers' processor class, e.g. "ViTImageProcessor" (its defaults fill absent
    /// fields; it is written back on save).
    pub class: String,
    /// Resize target, when resizing.
    pub resize: Option<Size>,
    /// The resampling filter.
    pub resample: Resample,
    /// Center-crop height and width, when cropping.
    pub center_crop: Option<(u32, u32)>,
    /// Multiply pixel values by this, when rescaling.
    pub rescale: Option<f64>,
    /// Subtract 1 after rescaling (EfficientNet's `rescale_offset`).
    pub rescale_offset: bool,
    /// Per-channel (mean, std), when normalizing.
    pub normalize: Option<([f32; 3], [f32; 3])>,
    /// Divide by the std once more after normalizing (EfficientNet's `include_top`).
    pub include_top_std: Option<[f32; 3]>,
}

/// The raw JSON fields; absent fields take the processor class's defaults.
#[derive(Deserialize, Default)]
struct RawConfig {
    image_processor_type: Option<String>,
    /// Older checkpoints name a feature extractor instead (`ViTFeatureExtractor`).
    feature_extractor_type: Option<String>,
    do_resize: Option<bool>,
    size: Option<Value>,
    resample: Option<u32>,
    do_center_crop: Option<bool>,
    crop_size: Option<Value>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    rescale_offset: Option<bool>,
    do_normalize: Option<bool>,
    image_mean: Option<Value>,
    image_std: Option<Value>,
    include_top: Option<bool>,
}

const IMAGENET_STANDARD_MEAN: [f32; 3] = [0.5, 0.5, 0.5];
const IMAGENET_STANDARD_STD: [f32; 3] = [0.5, 0.5, 0.5];
const OPENAI_CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const OPENAI_CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Class defaults, as transformers' processor classes define them.
struct Defaults {
    size: Value,
    default_to_square: bool,
    resample: u32,
    do_center_crop: bool,
    crop_size: Value,
    mean: [f32; 3],
    std: [f32; 3],
    efficientnet: bool,
}

fn defaults(processor_type: &str) -> Result<Defaults, String> {
    let base = processor_type
        .trim_end_matches("Pil")
        .trim_end_matches("Fast");
    let d = match base {
        "ViTImageProcessor" | "DeiTImageProcessor" | "BeitImageProcessor" | "" => Defaults {
            size: serde_json::json!({"height": 224, "width": 224}),
            default_to_square: true,
            resample: 2,
            do_center_crop: false,
            crop_size: serde_json::json!({"height": 224, "width": 224}),
            mean: IMAGENET_STANDARD_MEAN,
            std: IMAGENET_STANDARD_STD,
            efficientnet: false,
        },
        "CLIPImageProcessor" => Defaults {
            size: serde_json::json!({"shortest_edge": 224}),
            default_to_square: false,
            resample: 3,
            do_center_crop: true,
            crop_size: serde_json::json!({"height": 224, "width": 224}),
            mean: OPENAI_CLIP_MEAN,
            std: OPENAI_CLIP_STD,
            efficientnet: false,
        },
        "SiglipImageProcessor" => Defaults {
            size: serde_json::json!({"height": 224, "width": 224}),
            default_to_square: false,
            resample: 3,
            do_center_crop: false,
            crop_size: serde_json::json!({"height": 224, "width": 224}),
            mean: IMAGENET_STANDARD_MEAN,
            std: IMAGENET_STANDARD_STD,
            efficientnet: false,
        },
        "BlipImageProcessor" => Defaults {
            size: serde_json::json!({"height": 384, "width": 384}),
            default_to_square: true,
            resample: 3,
            do_center_crop: false,
            crop_size: serde_json::json!({"height": 384, "width": 384}),
            mean: OPENAI_CLIP_MEAN,
            std: OPENAI_CLIP_STD,
            efficientnet: false,
        },
        "EfficientNetImageProcessor" => Defaults {
            size: serde_json::json!({"height": 346, "width": 346}),
            default_to_square: true,
            resample: 3,
            do_center_crop: false,
            crop_size: serde_json::json!({"height": 289, "width": 289}),
            mean: IMAGENET_STANDARD_MEAN,
            std: IMAGENET_STANDARD_STD,
            efficientnet: true,
        },
        other => return Err(format!("unknown image_processor_type {other:?}")),
    };
    Ok(d)
}

fn parse_size(v: &Value, default_to_square: bool) -> Result<Size, String> {
    let dim = |v: &Value, key: &str| -> Result<u32, String> {
        v.as_u64()
            .filter(|&n| n > 0 && n <= 1 << 16)
            .map(|n| n as u32)
            .ok_or_else(|| format!("{key} must be a positive integer, got {v}"))
    };
    match v {
        Value::Number(_) if default_to_square => {
            let n = dim(v, "size")?;
            Ok(Size::Exact {
                height: n,
                width: n,
            })
        }
        Value::Number(_) => Ok(Size::ShortestEdge(dim(v, "size")?)),
        Value::Object(m) => {
            if let Some(s) = m.get("shortest_edge") {
                if m.get("longest_edge").is_some_and(|v| !v.is_null()) {
                    return Err(
                        "size with both shortest_edge and longest_edge is not supported".into(),
                    );
                }
                return Ok(Size::ShortestEdge(dim(s, "shortest_edge")?));
            }
            match (m.get("height"), m.get("width")) {
                (Some(h), Some(w)) => Ok(Size::Exact {
                    height: dim(h, "height")?,
                    width: dim(w, "width")?,
                }),
                _ => Err(format!(
                    "size needs height and width, or shortest_edge; got {v}"
                )),
            }
        }
        _ => Err(format!("size must be a number or an object, got {v}")),
    }
}

fn parse_triple(v: &Value, key: &str) -> Result<[f32; 3], String> {
    let one = |x: &Value| {
        x.as_f64()
            .filter(|f| f.is_finite())
            .map(|f| f as f32)
            .ok_or_else(|| format!("{key} must hold finite numbers, got {v}"))
    };
    match v {
        Value::Number(_) => {
            let x = one(v)?;
            Ok([x; 3])
        }
        Value::Array(a) if a.len() == 3 => Ok([one(&a[0])?, one(&a[1])?, one(&a[2])?]),
        _ => Err(format!("{key} must be a number or three numbers, got {v}")),
    }
}

impl ImageProcessor {
    /// Reads preprocessor_config.json.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::hub::read_text(path)?;
        Self::from_json(&text).map_err(|m| Error::config(path, m))
    }

    /// Reads the text of a preprocessor_config.json; the error is a one-line message.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Self::from_raw(raw)
    }

    /// The defaults of a processor class, e.g. "ViTImageProcessor", as if its config were empty.
    pub fn for_type(processor_type: &str) -> Result<Self, String> {
        Self::from_raw(RawConfig {
            image_processor_type: Some(processor_type.to_string()),
            ..Default::default()
        })
    }

    fn from_raw(raw: RawConfig) -> Result<Self, String> {
        let kind = match (&raw.image_processor_type, &raw.feature_extractor_type) {
            (Some(t), _) => t.clone(),
            (None, Some(t)) => t.replace("FeatureExtractor", "ImageProcessor"),
            (None, None) => String::new(),
        };
        let d = defaults(&kind)?;
        let resize = if raw.do_resize.unwrap_or(true) {
            Some(parse_size(
                raw.size.as_ref().unwrap_or(&d.size),
                d.default_to_square,
            )?)
        } else {
            None
        };
        let code = raw.resample.unwrap_or(d.resample);
        let resample = Resample::from_pil(code).ok_or_else(|| {
            format!("resample {code} is not supported (0 nearest, 2 bilinear, 3 bicubic)")
        })?;
        let center_crop = if raw.do_center_crop.unwrap_or(d.do_center_crop) {
            match parse_size(raw.crop_size.as_ref().unwrap_or(&d.crop_size), true)? {
                Size::Exact { height, width } => Some((height, width)),
                Size::ShortestEdge(_) => return Err("crop_size needs height and width".into()),
            }
        } else {
            None
        };
        let rescale = if raw.do_rescale.unwrap_or(true) {
            let f = raw.rescale_factor.unwrap_or(1.0 / 255.0);
            if !f.is_finite() {
                return Err(format!("rescale_factor must be finite, got {f}"));
            }
            Some(f)
        } else {
            None
        };
        let mean = match &raw.image_mean {
            Some(v) => parse_triple(v, "image_mean")?,
            None => d.mean,
        };
        let std = match &raw.image_std {
            Some(v) => parse_triple(v, "image_std")?,
            None => d.std,
        };
        if std.contains(&0.0) {
            return Err("image_std must not contain zero".into());
        }
        let normalize = raw.do_normalize.unwrap_or(true).then_some((mean, std));
        let include_top_std = (d.efficientnet && raw.include_top.unwrap_or(true)).then_some(std);
        Ok(ImageProcessor {
            class: if kind.is_empty() {
                "ViTImageProcessor".into()
            } else {
                kind
            },
            resize,
            resample,
            center_crop,
            rescale,
            rescale_offset: d.efficientnet && raw.rescale_offset.unwrap_or(false),
            normalize,
            include_top_std,
        })
    }

    /// preprocessor_config.json for this processor: every step written out, so that tuwen and
    /// transformers read back exactly this preprocessing.
    pub fn to_json(&self) -> Value {
        use serde_json::json;
        let hw = |h: u32, w: u32| json!({"height": h, "width": w});
        let size = match self.resize {
            Some(Size::Exact { height, width }) => hw(height, width),
            Some(Size::ShortestEdge(s)) => json!({"shortest_edge": s}),
            None => Value::Null,
        };
        let (mean, std) = self
            .normalize
            .unwrap_or(([0.0; 3], self.include_top_std.unwrap_or([1.0; 3])));
        let mut v = json!({
            "image_processor_type": self.class,
            "do_resize": self.resize.is_some(),
            "size": size,
            "resample": self.resample.pil_code(),
            "do_center_crop": self.center_crop.is_some(),
            "do_rescale": self.rescale.is_some(),
            "rescale_factor": self.rescale.unwrap_or(1.0 / 255.0),
            "do_normalize": self.normalize.is_some(),
            "image_mean": mean,
            "image_std": std,
        });
        if let Some((h, w)) = self.center_crop {
            v["crop_size"] = hw(h, w);
        }
        if defaults(&self.class).is_ok_and(|d| d.efficientnet) {
            v["rescale_offset"] = json!(self.rescale_offset);
            v["include_top"] = json!(self.include_top_std.is_some());
        }
        v
    }

    /// Writes [`Self::to_json`] as `folder/preprocessor_config.json`; an error for a processor
    /// the file cannot describe (one that would read back as another).
    pub fn save(&self, folder: &Path) -> Result<()> {
        let json = self.to_json();
        if Self::from_json(&json.to_string()).as_ref() != Ok(self) {
            return Err(Error::InvalidInput(format!(
                "this {} cannot be written as preprocessor_config.json (it would read back differently)",
                self.class
            )));
        }
        let text = serde_json::to_string_pretty(&json)
            .map_err(|e| Error::InvalidInput(format!("cannot serialise the processor: {e}")))?;
        crate::hub::write_atomic(&folder.join("preprocessor_config.json"), text.as_bytes())
    }

    /// The resize and crop steps: the 8-bit image the model's pixels are computed from.
    pub fn resize_and_crop(&self, img: &RgbImage) -> RgbImage {
        let mut img = match self.resize {
            Some(size) => {
                let (w, h) = output_size(img.width(), img.height(), size);
                resize(img, w, h, self.resample)
            }
            None => img.clone(),
        };
        if let Some((h, w)) = self.center_crop {
            img = center_crop(&img, h, w);
        }
        img
    }

    /// Runs every step on one image: `[3, height, width]` values, channel-first.
    pub fn preprocess(&self, img: &RgbImage) -> (Vec<f32>, [usize; 3]) {
        let img = self.resize_and_crop(img);
        let (w, h) = (img.width() as usize, img.height() as usize);
        let mut out = vec![0f32; 3 * h * w];
        for (i, p) in img.pixels().enumerate() {
            for c in 0..3 {
                out[c * h * w + i] = self.pixel_value(p[c], c);
            }
        }
        (out, [3, h, w])
    }

    /// The final value of one 8-bit sample of channel `c`.
    fn pixel_value(&self, v: u8, c: usize) -> f32 {
        // transformers rescales in float64 and then casts to float32.
        let mut x = match self.rescale {
            Some(f) => (f64::from(v) * f) as f32,
            None => f32::from(v),
        };
        if self.rescale.is_some() && self.rescale_offset {
            x -= 1.0;
        }
        if let Some((mean, std)) = &self.normalize {
            x = (x - mean[c]) / std[c];
        }
        if let Some(std) = &self.include_top_std {
            x /= std[c];
        }
        x
    }

    /// Decodes and preprocesses image files in parallel into a `[n, 3, h, w]` batch. All images
    /// must come out the same size (true whenever the config resizes to a fixed size or crops).
    pub fn load_batch(&self, paths: &[PathBuf], device: &Device) -> Result<Tensor<4>> {
        let items: Vec<(Vec<f32>, [usize; 3])> = paths
            .par_iter()
            .map(|p| open_rgb(p).map(|img| self.preprocess(&img)))
            .collect::<Result<_>>()?;
        batch_tensor(items, device)
    }

    /// [`load_batch`](Self::load_batch) that skips what cannot be read: returns the indices
    /// of the images it kept and their batch (`None` when none was readable); `on_skip` is
    /// told each skipped index and why.
    pub fn load_batch_lenient(
        &self,
        paths: &[PathBuf],
        device: &Device,
        mut on_skip: impl FnMut(usize, &Error),
    ) -> Result<(Vec<usize>, Option<Tensor<4>>)> {
        let loaded: Vec<Result<(Vec<f32>, [usize; 3])>> = paths
            .par_iter()
            .map(|p| open_rgb(p).map(|img| self.preprocess(&img)))
            .collect();
        let (mut kept, mut items) = (Vec::new(), Vec::new());
        for (i, item) in loaded.into_iter().enumerate() {
            match item {
                Ok(item) => {
                    kept.push(i);
                    items.push(item);
                }
                Err(e) => on_skip(i, &e),
            }
        }
        if items.is_empty() {
            return Ok((kept, None));
        }
        Ok((kept, Some(batch_tensor(items, device)?)))
    }
}

/// Stacks channel-first images of one size into a `[n, c, h, w]` tensor.
pub fn batch_tensor(items: Vec<(Vec<f32>, [usize; 3])>, device: &Device) -> Result<Tensor<4>> {
    let Some(&(_, [c, h, w])) = items.first() else {
        return Err(Error::InvalidInput("no images given".into()));
    };
    let n = items.len();
    let mut data = Vec::with_capacity(n * c * h * w);
    for (values, shape) in items {
        if shape != [c, h, w] {
            return Err(Error::InvalidInput(format!(
                "images preprocess to different sizes ({:?} and {:?}); the processor must resize to a fixed size or crop",
                [c, h, w],
                shape
            )));
        }
        data.extend_from_slice(&values);
    }
    Ok(Tensor::from_data(
        TensorData::new(data, [n, c, h, w]),
        device,
    ))
}

/// The (width, height) the resize step produces for an input of `width` x `height`.
pub fn output_size(width: u32, height: u32, size: Size) -> (u32, u32) {
    match size {
        Size::Exact { height, width } => (width, height),
        Size::ShortestEdge(short) => {
            // transformers: the long side is int(short * long / old_short), truncated.
            let (old_short, old_long) = (width.min(height), width.max(height));
            let long = ((f64::from(short) * f64::from(old_long)) / f64::from(old_short)) as u32;
            let long = long.max(1);
            if width <= height {
                (short, long)
            } else {
                (long, short)
            }
        }
    }
}

/// transformers' center crop: the centred window, zero-padded where the image is smaller.
pub fn center_crop(img: &RgbImage, crop_h: u32, crop_w: u32) -> RgbImage {
    let (w, h) = (i64::from(img.width()), i64::from(img.height()));
    let (ch, cw) = (i64::from(crop_h), i64::from(crop_w));
    // Python's floor division, then the offset of the window in the (padded) image.
    let top = (h - ch).div_euclid(2);
    let left = (w - cw).div_euclid(2);
    RgbImage::from_fn(crop_w, crop_h, |x, y| {
        let (sx, sy) = (left + i64::from(x), top + i64::from(y));
        if (0..w).contains(&sx) && (0..h).contains(&sy) {
            *img.get_pixel(sx as u32, sy as u32)
        } else {
            image::Rgb([0, 0, 0])
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_itself_back_exactly() {
        let configs = [
            r#"{"image_processor_type": "ViTImageProcessor", "size": {"height": 32, "width": 48}, "resample": 2}"#,
            r#"{"image_processor_type": "CLIPImageProcessor", "size": 40, "crop_size": 36}"#,
            r#"{"image_processor_type": "SiglipImageProcessor", "do_normalize": false}"#,
            r#"{"image_processor_type": "EfficientNetImageProcessor", "size": 67, "rescale_offset": true, "include_top": true, "image_std": [0.2, 0.3, 0.4]}"#,
            r#"{"image_processor_type": "EfficientNetImageProcessor", "include_top": false, "do_center_crop": true, "do_resize": false}"#,
            r#"{"feature_extractor_type": "ViTFeatureExtractor", "do_rescale": false, "image_mean": 0.1}"#,
        ];
        for text in configs {
            let p = ImageProcessor::from_json(text).unwrap();
            let back = ImageProcessor::from_json(&p.to_json().to_string()).unwrap();
            assert_eq!(back, p, "{text}");
        }
        let vit = ImageProcessor::from_json(configs[0]).unwrap();
        assert_eq!(vit.class, "ViTImageProcessor");
        assert_ne!(
            ImageProcessor::from_json(configs[3]).unwrap(),
            ImageProcessor::from_json(configs[4]).unwrap()
        );
    }

    #[test]
    fn reads_vit_and_clip_configs() {
        let vit = ImageProcessor::from_json(
            r#"{"image_processor_type": "ViTImageProcessor", "size": {"height": 32, "width": 48}, "resample": 2,
                "image_mean": [0.5,0.5,0.5], "image_std": [0.5,0.5,0.5], "rescale_factor": 0.00392156862745098}"#,
        )
        .unwrap();
        assert_eq!(
            vit.resize,
            Some(Size::Exact {
                height: 32,
                width: 48
            })
        );
        assert_eq!(vit.center_crop, None);
        let clip = ImageProcessor::from_json(
            r#"{"image_processor_type": "CLIPImageProcessor", "size": 224}"#,
        )
        .unwrap();
        assert_eq!(clip.resize, Some(Size::ShortestEdge(224)));
        assert_eq!(clip.center_crop, Some((224, 224)));
        assert_eq!(clip.resample, Resample::Bicubic);
    }

    #[test]
    fn reads_legacy_feature_extractor_configs() {
        // google/vit-base-patch16-224 and openai/clip-vit-base-patch32 as published.
        let vit = ImageProcessor::from_json(
            r#"{"do_normalize": true, "do_resize": true, "feature_extractor_type": "ViTFeatureExtractor",
                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 224}"#,
        )
        .unwrap();
        assert_eq!(
            vit.resize,
            Some(Size::Exact {
                height: 224,
                width: 224
            })
        );
        let clip = ImageProcessor::from_json(
            r#"{"crop_size": 224, "do_center_crop": true, "do_normalize": true, "do_resize": true,
                "feature_extractor_type": "CLIPFeatureExtractor", "resample": 3, "size": 224}"#,
        )
        .unwrap();
        assert_eq!(clip.resize, Some(Size::ShortestEdge(224)));
        assert_eq!(clip.center_crop, Some((224, 224)));
    }

    #[test]
    fn rejects_bad_configs() {
        for bad in [
            r#"{"resample": 5}"#,
            r#"{"size": {"height": 0, "width": 3}}"#,
            r#"{"size": "big"}"#,
            r#"{"image_std": [0, 1, 1]}"#,
            r#"{"image_mean": [1, 2]}"#,
            r#"{"image_processor_type": "NopeProcessor"}"#,
            r#"[1, 2]"#,
        ] {
            assert!(ImageProcessor::from_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shortest_edge_keeps_aspect_ratio_truncating() {
        assert_eq!(output_size(640, 480, Size::ShortestEdge(224)), (298, 224));
        assert_eq!(output_size(480, 640, Size::ShortestEdge(224)), (224, 298));
        assert_eq!(output_size(100, 100, Size::ShortestEdge(7)), (7, 7));
    }

    #[test]
    fn center_crop_pads_small_images_like_transformers() {
        let img = RgbImage::from_pixel(3, 3, image::Rgb([9, 9, 9]));
        let out = center_crop(&img, 5, 4);
        // Padding: (5-3)=2 rows split 1/1; (4-3)=1 column: ceil(1/2)=1 on the left.
        assert_eq!(out.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(out.get_pixel(1, 1).0, [9, 9, 9]);
        assert_eq!(out.get_pixel(3, 3).0, [9, 9, 9]);
        assert_eq!(out.get_pixel(1, 4).0, [0, 0, 0]);
    }

    #[test]
    fn efficientnet_offset_and_include_top() {
        let p = ImageProcessor::from_json(
            r#"{"image_processor_type": "EfficientNetImageProcessor", "rescale_factor": 0.00784313725490196,
                "rescale_offset": true, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.47853944, 0.4732864, 0.47434163]}"#,
        )
        .unwrap();
        let v = p.pixel_value(255, 0);
        let expect = ((1.0f32 - 0.485) / 0.478_539_44) / 0.478_539_44;
        assert!((v - expect).abs() < 1e-6, "{v} vs {expect}");
    }
}
