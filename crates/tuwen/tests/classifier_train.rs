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
