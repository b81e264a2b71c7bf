//! Data-parallel training across devices (`--devices cpu,cpu`, `--devices cuda:0,cuda:1`).
//!
//! Each device holds a replica of the networks ([`Module::fork`]: the same parameter ids, its
//! own autodiff leaves) and runs its share of the batch in its own thread. Replicas exchange
//! what a loss over the whole batch needs with [`Peer::all_gather`] (the contrastive losses
//! gather every device's embeddings, as open_clip's `gather_features` does), and their
//! gradients are summed on the first device by parameter id, which is how burn-train 0.22's
//! multi-device strategy (`ExecutionStrategy::multi`) combines them: `GradientsParams::to_device`
//! and burn's `GradientsAccumulator`. The first device's optimiser then moves the networks,
//! and the next step forks them again.
//!
//! burn 0.22.1 has no `burn-collective` (its last release, 0.21, is built on burn 0.21's
//! backend traits). Its replacement, `burn::tensor::distributed`, is implemented by CUDA alone:
//! `burn-flex` declares no collective operations and the dispatch backend panics on them, so
//! two CPU devices cannot use it. Summing on the first device is exact and needs nothing from
//! the backend; it costs one copy of the gradients per extra device.

use std::sync::{Condvar, Mutex};

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;

use crate::{Error, Result};

/// Parses `--devices`: a comma-separated list of devices (`cpu,cpu`, `cuda:0,cuda:1`), each
/// as `--device` names it. An error names the bad entry.
pub fn parse_devices(list: &str) -> Result<Vec<Device>> {
    let names: Vec<&str> = list.split(',').map(str::trim).collect();
    if names.iter().any(|n| n.is_empty()) {
        return Err(Error::InvalidInput(format!(
            "--devices {list:?}: expected devices separated by commas, e.g. cpu,cpu"
        )));
    }
    names
        .iter()
        .map(|name| {
            if name.parse::<usize>().is_ok() {
                return Err(Error::InvalidInput(format!(
                    "--devices names the devices (e.g. cpu,cpu or cuda:0,cuda:1), not a count \
                     ({name}); the chunked sigmoid loss's blocks are --loss-chunks"
                )));
            }
            crate::device::parse(name)
        })
        .collect()
}

/// What one replica knows of the others: its rank, how many there are, its device, and the
/// exchange they share.
pub struct Peer<'a> {
    /// This replica's index, from 0; replica 0 is on the first device.
    pub rank: usize,
    /// Number of replicas.
    pub size: usize,
    /// This replica's device (an autodiff device when training).
    pub device: Device,
    exchange: &'a Exchange,
}

impl Peer<'_> {
    /// Every replica's `t` in rank order, as constants on this replica's device (no gradient
    /// flows through them: a caller that needs one puts its own, live tensor back in its
    /// place). Blocks until every replica has called it; an error when another replica
    /// failed instead.
    pub fn all_gather<const D: usize>(&self, t: Tensor<D>) -> Result<Vec<Tensor<D>>> {
        let t = if t.device().is_autodiff() {
            t.detach().inner()
        } else {
            t
        };
        let all = self.exchange.gather(self.rank, t.into_data())?;
        Ok(all
            .iter()
            .map(|data| Tensor::from_data(data.clone(), &self.device))
            .collect())
    }
}

/// A reusable all-gather point for `size` threads.
struct Exchange {
    size: usize,
    state: Mutex<Round>,
    turn: Condvar,
}

#[derive(Default)]
struct Round {
    /// The current round's contributions.
    slots: Vec<Option<TensorData>>,
    arrived: usize,
    /// Rounds completed.
    done: u64,
    /// The last completed round's contributions, in rank order.
    last: std::sync::Arc<Vec<TensorData>>,
    /// A replica stopped with an error or a panic: nobody waits for it.
    failed: bool,
}

impl Exchange {
    fn new(size: usize) -> Self {
        Exchange {
            size,
            state: Mutex::new(Round {
                slots: vec![None; size],
                ..Default::default()
            }),
            turn: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Round> {
        // A replica that panicked while holding the lock only marked a failure or copied data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn gather(&self, rank: usize, data: TensorData) -> Result<std::sync::Arc<Vec<TensorData>>> {
        let mut s = self.lock();
        if s.failed {
            return Err(failed());
        }
        // A round completes only once every replica has arrived, so no replica can be a
        // round ahead and overwrite a slot that is still to be read.
        s.slots[rank] = Some(data);
        s.arrived += 1;
        if s.arrived == self.size {
            s.last = std::sync::Arc::new(s.slots.iter_mut().map(|d| d.take().unwrap()).collect());
            s.arrived = 0;
            s.done += 1;
            self.turn.notify_all();
            return Ok(s.last.clone());
        }
        let round = s.done;
        while s.done == round && !s.failed {
            s = self.turn.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        if s.done == round {
            return Err(failed());
        }
        Ok(s.last.clone())
    }

    fn fail(&self) {
        self.lock().failed = true;
        self.turn.notify_all();
    }
}

fn failed() -> Error {
    Error::InvalidInput("another device of the data-parallel step failed".into())
}

/// Marks the exchange failed unless the replica finished (an error or a panic on the way).
struct FailGuard<'a> {
    exchange: &'a Exchange,
    finished: bool,
}

impl Drop for FailGuard<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.exchange.fail();
        }
    }
}

