//! MAE pre-training on real photos: the masked-patch loss falls, and a run stopped and resumed
//! from its checkpoint equals the same run done in one go.

mod common;

use burn::prelude::*;
use common::fixtures;
use tuwen::burn;
use tuwen::data::ImageProcessor;
use tuwen::models::vit_mae::ViTMAEForPreTraining;
use tuwen::train::mae::{MaeTrainConfig, arch, image_folder, init_folder, train};

fn setup(tag: &str) -> (std::path::PathBuf, Vec<tuwen::data::captions::Sample>) {
    let dir = std::env::temp_dir().join(format!("tuwen-mae-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = arch("tiny", None).unwrap();
    init_folder(&dir.join("init"), &cfg, 3).unwrap();
    (dir, image_folder(&fixtures().join("images")).unwrap())
}

#[test]
fn masked_patch_loss_falls_on_photos() {
    let (dir, images) = setup("learn");
    let device = Device::flex().autodiff();
    let (model, config) = ViTMAEForPreTraining::load(&dir.join("init"), &device).unwrap();
    let processor = ImageProcessor::from_file(&dir.join("init/preprocessor_config.json")).unwrap();
    let cfg = MaeTrainConfig {
        steps: 150,
        batch_size: 16,
        lr: 1e-3,
        warmup: 5,
        augment: tuwen::data::augment::Augment {
            min_scale: 1.0,
            hflip: false,
        },
        checkpoint_dir: Some(dir.join("run")),
        ..MaeTrainConfig::default()
    };
    let (_, report) = train(model, &config, &processor, &images, &cfg, |_| true).unwrap();
    let mean = |r: &[(usize, f32)]| r.iter().map(|l| l.1).sum::<f32>() / r.len() as f32;
    let (start, end) = (mean(&report.losses[..10]), mean(&report.losses[140..]));
    eprintln!("masked-patch loss {start:.3} -> {end:.3}");
    assert!(end < 0.6 * start, "{start} -> {end}");
    // The run's folder is a model that loads, with its preprocessing.
    let (back, _) = ViTMAEForPreTraining::load(&dir.join("run"), &Device::flex()).unwrap();
    assert_eq!(back.patch_size, 4);
    assert!(dir.join("run/preprocessor_config.json").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resumed_mae_run_equals_uninterrupted_run() {
    let (dir, images) = setup("resume");
    let device = Device::flex().autodiff();
    let processor = ImageProcessor::from_file(&dir.join("init/preprocessor_config.json")).unwrap();
    let cfg = |ckpt: &str| MaeTrainConfig {
        steps: 6,
        batch_size: 8,
        warmup: 2,
        checkpoint_dir: Some(dir.join(ckpt)),
        ..MaeTrainConfig::default()
    };
    let (model, config) = ViTMAEForPreTraining::load(&dir.join("init"), &device).unwrap();
    let (_, whole) = train(model, &config, &processor, &images, &cfg("a"), |_| true).unwrap();
    let (model, _) = ViTMAEForPreTraining::load(&dir.join("init"), &device).unwrap();
    let (_, part) = train(model, &config, &processor, &images, &cfg("b"), |s| {
        s.step < 2
    })
    .unwrap();
    assert_eq!(part.losses.len(), 3);
    let ckpt = tuwen::train::checkpoint::find(&dir.join("b")).unwrap();
    let (model, _) = ViTMAEForPreTraining::load(&ckpt, &device).unwrap();
    let resumed = MaeTrainConfig {
        resume_from: Some(ckpt),
        ..cfg("b")
    };
    let (_, rest) = train(model, &config, &processor, &images, &resumed, |_| true).unwrap();
    assert_eq!(rest.losses, whole.losses);
    assert!(whole.losses[0].1 != whole.losses[5].1);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A run streamed from WebDataset shards resumes at the stream's saved position (no replay)
/// and still equals the uninterrupted run.
#[test]
fn resumed_shard_run_equals_uninterrupted_run() {
    use tuwen::data::webdataset::{ShardStream, write_shards};
    use tuwen::train::data::TrainData;
    let (dir, images) = setup("shards");
    let pattern = write_shards(&dir, "img", &images, 3).unwrap();
    let stream = || {
        let mut s = ShardStream::open(&pattern, 4, 5).unwrap();
        s.images_only = true;
        TrainData::Shards(s)
    };
    let device = Device::flex().autodiff();
    let processor = ImageProcessor::from_file(&dir.join("init/preprocessor_config.json")).unwrap();
    let cfg = |ckpt: &str| MaeTrainConfig {
        steps: 5,
        batch_size: 5,
        warmup: 2,
        checkpoint_dir: Some(dir.join(ckpt)),
        ..MaeTrainConfig::default()
    };
    let (model, config) = ViTMAEForPreTraining::load(&dir.join("init"), &device).unwrap();
    let (_, whole) = train(model, &config, &processor, stream(), &cfg("a"), |_| true).unwrap();
    let (model, _) = ViTMAEForPreTraining::load(&dir.join("init"), &device).unwrap();
    let (_, part) = train(model, &config, &processor, stream(), &cfg("b"), |s| {
        s.step < 2
    })
    .unwrap();
    assert_eq!(part.losses.len(), 3);
    let ckpt = tuwen::train::checkpoint::find(&dir.join("b")).unwrap();
    let state = tuwen::train::checkpoint::read_state(&ckpt).unwrap();
    assert!(state.data.is_object(), "no stream position saved");
    let (model, _) = ViTMAEForPreTraining::load(&ckpt, &device).unwrap();
    let resumed = MaeTrainConfig {
        resume_from: Some(ckpt),
        ..cfg("b")
    };
    let (_, rest) = train(model, &config, &processor, stream(), &resumed, |_| true).unwrap();
    assert_eq!(rest.losses, whole.losses);
    std::fs::remove_dir_all(&dir).unwrap();
}
