//! The approximate index beside a large image index: an HNSW graph (usearch, inner product on
//! unit vectors, vectors stored as f16) in `<db>.usearch`, keyed by the images' row ids.
//!
//! usearch was chosen by measurement against hnsw_rs and instant-distance (`bench/ann`,
//! BENCHMARKS.md): at 100k 512-d vectors on 2 cores it built 2.6× faster than hnsw_rs and 5×
//! faster than instant-distance, at equal recall@10 it answered fastest, and it held a third of
//! their memory.
//!
//! **Staying in step with SQLite.** The table `ann(id, hash)` lists what the saved graph holds.
//! A sync adds every image whose `(id, hash)` the table lacks and removes every listed entry
//! whose row is gone or changed; then it writes the graph atomically (temporary file, rename)
//! and only then records the new list in one transaction. A run killed in between leaves a
//! graph ahead of its list; the next sync repeats the same additions (remove, then add) and
//! removals, so it converges. Candidates are re-scored from the embeddings SQLite holds, so
//! scores are exact and an entry the list lost track of cannot return a wrong row.

use std::path::{Path, PathBuf};

use usearch::{IndexOptions, MetricKind, ScalarKind};

use crate::{Error, Result};

/// HNSW links per node (M).
const CONNECTIVITY: usize = 16;
/// Candidates kept while inserting (ef_construction).
const EXPANSION_ADD: usize = 200;
/// Candidates kept while searching (ef): recall@10 0.997 on the benchmark's 100k.
pub const EXPANSION_SEARCH: usize = 64;

fn ann_err(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!("{}: {what}: {e}", path.display()))
}

/// The graph file beside the index `db`.
pub fn path_for(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".usearch");
    db.with_file_name(name)
}

/// An HNSW graph over unit vectors.
pub struct Graph {
    index: usearch::Index,
}

impl Graph {
    /// An empty graph for `dims`-wide vectors.
    pub fn new(dims: usize, path: &Path) -> Result<Self> {
        let opts = IndexOptions {
            dimensions: dims,
            metric: MetricKind::IP,
            quantization: ScalarKind::F16,
            connectivity: CONNECTIVITY,
            expansion_add: EXPANSION_ADD,
            expansion_search: EXPANSION_SEARCH,
            multi: false,
        };
        let index = usearch::Index::new(&opts).map_err(|e| ann_err(path, "cannot make", e))?;
        Ok(Graph { index })
    }

    /// The graph saved at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let s = path.to_string_lossy();
        let index = usearch::Index::restore(&s).map_err(|e| ann_err(path, "cannot read", e))?;
        Ok(Graph { index })
    }

    /// Vector width.
    pub fn dims(&self) -> usize {
        self.index.dimensions()
    }

    /// Entries.
    pub fn size(&self) -> usize {
        self.index.size()
    }

    /// Drops `id` if present.
    pub fn remove(&self, id: u64, path: &Path) -> Result<()> {
        self.index
            .remove(id)
            .map(|_| ())
            .map_err(|e| ann_err(path, "cannot remove", e))
    }

    /// Adds (or replaces) `id`, on `threads` threads for a batch.
    pub fn add_all(&self, items: &[(u64, Vec<f32>)], threads: usize, path: &Path) -> Result<()> {
        let need = self.index.size() + items.len();
        if need > self.index.capacity() {
            self.index
                .reserve_capacity_and_threads(need.next_power_of_two(), threads.max(1))
                .map_err(|e| ann_err(path, "cannot grow", e))?;
        }
        for (id, _) in items {
            if self.index.contains(*id) {
                self.remove(*id, path)?;
            }
        }
        let threads = threads.clamp(1, items.len().max(1));
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    s.spawn(move || -> Result<()> {
                        for (id, v) in items.iter().skip(t).step_by(threads) {
                            self.index
                                .add(*id, v)
                                .map_err(|e| ann_err(path, "cannot add", e))?;
                        }
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| h.join().expect("graph insertion thread"))
        })
    }

    /// Up to `k` ids nearest to `query`, searching with at least `ef` candidates.
    pub fn search(&self, query: &[f32], k: usize, ef: usize, path: &Path) -> Result<Vec<u64>> {
        self.index.change_expansion_search(ef.max(k));
        let m = self
            .index
            .search(query, k)
            .map_err(|e| ann_err(path, "cannot search", e))?;
        Ok(m.keys)
    }

    /// Writes the graph to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("usearch.tmp");
        self.index
            .save(&tmp.to_string_lossy())
            .map_err(|e| ann_err(&tmp, "cannot write", e))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }
}
