//! ann-bench: compare HNSW crates on synthetic CLIP-like embeddings.
//!
//! One run = one candidate crate. It generates the data deterministically, loads
//! (or computes once and caches) the exact top-k, times brute force, builds the
//! index, saves and reloads it, then searches at several `ef` values
//! single-threaded and prints one JSON line per (crate, ef) on stdout.
//! Progress goes to stderr.

mod data;
mod dist;

use std::fs;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Parser, ValueEnum};
use rayon::prelude::*;
use serde::Serialize;

use crate::dist::dot;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Candidate {
    /// hnsw_rs 0.3.x (pure Rust), distance `DistDot` with the `simdeez_f` feature.
    #[value(name = "hnsw_rs")]
    HnswRs,
    /// hnsw_rs with a user-supplied distance (this crate's AVX-512/AVX2 dot kernel).
    #[value(name = "hnsw_rs+dot")]
    HnswRsDot,
    /// instant-distance 0.6.x (pure Rust); M is fixed at 32 by the crate.
    #[value(name = "instant-distance")]
    InstantDistance,
    /// usearch 2.x (C++ via cxx), metric IP, f32 storage.
    #[cfg(feature = "usearch")]
    #[value(name = "usearch")]
    Usearch,
    /// usearch 2.x with vectors stored as f16 (half the memory); metric IP.
    #[cfg(feature = "usearch")]
    #[value(name = "usearch-f16")]
    UsearchF16,
    /// No index: only ground truth, data statistics and brute-force timing.
    #[value(name = "exact")]
    Exact,
}

impl Candidate {
    fn name(self) -> &'static str {
        match self {
            Candidate::HnswRs => "hnsw_rs",
            Candidate::HnswRsDot => "hnsw_rs+dot",
            Candidate::InstantDistance => "instant-distance",
            #[cfg(feature = "usearch")]
            Candidate::Usearch => "usearch",
            #[cfg(feature = "usearch")]
            Candidate::UsearchF16 => "usearch-f16",
            Candidate::Exact => "exact",
        }
    }
    fn version(self) -> String {
        match self {
            Candidate::HnswRs | Candidate::HnswRsDot => "0.3.5".into(),
            Candidate::InstantDistance => "0.6.1".into(),
            #[cfg(feature = "usearch")]
            Candidate::Usearch | Candidate::UsearchF16 => {
                let kernels = if cfg!(feature = "numkong") {
                    "numkong"
                } else {
                    "no-numkong"
                };
                format!("{} ({kernels})", usearch::version())
            }
            Candidate::Exact => "-".into(),
        }
    }
}

#[derive(Parser, Debug)]
#[command(about = "Benchmark HNSW crates on synthetic CLIP-like unit vectors")]
struct Args {
    /// Candidate crate to benchmark.
    #[arg(long = "crate", value_enum)]
    krate: Candidate,
    /// Number of indexed vectors.
    #[arg(long, default_value_t = 100_000)]
    n: usize,
    /// Vector dimension.
    #[arg(long, default_value_t = 512)]
    dim: usize,
    /// Number of query vectors (drawn from the same distribution, not in the set).
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// HNSW M (max links per node on upper layers; layer 0 gets 2*M).
    /// Ignored by instant-distance (fixed at 32).
    #[arg(long, default_value_t = 16)]
    m: usize,
    /// ef_construction (usearch: expansion_add).
    #[arg(long, default_value_t = 200)]
    ef_construction: usize,
    /// ef values to search with (comma separated).
    #[arg(long, value_delimiter = ',', default_values_t = vec![10, 16, 32, 64, 128, 256])]
    ef_search: Vec<usize>,
    /// Seed for data generation (and the crates' level RNG where settable).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Threads for data generation, ground truth and index build. Search is always 1 thread.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// k for recall@k.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// How many queries to time brute force on (single thread).
    #[arg(long, default_value_t = 200)]
    brute_queries: usize,
    /// Where ground truth and index files go (outside the repo by default).
    #[arg(long, default_value = "/work/hnsw-data")]
    work_dir: PathBuf,
    /// Keep the saved index files instead of deleting them at the end.
    #[arg(long)]
    keep_index: bool,
    /// hnsw_rs only: if the index files of an earlier run with the same parameters exist in
    /// work-dir (with --keep-index, or left by a killed run), skip the build and reuse them.
    /// Build numbers are taken from the `<stem>.build.json` sidecar that every build writes;
    /// save time is measured by saving the reloaded index again.
    #[arg(long)]
    reuse_index: bool,
}

