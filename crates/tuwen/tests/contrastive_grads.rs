//! Every parameter gradient of the CLIP and SigLIP training losses equals PyTorch's, on tiny
//! checkpoints, one batch of real photos and captions (reference: python/make_grad_fixtures.py).

mod common;

use burn::prelude::*;
use common::*;
use safetensors::{Dtype, SafeTensors};
use tuwen::burn;
use tuwen::pipeline::{ImageText, to_vec};
use tuwen::train::contrastive::{
    LossSpec, accumulated_grads, contrastive_loss, data_parallel_grads, named_grads,
    named_param_grads,
};

const IMAGES: [&str; 4] = ["astronaut.png", "coffee.bmp", "rocket.webp", "hubble.gif"];

/// `micro` > 1: the gradients accumulated GradCache-style over that many micro-batches.
fn check(tag: &str, chunks: usize, micro: usize) {
    check_on(tag, chunks, micro, 1)
}

/// [`check`] with the batch split across `devices` CPU devices (data-parallel, `devices` > 1).
fn check_on(tag: &str, chunks: usize, micro: usize, devices: usize) {
    let bytes = std::fs::read(fixtures().join("grad_reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |key: &str| -> Vec<f32> {
        let t = st.tensor(key).unwrap_or_else(|_| panic!("no {key}"));
        assert_eq!(t.dtype(), Dtype::F32);
        t.data()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let device = Device::flex().autodiff();
    let m = ImageText::load_folder(&fixtures().join(tag), &device).unwrap();
    let texts: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("clip_texts.json")).unwrap())
            .unwrap();
    let ids = m.tokenize(&texts[..4]).unwrap();
    let expect_ids = st.tensor(&format!("{tag}/input_ids")).unwrap();
    let expect_ids: Vec<i64> = expect_ids
        .data()
        .chunks(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(
        ids.clone()
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .unwrap(),
        expect_ids
    );
    let paths: Vec<_> = IMAGES
        .iter()
        .map(|n| fixtures().join("images").join(n))
        .collect();
    let pixels = m.processor.load_batch(&paths, &device).unwrap();

    let expect = f32s(&format!("{tag}/loss"))[0];
    let grads = if devices > 1 {
        let groups: Vec<usize> = (0..4).collect();
        let spec = LossSpec {
            micro,
            chunks,
            lock_image: false,
            lock_text: false,
            groups: &groups,
        };
        let on = vec![device.clone(); devices];
        let seeds = vec![0; devices];
        let (got, g) = data_parallel_grads(&m, pixels, ids, &spec, &on, &seeds).unwrap();
        assert!((got - expect).abs() < 1e-5, "{tag}: loss {got} vs {expect}");
        named_param_grads(&m, &g)
    } else if micro == 1 {
        let loss = contrastive_loss(&m, pixels, ids, chunks).unwrap();
        let got = to_vec(loss.clone()).unwrap()[0];
        assert!((got - expect).abs() < 1e-5, "{tag}: loss {got} vs {expect}");
        named_grads(&m, &loss.backward())
    } else {
        let groups: Vec<usize> = (0..4).collect();
        let spec = LossSpec {
            micro,
            chunks,
            lock_image: false,
            lock_text: false,
            groups: &groups,
        };
        let (got, g) = accumulated_grads(&m, pixels, ids, &spec, |_| {}).unwrap();
        assert!((got - expect).abs() < 1e-5, "{tag}: loss {got} vs {expect}");
        named_param_grads(&m, &g)
    };
    let prefix = format!("{tag}/grad/");
    let names: Vec<String> = st
        .names()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .map(String::from)
        .collect();
    assert!(
        names.len() > 40,
        "{tag}: only {} reference gradients",
        names.len()
    );
    let mut worst = (0.0f32, String::new());
    for key in &names {
        let name = &key[prefix.len()..];
        let (ours, _) = grads
            .get(name)
            .unwrap_or_else(|| panic!("{tag}: no gradient for {name}"));
        let theirs = f32s(key);
        let scale = theirs.iter().map(|x| x.abs()).fold(0.0, f32::max).max(1e-3);
        let rel = max_abs_diff(ours, &theirs) / scale;
        if rel > worst.0 {
            worst = (rel, name.to_string());
        }
        assert!(rel < 1e-4, "{tag} {name}: relative difference {rel}");
    }
    assert_eq!(grads.len(), names.len(), "{tag}: parameter sets differ");
    eprintln!(
        "{tag} (chunks {chunks}, micro-batches {micro}, devices {devices}): {} gradients, worst relative difference {:.1e} ({})",
        names.len(),
        worst.0,
        worst.1
    );
}

#[test]
fn clip_gradients_match_pytorch() {
    check("clip-legacy", 1, 1);
}

#[test]
fn siglip_gradients_match_pytorch() {
    check("siglip-spiece", 1, 1);
}

#[test]
fn chunked_siglip_gradients_match_pytorch() {
    check("siglip-spiece", 2, 1);
    check("siglip-spiece", 4, 1);
}

/// `--accum-freq`: the loss over the whole batch, back-propagated one micro-batch at a time,
/// gives the full batch's gradients (temperature and bias included).
#[test]
fn gradcache_micro_batches_give_the_full_batch_gradients() {
    check("clip-legacy", 1, 2);
    check("clip-legacy", 1, 4);
    check("siglip-spiece", 1, 2);
    check("siglip-spiece", 2, 4);
}

/// `--devices cpu,cpu`: each device embeds its share of the batch, the loss spans them all,
/// and the summed gradients are the whole batch's on one device, as PyTorch computes them
/// (temperature and bias included; shards of unequal size with 3 devices).
#[test]
fn data_parallel_devices_give_the_full_batch_gradients() {
    check_on("clip-legacy", 1, 1, 2);
    check_on("clip-legacy", 1, 1, 3);
    check_on("siglip-spiece", 1, 1, 2);
    check_on("siglip-spiece", 2, 1, 2);
    check_on("siglip-spiece", 4, 1, 4);
}
