//! Finding image files and writing embedding arrays (`.npy`, `.safetensors`).

use std::path::{Path, PathBuf};

use crate::hub::write_atomic;
use crate::{Error, Result};

/// File extensions treated as images when walking a folder.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"];

/// Every image file under `dir`, recursively, sorted by path. Unreadable sub-folders are an error
/// only at the top level. Only regular files (or links to them) count: a FIFO or a device with
/// an image's name would block or never end. Links to folders are not followed (no loops);
/// broken links are kept, so that reading them reports them.
pub fn walk_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
    if !meta.is_dir() {
        return Err(Error::InvalidInput(format!(
            "{} is not a folder",
            dir.display()
        )));
    }
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if d == dir => return Err(Error::io(&d, e)),
            Err(e) => {
                tracing::warn!("skipping folder {}: {e}", d.display());
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
                // A broken link stays, to be reported as unreadable where it is opened.
                && std::fs::metadata(&path).map_or(true, |m| m.is_file())
            {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Whether two paths name one existing file (after links; hard links included on Unix).
pub fn same_file(a: &Path, b: &Path) -> bool {
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        ma.dev() == mb.dev() && ma.ino() == mb.ino()
    }
    #[cfg(not(unix))]
    {
        let _ = (ma, mb);
        std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok()
    }
}

/// Refuses an output path that would replace one of a command's inputs: one of the `files`
/// (compared after resolving links), a file directly inside one of the `folders` (a model
/// folder's weights, config, tokenizer), or one of those folders itself. `flag` names the
/// option in the message. A path that does not exist yet replaces nothing.
pub fn refuse_overwrite(
    flag: &str,
    output: &Path,
    files: &[&Path],
    folders: &[&Path],
) -> Result<()> {
    if std::fs::symlink_metadata(output).is_err() {
        return Ok(());
    }
    let refuse = |what: &Path| {
        Err(Error::InvalidInput(format!(
            "{flag} {} would replace the input {}: choose another path",
            output.display(),
            what.display()
        )))
    };
    for f in files {
        if same_file(output, f) {
            return refuse(f);
        }
    }
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    for d in folders {
        if same_file(output, d) || (same_file(parent, d) && output.is_file()) {
            return refuse(d);
        }
    }
    Ok(())
}

fn check_rows(rows: &[Vec<f32>]) -> Result<(usize, usize)> {
    let d = rows.first().map_or(0, Vec::len);
    if rows.iter().any(|r| r.len() != d) {
        return Err(Error::InvalidInput("rows of different lengths".into()));
    }
    Ok((rows.len(), d))
}

/// Writes rows as a float32 `.npy` array `[n, d]`, atomically.
pub fn write_npy(path: &Path, rows: &[Vec<f32>]) -> Result<()> {
    let (n, d) = check_rows(rows)?;
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({n}, {d}), }}");
    // Magic (6) + version (2) + length (2) + header, padded with spaces to a multiple of 64
    // and ended by a newline.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + n * d * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for r in rows {
        for x in r {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
    }
    write_atomic(path, &bytes)
}

/// Writes named `[n, d]` float32 arrays (and string metadata) as `.safetensors`, atomically.
pub fn write_safetensors(
    path: &Path,
    arrays: &[(&str, &[Vec<f32>])],
    metadata: &[(&str, String)],
) -> Result<()> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, rows) in arrays {
        let (n, d) = check_rows(rows)?;
        let start = data.len();
        for r in rows.iter() {
            for x in r {
                data.extend_from_slice(&x.to_le_bytes());
            }
        }
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": [n, d], "data_offsets": [start, data.len()]}),
        );
    }
    if !metadata.is_empty() {
        let meta: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
            .collect();
        header.insert("__metadata__".into(), meta.into());
    }
    let mut h = serde_json::to_string(&header).expect("header serializes");
    while !h.len().is_multiple_of(8) {
        h.push(' ');
    }
    let mut bytes = Vec::with_capacity(8 + h.len() + data.len());
    bytes.extend_from_slice(&(h.len() as u64).to_le_bytes());
    bytes.extend_from_slice(h.as_bytes());
    bytes.extend_from_slice(&data);
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_round_trips() {
        let dir = std::env::temp_dir().join(format!("tuwen-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.npy");
        write_npy(&p, &[vec![1.0, 2.0], vec![3.0, -4.5]]).unwrap();
        let b = std::fs::read(&p).unwrap();
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
        assert!(header.contains("'shape': (2, 2)") && header.ends_with('\n'));
        let last = f32::from_le_bytes(b[b.len() - 4..].try_into().unwrap());
        assert_eq!(last, -4.5);
        let p = dir.join("a.safetensors");
        write_safetensors(&p, &[("x", &[vec![1.0, 2.0, 3.0]])], &[("k", "v".into())]).unwrap();
        let names = crate::hub::safetensors_header(&p).unwrap();
        assert_eq!(names["x"], vec![1, 3]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn outputs_may_not_replace_inputs() {
        let dir = std::env::temp_dir().join(format!("tuwen-overwrite-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("model")).unwrap();
        std::fs::write(dir.join("in.png"), b"x").unwrap();
        std::fs::write(dir.join("model/model.safetensors"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.join("in.png"), dir.join("link.png")).unwrap();
        std::fs::hard_link(dir.join("in.png"), dir.join("hard.png")).unwrap();
        let (input, model) = (dir.join("in.png"), dir.join("model"));
        let check = |out: &Path| refuse_overwrite("--out", out, &[&input], &[&model]);
        for out in [
            dir.join("in.png"),
            dir.join("link.png"),
            dir.join("hard.png"),
            dir.join("model/../in.png"),
            dir.join("model/model.safetensors"),
            dir.join("model"),
        ] {
            let err = check(&out).unwrap_err().to_string();
            assert!(err.contains("would replace the input"), "{err}");
        }
        assert!(check(&dir.join("new.png")).is_ok());
        assert!(check(&dir.join("model/new.npy")).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn walks_folders_recursively_for_images_only() {
        let dir = std::env::temp_dir().join(format!("tuwen-walk-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
        for f in [
            "b.PNG",
            "a.jpg",
            "notes.txt",
            "sub/c.webp",
            "sub/deeper/d.tiff",
        ] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        let found: Vec<String> = walk_images(&dir)
            .unwrap()
            .iter()
            .map(|p| p.strip_prefix(&dir).unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(found, ["a.jpg", "b.PNG", "sub/c.webp", "sub/deeper/d.tiff"]);
        // A FIFO named like an image is not a file to read (opening it would block).
        let fifo = dir.join("pipe.png");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo failed");
        assert_eq!(walk_images(&dir).unwrap().len(), 4);
        assert!(walk_images(&dir.join("a.jpg")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
