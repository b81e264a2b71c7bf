//! Decoding and preprocessing against PIL and transformers' PIL image processors, on real photos.

mod common;

use common::*;
use tuwen::data::{ImageProcessor, Resample, open_rgb, resize};

#[test]
fn decoding_matches_pil_on_every_format() {
    let r = reference();
    let mut checked = 0;
    for name in image_names() {
        let img = open_rgb(&fixtures().join("images").join(&name)).unwrap();
        let (w, h) = img.dimensions();
        match (
            r.get(&format!("decoded/{name}")),
            r.get(&format!("decoded_fnv/{name}")),
        ) {
            (_, Some(Array::U64(fp))) => {
                assert_eq!(
                    &fingerprint(img.as_raw(), h as usize, w as usize, 3),
                    fp,
                    "{name}"
                );
            }
            (Some(Array::U8(pil, shape)), _) => {
                // JPEG: libjpeg (PIL) and zune-jpeg (image) round their IDCTs differently.
                assert_eq!(
                    shape,
                    &vec![h as usize, w as usize, 3],
                    "{name}: orientation/size"
                );
                let diffs: Vec<i32> = img
                    .as_raw()
                    .iter()
                    .zip(pil)
                    .map(|(a, b)| i32::from(*a) - i32::from(*b))
                    .collect();
                let max = diffs.iter().map(|d| d.abs()).max().unwrap();
                let mean =
                    diffs.iter().map(|d| f64::from(d.abs())).sum::<f64>() / diffs.len() as f64;
                eprintln!("{name}: decoded vs PIL: mean |diff| {mean:.3}, max {max}");
                assert!(mean < 1.0 && max <= 8, "{name}: mean {mean} max {max}");
            }
            _ => panic!("no reference for {name}"),
        }
        checked += 1;
    }
    assert!(checked >= 12, "only {checked} images");
}

#[test]
fn resize_is_byte_exact_with_pil() {
    let r = reference();
    let mut checked = 0;
    for (key, arr) in &r {
        let Some(rest) = key.strip_prefix("resize_fnv/") else {
            continue;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let (name, code, size) = (parts[0], parts[1], parts[2]);
        let (w, h) = size.split_once('x').unwrap();
        let (w, h): (u32, u32) = (w.parse().unwrap(), h.parse().unwrap());
        let filter = Resample::from_pil(code.parse().unwrap()).unwrap();
        let img = open_rgb(&fixtures().join("images").join(name)).unwrap();
        let out = resize(&img, w, h, filter);
        let Array::U64(fp) = arr else { panic!() };
        assert_eq!(
            &fingerprint(out.as_raw(), h as usize, w as usize, 3),
            fp,
            "{key}"
        );
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} resize cases");
}

#[test]
fn pixel_values_match_transformers() {
    let r = reference();
    for model in ["vit-tiny", "vit-odd"] {
        let processor =
            ImageProcessor::from_file(&fixtures().join(model).join("preprocessor_config.json"))
                .unwrap();
        for name in image_names() {
            let img = open_rgb(&fixtures().join("images").join(&name)).unwrap();
            let (ours, shape) = processor.preprocess(&img);
            let (theirs, their_shape) = f32s(&r, &format!("pixels/{model}/{name}"));
            assert_eq!(shape.to_vec(), their_shape, "{model} {name}");
            let diff = max_abs_diff(&ours, &theirs);
            if name.ends_with(".jpg") {
                // Decoder rounding (at most a few levels of 255) survives resizing.
                let mean: f32 = ours
                    .iter()
                    .zip(&theirs)
                    .map(|(a, b)| (a - b).abs())
                    .sum::<f32>()
                    / ours.len() as f32;
                assert!(mean < 0.03, "{model} {name}: mean {mean}");
            } else {
                assert!(diff < 1e-5, "{model} {name}: {diff}");
            }
        }
    }
}
