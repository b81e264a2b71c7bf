//! Checkpoints that a run resumes from exactly: the model, the optimiser state and where the
//! run stood, written together into a folder that replaces the previous one atomically.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::engine::Optim;
use super::grads::ModulePath;
use crate::{Error, Result};

/// The state of the optimiser named "model" inside a checkpoint folder (burn's burnpack
/// format); another optimiser's is `optimizer.NAME.bpk`.
pub const OPTIMIZER: &str = "optimizer.bpk";
/// Where the run stood, inside a checkpoint folder.
pub const STATE: &str = "trainer_state.json";

/// Where a run stands: what a resumed run needs besides the model and the optimiser.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RunState {
    /// Steps done (the next step's index).
    pub step: usize,
    /// Samples skipped so far because they could not be read.
    pub skipped: usize,
    /// `(step, loss)` of every step done.
    pub losses: Vec<(usize, f32)>,
    /// The seed the run started with (data order and random draws follow from it and the step).
    pub seed: u64,
    /// The run's settings; a resumed run must have the same.
    #[serde(default)]
    pub settings: serde_json::Value,
    /// The family's own state (see [`super::engine::TrainStep::state`]).
    #[serde(default)]
    pub extra: serde_json::Value,
    /// Where a streamed data source stood (null for a list, whose order follows the step).
    #[serde(default)]
    pub data: serde_json::Value,
}

/// The file of optimiser `name`'s state in a checkpoint folder.
pub fn optimizer_file(name: &str) -> String {
    if name == "model" {
        OPTIMIZER.to_string()
    } else {
        format!("optimizer.{name}.bpk")
    }
}

struct StableIds {
    at: ModulePath,
}

impl ModuleMapper for StableIds {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.at.enter(name, container_type);
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.at.exit();
    }

    fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        // FNV-1a over the dotted path: stable across runs, builds and machines.
        let mut h = Fnv(0xcbf2_9ce4_8422_2325);
        self.at.stable_path().hash(&mut h);
        param.id = ParamId::from(h.0);
        param
    }
}

struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Gives each parameter an id derived from its path in the module, so that an optimiser
/// state saved with one instance applies to another instance loaded from the same weights.
pub fn stable_param_ids<M: Module>(module: M) -> M {
    module.map(&mut StableIds {
        at: ModulePath::default(),
    })
}

/// Writes a checkpoint folder at `dir`: `write_model` fills it with the networks, then every
/// optimiser's state and `state` join it. The folder is assembled beside `dir` and renamed into
/// place, so an interrupted save leaves the previous checkpoint whole.
pub fn save(
    dir: &Path,
    write_model: impl FnOnce(&Path) -> Result<()>,
    optims: &[Optim],
    state: &RunState,
) -> Result<()> {
    let tmp = sibling(dir, "tmp");
    let old = sibling(dir, "old");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    write_model(&tmp)?;
    for o in optims {
        o.optim
            .save(tmp.join(optimizer_file(&o.name)))
            .map_err(|e| Error::InvalidInput(format!("cannot save the optimiser state: {e:?}")))?;
    }
    let json = serde_json::to_vec(state)
        .map_err(|e| Error::InvalidInput(format!("cannot serialise the run state: {e}")))?;
    crate::hub::write_atomic(&tmp.join(STATE), &json)?;
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// The checkpoint folder to resume from: `dir`, or the previous one when a save was cut off
/// between its two renames. `None` when there is none.
pub fn find(dir: &Path) -> Option<PathBuf> {
    [dir.to_path_buf(), sibling(dir, "old")]
        .into_iter()
        .find(|d| d.join(STATE).is_file())
}

/// Where the run saved in checkpoint folder `dir` stood.
pub fn read_state(dir: &Path) -> Result<RunState> {
    let state_path = dir.join(STATE);
    let bytes = std::fs::read(&state_path).map_err(|e| Error::io(&state_path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::InvalidInput(format!(
            "{}: not a trainer state: {e}",
            state_path.display()
        ))
    })
}

/// Reads where the run stood and the optimisers' states saved in checkpoint folder `dir` into
/// `optims` (built for the networks loaded from the same folder, with [`stable_param_ids`]).
pub fn load(dir: &Path, optims: Vec<Optim>) -> Result<(RunState, Vec<Optim>)> {
    let state = read_state(dir)?;
    let optims = optims
        .into_iter()
        .map(|o| {
            let path = dir.join(optimizer_file(&o.name));
            let optim = o.optim.load(&path).map_err(|e| {
                Error::InvalidInput(format!(
                    "{}: cannot read the optimiser state: {e:?}",
                    path.display()
                ))
            })?;
            Ok(Optim { optim, ..o })
        })
        .collect::<Result<_>>()?;
    Ok((state, optims))
}

/// Where a run starts: fresh (step 0, `optims` as built) or, with `resume_from`, the saved
/// position and optimiser state, after checking that the run was saved with the same `seed`
/// and `settings` (an error names the first that differs).
pub fn start(
    resume_from: Option<&Path>,
    optims: Vec<Optim>,
    seed: u64,
    settings: serde_json::Value,
) -> Result<(RunState, Vec<Optim>)> {
    let Some(dir) = resume_from else {
        let state = RunState {
            seed,
            settings,
            ..RunState::default()
        };
        return Ok((state, optims));
    };
    let (saved, optims) = load(dir, optims)?;
    if saved.seed != seed {
        return Err(Error::InvalidInput(format!(
            "{} was trained with --seed {}, not {seed}",
            dir.display(),
            saved.seed
        )));
    }
    if let Some(map) = saved.settings.as_object() {
        for (key, was) in map {
            if settings[key.as_str()] != *was {
                return Err(Error::InvalidInput(format!(
                    "{} was trained with {key} = {was}, not {}; resume with the same settings",
                    dir.display(),
                    settings[key.as_str()]
                )));
            }
        }
    }
    Ok((saved, optims))
}

/// Whether a checkpoint is due after `done` of `total` steps: every `every` steps (0: never
/// in between), at the end, and when the run is stopping.
pub fn due(done: usize, total: usize, every: usize, stopping: bool) -> bool {
    stopping || done == total || (every > 0 && done.is_multiple_of(every))
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    dir.with_file_name(format!("{name}.{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::ModuleVisitor;
    use burn::nn::{Linear, LinearConfig};

    #[derive(burn::module::Module, Debug)]
    struct Net {
        proj: Linear,
    }

    #[derive(burn::module::Module, Debug)]
    enum Family {
        One(Net),
    }

    struct Ids(Vec<ParamId>);

    impl ModuleVisitor for Ids {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0.push(p.id);
        }
    }

    fn ids<M: Module>(m: &M) -> Vec<ParamId> {
        let mut v = Ids(Vec::new());
        m.visit(&mut v);
        v.0
    }

    /// Wrapping a network in an enum of families keeps its parameter ids, so optimiser states
    /// saved before the wrapping still apply.
    #[test]
    fn stable_ids_follow_paths_and_ignore_enum_variants() {
        let device = Device::flex();
        let net = || Net {
            proj: LinearConfig::new(3, 2).init(&device),
        };
        let (a, b) = (stable_param_ids(net()), stable_param_ids(net()));
        assert_eq!(ids(&a), ids(&b));
        assert_ne!(ids(&a), ids(&net()), "fresh ids are random");
        let wrapped = stable_param_ids(Family::One(net()));
        assert_eq!(ids(&wrapped), ids(&a));
        assert_eq!(ids(&a).len(), 2);
    }
}
