//! Checkpoint folders in the HuggingFace layout, local or from the hub.
//!
//! A model is a folder with config.json, model.safetensors (or a sharded
//! model.safetensors.index.json) and, for image models, preprocessor_config.json. `--model`
//! names such a folder or an HF repo id (`google/vit-base-patch16-224`), which resolves through
//! the HF cache (`HF_HOME`, `HF_HUB_CACHE`) and downloads when online.
//!
//! Weights keep transformers' tensor names: module fields are named as transformers names
//! them, and burn-store's PyTorch adapters transpose linear weights and rename norm parameters.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::{
    BurnToPyTorchAdapter, ChainAdapter, FloatCastAdapter, ModuleAdapter, ModuleContext,
    ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore, bridge,
};
use burn::tensor::{DType, Shape, TensorData};
use serde_json::Value;

use crate::{Error, Result};

/// The weights file of an unsharded checkpoint.
pub const WEIGHTS: &str = "model.safetensors";
/// The weights file of a diffusers model (`VQModel`).
pub const DIFFUSERS_WEIGHTS: &str = "diffusion_pytorch_model.safetensors";
/// The index of a sharded checkpoint.
pub const WEIGHTS_INDEX: &str = "model.safetensors.index.json";
/// The optional files beside the weights: preprocessing and tokenizer.
pub const SIDE_FILES: &[&str] = &[
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "spiece.model",
    "vocab.txt",
    "added_tokens.json",
];

/// Resolves `--model`: an existing folder, or an HF repo id fetched into the HF cache.
pub fn resolve(model: &str) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    // A path that exists but cannot be followed (a link loop, no permission) says why.
    if let Err(e) = std::fs::metadata(path)
        && !matches!(
            e.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
        )
    {
        return Err(Error::InvalidInput(format!("--model {model}: {e}")));
    }
    if path.exists() {
        return Err(Error::InvalidInput(format!(
            "--model {model}: expected a checkpoint folder or an HF repo id, found a file"
        )));
    }
    if !looks_like_repo_id(model) {
        return Err(Error::InvalidInput(format!(
            "--model {model}: no such folder (and not an HF repo id)"
        )));
    }
    fetch_repo(model)
}

/// `name` or `owner/name`, with the characters the hub allows.
pub fn looks_like_repo_id(s: &str) -> bool {
    let ok_part = |p: &str| {
        !p.is_empty()
            && !p.starts_with(['.', '-'])
            && !p.contains("..")
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let parts: Vec<&str> = s.split('/').collect();
    matches!(parts.len(), 1 | 2) && parts.iter().all(|p| ok_part(p))
}

fn hf_cache() -> hf_hub::Cache {
    // hf-hub reads HF_HOME; HF_HUB_CACHE, when set, names the hub folder itself.
    match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) => hf_hub::Cache::new(PathBuf::from(dir)),
        None => hf_hub::Cache::from_env(),
    }
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Finds the repo's files in the HF cache, downloading the missing ones unless offline.
fn fetch_repo(repo_id: &str) -> Result<PathBuf> {
    let cache = hf_cache();
    let cached = cache.model(repo_id.to_string());
    let how_to = format!(
        "download it with `hf download {repo_id}` (or `huggingface-cli download {repo_id}`) \
         on a machine that is online, or pass a local checkpoint folder"
    );
    if let Some(config) = cached.get("config.json") {
        let dir = config
            .parent()
            .expect("cached file has a folder")
            .to_path_buf();
        if [WEIGHTS, WEIGHTS_INDEX, DIFFUSERS_WEIGHTS]
            .iter()
            .any(|f| dir.join(f).exists())
        {
            return Ok(dir);
        }
    }
    if offline() {
        return Err(Error::Hub(format!(
            "model {repo_id} is not in the HF cache ({}) and HF_HUB_OFFLINE is set: {how_to}",
            cache.path().display()
        )));
    }
    let fail = |e: String| {
        Error::Hub(format!(
            "model {repo_id} is not in the HF cache ({}) and could not be downloaded ({e}): {how_to}",
            cache.path().display()
        ))
    };
    let api = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
        .with_progress(true)
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let repo = api.model(repo_id.to_string());
    let config = repo.get("config.json").map_err(|e| fail(e.to_string()))?;
    let dir = config
        .parent()
        .expect("cached file has a folder")
        .to_path_buf();
    // Optional files: absent ones are simply not there.
    for optional in SIDE_FILES {
        let _ = repo.get(optional);
    }
    match repo.get(WEIGHTS) {
        Ok(_) => {}
        Err(_) if repo.get(DIFFUSERS_WEIGHTS).is_ok() => {}
        Err(_) => {
            let index = repo.get(WEIGHTS_INDEX).map_err(|e| fail(e.to_string()))?;
            for shard in shard_files(&index)? {
                repo.get(&shard).map_err(|e| fail(e.to_string()))?;
            }
        }
    }
    Ok(dir)
}

