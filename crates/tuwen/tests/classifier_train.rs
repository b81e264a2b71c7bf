//! Supervised training for real: a small EfficientNet learns the colour of the first shape in
//! generated pictures (of one to three shapes) and classifies held-out pictures well above
//! chance (1 in 6).

use burn::prelude::*;
use tuwen::burn;
use tuwen::data::ImageProcessor;
use tuwen::data::captions::{CsvSpec, read_csv};
use tuwen::models::efficientnet::{EfficientNetForImageClassification, custom};
use tuwen::train::classifier::{Classifier, ClassifierTrainConfig, EfficientNetClassifier, train};

#[test]
fn small_efficientnet_learns_colours() {
    let dir = std::env::temp_dir().join(format!("tuwen-effnet-train-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    tuwen::data::shapes::generate(&dir, 600, 32, 5).unwrap();
    let spec = CsvSpec {
        caption_column: "color".into(),
        ..CsvSpec::default()
    };
    let train_set = read_csv(&dir.join("train.csv"), &spec).unwrap();
    let test = read_csv(&dir.join("test.csv"), &spec).unwrap();
    let mut labels: Vec<String> = train_set.iter().map(|s| s.caption.clone()).collect();
    labels.sort();
    labels.dedup();
    assert_eq!(labels.len(), 6);
    let mut cfg = custom(0.25, 0.25, 32, 0.1, labels.len());
    cfg.id2label = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), l.clone()))
        .collect();
    let device = Device::flex().autodiff();
    // The device's generator is process-wide: `init_seeded` holds it while it seeds and draws
    // every initial value (burn draws them lazily, on first use).
    let model = EfficientNetClassifier {
        model: tuwen::train::engine::init_seeded(&device, 1, |d| {
            EfficientNetForImageClassification::new(&cfg, d)
        }),
        config: cfg.clone(),
    };
    let processor =
        ImageProcessor::from_json(&tuwen::train::mae::preprocessor_json(32).to_string()).unwrap();
    let run = ClassifierTrainConfig {
        steps: 120,
        batch_size: 32,
        lr: 3e-3,
        warmup: 10,
        ..ClassifierTrainConfig::default()
    };
    let (model, losses) = train(model, &processor, &train_set, &labels, &run, |_, _| true).unwrap();
    assert!(losses[119].1 < losses[0].1);
    // Held-out pictures, evaluation mode (plain device: running batch-norm statistics).
    let out = dir.join("model");
    model.save_to(&out).unwrap();
    let (back, _) = EfficientNetForImageClassification::load(&out, &Device::flex()).unwrap();
    let mut hits = 0;
    for chunk in test.chunks(50) {
        let items: Vec<_> = chunk
            .iter()
            .map(|s| processor.preprocess(&tuwen::data::open_rgb(&s.image).unwrap()))
            .collect();
        let px = tuwen::data::processor::batch_tensor(items, &Device::flex()).unwrap();
        let logits = tuwen::pipeline::to_vec(back.forward(px)).unwrap();
        for (row, s) in logits.chunks(labels.len()).zip(chunk) {
            let p = (0..row.len())
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap();
            hits += usize::from(labels[p] == s.caption);
        }
    }
    let acc = hits as f64 / test.len() as f64;
    eprintln!(
        "held-out colour accuracy {acc:.3} on {} pictures",
        test.len()
    );
    // Chance is 1 in 6; pictures with several shapes make some labels ambiguous.
    assert!(acc > 0.6, "{acc}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Stochastic depth and dropout draw every step, and so do mixup and the crops: an interrupted
/// and resumed run must still equal the uninterrupted one, loss for loss and weight for weight.
#[test]
fn resumed_efficientnet_run_equals_uninterrupted_run() {
    let dir = std::env::temp_dir().join(format!("tuwen-effnet-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    tuwen::data::shapes::generate(&dir, 48, 32, 3).unwrap();
    let spec = CsvSpec {
        caption_column: "color".into(),
        ..CsvSpec::default()
    };
    let train_set = read_csv(&dir.join("train.csv"), &spec).unwrap();
    let mut labels: Vec<String> = train_set.iter().map(|s| s.caption.clone()).collect();
    labels.sort();
    labels.dedup();
    let mut cfg = custom(0.25, 0.25, 32, 0.3, labels.len());
    cfg.drop_connect_rate = 0.5;
    cfg.id2label = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), l.clone()))
        .collect();
    let device = Device::flex().autodiff();
    let init = dir.join("init");
    {
        let _rng = tuwen::train::engine::device_rng();
        device.seed(7);
        let m = EfficientNetForImageClassification::new(&cfg, &device);
        m.save(&cfg, &init).unwrap();
    }
    let load = |folder: &std::path::Path| {
        let (model, config) = EfficientNetForImageClassification::load(folder, &device).unwrap();
        EfficientNetClassifier { model, config }
    };
    let processor =
        ImageProcessor::from_json(&tuwen::train::mae::preprocessor_json(32).to_string()).unwrap();
    let run = |ckpt: &str| ClassifierTrainConfig {
        steps: 6,
        batch_size: 8,
        warmup: 2,
        mixup: 0.4,
        augment: tuwen::data::augment::Augment {
            min_scale: 0.5,
            hflip: true,
        },
        checkpoint_dir: Some(dir.join(ckpt)),
        ..ClassifierTrainConfig::default()
    };
    let (whole_model, whole) = train(
        load(&init),
        &processor,
        &train_set,
        &labels,
        &run("a"),
        |_, _| true,
    )
    .unwrap();
    // The training forward pass draws (stochastic depth, dropout): two passes differ.
    let m = load(&init);
    let rng = tuwen::train::engine::device_rng();
    let x = Tensor::<4>::random(
        [4, 3, 32, 32],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let y1 = tuwen::pipeline::to_vec(m.model.forward(x.clone())).unwrap();
    let y2 = tuwen::pipeline::to_vec(m.model.forward(x)).unwrap();
    drop(rng);
    assert_ne!(y1, y2, "nothing is drawn in training");
    let (part_model, part) = train(
        load(&init),
        &processor,
        &train_set,
        &labels,
        &run("b"),
        |s, _| s.step < 2,
    )
    .unwrap();
    assert_eq!(part.len(), 3);
    let ckpt = tuwen::train::checkpoint::find(&dir.join("b")).unwrap();
    {
        let x = Tensor::<4>::ones([2, 3, 32, 32], &Device::flex());
        let a = tuwen::pipeline::to_vec(part_model.model.valid().forward(x.clone())).unwrap();
        let b = tuwen::pipeline::to_vec(load(&ckpt).model.valid().forward(x)).unwrap();
        assert_eq!(a, b, "the checkpoint differs from the model it saved");
    }
    let resumed = ClassifierTrainConfig {
        resume_from: Some(ckpt.clone()),
        ..run("b")
    };
    let (rest_model, rest) = train(
        load(&ckpt),
        &processor,
        &train_set,
        &labels,
        &resumed,
        |_, _| true,
    )
    .unwrap();
    assert_eq!(rest, whole, "the resumed loss curve differs");
    let x = Tensor::<4>::ones([2, 3, 32, 32], &Device::flex());
    let a = tuwen::pipeline::to_vec(whole_model.model.valid().forward(x.clone())).unwrap();
    let b = tuwen::pipeline::to_vec(rest_model.model.valid().forward(x)).unwrap();
    assert_eq!(a, b, "the resumed weights differ");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Data-parallel training of a ViT on two CPU devices (`--devices cpu,cpu`) gives the losses
/// and the model of training on one device with the combined batch, with crops, flips, mixup
/// and label smoothing, and a batch that splits unevenly (7 and 8). EfficientNet, whose batch
/// norm would normalise each device's shard by itself, is refused.
#[test]
fn two_device_vit_run_equals_one_device_run() {
    use tuwen::models::vit::{ViTConfig, ViTForImageClassification};
    use tuwen::train::classifier::VitClassifier;
    let dir = std::env::temp_dir().join(format!("tuwen-vit-ddp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    tuwen::data::shapes::generate(&dir, 48, 32, 3).unwrap();
    let spec = CsvSpec {
        caption_column: "color".into(),
        ..CsvSpec::default()
    };
    let train_set = read_csv(&dir.join("train.csv"), &spec).unwrap();
    let mut labels: Vec<String> = train_set.iter().map(|s| s.caption.clone()).collect();
    labels.sort();
    labels.dedup();
    let config = ViTConfig {
        hidden_size: 24,
        num_hidden_layers: 2,
        num_attention_heads: 3,
        intermediate_size: 40,
        image_size: 32,
        patch_size: 8,
        id2label: tuwen::train::classifier::id2label(&labels),
        ..ViTConfig::default()
    };
    let device = Device::flex().autodiff();
    let model = VitClassifier {
        model: tuwen::train::engine::init_seeded(&device, 3, |d| {
            ViTForImageClassification::new(&config, d)
        }),
        config: config.clone(),
    };
    let processor =
        ImageProcessor::from_json(&tuwen::train::mae::preprocessor_json(32).to_string()).unwrap();
    let run = |devices: Vec<Device>| ClassifierTrainConfig {
        steps: 4,
        batch_size: 15,
        lr: 3e-3,
        warmup: 1,
        mixup: 0.4,
        augment: tuwen::data::augment::Augment {
            min_scale: 0.5,
            hflip: true,
        },
        devices,
        ..ClassifierTrainConfig::default()
    };
    let (one, one_losses) = train(
        model.clone(),
        &processor,
        &train_set,
        &labels,
        &run(Vec::new()),
        |_, _| true,
    )
    .unwrap();
    let (two, two_losses) = train(
        model,
        &processor,
        &train_set,
        &labels,
        &run(vec![device.clone(), device.clone()]),
        |_, _| true,
    )
    .unwrap();
    eprintln!("one device {one_losses:?}\ntwo devices {two_losses:?}");
    assert_eq!(one_losses.len(), 4);
    assert_eq!(two_losses.len(), 4);
    for ((s1, l1), (s2, l2)) in one_losses.iter().zip(&two_losses) {
        assert_eq!(s1, s2);
        assert!((l1 - l2).abs() < 1e-5, "step {s1}: loss {l1} vs {l2}");
    }
    // The runs trained: the loss moved.
    assert!((one_losses[0].1 - one_losses[3].1).abs() > 1e-3);
    let items: Vec<_> = train_set[..6]
        .iter()
        .map(|s| processor.preprocess(&tuwen::data::open_rgb(&s.image).unwrap()))
        .collect();
    let px = tuwen::data::processor::batch_tensor(items, &device).unwrap();
    let (a, b) = (
        tuwen::pipeline::to_vec(one.logits(px.clone())).unwrap(),
        tuwen::pipeline::to_vec(two.logits(px)).unwrap(),
    );
    assert_eq!(a.len(), b.len());
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(
            0.0f32,
            |m, d| {
                if d.is_nan() { f32::INFINITY } else { m.max(d) }
            },
        );
    assert!(worst < 1e-4, "logits differ by {worst}");

    // EfficientNet is refused, with the reason.
    let mut cfg = custom(0.25, 0.25, 32, 0.0, labels.len());
    cfg.id2label = tuwen::train::classifier::id2label(&labels);
    let effnet = EfficientNetClassifier {
        model: EfficientNetForImageClassification::new(&cfg, &device),
        config: cfg,
    };
    let err = train(
        effnet,
        &processor,
        &train_set,
        &labels,
        &run(vec![device.clone(), device.clone()]),
        |_, _| true,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("batch norm"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
