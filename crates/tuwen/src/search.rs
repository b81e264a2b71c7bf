//! Image search: an index of image folders with their CLIP or SigLIP embeddings, kept in one
//! SQLite file (with an HNSW graph beside it past [`ANN_MIN_IMAGES`]), and search over it by text,
//! by image, or both.
//!
//! **The index** (`Index`) holds, per image, its canonical path, folder, size, modification
//! time, width and height, a SHA-256 of its bytes and its unit-length embedding, plus the
//! folders indexed and the model's identity. [`Index::update`] brings it up to date with the
//! folders:
//! - a file whose path, size and mtime are unchanged is left alone;
//! - a file whose bytes are already indexed (a rename, or a copy) takes the stored embedding;
//! - files gone from the folders are removed;
//! - the rest are embedded in batches, each batch committed in one transaction.
//!
//! SQLite's transactions make every committed batch durable and the file never half-written,
//! so a run killed at any moment (SIGKILL included) leaves a valid index, and the next run goes
//! on from the last committed batch.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::pipeline::ImageText;
use crate::{Error, Result};

mod ann;

pub use ann::EXPANSION_SEARCH;

/// Collections of at least this many images get an HNSW graph beside the index
/// ([`Index::set_ann_min`]); smaller ones are searched exactly.
pub const ANN_MIN_IMAGES: usize = 20_000;

/// The schema's version, kept in `meta`.
const SCHEMA: &str = "1";

/// Adds an image, or replaces the row of its path.
const UPSERT: &str = "INSERT INTO images(path, folder, size, mtime, width, height, hash, embedding)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
     ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime = excluded.mtime,
       width = excluded.width, height = excluded.height, hash = excluded.hash,
       embedding = excluded.embedding";

/// What an update did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct UpdateReport {
    /// Files embedded by the model.
    pub embedded: usize,
    /// Files left as they were.
    pub unchanged: usize,
    /// Files removed (gone from the folders).
    pub removed: usize,
    /// Files that could not be read or decoded.
    pub failed: usize,
    /// Files whose bytes were already indexed under another path (renames and copies): they
    /// took the stored embedding.
    pub reused: usize,
}

/// One search result.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Hit {
    /// The image's canonical path.
    pub path: String,
    /// Cosine similarity with the query.
    pub score: f32,
}

/// Which images a search considers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    /// Only images under this folder.
    pub folder: Option<String>,
    /// Only images modified at or after this time (Unix seconds).
    pub after: Option<i64>,
    /// Only images modified before this time (Unix seconds).
    pub before: Option<i64>,
    /// Only files of at least this many bytes.
    pub min_bytes: Option<i64>,
    /// Only files of at most this many bytes.
    pub max_bytes: Option<i64>,
}

/// Days from 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A date `YYYY-MM-DD` (UTC midnight) or Unix seconds.
fn parse_time(v: &str) -> std::result::Result<i64, String> {
    if let Ok(s) = v.parse::<i64>() {
        return Ok(s);
    }
    let parts: Vec<&str> = v.split('-').collect();
    if let [y, m, d] = parts.as_slice()
        && let (Ok(y), Ok(m), Ok(d)) = (y.parse::<i64>(), m.parse::<i64>(), d.parse::<i64>())
        && (1..=12).contains(&m)
        && (1..=31).contains(&d)
    {
        return Ok(days_from_civil(y, m, d) * 86_400);
    }
    Err(format!("{v:?} is not a date (YYYY-MM-DD) or Unix seconds"))
}

impl Filter {
    /// Parses `key=value` pairs separated by commas: `folder=DIR`, `after=DATE`,
    /// `before=DATE` (YYYY-MM-DD or Unix seconds), `min_bytes=N`, `max_bytes=N`.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let mut f = Filter::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("--where {part:?}: expected key=value"))?;
            let int = |v: &str| {
                v.parse::<i64>()
                    .map_err(|_| format!("--where {k}={v}: not a whole number"))
            };
            match k.trim() {
                "folder" => {
                    let p =
                        std::fs::canonicalize(v).map_err(|e| format!("--where folder={v}: {e}"))?;
                    f.folder = Some(p.to_string_lossy().into_owned());
                }
                "after" => {
                    f.after = Some(parse_time(v).map_err(|e| format!("--where after: {e}"))?)
                }
                "before" => {
                    f.before = Some(parse_time(v).map_err(|e| format!("--where before: {e}"))?)
                }
                "min_bytes" => f.min_bytes = Some(int(v)?),
                "max_bytes" => f.max_bytes = Some(int(v)?),
                other => {
                    return Err(format!(
                        "--where: unknown key {other:?} (folder, after, before, min_bytes, max_bytes)"
                    ));
                }
            }
        }
        Ok(f)
    }
}