/// Reads a UTF-8 text file, without the byte-order mark some editors put first.
pub fn read_text(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> Result<Value> {
    let text = read_text(path)?;
    serde_json::from_str(&text).map_err(|e| Error::config(path, e.to_string()))
}

/// The config.json of a checkpoint folder, with its `model_type`.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// Where it was read from.
    pub path: PathBuf,
    /// `model_type`, e.g. "vit".
    pub model_type: String,
    /// `architectures[0]`, e.g. "ViTForImageClassification", when given.
    pub architecture: Option<String>,
    /// The whole JSON, for the family's own config struct.
    pub json: Value,
}

impl ModelConfig {
    /// Reads `<folder>/config.json`.
    pub fn read(folder: &Path) -> Result<Self> {
        let path = folder.join("config.json");
        let json = read_json(&path)?;
        let model_type = json
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::config(&path, "no \"model_type\""))?
            .to_string();
        let architecture = json
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(ModelConfig {
            path,
            model_type,
            architecture,
            json,
        })
    }

    /// Deserializes the family's config struct, naming the file on error.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.json.clone())
            .map_err(|e| Error::config(&self.path, e.to_string()))
    }
}

/// The weight files of a checkpoint folder: one file, or the shards its index lists.
pub fn weight_files(folder: &Path) -> Result<Vec<PathBuf>> {
    let single = folder.join(WEIGHTS);
    if single.exists() {
        return Ok(vec![single]);
    }
    let diffusers = folder.join(DIFFUSERS_WEIGHTS);
    if diffusers.exists() {
        return Ok(vec![diffusers]);
    }
    let index = folder.join(WEIGHTS_INDEX);
    if index.exists() {
        return Ok(shard_files(&index)?
            .into_iter()
            .map(|f| folder.join(f))
            .collect());
    }
    Err(Error::Weights {
        path: folder.to_path_buf(),
        message: format!("no {WEIGHTS}, {WEIGHTS_INDEX} or {DIFFUSERS_WEIGHTS} in the folder"),
    })
}

/// The distinct shard file names of a model.safetensors.index.json, in order.
fn shard_files(index: &Path) -> Result<Vec<String>> {
    let json = read_json(index)?;
    let map = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::config(index, "no \"weight_map\" object"))?;
    let mut files = BTreeSet::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .filter(|f| !f.contains('/') && !f.contains('\\') && !f.starts_with('.'))
            .ok_or_else(|| Error::config(index, format!("bad shard for {name}: {file}")))?;
        files.insert(file.to_string());
    }
    if files.is_empty() {
        return Err(Error::config(index, "\"weight_map\" lists no tensors"));
    }
    Ok(files.into_iter().collect())
}

/// Class names in id order from a config's `id2label`: its keys must be exactly the indices
/// 0..n, each once.
pub fn labels_from_id2label(id2label: &BTreeMap<String, String>) -> Result<Vec<String>, String> {
    let n = id2label.len();
    let mut labels: Vec<Option<String>> = vec![None; n];
    for (k, v) in id2label {
        let i: usize = k
            .trim()
            .parse()
            .map_err(|_| format!("id2label key {k:?} is not an index"))?;
        let slot = labels
            .get_mut(i)
            .ok_or_else(|| format!("id2label index {i} is out of 0..{n}"))?;
        if slot.is_some() {
            return Err(format!("id2label names index {i} twice"));
        }
        *slot = Some(v.clone());
    }
    // n distinct indices below n: every slot is filled.
    Ok(labels.into_iter().flatten().collect())
}