/// Runs `work` once per device, each in its own thread, with that device's input and a
/// [`Peer`] for exchanging tensors; returns the results in device order. Threads keep the
/// caller's denormal flushing. The first error is returned (a replica's own error before the
/// "another device failed" of those that waited for it); a panic is an error too.
pub fn run_replicas<I, R, F>(devices: &[Device], inputs: Vec<I>, work: F) -> Result<Vec<R>>
where
    I: Send,
    R: Send,
    F: Fn(I, &Peer) -> Result<R> + Sync,
{
    if devices.len() != inputs.len() {
        return Err(Error::InvalidInput(format!(
            "{} inputs for {} devices",
            inputs.len(),
            devices.len()
        )));
    }
    let exchange = Exchange::new(devices.len());
    let flush = crate::device::flushes_denormals();
    let results: Vec<std::thread::Result<Result<R>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = devices
            .iter()
            .zip(inputs)
            .enumerate()
            .map(|(rank, (device, input))| {
                let (exchange, work) = (&exchange, &work);
                scope.spawn(move || {
                    if flush {
                        crate::device::flush_denormals_here();
                    }
                    let mut guard = FailGuard {
                        exchange,
                        finished: false,
                    };
                    let peer = Peer {
                        rank,
                        size: devices.len(),
                        device: device.clone(),
                        exchange,
                    };
                    let r = work(input, &peer);
                    guard.finished = r.is_ok();
                    r
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let mut out = Vec::with_capacity(results.len());
    // A replica's own failure comes before the "another device failed" of those that waited.
    let (mut own, mut waited) = (None, None);
    for (rank, r) in results.into_iter().enumerate() {
        match r {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(e)) if e.to_string() == failed().to_string() => {
                waited.get_or_insert(e);
            }
            Ok(Err(e)) => {
                own.get_or_insert(e);
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into());
                own.get_or_insert(Error::InvalidInput(format!(
                    "device {rank} of the data-parallel step failed: {what}"
                )));
            }
        }
    }
    match own.or(waited) {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// The sum of every replica's gradients, by parameter, on `module`'s device (the first
/// device): burn's `GradientsParams::to_device` and `GradientsAccumulator`.
pub fn sum_grads<M: Module>(module: &M, grads: Vec<GradientsParams>) -> GradientsParams {
    let main = module
        .devices()
        .into_iter()
        .next()
        .map(|d| d.inner())
        .unwrap_or_else(Device::flex);
    grads.into_iter().fold(GradientsParams::new(), |sum, g| {
        let g = g.to_device(&main, module);
        super::optim::add_grads(module, Some(sum), g)
    })
}

/// The `k` contiguous shards `j n / k .. (j + 1) n / k` of `n` samples (sizes one apart).
pub fn shards(n: usize, k: usize) -> Vec<(usize, usize)> {
    (0..k).map(|j| (j * n / k, (j + 1) * n / k)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_counts_are_refused_with_a_hint() {
        assert_eq!(parse_devices("cpu,cpu").unwrap().len(), 2);
        assert_eq!(parse_devices(" cpu , flex ").unwrap().len(), 2);
        let e = parse_devices("4").unwrap_err().to_string();
        assert!(e.contains("--loss-chunks"), "{e}");
        assert!(parse_devices("cpu,").is_err());
        assert!(
            parse_devices("cpu,tpu")
                .unwrap_err()
                .to_string()
                .contains("tpu")
        );
    }

    #[test]
    fn all_gather_gives_every_rank_the_same_ordered_tensors_each_round() {
        let devices = vec![Device::flex(); 3];
        let inputs: Vec<usize> = (0..3).collect();
        let out = run_replicas(&devices, inputs, |i, peer| {
            let mut seen = Vec::new();
            for round in 0..4 {
                let t = Tensor::<1>::from_floats([(10 * round + i) as f32], &peer.device);
                let all = peer.all_gather(t)?;
                seen.push(
                    all.into_iter()
                        .map(|t| t.into_scalar())
                        .collect::<Vec<f32>>(),
                );
            }
            Ok(seen)
        })
        .unwrap();
        for seen in &out {
            for (round, v) in seen.iter().enumerate() {
                let want: Vec<f32> = (0..3).map(|i| (10 * round + i) as f32).collect();
                assert_eq!(v, &want);
            }
        }
    }

    #[test]
    fn a_failing_replica_releases_the_others_with_its_own_error() {
        let devices = vec![Device::flex(); 3];
        let r: Result<Vec<()>> = run_replicas(&devices, vec![0, 1, 2], |i, peer| {
            if i == 1 {
                return Err(Error::InvalidInput("replica one broke".into()));
            }
            peer.all_gather(Tensor::<1>::zeros([1], &peer.device))?;
            Ok(())
        });
        let e = r.unwrap_err().to_string();
        assert!(e.contains("replica one broke"), "{e}");
        let r: Result<Vec<()>> = run_replicas(&devices, vec![0, 1, 2], |i, peer| {
            assert!(i != 2, "replica two panicked");
            peer.all_gather(Tensor::<1>::zeros([1], &peer.device))?;
            Ok(())
        });
        let e = r.unwrap_err().to_string();
        assert!(e.contains("replica two panicked"), "{e}");
    }

    #[test]
    fn shards_cover_the_batch_in_order() {
        assert_eq!(shards(10, 3), vec![(0, 3), (3, 6), (6, 10)]);
        assert_eq!(shards(4, 2), vec![(0, 2), (2, 4)]);
    }
}
