//! EfficientNet against transformers on an unusual tiny checkpoint (width 0.3, depth 0.4, 67 px,
//! one symmetric-padding block, batch-norm statistics off the defaults), on real photos
//! (reference: python/make_efficientnet_fixtures.py).

mod common;

use burn::prelude::*;
use common::*;
use tuwen::burn;
use tuwen::models::efficientnet::EfficientNetForImageClassification;
use tuwen::pipeline::to_vec;

#[test]
fn logits_and_preprocessing_match_transformers() {
    let r = read_reference("efficientnet_reference.safetensors");
    let (px, shape) = f32s(&r, "pixel_values");
    let (expect, _) = f32s(&r, "logits");
    let folder = fixtures().join("efficientnet-odd");
    let device = Device::flex();
    let (model, cfg) = EfficientNetForImageClassification::load(&folder, &device).unwrap();
    assert!(!cfg.depthwise_padding.is_empty());
    // transformers' own count of this model's parameters.
    assert_eq!(cfg.num_params(), 245_529);
    let logits = to_vec(model.forward(Tensor::from_data(
        TensorData::new(px.clone(), shape),
        &device,
    )))
    .unwrap();
    let scale = expect.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = max_abs_diff(&logits, &expect);
    eprintln!("logits: max difference {d:.2e} on values up to {scale:.2}");
    assert!(d / scale < 5e-4, "relative {}", d / scale);
    // The photos differ in their logits: the inputs reach the output.
    assert!(max_abs_diff(&expect[..5], &expect[5..10]) > 0.5);

    let processor =
        tuwen::data::ImageProcessor::from_file(&folder.join("preprocessor_config.json")).unwrap();
    let per = 3 * 67 * 67;
    for (i, (name, tol)) in [
        ("astronaut.png", 1e-4),
        ("coffee.bmp", 1e-4),
        ("chelsea.jpg", 0.2),
    ]
    .iter()
    .enumerate()
    {
        let img = tuwen::data::open_rgb(&fixtures().join("images").join(name)).unwrap();
        let (ours, _) = processor.preprocess(&img);
        let d = max_abs_diff(&ours, &px[i * per..(i + 1) * per]);
        assert!(d <= *tol, "{name}: {d}");
    }
}

#[test]
fn saved_folder_loads_back() {
    let folder = fixtures().join("efficientnet-odd");
    let device = Device::flex();
    let (model, cfg) = EfficientNetForImageClassification::load(&folder, &device).unwrap();
    let out = std::env::temp_dir().join(format!("tuwen-effnet-save-{}", std::process::id()));
    model.save(&cfg, &out).unwrap();
    let (back, cfg2) = EfficientNetForImageClassification::load(&out, &device).unwrap();
    assert_eq!(cfg.hidden_dim, cfg2.hidden_dim);
    let x = Tensor::<4>::random([1, 3, 67, 67], burn::tensor::Distribution::Default, &device);
    assert_eq!(
        to_vec(model.forward(x.clone())).unwrap(),
        to_vec(back.forward(x)).unwrap()
    );
    let names = tuwen::hub::safetensors_header(&out.join("model.safetensors")).unwrap();
    assert!(
        names.contains_key(
            "efficientnet.encoder.blocks.0.depthwise_conv.depthwise_norm.running_var"
        )
    );
    std::fs::remove_dir_all(&out).unwrap();
}