/// The tensor names and shapes in a safetensors file, from its header alone.
pub fn safetensors_header(path: &Path) -> Result<BTreeMap<String, Vec<usize>>> {
    use std::io::Read;
    let bad = |m: String| Error::Weights {
        path: path.to_path_buf(),
        message: m,
    };
    if path.is_dir() {
        return Err(bad("a folder, not a safetensors file".into()));
    }
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| bad("too short for a safetensors file".into()))?;
    let len = u64::from_le_bytes(len);
    let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if len > 100 << 20 || len + 8 > file_len {
        return Err(bad("not a safetensors file (bad header length)".into()));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    // The safetensors crate's own header type: names, dtypes, shapes and contiguous offsets.
    let meta: safetensors::tensor::Metadata =
        serde_json::from_slice(&header).map_err(|e| bad(format!("bad header: {e}")))?;
    let tensors = meta.tensors();
    let end = tensors
        .values()
        .map(|t| t.data_offsets.1 as u64)
        .max()
        .unwrap_or(0);
    if end + len + 8 > file_len {
        return Err(bad(format!(
            "the header describes {end} bytes of data but the file holds {}",
            file_len - len - 8
        )));
    }
    Ok(tensors
        .into_iter()
        .map(|(name, info)| (name, info.shape.clone()))
        .collect())
}

/// Loads a checkpoint folder's weights into `module`, by transformers' tensor names.
///
/// `renames` are (regex, replacement) pairs applied in order to each file's tensor names (e.g.
/// stripping a `vit.` prefix when a classifier checkpoint is loaded into a bare encoder);
/// `optional` lists module paths that may stay as initialised. Any other module parameter
/// missing from the files, or any shape mismatch, is an error.
pub fn load_weights<M: Module>(
    module: M,
    folder: &Path,
    renames: &[(&str, &str)],
    optional: &[&str],
) -> Result<M> {
    load_weights_with(module, folder, renames, optional, false)
}

/// [`load_weights`] for modules with enums of families (a GAN's `Generator::Mlp`, …): the
/// files' names carry no variant, as [`save_pretrained`] writes them.
pub fn load_weights_skipping_variants<M: Module>(
    module: M,
    folder: &Path,
    optional: &[&str],
) -> Result<M> {
    load_weights_with(module, folder, &[], optional, true)
}

/// [`load_weights`] from one safetensors file rather than a checkpoint folder.
pub fn load_weights_file<M: Module>(
    module: M,
    file: &Path,
    renames: &[(&str, &str)],
    optional: &[&str],
) -> Result<M> {
    load_files(
        module,
        &[file.to_path_buf()],
        file,
        renames,
        optional,
        false,
    )
}

fn load_weights_with<M: Module>(
    module: M,
    folder: &Path,
    renames: &[(&str, &str)],
    optional: &[&str],
    skip_enum_variants: bool,
) -> Result<M> {
    let files = weight_files(folder)?;
    load_files(
        module,
        &files,
        folder,
        renames,
        optional,
        skip_enum_variants,
    )
}

fn load_files<M: Module>(
    mut module: M,
    files: &[PathBuf],
    folder: &Path,
    renames: &[(&str, &str)],
    optional: &[&str],
    skip_enum_variants: bool,
) -> Result<M> {
    let mut applied = BTreeSet::new();
    let mut missing = BTreeSet::new();
    for file in files {
        if !file.exists() {
            return Err(Error::io(
                file,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "shard listed in the index is missing",
                ),
            ));
        }
        // Check the header first: burn-store would report a truncated file less clearly.
        safetensors_header(file)?;
        let mut store = SafetensorsStore::from_file(file)
            .with_from_adapter(ChainAdapter::new(
                ChainAdapter::new(PyTorchToBurnAdapter, FloatCastAdapter::to(DType::F32)),
                ScalarAdapter { to_scalar: vec![] },
            ))
            .allow_partial(true)
            .skip_enum_variants(skip_enum_variants)
            .validate(true);
        for (from, to) in renames {
            store = store.with_key_remapping(from, *to);
        }
        let result = module.load_from(&mut store).map_err(|e| Error::Weights {
            path: file.clone(),
            message: e.to_string(),
        })?;
        if let Some(err) = result.errors.first() {
            return Err(Error::Weights {
                path: file.clone(),
                message: err.to_string(),
            });
        }
        applied.extend(result.applied);
        missing.extend(result.missing.into_iter().map(|(p, _)| p));
    }
    let not_loaded: Vec<&String> = missing
        .iter()
        .filter(|p| !applied.contains(*p) && !optional.iter().any(|o| p.starts_with(o)))
        .collect();
    if let Some(first) = not_loaded.first() {
        return Err(Error::Weights {
            path: folder.to_path_buf(),
            message: format!(
                "{} parameter(s) missing, first {first} (does config.json match the weights?)",
                not_loaded.len()
            ),
        });
    }
    Ok(module)
}

