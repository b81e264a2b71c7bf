//! The compute device, chosen at run time: model code never names a backend.

use burn::prelude::Device;

use crate::{Error, Result};

/// Parses `--device`: `cpu` (burn-flex), `cuda`/`cuda:N` and `wgpu` where compiled in.
pub fn parse(name: &str) -> Result<Device> {
    let (kind, index) = match name.split_once(':') {
        Some((k, i)) => {
            let i: usize = i
                .parse()
                .map_err(|_| Error::Device(format!("bad device index in {name:?}")))?;
            (k, i)
        }
        None => (name, 0),
    };
    // Only CUDA takes an index; the others have one device each here.
    if index != 0 && kind != "cuda" {
        return Err(Error::Device(format!("device {kind:?} takes no index")));
    }
    match kind {
        "cpu" | "flex" => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        "cuda" => present(name, Device::cuda(index)),
        #[cfg(feature = "wgpu")]
        "wgpu" => present(name, Device::wgpu(burn::prelude::DeviceKind::DefaultDevice)),
        "cuda" | "wgpu" => Err(Error::Device(format!(
            "device {kind:?} is not compiled in: rebuild with `--features {kind}`"
        ))),
        other => Err(Error::Device(format!(
            "unknown device {other:?} (expected cpu, cuda, cuda:N or wgpu)"
        ))),
    }
}

/// `device` when a tensor can be made and read back on it; a one-line error when the device
/// is compiled in but not present (no GPU, no driver).
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn present(name: &str, device: Device) -> Result<Device> {
    let probe = std::panic::catch_unwind(|| {
        burn::prelude::Tensor::<1>::zeros([1], &device)
            .into_data()
            .to_vec::<f32>()
            .is_ok()
    });
    match probe {
        Ok(true) => Ok(device),
        _ => Err(Error::Device(format!(
            "device {name:?} is compiled in but not available here (no GPU or driver?)"
        ))),
    }
}

/// Whether `device` (or the device under an autodiff one) is the CPU.
pub fn is_cpu(device: &Device) -> bool {
    device.clone().inner() == Device::flex()
}

/// Sets the number of CPU threads for decoding, preprocessing and the CPU backend, each with
/// denormal numbers flushed to zero ([`flush_denormals`]). Call it once, before any work; a
/// second call is an error.
pub fn set_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::InvalidInput("--threads must be at least 1".into()));
    }
    if n > MAX_THREADS {
        return Err(Error::InvalidInput(format!(
            "--threads {n} is more than {MAX_THREADS} (this machine has {} cores)",
            std::thread::available_parallelism().map_or(1, |c| c.get())
        )));
    }
    flush_denormals_here();
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .start_handler(|_| flush_denormals_here())
        .build_global()
        .map_err(|e| Error::InvalidInput(format!("cannot set threads: {e}")))
}

pub use crate::nn::cpu::sgemm::Precision;

/// Sets the precision of the CPU backend's linear layers at inference (untracked weights),
/// for the whole process: [`Precision::Bf16`] rounds weights and inputs to bfloat16 and sums
/// the products in `f32` on the AMX tile unit, several times faster than `f32` (BENCHMARKS.md);
/// everything else (attention, norms, activations, training) stays `f32`. Errors on a CPU
/// without AMX-BF16.
pub fn set_precision(p: Precision) -> Result<()> {
    crate::nn::cpu::sgemm::set_precision(p).map_err(Error::InvalidInput)
}

/// `--precision`: `fp32` (or `f32`) and `bf16`.
pub fn parse_precision(name: &str) -> Result<Precision> {
    match name.to_ascii_lowercase().as_str() {
        "fp32" | "f32" | "float32" => Ok(Precision::F32),
        "bf16" | "bfloat16" => Ok(Precision::Bf16),
        _ => Err(Error::InvalidInput(format!(
            "unknown --precision {name:?}: use fp32 or bf16"
        ))),
    }
}

/// Flushes denormal (subnormal) floats to zero on this thread and on every thread of the CPU
/// backend's pool, as PyTorch's CPU kernels do. Arithmetic on denormals is about 20 times slower
/// on x86: a network whose activations decay into them (measured: EfficientNet-B0's middle
/// blocks at random initialisation) runs 20 times slower without this. Values below
/// 1.2e-38 become 0. [`set_threads`] does it; call this when the pool was made elsewhere.
pub fn flush_denormals() {
    flush_denormals_here();
    rayon::broadcast(|_| flush_denormals_here());
}

/// Sets the flush-to-zero and denormals-are-zero bits of this thread's MXCSR (x86-64; a no-op
/// elsewhere): for threads the program makes itself (a server's blocking pool, say), where
/// [`flush_denormals`] covers this thread and the CPU backend's pool.
pub fn flush_denormals_here() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: setting FTZ (bit 15) and DAZ (bit 6) changes only how SSE/AVX arithmetic treats
    // subnormal numbers on this thread; every x86-64 CPU has both bits.
    #[allow(deprecated)]
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        _mm_setcsr(_mm_getcsr() | 0x8040);
    }
}

/// Makes glibc's allocator keep freed blocks of up to 32 MiB (its most) for reuse instead of
/// handing each back to the kernel: a network's activations are megabytes each, and every
/// fresh mapping costs a page fault per 4 KiB when first written (measured: a tenth of
/// ViT-B/16's inference time went to page faults). A no-op off glibc. Call it once, early.
pub fn reuse_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's thresholds; it is called before the
    // process's heavy allocation starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Whether this thread flushes denormals to zero (see [`flush_denormals`]).
pub fn flushes_denormals() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let tiny = std::hint::black_box(f32::MIN_POSITIVE);
        std::hint::black_box(tiny * 0.5) == 0.0
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The most CPU threads `--threads` accepts: far past any core count, short of what would
/// exhaust the process's thread and memory limits.
pub const MAX_THREADS: usize = 1024;

/// The number of CPU threads the CPU backend and preprocessing use.
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// The lock of the process-wide random generator of the CPU device: a training run seeds it
/// each step and holds it while the step draws (dropout, drop-path), and model initialisation
/// and loading hold it while they seed and draw (burn draws initial values lazily), so that
/// concurrent runs in one process cannot interleave draws. Also `train::engine::device_rng`.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_explains_missing_backends() {
        assert!(parse("cpu").is_ok());
        assert!(is_cpu(&Device::flex()) && is_cpu(&Device::flex().autodiff()));
        assert!(parse("cpu:1").unwrap_err().to_string().contains("no index"));
        assert!(parse("cuda:x").unwrap_err().to_string().contains("index"));
        assert!(
            parse("tpu")
                .unwrap_err()
                .to_string()
                .contains("unknown device")
        );
        #[cfg(not(feature = "cuda"))]
        assert!(
            parse("cuda")
                .unwrap_err()
                .to_string()
                .contains("--features cuda")
        );
    }
}