/// One output line per (crate, ef).
#[derive(Serialize, serde::Deserialize, Default, Clone)]
#[serde(default)]
struct Record {
    #[serde(rename = "crate")]
    krate: String,
    version: String,
    n: usize,
    dim: usize,
    queries: usize,
    k: usize,
    m: usize,
    ef_construction: usize,
    ef_search: usize,
    seed: u64,
    threads: usize,
    /// recall@k against exact inner-product top-k
    recall: f64,
    median_us: f64,
    p99_us: f64,
    mean_us: f64,
    /// single-thread queries per second (1e6 / mean_us)
    qps: f64,
    /// median / p99 thread CPU time per query, µs
    median_cpu_us: f64,
    p99_cpu_us: f64,
    build_s: f64,
    /// process CPU seconds (all threads) spent in the build
    build_cpu_s: f64,
    save_s: f64,
    load_s: f64,
    index_bytes: u64,
    /// RSS before the build (data set + queries + ground truth), MiB
    rss_base_mib: f64,
    /// peak RSS during build (VmHWM, reset just before the build), MiB
    hwm_build_mib: f64,
    /// RSS after the build, MiB
    rss_built_mib: f64,
    /// peak RSS during load (data set freed before), MiB
    hwm_load_mib: f64,
    /// RSS after load minus RSS before load, MiB (≈ in-memory size of the loaded index)
    rss_loaded_delta_mib: f64,
    /// recall of the freshly built index (before save/load) at ef=check_ef, to verify persistence
    recall_built_check: f64,
    check_ef: usize,
    brute_median_us: f64,
    brute_p99_us: f64,
    brute_median_cpu_us: f64,
    /// /proc/loadavg at start and at the end of the searches (the machine is shared)
    load_start: String,
    load_end: String,
    gen_s: f64,
    gt_s: f64,
    /// mean cosine of query to its exact 1st / k-th neighbour, and of random pairs
    cos_nn1: f64,
    cos_nnk: f64,
    cos_random: f64,
    note: String,
}