/// Reshapes PyTorch's 0-d tensors (CLIP's `logit_scale`) to the `[1]` a burn parameter holds
/// on load, and the named ones back to 0-d on save.
#[derive(Clone)]
struct ScalarAdapter {
    /// On save: parameter paths that transformers stores as scalars.
    to_scalar: Vec<String>,
}

impl ModuleAdapter for ScalarAdapter {
    fn adapt(&self, t: PackTensor, _ctx: ModuleContext<'_>) -> PackTensor {
        let dims = t.shape.num_dims();
        let target = if dims == 0 {
            Shape::new([1])
        } else if dims == 1 && t.shape.num_elements() == 1 && self.to_scalar.contains(&t.name) {
            Shape::from(Vec::<usize>::new())
        } else {
            return t;
        };
        let (name, dtype) = (t.name.clone(), t.dtype);
        let shape = target.clone();
        bridge::map_data(t, name, dtype, target, move |d| {
            let (bytes, _, dtype) = d.into_parts();
            TensorData::from_bytes(bytes, shape.clone(), dtype)
        })
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// Writes `module` and `config` as a checkpoint folder transformers can load: config.json and
/// model.safetensors with transformers' tensor names. Each file is written atomically.
pub fn save_pretrained<M: Module>(module: &M, config: &Value, folder: &Path) -> Result<()> {
    save_pretrained_with_scalars(module, config, folder, &[])
}

/// [`save_pretrained`], writing the parameters at `scalars` as 0-d tensors, as transformers
/// stores them (CLIP's `logit_scale`).
pub fn save_pretrained_with_scalars<M: Module>(
    module: &M,
    config: &Value,
    folder: &Path,
    scalars: &[&str],
) -> Result<()> {
    save_pretrained_renamed(module, config, folder, scalars, &[])
}

/// [`save_pretrained_with_scalars`] with (regex, replacement) pairs applied to every tensor
/// name on the way out (BLIP's `attention.self`, `LayerNorm`).
pub fn save_pretrained_renamed<M: Module>(
    module: &M,
    config: &Value,
    folder: &Path,
    scalars: &[&str],
    renames: &[(&str, &str)],
) -> Result<()> {
    save_weights_and_config(module, config, folder, WEIGHTS, scalars, renames)
}

/// [`save_pretrained`] with another weights file name (diffusers' [`DIFFUSERS_WEIGHTS`]).
pub fn save_pretrained_file<M: Module>(
    module: &M,
    config: &Value,
    folder: &Path,
    file: &str,
) -> Result<()> {
    save_weights_and_config(module, config, folder, file, &[], &[])
}

fn save_weights_and_config<M: Module>(
    module: &M,
    config: &Value,
    folder: &Path,
    file: &str,
    scalars: &[&str],
    renames: &[(&str, &str)],
) -> Result<()> {
    std::fs::create_dir_all(folder).map_err(|e| Error::io(folder, e))?;
    let weights = folder.join(file);
    let to_scalar = scalars.iter().map(|s| s.to_string()).collect();
    let mut store = SafetensorsStore::from_file(&weights)
        .with_to_adapter(ChainAdapter::new(
            BurnToPyTorchAdapter,
            ScalarAdapter { to_scalar },
        ))
        .skip_enum_variants(true)
        .metadata("format", "pt")
        .overwrite(true);
    for (from, to) in renames {
        store = store.with_key_remapping(from, *to);
    }
    module.save_into(&mut store).map_err(|e| Error::Weights {
        path: weights.clone(),
        message: e.to_string(),
    })?;
    let text = serde_json::to_string_pretty(config).expect("JSON value serializes");
    let config_path = folder.join("config.json");
    write_atomic(&config_path, text.as_bytes())?;
    // burn-store writes the weights through a private temporary file (mode 0600); give them the
    // mode every other file gets (0666 less the umask), which config.json has.
    let mode = std::fs::metadata(&config_path)
        .map_err(|e| Error::io(&config_path, e))?
        .permissions();
    std::fs::set_permissions(&weights, mode).map_err(|e| Error::io(&weights, e))
}

/// Adds copies of tensors to a safetensors file under new names (`(new, existing)` pairs), for
/// readers that expect tied weights written out; the file is rewritten atomically.
pub fn add_tensor_copies(path: &Path, copies: &[(&str, &str)]) -> Result<()> {
    use safetensors::{SafeTensors, tensor::TensorView};
    let bad = |m: String| Error::Weights {
        path: path.to_path_buf(),
        message: m,
    };
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut views: Vec<(String, TensorView<'_>)> = st.tensors();
    for (new, existing) in copies {
        let v = st
            .tensor(existing)
            .map_err(|e| bad(format!("{existing}: {e}")))?;
        views.push((new.to_string(), v));
    }
    let info = meta.metadata().clone();
    let out = safetensors::serialize(views, info).map_err(|e| bad(e.to_string()))?;
    write_atomic(path, &out)
}

/// A scratch folder beside `out` (in its nearest existing ancestor, where the user writes), or
/// in the system's temporary folder when that cannot be written; removed when dropped: where a
/// new model is made before anything is written to `out`.
pub fn scratch_dir(out: &Path) -> Result<tempfile::TempDir> {
    let mut base = out.parent();
    while let Some(b) = base {
        if b.as_os_str().is_empty() || b.is_dir() {
            break;
        }
        base = b.parent();
    }
    let base = match base {
        Some(b) if !b.as_os_str().is_empty() => b,
        _ => Path::new("."),
    };
    let builder = || {
        let mut b = tempfile::Builder::new();
        b.prefix(".tuwen-staging-");
        b
    };
    builder().tempdir_in(base).or_else(|_| {
        let tmp = std::env::temp_dir();
        builder().tempdir_in(&tmp).map_err(|e| Error::io(&tmp, e))
    })
}

/// Writes a file through a temporary sibling and a rename, so readers never see half of it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id2label_must_name_each_index_once() {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            labels_from_id2label(&map(&[("1", "dog"), ("0", "cat")])).unwrap(),
            ["cat", "dog"]
        );
        let twice = labels_from_id2label(&map(&[("0", "cat"), ("00", "dog")])).unwrap_err();
        assert!(twice.contains("twice"), "{twice}");
        assert!(labels_from_id2label(&map(&[("a", "cat")])).is_err());
        assert!(labels_from_id2label(&map(&[("0", "cat"), ("2", "dog")])).is_err());
        assert!(labels_from_id2label(&map(&[("-1", "cat")])).is_err());
    }

