//! Memory a batch will need, estimated from a model's sizes before it runs, so that a batch far
//! beyond this machine's memory is refused with a clear line instead of killed by the kernel.
//!
//! The estimates are lower bounds (the tensors a step cannot do without, in `f32`), so a
//! refusal means the run could not fit; a run that passes may still be tight.

use burn::prelude::Device;

use crate::{Error, Result};

/// Bytes of memory the system can still give this process: `MemAvailable` plus free swap from
/// `/proc/meminfo`, and no more than a container's cgroup (v2) limit leaves; `None` where that
/// cannot be read (then nothing is refused).
pub fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb.saturating_mul(1024))
    };
    let system = field("MemAvailable:")?.saturating_add(field("SwapFree:").unwrap_or(0));
    let read = |f: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{f}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some(match (read("memory.max"), read("memory.current")) {
        (Some(max), Some(used)) => system.min(max.saturating_sub(used)),
        _ => system,
    })
}

/// Refuses `needed` bytes on the CPU when they exceed what is available; `what` says what the
/// bytes are for and `lower` what a user can lower. A GPU's memory is not the host's, so
/// nothing is checked on other devices.
pub fn check(device: &Device, needed: u128, what: &str, lower: &str) -> Result<()> {
    if !crate::device::is_cpu(device) {
        return Ok(());
    }
    let Some(free) = available_bytes() else {
        return Ok(());
    };
    check_against(needed, free, what, lower)
}

fn check_against(needed: u128, free: u64, what: &str, lower: &str) -> Result<()> {
    if needed > u128::from(free) {
        let gb = |b: f64| b / (1u64 << 30) as f64;
        return Err(Error::InvalidInput(format!(
            "{what} needs at least {:.1} GiB of memory but {:.1} GiB is available: lower {lower}",
            gb(needed as f64),
            gb(free as f64)
        )));
    }
    Ok(())
}

/// The sizes of a transformer encoder that decide its memory.
#[derive(Clone, Copy, Debug)]
pub struct Encoder {
    /// Layers.
    pub layers: usize,
    /// Tokens per sample.
    pub tokens: usize,
    /// Hidden width.
    pub hidden: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Attention heads.
    pub heads: usize,
}

impl Encoder {
    /// `f32` values per sample that a training step keeps for the backward pass: per layer and
    /// token, the two norms, q, k, v, the attention output and projection, the MLP's two
    /// activations and output (10 × hidden + 2 × intermediate), and the attention scores and
    /// probabilities (2 × heads × tokens).
    pub fn training_floats(&self) -> u128 {
        let w = |x: usize| x as u128;
        let per_token =
            10 * w(self.hidden) + 2 * w(self.intermediate) + 2 * w(self.heads) * w(self.tokens);
        w(self.layers) * w(self.tokens) * per_token
    }

    /// `f32` values per sample alive at once in inference: one layer's input, q, k, v and MLP
    /// activation, and its attention scores.
    pub fn inference_floats(&self) -> u128 {
        let w = |x: usize| x as u128;
        w(self.tokens)
            * (5 * w(self.hidden) + w(self.intermediate) + w(self.heads) * w(self.tokens))
    }
}

/// Bytes of `n` `f32` values.
pub fn f32_bytes(n: u128) -> u128 {
    n.saturating_mul(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_does_not_fit_and_says_what_to_lower() {
        assert!(check_against(1 << 30, 2 << 30, "x", "--batch-size").is_ok());
        let err = check_against(
            3 << 30,
            2 << 30,
            "a training step of batch 64",
            "--batch-size",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("3.0 GiB") && err.contains("2.0 GiB") && err.contains("--batch-size"),
            "{err}"
        );
        assert!(available_bytes().is_some_and(|b| b > 0));
    }

    #[test]
    fn a_vit_b16_step_counts_its_activations() {
        // ViT-B/16 at 224: 197 tokens; about 8.5 M values a layer for each image.
        let e = Encoder {
            layers: 12,
            tokens: 197,
            hidden: 768,
            intermediate: 3072,
            heads: 12,
        };
        let per_layer = e.training_floats() / 12;
        assert_eq!(per_layer, 197 * (10 * 768 + 2 * 3072 + 2 * 12 * 197));
        assert!(e.inference_floats() < per_layer);
    }
}