fn status_kb(key: &str) -> u64 {
    let s = fs::read_to_string("/proc/self/status").unwrap_or_default();
    for line in s.lines() {
        if let Some(rest) = line.strip_prefix(key) {
            let rest = rest.trim_start_matches(':').trim();
            return rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
    }
    0
}
fn rss_mib() -> f64 {
    status_kb("VmRSS") as f64 / 1024.0
}
fn hwm_mib() -> f64 {
    status_kb("VmHWM") as f64 / 1024.0
}
/// Give freed heap pages back to the OS (glibc), so RSS deltas measure live memory.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: plain libc call without pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
/// Reset VmHWM to the current RSS (Linux >= 4.0).
fn reset_hwm() {
    let _ = fs::write("/proc/self/clear_refs", "5");
}

/// CPU time of the calling thread, seconds.
fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
/// user + system CPU time of the whole process (all threads), seconds.
fn process_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Keep the k best (highest score) in `top`, sorted descending.
#[inline]
fn push_topk(top: &mut Vec<(f32, u32)>, k: usize, score: f32, id: u32) {
    if top.len() == k && score <= top[k - 1].0 {
        return;
    }
    let pos = top.partition_point(|&(s, _)| s >= score);
    top.insert(pos, (score, id));
    top.truncate(k);
}

struct GroundTruth {
    ids: Vec<u32>,    // queries * k
    scores: Vec<f32>, // queries * k
    secs: f64,
}

fn gt_path(a: &Args) -> PathBuf {
    a.work_dir.join(format!(
        "gt-{}-n{}-d{}-s{}-q{}-k{}.bin",
        data::GENERATOR_VERSION,
        a.n,
        a.dim,
        a.seed,
        a.queries,
        a.k
    ))
}

/// Exact top-k by inner product, parallel over blocks of queries (rayon pool = --threads).
fn compute_gt(base: &[f32], queries: &[f32], dim: usize, k: usize) -> (Vec<u32>, Vec<f32>) {
    const QB: usize = 32;
    let per_block: Vec<Vec<Vec<(f32, u32)>>> = queries
        .par_chunks(QB * dim)
        .map(|qblock| {
            let nq = qblock.len() / dim;
            let mut tops: Vec<Vec<(f32, u32)>> = vec![Vec::with_capacity(k + 1); nq];
            for (i, row) in base.chunks_exact(dim).enumerate() {
                for (qi, q) in qblock.chunks_exact(dim).enumerate() {
                    push_topk(&mut tops[qi], k, dot(q, row), i as u32);
                }
            }
            tops
        })
        .collect();
    let mut ids = Vec::new();
    let mut scores = Vec::new();
    for t in per_block.into_iter().flatten() {
        assert_eq!(t.len(), k);
        for (s, i) in t {
            ids.push(i);
            scores.push(s);
        }
    }
    (ids, scores)
}

fn load_or_compute_gt(a: &Args, base: &[f32], queries: &[f32]) -> GroundTruth {
    let path = gt_path(a);
    let expect = a.queries * a.k;
    if let Ok(bytes) = fs::read(&path) {
        if bytes.len() == expect * 8 {
            let ids = bytes[..expect * 4]
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let scores = bytes[expect * 4..]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            eprintln!("ground truth: loaded {}", path.display());
            return GroundTruth {
                ids,
                scores,
                secs: 0.0,
            };
        }
    }
    eprintln!(
        "ground truth: computing ({} queries x {} vectors)...",
        a.queries, a.n
    );
    let t = Instant::now();
    let (ids, scores) = compute_gt(base, queries, a.dim, a.k);
    let secs = t.elapsed().as_secs_f64();
    eprintln!("ground truth: {:.1} s, saving to {}", secs, path.display());
    let mut out = Vec::with_capacity(expect * 8);
    for i in &ids {
        out.extend_from_slice(&u32::to_le_bytes(*i));
    }
    for s in &scores {
        out.extend_from_slice(&f32::to_le_bytes(*s));
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, &out).expect("write gt");
    fs::rename(&tmp, &path).expect("rename gt");
    GroundTruth { ids, scores, secs }
}

/// Single-thread brute force over all base vectors for the first `nq` queries.
/// Returns per-query latencies in microseconds; checks results against ground truth.
fn time_brute(
    base: &[f32],
    queries: &[f32],
    dim: usize,
    k: usize,
    nq: usize,
    gt: &GroundTruth,
) -> (Vec<f64>, Vec<f64>) {
    let mut lat = Vec::with_capacity(nq);
    let mut cpu = Vec::with_capacity(nq);
    let mut top = Vec::with_capacity(k + 1);
    let mut mismatches = 0usize;
    for (qi, q) in queries.chunks_exact(dim).take(nq).enumerate() {
        top.clear();
        let c = thread_cpu_s();
        let t = Instant::now();
        for (i, row) in base.chunks_exact(dim).enumerate() {
            push_topk(&mut top, k, dot(q, row), i as u32);
        }
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        cpu.push((thread_cpu_s() - c) * 1e6);
        let want = &gt.ids[qi * k..(qi + 1) * k];
        mismatches += top.iter().filter(|(_, id)| !want.contains(id)).count();
    }
    if mismatches > 0 {
        eprintln!(
            "WARNING: brute force differs from cached ground truth in {mismatches} ids (ties?)"
        );
    }
    (lat, cpu)
}

fn recall_of(results: &[Vec<u64>], gt: &GroundTruth, k: usize) -> f64 {
    let mut hit = 0usize;
    for (qi, res) in results.iter().enumerate() {
        let want = &gt.ids[qi * k..(qi + 1) * k];
        hit += res
            .iter()
            .take(k)
            .filter(|&&id| want.contains(&(id as u32)))
            .count();
    }
    hit as f64 / (results.len() * k) as f64
}

/// Per-query results and timings of one pass over the queries.
struct Pass {
    res: Vec<Vec<u64>>,
    /// wall-clock latency per query, µs
    lat: Vec<f64>,
    /// thread CPU time per query, µs (insensitive to being descheduled on a busy machine)
    cpu: Vec<f64>,
}

/// Run all queries one by one on the current thread.
fn run_queries(queries: &[f32], dim: usize, mut search: impl FnMut(&[f32]) -> Vec<u64>) -> Pass {
    let mut p = Pass {
        res: Vec::new(),
        lat: Vec::new(),
        cpu: Vec::new(),
    };
    for q in queries.chunks_exact(dim) {
        let c = thread_cpu_s();
        let t = Instant::now();
        let r = search(q);
        p.lat.push(t.elapsed().as_secs_f64() * 1e6);
        p.cpu.push((thread_cpu_s() - c) * 1e6);
        p.res.push(r);
    }
    p
}

fn file_size(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Progress printer for builds: every ~5 %, with ETA.
struct Progress {
    total: usize,
    start: Instant,
    next: usize,
}
impl Progress {
    fn new(total: usize) -> Self {
        Progress {
            total,
            start: Instant::now(),
            next: (total / 20).max(1),
        }
    }
    fn update(&mut self, done: usize) {
        if done >= self.next || done == self.total {
            let el = self.start.elapsed().as_secs_f64();
            let eta = el / done as f64 * (self.total - done) as f64;
            eprintln!(
                "  build {:>5.1}%  {:>8} / {}  elapsed {:>7.1} s  eta {:>7.1} s  rss {:.0} MiB",
                100.0 * done as f64 / self.total as f64,
                done,
                self.total,
                el,
                eta,
                rss_mib()
            );
            while self.next <= done {
                self.next += (self.total / 20).max(1);
            }
        }
    }
}

fn main() {
    let a = Args::parse();
    let load_start = loadavg();
    assert!(
        a.k <= a.ef_search.iter().copied().min().unwrap_or(a.k),
        "every ef must be >= k"
    );
    rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads)
        .build_global()
        .unwrap();
    fs::create_dir_all(&a.work_dir).expect("create work dir");
    eprintln!("simd: {}", dist::simd_level());

    // 1. data
    let t = Instant::now();
    let generator = data::Generator::new(a.dim, a.seed);
    let mut base = generator.generate(a.n, data::STREAM_BASE);
    let queries = generator.generate(a.queries, data::STREAM_QUERY);
    let gen_s = t.elapsed().as_secs_f64();
    eprintln!(
        "data: {} x {} + {} queries in {:.1} s, rss {:.0} MiB",
        a.n,
        a.dim,
        a.queries,
        gen_s,
        rss_mib()
    );

    // 2. ground truth + stats
    let gt = load_or_compute_gt(&a, &base, &queries);
    let k = a.k;
    let cos_nn1 = (0..a.queries).map(|q| gt.scores[q * k] as f64).sum::<f64>() / a.queries as f64;
    let cos_nnk = (0..a.queries)
        .map(|q| gt.scores[q * k + k - 1] as f64)
        .sum::<f64>()
        / a.queries as f64;
    let cos_random = data::mean_random_cos(&base, &queries, a.dim, 20_000, a.seed);
    eprintln!(
        "data stats: mean cos to NN1 {cos_nn1:.3}, to NN{k} {cos_nnk:.3}, random pair {cos_random:.3}"
    );

    // brute force baseline
    let nbq = a.brute_queries.min(a.queries);
    let (mut blat, mut bcpu) = time_brute(&base, &queries, a.dim, k, nbq, &gt);
    blat.sort_by(|x, y| x.partial_cmp(y).unwrap());
    bcpu.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let (brute_median_us, brute_p99_us) = (percentile(&blat, 0.5), percentile(&blat, 0.99));
    eprintln!(
        "brute force (1 thread, {nbq} queries): median {:.0} µs, p99 {:.0} µs",
        brute_median_us, brute_p99_us
    );

    let mut rec = Record {
        krate: a.krate.name().into(),
        version: a.krate.version(),
        n: a.n,
        dim: a.dim,
        queries: a.queries,
        k,
        m: if a.krate == Candidate::InstantDistance {
            32
        } else {
            a.m
        },
        ef_construction: a.ef_construction,
        seed: a.seed,
        threads: a.threads,
        brute_median_us,
        brute_p99_us,
        brute_median_cpu_us: percentile(&bcpu, 0.5),
        load_start,
        gen_s,
        gt_s: gt.secs,
        cos_nn1,
        cos_nnk,
        cos_random,
        ..Default::default()
    };
    if a.krate == Candidate::Exact {
        rec.recall = 1.0;
        rec.median_us = brute_median_us;
        rec.p99_us = brute_p99_us;
        rec.mean_us = blat.iter().sum::<f64>() / blat.len() as f64;
        rec.qps = 1e6 / rec.mean_us;
        rec.median_cpu_us = rec.brute_median_cpu_us;
        rec.load_end = loadavg();
        println!("{}", serde_json::to_string(&rec).unwrap());
        return;
    }
    let check_ef = if a.ef_search.contains(&64) {
        64
    } else {
        a.ef_search[0]
    };
    rec.check_ef = check_ef;

    let stem = format!(
        "{}-n{}-d{}-m{}-efc{}-s{}",
        a.krate.name(),
        a.n,
        a.dim,
        rec.m,
        a.ef_construction,
        a.seed
    );
    let results: Vec<(usize, Pass)> = match a.krate {
        Candidate::HnswRs => bench_hnsw_rs(&a, &mut base, &queries, &gt, &stem, &mut rec, DistDot),
        Candidate::HnswRsDot => {
            bench_hnsw_rs(&a, &mut base, &queries, &gt, &stem, &mut rec, OwnDot)
        }
        Candidate::InstantDistance => bench_instant(&a, &mut base, &queries, &gt, &stem, &mut rec),
        #[cfg(feature = "usearch")]
        Candidate::Usearch => bench_usearch(&a, &mut base, &queries, &gt, &stem, &mut rec, false),
        #[cfg(feature = "usearch")]
        Candidate::UsearchF16 => bench_usearch(&a, &mut base, &queries, &gt, &stem, &mut rec, true),
        Candidate::Exact => unreachable!(),
    };
    let load_end = loadavg();
    for (ef, mut p) in results {
        let mut r = rec.clone();
        r.ef_search = ef;
        r.load_end = load_end.clone();
        r.recall = recall_of(&p.res, &gt, k);
        r.mean_us = p.lat.iter().sum::<f64>() / p.lat.len() as f64;
        p.lat.sort_by(|x, y| x.partial_cmp(y).unwrap());
        p.cpu.sort_by(|x, y| x.partial_cmp(y).unwrap());
        r.median_us = percentile(&p.lat, 0.5);
        r.p99_us = percentile(&p.lat, 0.99);
        r.median_cpu_us = percentile(&p.cpu, 0.5);
        r.p99_cpu_us = percentile(&p.cpu, 0.99);
        r.qps = 1e6 / r.mean_us;
        eprintln!(
            "{} ef={:<4} recall@{k}={:.4}  median {:.0} µs  p99 {:.0} µs  (cpu median {:.0} µs)",
            r.krate, ef, r.recall, r.median_us, r.p99_us, r.median_cpu_us
        );
        println!("{}", serde_json::to_string(&r).unwrap());
    }
}

/// Shared steps after the build: memory numbers, quick recall check.
fn after_build(rec: &mut Record, build_s: f64, cpu0: f64, rss_base: f64) {
    rec.build_s = build_s;
    rec.build_cpu_s = process_cpu_s() - cpu0;
    rec.rss_base_mib = rss_base;
    rec.hwm_build_mib = hwm_mib();
    rec.rss_built_mib = rss_mib();
    eprintln!(
        "built in {:.1} s ({:.1} CPU s); rss base {:.0} MiB, peak during build {:.0} MiB, after {:.0} MiB",
        build_s, rec.build_cpu_s, rss_base, rec.hwm_build_mib, rec.rss_built_mib
    );
}

// ---------------------------------------------------------------- hnsw_rs
use hnsw_rs::prelude::{DistDot, Distance};

/// 1 - <a, b> with this crate's runtime-dispatched kernel (vectors must be unit norm).
#[derive(Default, Clone, Copy)]
struct OwnDot;
impl Distance<f32> for OwnDot {
    fn eval(&self, va: &[f32], vb: &[f32]) -> f32 {
        (1.0 - dot(va, vb)).max(0.0)
    }
}

fn bench_hnsw_rs<D: Distance<f32> + Default + Send + Sync + 'static>(
    a: &Args,
    base: &mut Vec<f32>,
    queries: &[f32],
    gt: &GroundTruth,
    stem: &str,
    rec: &mut Record,
    dist: D,
) -> Vec<(usize, Pass)> {
    use hnsw_rs::api::AnnT;
    use hnsw_rs::hnswio::HnswIo;
    use hnsw_rs::prelude::Hnsw;

    let dim = a.dim;
    let sidecar = a.work_dir.join(format!("{stem}.build.json"));
    let reuse = a.reuse_index
        && a.work_dir.join(format!("{stem}.hnsw.graph")).exists()
        && a.work_dir.join(format!("{stem}.hnsw.data")).exists();
    let basename = if reuse {
        let b: Record = serde_json::from_str(&fs::read_to_string(&sidecar).expect("build sidecar"))
            .expect("parse build sidecar");
        rec.build_s = b.build_s;
        rec.build_cpu_s = b.build_cpu_s;
        rec.rss_base_mib = b.rss_base_mib;
        rec.hwm_build_mib = b.hwm_build_mib;
        rec.rss_built_mib = b.rss_built_mib;
        rec.recall_built_check = b.recall_built_check;
        rec.check_ef = b.check_ef;
        rec.note = format!(
            "index reused from an earlier run (build numbers from {})",
            sidecar.display()
        );
        eprintln!(
            "reusing {stem}.hnsw.* (build {:.1} s from sidecar)",
            rec.build_s
        );
        *base = Vec::new();
        stem.to_string()
    } else {
        reset_hwm();
        let rss_base = rss_mib();
        let cpu0 = process_cpu_s();
        let t = Instant::now();
        // Hnsw::new(max_nb_connection, max_elements, max_layer, ef_construction, dist)
        let mut hnsw: Hnsw<f32, D> = Hnsw::new(a.m, a.n, 16, a.ef_construction, dist);
        let mut prog = Progress::new(a.n);
        let chunk = 10_000usize;
        let mut done = 0;
        for (ci, c) in base.chunks(chunk * dim).enumerate() {
            let items: Vec<(&[f32], usize)> = c
                .chunks_exact(dim)
                .enumerate()
                .map(|(j, v)| (v, ci * chunk + j))
                .collect();
            hnsw.parallel_insert_slice(&items);
            done += items.len();
            prog.update(done);
        }
        hnsw.set_searching_mode(true);
        after_build(rec, t.elapsed().as_secs_f64(), cpu0, rss_base);
        let ck = |h: &Hnsw<f32, D>, ef| {
            run_queries(queries, dim, |q| {
                h.search(q, a.k, ef).iter().map(|n| n.d_id as u64).collect()
            })
            .res
        };
        rec.recall_built_check = recall_of(&ck(&hnsw, rec.check_ef), gt, a.k);

        let t = Instant::now();
        let basename = hnsw.file_dump(&a.work_dir, stem).expect("hnsw_rs dump");
        rec.save_s = t.elapsed().as_secs_f64();
        eprintln!("saved {:.1} s", rec.save_s);
        let _ = fs::write(&sidecar, serde_json::to_string(&*rec).unwrap());
        drop(hnsw);
        *base = Vec::new(); // free the data set before measuring the reload
        basename
    };
    let graph = a.work_dir.join(format!("{basename}.hnsw.graph"));
    let datafile = a.work_dir.join(format!("{basename}.hnsw.data"));
    rec.index_bytes = file_size(&graph) + file_size(&datafile);

    trim_heap();
    reset_hwm();
    let rss0 = rss_mib();
    let t = Instant::now();
    let mut io = HnswIo::new(&a.work_dir, &basename);
    let loaded: Hnsw<f32, D> = io.load_hnsw().expect("hnsw_rs reload");
    rec.load_s = t.elapsed().as_secs_f64();
    rec.hwm_load_mib = hwm_mib();
    rec.rss_loaded_delta_mib = rss_mib() - rss0;
    if reuse {
        let t = Instant::now();
        let b2 = loaded
            .file_dump(&a.work_dir, &format!("{stem}-resave"))
            .expect("re-dump");
        rec.save_s = t.elapsed().as_secs_f64();
        let _ = fs::remove_file(a.work_dir.join(format!("{b2}.hnsw.graph")));
        let _ = fs::remove_file(a.work_dir.join(format!("{b2}.hnsw.data")));
    }
    eprintln!(
        "saved {:.1} s ({} bytes), loaded {:.1} s",
        rec.save_s, rec.index_bytes, rec.load_s
    );

    let mut out = Vec::new();
    for &ef in &a.ef_search {
        let p = run_queries(queries, dim, |q| {
            loaded
                .search(q, a.k, ef)
                .iter()
                .map(|n| n.d_id as u64)
                .collect()
        });
        out.push((ef, p));
    }
    drop(loaded);
    drop(io);
    if !a.keep_index {
        let _ = fs::remove_file(graph);
        let _ = fs::remove_file(datafile);
        let _ = fs::remove_file(sidecar);
    }
    out
}