    #[test]
    fn an_empty_weight_map_is_an_error() {
        let dir = std::env::temp_dir().join(format!("tuwen-empty-map-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(WEIGHTS_INDEX), r#"{"weight_map": {}}"#).unwrap();
        let err = weight_files(&dir).unwrap_err().to_string();
        assert!(err.contains("no tensors"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn repo_ids() {
        assert!(looks_like_repo_id("google/vit-base-patch16-224"));
        assert!(looks_like_repo_id("gpt2"));
        assert!(!looks_like_repo_id("./local"));
        assert!(!looks_like_repo_id("/abs/path"));
        assert!(!looks_like_repo_id("a/b/c"));
        assert!(!looks_like_repo_id("a/../b"));
        assert!(!looks_like_repo_id(""));
    }

    #[test]
    fn offline_uncached_repo_is_one_clear_error() {
        let dir = std::env::temp_dir().join(format!("tuwen-hf-{}", std::process::id()));
        // SAFETY: tests in this module that touch the environment run in this one test.
        unsafe {
            std::env::set_var("HF_HUB_CACHE", &dir);
            std::env::set_var("HF_HUB_OFFLINE", "1");
        }
        let err = resolve("nobody/no-such-model").unwrap_err().to_string();
        unsafe {
            std::env::remove_var("HF_HUB_CACHE");
            std::env::remove_var("HF_HUB_OFFLINE");
        }
        assert!(err.contains("nobody/no-such-model"), "{err}");
        assert!(err.contains("not in the HF cache"), "{err}");
        assert!(!err.contains('\n'));
    }
}
