//! Peak heap memory of SigLIP's sigmoid loss, forward and backward, dense against chunked
//! over D simulated devices (see BENCHMARKS.md):
//!
//!     cargo bench -p tuwen --bench loss_memory -- [BATCH] [DIM]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::Distribution;
use tuwen::burn;
use tuwen::loss::{siglip_loss, siglip_loss_chunked};

/// The system allocator, counting the bytes in use and their peak.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static A: Counting = Counting;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let batch = args.first().copied().unwrap_or(2048);
    let dim = args.get(1).copied().unwrap_or(256);
    let device = Device::flex().autodiff();
    device.seed(0);
    let unit = |x: Tensor<2>| {
        let n = x.clone().powi_scalar(2).sum_dim(1).sqrt();
        (x / n).detach().require_grad()
    };
    let img = unit(Tensor::random(
        [batch, dim],
        Distribution::Normal(0.0, 1.0),
        &device,
    ));
    let txt = unit(Tensor::random(
        [batch, dim],
        Distribution::Normal(0.0, 1.0),
        &device,
    ));
    let t = Tensor::<1>::from_floats([10f32.ln()], &device).require_grad();
    let b = Tensor::<1>::from_floats([-10.0], &device).require_grad();
    println!(
        "sigmoid loss, forward + backward, batch {batch}, width {dim} (one B x B f32 matrix: {:.1} MiB)",
        (batch * batch * 4) as f64 / (1 << 20) as f64
    );
    let mut dense_grad = None;
    for devices in [0usize, 1, 2, 4, 8, 16] {
        if devices > 0 && !batch.is_multiple_of(devices) {
            continue;
        }
        let base = IN_USE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let t0 = Instant::now();
        let loss = if devices == 0 {
            siglip_loss(img.clone(), txt.clone(), t.clone(), b.clone())
        } else {
            siglip_loss_chunked(img.clone(), txt.clone(), t.clone(), b.clone(), devices)
        };
        let grads = loss.backward();
        let g = img.grad(&grads).expect("gradient");
        let value: f32 = loss.into_scalar();
        let secs = t0.elapsed().as_secs_f64();
        let peak = PEAK.load(Ordering::Relaxed) - base;
        let diff = match &dense_grad {
            None => {
                dense_grad = Some(g);
                0.0
            }
            Some(d) => (g - d.clone()).abs().max().into_scalar::<f32>(),
        };
        let name = if devices == 0 {
            "dense (autodiff)".to_string()
        } else {
            format!("chunked, D = {devices}")
        };
        println!(
            "{name:<18} peak {:>8.1} MiB  {:>7.1} ms  loss {value:.6}  max |grad - dense| {diff:.1e}",
            peak as f64 / (1 << 20) as f64,
            secs * 1e3
        );
    }
}