// ---------------------------------------------------------------- instant-distance
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Emb(Vec<f32>);

impl instant_distance::Point for Emb {
    fn distance(&self, other: &Self) -> f32 {
        1.0 - dot(&self.0, &other.0)
    }
}

fn bench_instant(
    a: &Args,
    base: &mut Vec<f32>,
    queries: &[f32],
    gt: &GroundTruth,
    stem: &str,
    rec: &mut Record,
) -> Vec<(usize, Pass)> {
    use instant_distance::{Builder, HnswMap, Search};
    type Map = HnswMap<Emb, u64>;
    let dim = a.dim;
    let ef0 = a.ef_search[0];

    reset_hwm();
    let rss_base = rss_mib();
    let cpu0 = process_cpu_s();
    let t = Instant::now();
    // The crate takes ownership of a Vec of points; the copy is part of the build cost.
    let points: Vec<Emb> = base.chunks_exact(dim).map(|v| Emb(v.to_vec())).collect();
    let values: Vec<u64> = (0..a.n as u64).collect();
    eprintln!("  instant-distance: building (no progress reporting available)...");
    let map: Map = Builder::default()
        .ef_construction(a.ef_construction)
        .ef_search(ef0)
        .seed(a.seed)
        .build(points, values);
    after_build(rec, t.elapsed().as_secs_f64(), cpu0, rss_base);

    let search_all = |m: &Map| {
        let mut s = Search::default();
        run_queries(queries, dim, move |q| {
            let q = Emb(q.to_vec());
            m.search(&q, &mut s).take(a.k).map(|it| *it.value).collect()
        })
    };
    // ef_search is baked in at build time (private field). The check uses ef0.
    rec.check_ef = ef0;
    rec.recall_built_check = recall_of(&search_all(&map).res, gt, a.k);

    let path = a.work_dir.join(format!("{stem}.bincode"));
    let t = Instant::now();
    {
        let mut w = BufWriter::new(fs::File::create(&path).unwrap());
        bincode::serialize_into(&mut w, &map).expect("serialize");
        w.flush().unwrap();
    }
    rec.save_s = t.elapsed().as_secs_f64();
    rec.index_bytes = file_size(&path);
    drop(map);
    *base = Vec::new();

    trim_heap();
    reset_hwm();
    let rss0 = rss_mib();
    let t = Instant::now();
    let map: Map = bincode::deserialize_from(BufReader::new(fs::File::open(&path).unwrap()))
        .expect("deserialize");
    rec.load_s = t.elapsed().as_secs_f64();
    rec.hwm_load_mib = hwm_mib();
    rec.rss_loaded_delta_mib = rss_mib() - rss0;
    eprintln!(
        "saved {:.1} s ({} bytes), loaded {:.1} s",
        rec.save_s, rec.index_bytes, rec.load_s
    );
    rec.note = "M fixed at 32 by the crate; ef_search fixed at build time (other ef values: \
                ef_search patched in the serialized bytes and reloaded)"
        .into();

    let mut out = Vec::new();
    out.push((ef0, search_all(&map)));
    drop(map);
    if a.ef_search.len() > 1 {
        // bincode (fixint, little endian): HnswMap { hnsw: Hnsw { ef_search: usize, .. }, values }
        // so ef_search is the first 8 bytes of the file.
        let mut bytes = Vec::new();
        fs::File::open(&path)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        assert_eq!(
            u64::from_le_bytes(bytes[..8].try_into().unwrap()),
            ef0 as u64,
            "layout changed"
        );
        for &ef in &a.ef_search[1..] {
            bytes[..8].copy_from_slice(&(ef as u64).to_le_bytes());
            let m: Map = bincode::deserialize(&bytes).unwrap();
            out.push((ef, search_all(&m)));
        }
    }
    if !a.keep_index {
        let _ = fs::remove_file(&path);
    }
    out
}