/// The identity of a model folder: SHA-256 of its config.json, its weights' safetensors
/// headers and sizes, and 16 evenly spaced 64 KiB samples of their bytes (a fine-tuned copy
/// with the same shapes differs there).
pub fn model_fingerprint(folder: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let config = folder.join("config.json");
    h.update(std::fs::read(&config).map_err(|e| Error::io(&config, e))?);
    for file in crate::hub::weight_files(folder)? {
        let bytes_len = std::fs::metadata(&file)
            .map_err(|e| Error::io(&file, e))?
            .len();
        h.update(bytes_len.to_le_bytes());
        let mut f = std::fs::File::open(&file).map_err(|e| Error::io(&file, e))?;
        let mut buf = vec![0u8; 64 << 10];
        for i in 0..16u64 {
            use std::io::Seek;
            let at = bytes_len.saturating_sub(buf.len() as u64) * i / 15;
            f.seek(std::io::SeekFrom::Start(at))
                .map_err(|e| Error::io(&file, e))?;
            let n = f.read(&mut buf).map_err(|e| Error::io(&file, e))?;
            h.update(&buf[..n]);
        }
    }
    Ok(format!("{:x}", h.finalize()))
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

fn to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_blob(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A file found in the folders.
struct Found {
    path: PathBuf,
    key: String,
    folder: String,
    size: i64,
    mtime: i64,
}

/// An image index in one SQLite file (and, past [`ANN_MIN_IMAGES`], an HNSW graph beside it).
pub struct Index {
    conn: Connection,
    db: PathBuf,
    ann_min: usize,
    /// The loaded graph and the `changes` count it reflects.
    graph: RefCell<Option<(String, ann::Graph)>>,
}

impl Index {
    /// Opens (or creates) the index at `db`.
    pub fn open(db: &Path) -> Result<Self> {
        let sql = |e: rusqlite::Error| Error::InvalidInput(format!("{}: {e}", db.display()));
        let conn = Connection::open(db).map_err(sql)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS roots(path TEXT PRIMARY KEY);
             CREATE TABLE IF NOT EXISTS images(
                 id INTEGER PRIMARY KEY,
                 path TEXT NOT NULL UNIQUE,
                 folder TEXT NOT NULL,
                 size INTEGER NOT NULL,
                 mtime INTEGER NOT NULL,
                 width INTEGER NOT NULL,
                 height INTEGER NOT NULL,
                 hash TEXT NOT NULL,
                 embedding BLOB NOT NULL);
             CREATE INDEX IF NOT EXISTS images_hash ON images(hash);
             CREATE TABLE IF NOT EXISTS ann(id INTEGER PRIMARY KEY, hash TEXT NOT NULL);
             INSERT OR IGNORE INTO meta(key, value) VALUES ('changes', '0');
             CREATE TRIGGER IF NOT EXISTS images_added AFTER INSERT ON images BEGIN
               UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'changes'; END;
             CREATE TRIGGER IF NOT EXISTS images_changed AFTER UPDATE OF hash, embedding ON images
               BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'changes'; END;
             CREATE TRIGGER IF NOT EXISTS images_removed AFTER DELETE ON images BEGIN
               UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'changes'; END;",
        )
        .map_err(|e| Error::InvalidInput(format!("{}: not a tuwen index ({e})", db.display())))?;
        let index = Index {
            conn,
            db: db.to_path_buf(),
            ann_min: ANN_MIN_IMAGES,
            graph: RefCell::new(None),
        };
        match index.meta("schema")? {
            None => index.set_meta("schema", SCHEMA)?,
            Some(v) if v == SCHEMA => {}
            Some(v) => {
                return Err(Error::InvalidInput(format!(
                    "{}: index schema {v}, this tuwen reads {SCHEMA}",
                    db.display()
                )));
            }
        }
        Ok(index)
    }

    fn sql(&self, e: rusqlite::Error) -> Error {
        Error::InvalidInput(format!("{}: {e}", self.db.display()))
    }

    /// A value of the index's `meta` table.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.sql(e))
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(|_| ())
            .map_err(|e| self.sql(e))
    }

    /// The folders indexed (canonical).
    pub fn roots(&self) -> Result<Vec<PathBuf>> {
        let mut st = self
            .conn
            .prepare("SELECT path FROM roots ORDER BY path")
            .map_err(|e| self.sql(e))?;
        let rows = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.sql(e))?;
        rows.map(|r| r.map(PathBuf::from).map_err(|e| self.sql(e)))
            .collect()
    }

    /// Images in the index.
    pub fn len(&self) -> Result<usize> {
        self.conn
            .query_row("SELECT COUNT(*) FROM images", [], |r| r.get::<_, i64>(0))
            .map(|n| n as usize)
            .map_err(|e| self.sql(e))
    }

    /// Whether the index holds no image.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Checks that `fingerprint` is the model the index was built with (any model fits an
    /// empty index, which then records it with `folder`).
    pub fn check_model(&self, folder: &Path, fingerprint: &str) -> Result<()> {
        match self.meta("model_fingerprint")? {
            Some(f) if f == fingerprint => Ok(()),
            Some(_) => Err(Error::InvalidInput(format!(
                "{} was built with another model ({}); search it with that one, or index again \
                 into a new --db",
                self.db.display(),
                self.meta("model")?.unwrap_or_default()
            ))),
            None => {
                self.set_meta("model_fingerprint", fingerprint)?;
                self.set_meta("model", &folder.to_string_lossy())
            }
        }
    }

    /// Brings the index up to date with `dirs`, embedding with `model` (whose folder and
    /// fingerprint the index records) `batch` images at a time. `on_progress(done, total)`
    /// hears each committed batch; `on_fail` each unreadable file.
    pub fn update(
        &mut self,
        dirs: &[PathBuf],
        model: &ImageText,
        model_folder: &Path,
        batch: usize,
        mut on_progress: impl FnMut(usize, usize),
        mut on_fail: impl FnMut(&Path, &Error),
    ) -> Result<UpdateReport> {
        if batch == 0 {
            return Err(Error::InvalidInput(
                "--batch-size must be at least 1".into(),
            ));
        }
        let fingerprint = model_fingerprint(model_folder)?;
        self.check_model(model_folder, &fingerprint)?;
        let mut report = UpdateReport::default();
        // What is in the folders now.
        let mut found = Vec::new();
        let mut roots = Vec::new();
        for d in dirs {
            let root = std::fs::canonicalize(d).map_err(|e| Error::io(d, e))?;
            for p in crate::data::files::walk_images(&root)? {
                let Ok(meta) = std::fs::metadata(&p) else {
                    continue;
                };
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos() as i64);
                let key = p.to_string_lossy().into_owned();
                let folder = p
                    .parent()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                found.push(Found {
                    path: p,
                    key,
                    folder,
                    size: meta.len() as i64,
                    mtime,
                });
            }
            roots.push(root);
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        found.dedup_by(|a, b| a.key == b.key);
        // What the index holds under these folders.
        let mut stored: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        {
            let mut st = self
                .conn
                .prepare("SELECT path, size, mtime FROM images")
                .map_err(|e| self.sql(e))?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(|e| self.sql(e))?;
            for r in rows {
                let (p, s, m) = r.map_err(|e| self.sql(e))?;
                stored.insert(p, (s, m));
            }
        }
        let under_roots = |p: &str| roots.iter().any(|r| Path::new(p).starts_with(r));
        let present: BTreeSet<&str> = found.iter().map(|f| f.key.as_str()).collect();
        let mut changed = Vec::new();
        for f in &found {
            match stored.get(&f.key) {
                Some(&(s, m)) if s == f.size && m == f.mtime => report.unchanged += 1,
                _ => changed.push(f),
            }
        }
        // Hash what changed; take stored embeddings for bytes already indexed.
        let hashes: Vec<Option<String>> = {
            use rayon::prelude::*;
            changed
                .par_iter()
                .map(|f| sha256_file(&f.path).ok())
                .collect()
        };
        let gone: Vec<&String> = stored
            .keys()
            .filter(|p| under_roots(p) && !present.contains(p.as_str()))
            .collect();
        let tx = self
            .conn
            .transaction()
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        for r in &roots {
            tx.execute(
                "INSERT OR IGNORE INTO roots(path) VALUES (?1)",
                [r.to_string_lossy()],
            )
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        }
        let mut to_embed = Vec::new();
        for (f, hash) in changed.iter().zip(hashes) {
            let Some(hash) = hash else {
                to_embed.push((*f, String::new()));
                continue;
            };
            let reuse: Option<(i64, i64, Vec<u8>)> = tx
                .query_row(
                    "SELECT width, height, embedding FROM images WHERE hash = ?1 LIMIT 1",
                    [&hash],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(|e| Error::InvalidInput(e.to_string()))?;
            match reuse {
                Some((w, h, emb)) => {
                    tx.execute(
                        UPSERT,
                        params![f.key, f.folder, f.size, f.mtime, w, h, hash, emb],
                    )
                    .map_err(|e| Error::InvalidInput(e.to_string()))?;
                    report.reused += 1;
                }
                None => to_embed.push((*f, hash)),
            }
        }
        for p in &gone {
            tx.execute("DELETE FROM images WHERE path = ?1", [p])
                .map_err(|e| Error::InvalidInput(e.to_string()))?;
        }
        report.removed = gone.len();
        tx.commit()
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        // Embed the rest, batch by batch: decoding (in parallel) overlaps the model's work.
        let total = to_embed.len();
        let processor = &model.processor;
        let decode = |chunk: &[(&Found, String)]| {
            use rayon::prelude::*;
            chunk
                .par_iter()
                .map(|(f, _)| {
                    crate::data::open_rgb(&f.path).map(|img| {
                        let dims = (img.width(), img.height());
                        (processor.preprocess(&img), dims)
                    })
                })
                .collect::<Vec<_>>()
        };
        let chunks: Vec<&[(&Found, String)]> = to_embed.chunks(batch).collect();
        let mut done = 0;
        std::thread::scope(|scope| -> Result<()> {
            let (tx_dec, rx_dec) = std::sync::mpsc::sync_channel(1);
            let chunks_ref = &chunks;
            let decode_ref = &decode;
            scope.spawn(move || {
                for c in chunks_ref {
                    if tx_dec.send(decode_ref(c)).is_err() {
                        break;
                    }
                }
            });
            for chunk in &chunks {
                let decoded = rx_dec
                    .recv()
                    .map_err(|_| Error::InvalidInput("the decoding thread stopped".into()))?;
                let mut items = Vec::new();
                let mut kept = Vec::new();
                for ((f, hash), d) in chunk.iter().zip(decoded) {
                    match d {
                        Ok((px, dims)) => {
                            items.push(px);
                            kept.push((*f, hash, dims));
                        }
                        Err(e) => {
                            on_fail(&f.path, &e);
                            report.failed += 1;
                        }
                    }
                }
                let embeds = if items.is_empty() {
                    vec![]
                } else {
                    let pixels = crate::data::processor::batch_tensor(items, model.device())?;
                    model.embed_pixels(pixels)?
                };
                let tx = self
                    .conn
                    .transaction()
                    .map_err(|e| Error::InvalidInput(e.to_string()))?;
                for ((f, hash, (w, h)), e) in kept.iter().zip(&embeds) {
                    let hash = if hash.is_empty() {
                        sha256_file(&f.path)?
                    } else {
                        hash.to_string()
                    };
                    tx.execute(
                        UPSERT,
                        params![f.key, f.folder, f.size, f.mtime, w, h, hash, to_blob(e)],
                    )
                    .map_err(|e| Error::InvalidInput(e.to_string()))?;
                }
                tx.commit()
                    .map_err(|e| Error::InvalidInput(e.to_string()))?;
                report.embedded += embeds.len();
                done += chunk.len();
                on_progress(done, total);
            }
            Ok(())
        })?;
        self.maintain_ann()?;
        Ok(report)
    }

    /// From how many images on the index keeps an HNSW graph (default [`ANN_MIN_IMAGES`]);
    /// applies at the next [`Index::update`] or [`Index::maintain_ann`].
    pub fn set_ann_min(&mut self, n: usize) {
        self.ann_min = n;
    }

    /// Brings the HNSW graph in step with the images when the index is large enough, or
    /// drops it when it is not. Returns whether a graph is in use.
    pub fn maintain_ann(&mut self) -> Result<bool> {
        if self.len()? >= self.ann_min.max(1) {
            if !self.ann_fresh()? {
                self.sync_ann()?;
            }
            return Ok(true);
        }
        let path = ann::path_for(&self.db);
        if path.exists() {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
        self.conn
            .execute_batch("DELETE FROM ann; DELETE FROM meta WHERE key = 'ann_changes';")
            .map_err(|e| self.sql(e))?;
        *self.graph.borrow_mut() = None;
        Ok(false)
    }

    /// Whether searches without a filter go through the graph: it exists and reflects every
    /// change to the images.
    pub fn ann_fresh(&self) -> Result<bool> {
        let (Some(now), Some(at)) = (self.meta("changes")?, self.meta("ann_changes")?) else {
            return Ok(false);
        };
        Ok(now == at && ann::path_for(&self.db).exists())
    }

    /// Adds to the graph every image it lacks or holds in an older version, removes what is
    /// gone, saves it (atomically) and records what it holds. Returns the graph's size.
    pub fn sync_ann(&mut self) -> Result<usize> {
        let path = ann::path_for(&self.db);
        let changes = self.meta("changes")?.unwrap_or_default();
        if !path.exists() {
            // Nothing on disk: whatever the list says, start over.
            self.conn
                .execute("DELETE FROM ann", [])
                .map_err(|e| self.sql(e))?;
        }
        let mut adds: Vec<(u64, String, Vec<f32>)> = Vec::new();
        {
            let mut st = self
                .conn
                .prepare(
                    "SELECT i.id, i.hash, i.embedding FROM images i LEFT JOIN ann a ON a.id = i.id
                     WHERE a.id IS NULL OR a.hash != i.hash",
                )
                .map_err(|e| self.sql(e))?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, String>(1)?,
                        from_blob(&r.get::<_, Vec<u8>>(2)?),
                    ))
                })
                .map_err(|e| self.sql(e))?;
            for r in rows {
                adds.push(r.map_err(|e| self.sql(e))?);
            }
        }
        let removes: Vec<u64> = {
            let mut st = self
                .conn
                .prepare(
                    "SELECT a.id FROM ann a LEFT JOIN images i ON i.id = a.id
                     WHERE i.id IS NULL OR i.hash != a.hash",
                )
                .map_err(|e| self.sql(e))?;
            let rows = st
                .query_map([], |r| r.get::<_, i64>(0))
                .map_err(|e| self.sql(e))?;
            rows.map(|r| r.map(|id| id as u64).map_err(|e| self.sql(e)))
                .collect::<Result<_>>()?
        };
        let dims = match adds.first() {
            Some((_, _, e)) => e.len(),
            None => self.lookup_any_dims()?,
        };
        *self.graph.borrow_mut() = None;
        let graph = match path.exists().then(|| ann::Graph::load(&path)).transpose()? {
            Some(g) if g.dims() == dims => g,
            _ => ann::Graph::new(dims, &path)?,
        };
        for id in &removes {
            graph.remove(*id, &path)?;
        }
        let items: Vec<(u64, Vec<f32>)> = adds.iter().map(|(id, _, e)| (*id, e.clone())).collect();
        graph.add_all(&items, crate::device::threads(), &path)?;
        graph.save(&path)?;
        let tx = self
            .conn
            .transaction()
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        for id in &removes {
            tx.execute("DELETE FROM ann WHERE id = ?1", [*id as i64])
                .map_err(|e| Error::InvalidInput(e.to_string()))?;
        }
        for (id, hash, _) in &adds {
            tx.execute(
                "INSERT OR REPLACE INTO ann(id, hash) VALUES (?1, ?2)",
                params![*id as i64, hash],
            )
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        }
        tx.execute(
            "INSERT INTO meta(key, value) VALUES ('ann_changes', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [&changes],
        )
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
        tx.commit()
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        let n = graph.size();
        *self.graph.borrow_mut() = Some((changes, graph));
        Ok(n)
    }

    fn lookup_any_dims(&self) -> Result<usize> {
        let blob: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT embedding FROM images LIMIT 1", [], |r| r.get(0))
            .optional()
            .map_err(|e| self.sql(e))?;
        Ok(blob.map_or(0, |b| b.len() / 4))
    }

    /// The graph's candidates for `query`, re-scored exactly; `None` when the graph is not
    /// in use.
    fn search_ann(&self, query: &[f32], k: usize) -> Result<Option<Vec<Hit>>> {
        if !self.ann_fresh()? {
            return Ok(None);
        }
        let at = self.meta("ann_changes")?.unwrap_or_default();
        let path = ann::path_for(&self.db);
        let mut cache = self.graph.borrow_mut();
        if cache.as_ref().is_none_or(|(c, _)| *c != at) {
            *cache = Some((at, ann::Graph::load(&path)?));
        }
        let (_, graph) = cache.as_ref().expect("loaded above");
        if graph.dims() != query.len() {
            return Err(Error::InvalidInput(format!(
                "{}: embeddings of {} values, the query has {}",
                self.db.display(),
                graph.dims(),
                query.len()
            )));
        }
        // The graph ranks by f16 vectors; take at least `EXPANSION_SEARCH` candidates and
        // rank them by the exact f32 embeddings, so near-ties keep their true order.
        let ids = graph.search(query, k.max(EXPANSION_SEARCH), EXPANSION_SEARCH, &path)?;
        let mut st = self
            .conn
            .prepare_cached("SELECT path, embedding FROM images WHERE id = ?1")
            .map_err(|e| self.sql(e))?;
        let mut hits = Vec::with_capacity(ids.len());
        for id in ids {
            let row: Option<(String, Vec<u8>)> = st
                .query_row([id as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(|e| self.sql(e))?;
            if let Some((path, blob)) = row {
                let e = from_blob(&blob);
                hits.push(Hit {
                    path,
                    score: crate::pipeline::image_text::dot(&e, query),
                });
            }
        }
        Ok(Some(hits))
    }

    /// The `k` images most similar to `query` (unit length) among those `filter` admits, best
    /// first, by cosine similarity: exact, or through the HNSW graph when one is in step with
    /// the images and there is no filter (its candidates' scores are still exact).
    pub fn search(&self, query: &[f32], k: usize, filter: &Filter) -> Result<Vec<Hit>> {
        if *filter == Filter::default()
            && let Some(mut hits) = self.search_ann(query, k)?
        {
            sort_hits(&mut hits);
            hits.truncate(k);
            return Ok(hits);
        }
        let mut sql = String::from("SELECT path, embedding FROM images WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(f) = &filter.folder {
            sql.push_str(" AND (folder = ? OR folder LIKE ? ESCAPE '\\')");
            args.push(f.clone().into());
            let escaped = f
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            args.push(format!("{escaped}{}%", std::path::MAIN_SEPARATOR).into());
        }
        let ns = 1_000_000_000i64;
        if let Some(t) = filter.after {
            sql.push_str(" AND mtime >= ?");
            args.push((t.saturating_mul(ns)).into());
        }
        if let Some(t) = filter.before {
            sql.push_str(" AND mtime < ?");
            args.push((t.saturating_mul(ns)).into());
        }
        if let Some(b) = filter.min_bytes {
            sql.push_str(" AND size >= ?");
            args.push(b.into());
        }
        if let Some(b) = filter.max_bytes {
            sql.push_str(" AND size <= ?");
            args.push(b.into());
        }
        let mut st = self.conn.prepare(&sql).map_err(|e| self.sql(e))?;
        let rows = st
            .query_map(rusqlite::params_from_iter(args), |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(|e| self.sql(e))?;
        let mut hits = Vec::new();
        for r in rows {
            let (path, blob) = r.map_err(|e| self.sql(e))?;
            let e = from_blob(&blob);
            if e.len() != query.len() {
                return Err(Error::InvalidInput(format!(
                    "{}: embeddings of {} values, the query has {}",
                    self.db.display(),
                    e.len(),
                    query.len()
                )));
            }
            hits.push(Hit {
                path,
                score: crate::pipeline::image_text::dot(&e, query),
            });
        }
        sort_hits(&mut hits);
        hits.truncate(k);
        Ok(hits)
    }

    /// The stored embedding and SHA-256 of the image at `path` (canonical, as indexed), if the
    /// index holds it: what "more like this" searches with, and what keys a thumbnail cache.
    pub fn lookup(&self, path: &str) -> Result<Option<(Vec<f32>, String)>> {
        self.conn
            .query_row(
                "SELECT embedding, hash FROM images WHERE path = ?1",
                [path],
                |r| Ok((from_blob(&r.get::<_, Vec<u8>>(0)?), r.get::<_, String>(1)?)),
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// Every image's row, in id order (for export).
    pub fn all(&self) -> Result<Vec<Row>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT path, size, mtime, width, height, hash, embedding FROM images ORDER BY id",
            )
            .map_err(|e| self.sql(e))?;
        let rows = st
            .query_map([], |r| {
                Ok(Row {
                    path: r.get(0)?,
                    size: r.get(1)?,
                    mtime_ns: r.get(2)?,
                    width: r.get(3)?,
                    height: r.get(4)?,
                    sha256: r.get(5)?,
                    embedding: from_blob(&r.get::<_, Vec<u8>>(6)?),
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.map(|r| r.map_err(|e| self.sql(e))).collect()
    }
}

/// Best first; ties by path.
fn sort_hits(hits: &mut [Hit]) {
    hits.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.path.cmp(&b.path))
    });
}

/// One image of the index.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Row {
    /// Canonical path.
    pub path: String,
    /// Bytes.
    pub size: i64,
    /// Modification time, nanoseconds since 1970.
    pub mtime_ns: i64,
    /// Width in pixels.
    pub width: i64,
    /// Height in pixels.
    pub height: i64,
    /// SHA-256 of the file's bytes.
    pub sha256: String,
    /// Unit-length embedding.
    #[serde(skip)]
    pub embedding: Vec<f32>,
}

/// The file a server may send for `requested`: its canonical path, which must lie inside one
/// of `roots` (canonical folders) and be indexed in `index`. `..`, absolute paths elsewhere and
/// symbolic links that lead out of the folders are refused ([`Error::Forbidden`]), as are
/// files the index does not hold and files that do not exist ([`Error::InvalidInput`]).
pub fn servable(index: &Index, roots: &[PathBuf], requested: &str) -> Result<PathBuf> {
    let refused = |why: &str| Error::InvalidInput(format!("{requested:?}: {why}"));
    if requested.is_empty() || requested.contains('\0') {
        return Err(refused("not a path"));
    }
    // Resolve every link and `..`; the result must be inside a root.
    let real = std::fs::canonicalize(requested).map_err(|_| refused("no such file"))?;
    if !roots.iter().any(|r| real.starts_with(r)) {
        return Err(Error::Forbidden(format!(
            "{requested:?}: outside the indexed folders"
        )));
    }
    let key = real.to_string_lossy().into_owned();
    let known: Option<i64> = index
        .conn
        .query_row("SELECT id FROM images WHERE path = ?1", [&key], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|e| index.sql(e))?;
    if known.is_none() {
        return Err(refused("not in the index"));
    }
    Ok(real)
}

/// A query's unit-length embedding: a text, an image, or both (their sum, renormalised).
pub fn query_embedding(
    model: &ImageText,
    text: Option<&str>,
    image: Option<&Path>,
) -> Result<Vec<f32>> {
    let mut parts = Vec::new();
    if let Some(t) = text {
        parts.push(model.encode_texts(&[t.to_string()], 1)?.remove(0));
    }
    if let Some(p) = image {
        parts.push(model.encode_images(&[p.to_path_buf()], 1)?.remove(0));
    }
    if parts.is_empty() {
        return Err(Error::InvalidInput(
            "give a text, an --image, or both".into(),
        ));
    }
    Ok(combine(&parts))
}

/// Unit vectors searched together (a text and an image): their sum, renormalised.
pub fn combine(parts: &[Vec<f32>]) -> Vec<f32> {
    let mut q = vec![0f32; parts.first().map_or(0, Vec::len)];
    for p in parts {
        for (a, b) in q.iter_mut().zip(p) {
            *a += b;
        }
    }
    let n = q.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        q.iter_mut().for_each(|x| *x /= n);
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_dates_and_sizes() {
        let f = Filter::parse("after=2024-03-01, before=1700000000,min_bytes=10").unwrap();
        assert_eq!(f.after, Some(1_709_251_200));
        assert_eq!(f.before, Some(1_700_000_000));
        assert_eq!(f.min_bytes, Some(10));
        assert!(
            Filter::parse("colour=red")
                .unwrap_err()
                .contains("unknown key")
        );
        assert!(
            Filter::parse("after=yesterday")
                .unwrap_err()
                .contains("not a date")
        );
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn blobs_round_trip() {
        let v = vec![1.5f32, -0.25, 3.0e-8];
        assert_eq!(from_blob(&to_blob(&v)), v);
    }
}