// ---------------------------------------------------------------- usearch
#[cfg(feature = "usearch")]
fn bench_usearch(
    a: &Args,
    base: &mut Vec<f32>,
    queries: &[f32],
    gt: &GroundTruth,
    stem: &str,
    rec: &mut Record,
    f16: bool,
) -> Vec<(usize, Pass)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use usearch::{Index, IndexOptions, MetricKind, ScalarKind};
    let dim = a.dim;

    reset_hwm();
    let rss_base = rss_mib();
    let cpu0 = process_cpu_s();
    let t = Instant::now();
    let opts = IndexOptions {
        dimensions: dim,
        metric: MetricKind::IP,
        quantization: if f16 {
            ScalarKind::F16
        } else {
            ScalarKind::F32
        },
        connectivity: a.m,
        expansion_add: a.ef_construction,
        expansion_search: a.ef_search[0],
        multi: false,
    };
    let index = Index::new(&opts).expect("usearch new");
    index
        .reserve_capacity_and_threads(a.n, a.threads)
        .expect("reserve");
    let done = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for th in 0..a.threads {
            let (index, done, base) = (&index, &done, &*base);
            s.spawn(move || {
                let mut prog = (th == 0).then(|| Progress::new(a.n));
                for i in (th..a.n).step_by(a.threads) {
                    index
                        .add(i as u64, &base[i * dim..(i + 1) * dim])
                        .expect("add");
                    let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if let Some(p) = prog.as_mut() {
                        if i % 1024 == 0 {
                            p.update(d);
                        }
                    }
                }
            });
        }
    });
    after_build(rec, t.elapsed().as_secs_f64(), cpu0, rss_base);
    eprintln!(
        "  usearch hardware acceleration: {}",
        index.hardware_acceleration()
    );
    let search_all =
        |idx: &Index| run_queries(queries, dim, |q| idx.search(q, a.k).expect("search").keys);
    index.change_expansion_search(rec.check_ef);
    rec.recall_built_check = recall_of(&search_all(&index).res, gt, a.k);

    let path = a.work_dir.join(format!("{stem}.usearch"));
    let t = Instant::now();
    index.save(path.to_str().unwrap()).expect("save");
    rec.save_s = t.elapsed().as_secs_f64();
    rec.index_bytes = file_size(&path);
    drop(index);
    *base = Vec::new();

    trim_heap();
    reset_hwm();
    let rss0 = rss_mib();
    let t = Instant::now();
    let index = Index::restore(path.to_str().unwrap()).expect("restore");
    rec.load_s = t.elapsed().as_secs_f64();
    rec.hwm_load_mib = hwm_mib();
    rec.rss_loaded_delta_mib = rss_mib() - rss0;
    eprintln!(
        "saved {:.1} s ({} bytes), loaded {:.1} s",
        rec.save_s, rec.index_bytes, rec.load_s
    );
    if f16 {
        rec.note = "vectors stored as f16; queries f32".into();
    }

    let mut out = Vec::new();
    for &ef in &a.ef_search {
        index.change_expansion_search(ef);
        out.push((ef, search_all(&index)));
    }
    if !a.keep_index {
        let _ = fs::remove_file(&path);
    }
    out
}
