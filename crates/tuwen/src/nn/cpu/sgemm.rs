//! The inference GEMM of linear layers, `x W + b`, with the weight packed once (AVX-512, or
//! AVX2 with FMA).
//!
//! The general GEMM (the `gemm` crate, which burn-flex uses too) packs both operands on every
//! call. For a linear layer at inference the weight never changes, and at small batches
//! packing it is as much work as the product: CLIP ViT-B/32 on one image spent 13% of its time
//! copying weights. Here a weight is packed once into column panels of [`NR`] (two AVX-512
//! vectors), kept in [`packed`]'s cache for as long as the weight tensor lives, and multiplied
//! by an [`MR`] × [`NR`] register-blocked kernel: `x` is transposed once per call so that a
//! block's rows at one reduction index lie side by side, and each panel's slice of [`KC`]
//! rows stays in L1 while the blocks of rows pass over it. The panels (small batches) or the
//! rows (large ones) are split across threads in equal parts.
//!
//! Above [`MAX_ROWS`] rows a second kernel reads `x` in place against the same packed weight
//! (see [`wide`]). Used for untracked `f32` linear layers when the CPU has AVX-512F or AVX2
//! and FMA ([`available`]); on AVX2 the same packed layout is multiplied by 6 × 16 kernels
//! ([`kernel_avx2`]), two per 32-column panel. Both kernels are tested against the plain
//! product on ragged sizes and strided weights (the AVX2 one on AVX-512 machines too).

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use burn::backend::flex::FlexTensor;

/// Columns of a weight panel: two 16-lane vectors.
pub const NR: usize = 32;
/// Rows of `x` per kernel call: 12 × 2 accumulators of the 32 vector registers.
pub const MR: usize = 12;
/// Rows of the weight (the reduction) per pass: a panel's slice of KC × NR floats is 32 KiB.
const KC: usize = 256;
/// Rows of `x` per task when the rows are split across threads.
const MC: usize = 144;
/// How many steps ahead the f32 kernel prefetches the weight.
const PREFETCH: usize = 32;
/// The reduction length of one AMX bfloat16 tile (64 bytes a row).
const AMX_K: usize = 32;

/// Up to this many rows of `x` the small-batch kernel runs (12 × 32 tiles, `x` transposed,
/// the weight streamed from memory with prefetches); above it the large-batch one (6 × 64
/// tiles, see [`wide`]). Measured on the 48 linear layers of a ViT-B (350 MB of weights),
/// 2 threads: at 50 rows the small-batch kernel took 44-47 ms against the `gemm` crate's
/// 93-129, at 128 rows 106-137 against 99-102, where the large-batch kernel is level with it.
pub const MAX_ROWS: usize = 96;
/// Rows of `x` per large-batch kernel call: 6 × 4 accumulators.
const MW: usize = 6;
/// Reduction steps per pass of the large-batch kernel.
const KW: usize = 384;
/// Columns per block of the large-batch kernel: a pass's block of the weight (KW × NW floats,
/// 768 KiB) stays in L2 while the rows pass over it.
const NW: usize = 512;
/// How many steps ahead the large-batch kernel prefetches the weight (from L2).
const PREFETCH_WIDE: usize = 16;

/// A function applied to each finished stretch of an output row (an activation fused into
/// the product's last pass, while the stretch is in L1).
pub type Then<'a> = Option<&'a (dyn Fn(&mut [f32]) + Sync)>;

/// The instruction set the f32 kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    /// AVX-512F: 16-lane vectors, 32 registers.
    Avx512,
    /// AVX2 and FMA: 8-lane vectors, 16 registers.
    Avx2,
}

impl Isa {
    /// Reduction steps per pass of the small-batch kernel: a panel's slice (KC × NR floats) is
    /// 32 KiB (AVX-512) or 16 KiB (AVX2, whose two half-panel kernels read it twice from L1).
    fn kc(self) -> usize {
        match self {
            Isa::Avx512 => KC,
            Isa::Avx2 => 128,
        }
    }

    /// Reduction steps and columns per block of the large-batch kernel: the block stays in L2
    /// (768 KiB for AVX-512; 256 KiB for AVX2, the half of a Zen 3's 512 KiB L2).
    fn wide_block(self) -> (usize, usize) {
        match self {
            Isa::Avx512 => (KW, NW),
            Isa::Avx2 => (256, 256),
        }
    }
}

/// The best instruction set of this CPU for the f32 kernels, if any.
fn isa() -> Option<Isa> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            Some(Isa::Avx512)
        } else if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            Some(Isa::Avx2)
        } else {
            None
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// Whether this CPU runs the f32 kernel (AVX-512F, or AVX2 and FMA).
pub fn available() -> bool {
    isa().is_some()
}

/// The precision of the packed linear layers at inference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// `f32` weights and inputs (the default).
    #[default]
    F32,
    /// Weights and inputs rounded to bfloat16 (round to nearest even), products summed in
    /// `f32` by the AMX tile unit (`tdpbf16ps`). Needs [`available_bf16`].
    Bf16,
}

static BF16: AtomicBool = AtomicBool::new(false);

/// Sets the precision of the inference linear layers for the whole process.
///
/// # Errors
/// [`Precision::Bf16`] on a CPU without AVX512-BF16.
pub fn set_precision(p: Precision) -> Result<(), String> {
    if p == Precision::Bf16 && !available_bf16() {
        return Err(
            "bf16 inference needs a CPU with AMX-BF16 and AVX512-BF16 (this one has not); use fp32"
                .into(),
        );
    }
    BF16.store(p == Precision::Bf16, Ordering::Relaxed);
    Ok(())
}

/// The precision [`set_precision`] set.
pub fn precision() -> Precision {
    if BF16.load(Ordering::Relaxed) {
        Precision::Bf16
    } else {
        Precision::F32
    }
}

/// Whether this CPU runs the bfloat16 kernel: AMX-TILE, AMX-BF16 and AVX512-BF16 (for the
/// conversion of the inputs), with Linux's permission
/// for the tile data (asked for once, for the whole process).
pub fn available_bf16() -> bool {
    static READY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *READY.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
            let c = std::arch::x86_64::__cpuid_count(7, 0);
            if c.edx >> 22 & 1 == 0
                || c.edx >> 24 & 1 == 0
                || !std::arch::is_x86_feature_detected!("avx512f")
                || !std::arch::is_x86_feature_detected!("avx512bf16")
            {
                return false;
            }
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: arch_prctl with these arguments only changes this process's permission
            // to use the AMX tile state.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_arch_prctl,
                    ARCH_REQ_XCOMP_PERM,
                    XFEATURE_XTILEDATA,
                )
            };
            rc == 0
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        {
            false
        }
    })
}

/// `x` rounded to bfloat16 (to nearest, ties to even; NaN stays NaN), in the low 16 bits.
pub fn bf16(x: f32) -> u32 {
    let b = x.to_bits();
    if x.is_nan() {
        (b >> 16) | 0x40
    } else {
        b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16
    }
}

/// Two bfloat16 values in one word, `lo` in the low half (the pair layout `vdpbf16ps` reads).
fn bf16_pair(lo: f32, hi: f32) -> u32 {
    bf16(lo) | (bf16(hi) << 16)
}

/// One cache line of 32-bit words; buffers of these are 64-byte aligned.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u32; 16]);

/// A zeroed, 64-byte-aligned buffer of 32-bit words (`f32` or bfloat16 pairs).
struct Aligned {
    lines: Vec<Line>,
    len: usize,
}

impl Aligned {
    fn zeroed(len: usize) -> Aligned {
        Aligned {
            lines: vec![Line([0; 16]); len.div_ceil(16)],
            len,
        }
    }

    fn as_slice(&self) -> &[u32] {
        // SAFETY: `lines` holds at least `len` contiguous, initialised words.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<u32>(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u32] {
        // SAFETY: as above, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<u32>(), self.len) }
    }
}

/// A `[k, n]` weight in column panels: panel `p` holds columns `p·NR ..`, one step after
/// another, `NR` words a step (the last panel's missing columns zero). In `f32` a step is a row
/// of the weight (the bits of its floats); in bfloat16 it is a pair of rows, each word
/// holding one column's two values (the pair layout AMX's B tiles take: 16 steps, 32 rows of
/// the weight, and 16 columns make a tile), and the rows are padded with zeros to a whole
/// number of tiles.
pub struct PackedWeight {
    k: usize,
    n: usize,
    /// Rows (f32) or row pairs (bf16).
    steps: usize,
    precision: Precision,
    data: Aligned,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PackedWeight[{}, {}, {:?}]",
            self.k, self.n, self.precision
        )
    }
}

impl PackedWeight {
    /// Packs `W[i, j] = w[start + i·rs + j·cs]` for `i < k`, `j < n`. `None` when an index
    /// falls outside `w` or a size is zero.
    pub fn new(
        w: &[f32],
        (start, rs, cs): (usize, isize, isize),
        k: usize,
        n: usize,
        precision: Precision,
    ) -> Option<Self> {
        if k == 0 || n == 0 {
            return None;
        }
        let index = |i: usize, j: usize| start as isize + i as isize * rs + j as isize * cs;
        let corners = [
            index(0, 0),
            index(k - 1, 0),
            index(0, n - 1),
            index(k - 1, n - 1),
        ];
        if corners.iter().any(|&c| c < 0 || c as usize >= w.len()) {
            return None;
        }
        let at = |i: usize, j: usize| w[index(i, j) as usize];
        let steps = match precision {
            Precision::F32 => k,
            Precision::Bf16 => k.div_ceil(AMX_K) * (AMX_K / 2),
        };
        let panels = n.div_ceil(NR);
        let mut data = Aligned::zeroed(panels * steps * NR);
        let d = data.as_mut_slice();
        // The two layouts the layers and the attention give, copied a row or a column at a
        // time (the general loop below costs an index computation per element).
        if precision == Precision::F32 && (cs == 1 && rs > 0 || rs == 1 && cs > 0) {
            for p in 0..panels {
                let j0 = p * NR;
                let cols = NR.min(n - j0);
                let panel = &mut d[p * steps * NR..][..steps * NR];
                if cs == 1 {
                    for (s, dst) in panel.chunks_exact_mut(NR).enumerate() {
                        let src = &w[start + s * rs as usize + j0..][..cols];
                        for (d, v) in dst.iter_mut().zip(src) {
                            *d = v.to_bits();
                        }
                    }
                } else {
                    for c in 0..cols {
                        let src = &w[start + (j0 + c) * cs as usize..][..k];
                        for (s, v) in src.iter().enumerate() {
                            panel[s * NR + c] = v.to_bits();
                        }
                    }
                }
            }
            return Some(PackedWeight {
                k,
                n,
                steps,
                precision,
                data,
            });
        }
        for p in 0..panels {
            let j0 = p * NR;
            let cols = NR.min(n - j0);
            for s in 0..steps {
                let dst = &mut d[(p * steps + s) * NR..][..cols];
                for (c, v) in dst.iter_mut().enumerate() {
                    *v = match precision {
                        Precision::F32 => at(s, j0 + c).to_bits(),
                        Precision::Bf16 => {
                            let get = |i: usize| if i < k { at(i, j0 + c) } else { 0.0 };
                            bf16_pair(get(2 * s), get(2 * s + 1))
                        }
                    };
                }
            }
        }
        Some(PackedWeight {
            k,
            n,
            steps,
            precision,
            data,
        })
    }
}

/// A weight tensor's identity: its storage, offset, shape and strides.
type Key = (usize, usize, [usize; 2], [isize; 2]);

struct Entry {
    /// The weights' identities (one, or several packed side by side) and the precision.
    key: (Vec<Key>, Precision),
    /// Clones of the weights: while the cache holds them, their storage can be neither freed
    /// (and its address reused) nor written in place (burn-flex writes in place only into
    /// unshared storage), so the keys identify the same values.
    keep: Vec<FlexTensor>,
    packed: Arc<PackedWeight>,
}

static CACHE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// `w` (`[k, n]`, `f32`, any strides) packed in `precision`, from the cache when this tensor
/// was packed so before. Entries whose weight nobody else holds any more are dropped on each
/// call.
pub fn packed(w: &FlexTensor, precision: Precision) -> Option<Arc<PackedWeight>> {
    packed_side_by_side(&[w], precision)
}

/// The weights `ws` (each `[k, n_i]`, `f32`, any strides) side by side, `[k, Σ n_i]`, packed
/// in `precision`: one product then computes all their layers (a fused projection). Cached as
/// [`packed`] caches one weight; `None` when a weight is not a 2-d `f32` tensor, the `k`s
/// differ or `ws` is empty.
pub fn packed_side_by_side(ws: &[&FlexTensor], precision: Precision) -> Option<Arc<PackedWeight>> {
    let mut keys = Vec::with_capacity(ws.len());
    for w in ws {
        let layout = w.layout();
        let shape = layout.shape();
        if w.dtype() != burn::tensor::DType::F32 || shape.num_dims() != 2 {
            return None;
        }
        let strides = layout.strides();
        keys.push((
            w.storage::<f32>().as_ptr() as usize,
            layout.start_offset(),
            [shape[0], shape[1]],
            [strides[0], strides[1]],
        ));
    }
    let k = keys.first()?.2[0];
    if keys.iter().any(|key| key.2[0] != k) {
        return None;
    }
    let key = (keys, precision);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    // Weights nobody else holds any more (a dropped model's) are let go at once.
    cache.retain(|e| !e.keep.iter().any(|w| w.is_unique()));
    if let Some(e) = cache.iter().find(|e| e.key == key) {
        return Some(e.packed.clone());
    }
    let packed = if let [w] = ws {
        let (start, [rs, cs]) = (key.0[0].1, key.0[0].3);
        PackedWeight::new(
            w.storage::<f32>(),
            (start, rs, cs),
            k,
            key.0[0].2[1],
            precision,
        )?
    } else {
        // Gathered into one row-major `[k, Σ n_i]` matrix first (once: the result is cached).
        let n: usize = key.0.iter().map(|key| key.2[1]).sum();
        let mut all = vec![0.0f32; k * n];
        let mut j0 = 0;
        for (w, &(_, start, [_, ni], [rs, cs])) in ws.iter().zip(&key.0) {
            let src = w.storage::<f32>();
            for i in 0..k {
                for j in 0..ni {
                    let at = start as isize + i as isize * rs + j as isize * cs;
                    all[i * n + j0 + j] = *src.get(usize::try_from(at).ok()?)?;
                }
            }
            j0 += ni;
        }
        PackedWeight::new(&all, (0, n as isize, 1), k, n, precision)?
    };
    let packed = Arc::new(packed);
    cache.push(Entry {
        key,
        keep: ws.iter().map(|&w| w.clone()).collect(),
        packed: packed.clone(),
    });
    Some(packed)
}

/// `out = x W + bias` for `x` `[m, k]` and `out` `[m, n]`, both row-major and contiguous,
/// in the weight's precision. Must only be called when [`available`] (and for a bfloat16
/// weight [`available_bf16`]) says so.
///
/// # Panics
/// When the sizes do not fit or the CPU lacks the kernel's instructions.
pub fn matmul(x: &[f32], m: usize, w: &PackedWeight, bias: Option<&[f32]>, out: &mut [f32]) {
    // SAFETY: the same memory seen as possibly uninitialised; only floats are written to it.
    let out = unsafe { &mut *(std::ptr::from_mut(out) as *mut [MaybeUninit<f32>]) };
    matmul_uninit(x, m, w, bias, None, out)
}

/// [`matmul`] into memory that need not be initialised, then `then` applied to every output
/// row (in stretches, as each is finished): `out = then(x W + bias)`. Every element of `out`
/// is written (so a caller may skip zeroing a fresh output).
///
/// # Panics
/// As [`matmul`].
pub fn matmul_uninit(
    x: &[f32],
    m: usize,
    w: &PackedWeight,
    bias: Option<&[f32]>,
    then: Then,
    out: &mut [MaybeUninit<f32>],
) {
    let isa = isa().expect("sgemm::matmul needs AVX-512F or AVX2 and FMA");
    matmul_isa(x, m, w, bias, then, out, isa)
}

/// [`matmul_uninit`] with the f32 kernels of `isa` (which the CPU must have).
fn matmul_isa(
    x: &[f32],
    m: usize,
    w: &PackedWeight,
    bias: Option<&[f32]>,
    then: Then,
    out: &mut [MaybeUninit<f32>],
    isa: Isa,
) {
    let (k, n) = (w.k, w.n);
    if w.precision == Precision::Bf16 {
        assert!(available_bf16(), "bf16 sgemm::matmul needs AVX512-BF16");
    }
    assert_eq!(x.len(), m * k, "x is not [m, k]");
    assert_eq!(out.len(), m * n, "out is not [m, n]");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "bias is not [n]");
    }
    if m == 0 {
        return;
    }
    if w.precision == Precision::Bf16 {
        amx::matmul(x, m, w, bias, out);
        if let Some(f) = then {
            use rayon::prelude::*;
            // SAFETY: the product wrote every element.
            let out = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast(), m * n) };
            out.par_chunks_mut(n * 16)
                .for_each(|c| c.chunks_mut(n).for_each(f));
        }
        return;
    }
    if m > MAX_ROWS {
        return wide(x, m, w, bias, then, out, isa);
    }
    let panels = n.div_ceil(NR);
    let threads = if m * k * n < 1 << 18 {
        1
    } else {
        rayon::current_num_threads().max(1)
    };
    // Row blocks: as many as fill the threads in equal parts when there are enough rows,
    // otherwise the panels are split too.
    let blocks = m.div_ceil(MC);
    let (row_chunks, groups) = if blocks >= threads {
        (blocks.div_ceil(threads) * threads, 1)
    } else {
        (blocks, threads.div_ceil(blocks))
    };
    let rows_per = m.div_ceil(row_chunks).div_ceil(MR) * MR;
    let row_chunks = m.div_ceil(rows_per);
    let panels_per = panels.div_ceil(groups);
    let groups = panels.div_ceil(panels_per);
    let tasks = row_chunks * groups;
    // Rows r0 .. r0 + rows of x transposed (`[k, rows]`): the kernel reads a block's rows at
    // one reduction index side by side. Once for all tasks when they share the rows; per task
    // when the rows are split, so that a block's rows at one index stay a few hundred bytes
    // apart (a transpose of all of a large batch puts them kilobytes apart, a page each).
    let transpose = |r0: usize, rows: usize| {
        let mut xt = vec![0.0f32; k * rows];
        for k0 in (0..k).step_by(16) {
            let k1 = (k0 + 16).min(k);
            for r in 0..rows {
                let src = &x[(r0 + r) * k..][k0..k1];
                for (i, &v) in src.iter().enumerate() {
                    xt[(k0 + i) * rows + r] = v;
                }
            }
        }
        xt
    };
    let shared = (row_chunks == 1).then(|| transpose(0, m));
    let out_ptr = OutPtr(out.as_mut_ptr().cast());
    let task = |t: usize| {
        let (chunk, group) = (t / groups, t % groups);
        let r0 = chunk * rows_per;
        let rows = rows_per.min(m - r0);
        let p0 = group * panels_per;
        let p1 = (p0 + panels_per).min(panels);
        let local;
        let (xt, first, lda) = match &shared {
            Some(xt) => (xt.as_slice(), r0, m),
            None => {
                local = transpose(r0, rows);
                (local.as_slice(), 0, rows)
            }
        };
        // SAFETY: the tasks write disjoint blocks of `out` (rows r0.., columns of panels
        // p0..p1), which has m × n elements; the CPU's features were checked above.
        unsafe {
            let c = out_ptr.offset((r0 - first) * n);
            block(xt, (first, rows, lda), w, bias, then, p0..p1, (c, n), isa)
        };
    };
    if tasks == 1 {
        task(0);
    } else {
        use rayon::prelude::*;
        (0..tasks).into_par_iter().for_each(task);
    }
}

/// The output pointer the tasks share; each writes its own block.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
impl OutPtr {
    /// The pointer `count` floats on.
    ///
    /// # Safety
    /// As `pointer::add`.
    unsafe fn offset(self, count: usize) -> OutPtr {
        // SAFETY: the caller's contract.
        OutPtr(unsafe { self.0.add(count) })
    }
}
// SAFETY: see `matmul`: disjoint writes.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// `x`'s rows `r0 .. r0 + rows` against panels `panels` of the weight (f32), into `out`'s
/// rows at stride `ldc`. `xt` is `x` transposed: reduction index `i`, row `r` at
/// `xt[i·lda + r]`.
///
/// # Safety
/// `out` covers those rows (`ldc` apart) and the panels' columns, which no other thread
/// writes; `xt` holds `w.k` rows of `lda` floats; the CPU has `isa`.
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    xt: &[f32],
    (r0, rows, lda): (usize, usize, usize),
    w: &PackedWeight,
    bias: Option<&[f32]>,
    then: Then,
    panels: std::ops::Range<usize>,
    (out, ldc): (OutPtr, usize),
    isa: Isa,
) {
    let (n, steps) = (w.n, w.steps);
    debug_assert!(w.precision == Precision::F32 && r0 + rows <= lda && xt.len() >= steps * lda);
    let passes = steps.div_ceil(isa.kc());
    let kc_max = steps.div_ceil(passes);
    let wdata = w.data.as_slice();
    for pass in 0..passes {
        let k0 = pass * kc_max;
        let kc = kc_max.min(steps - k0);
        let first = pass == 0;
        for p in panels.clone() {
            let j0 = p * NR;
            let cols = NR.min(n - j0);
            let b = &wdata[(p * steps + k0) * NR..][..kc * NR];
            // The slice this loop takes next: the next panel in this pass, else the first
            // panel in the next pass, else none (this slice again).
            let next = if p + 1 < panels.end {
                &wdata[((p + 1) * steps + k0) * NR..]
            } else if pass + 1 < passes {
                &wdata[(panels.start * steps + k0 + kc) * NR..]
            } else {
                b
            };
            let bias = if first {
                bias.map(|b| &b[j0..j0 + cols])
            } else {
                None
            };
            // Rows after the first block, and the next slice's steps.
            let later = rows.saturating_sub(MR);
            let kn = if p + 1 < panels.end {
                kc
            } else {
                kc_max.min(steps - k0 - kc)
            };
            for b0 in (0..rows).step_by(MR) {
                let r = MR.min(rows - b0);
                // The first block of rows streams this slice from memory; the later ones find
                // it in L1 and meanwhile fetch the next slice into L2, each a share in
                // proportion to its rows, so that the memory works while the kernels do
                // (measured on CLIP B/32's linear layers at 50 rows, 2 threads, interleaved
                // in one process: 0.90-0.93 of the time; 1 thread 0.82; 96 rows 0.94).
                let (far_from, far) = if b0 > 0 && later > 0 {
                    let s0 = kn * (b0 - MR) / later;
                    let s1 = kn * (b0 + r - MR) / later;
                    (next.as_ptr().wrapping_add(s0 * NR), s1 - s0)
                } else {
                    (next.as_ptr(), 0)
                };
                // Rows r0 + b0 .. + r of x at reduction indices k0 .., lda floats apart.
                let a = &xt[k0 * lda + r0 + b0..][..(kc - 1) * lda + r];
                // SAFETY: rows r0 + b0 .. + r and columns j0 .. j0 + cols lie inside `out`
                // and belong to this block.
                let c = unsafe { out.0.add((r0 + b0) * ldc + j0) };
                let tile = Tile {
                    steps: kc,
                    a: a.as_ptr().cast(),
                    lda,
                    b: b.as_ptr(),
                    next: next.as_ptr(),
                    far_from,
                    far,
                    c,
                    ldc,
                    cols,
                    first,
                    bias,
                };
                // SAFETY: the kernel reads r floats at each of kc steps of lda in `a`, kc × NR
                // of `b` and writes r rows of `cols` floats at stride ldc from `c`; the CPU's
                // features per the caller.
                unsafe { tile.run(r, isa) };
                if pass + 1 == passes
                    && let Some(f) = then
                {
                    // SAFETY: as above: the tile's rows, which this thread alone writes.
                    unsafe { finish(f, c, r, cols, ldc) };
                }
            }
        }
    }
}

/// `then` applied to `rows` output rows of `cols` floats from `c`, `ldc` apart.
///
/// # Safety
/// Those floats are initialised, inside one allocation, and written by no other thread.
unsafe fn finish(
    then: &(dyn Fn(&mut [f32]) + Sync),
    c: *mut f32,
    rows: usize,
    cols: usize,
    ldc: usize,
) {
    for i in 0..rows {
        // SAFETY: the caller's contract.
        then(unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), cols) });
    }
}

/// The large-batch product (more than [`MAX_ROWS`] rows), in the layout of BLIS: the rows are
/// split across threads in blocks; within a block, for each [`NW`] columns and each pass of
/// [`KW`] reduction steps, the weight's slice (768 KiB) stays in L2 while kernels of
/// [`MW`] rows × two panels (6 × 64, 24 accumulators: per step four vector loads, six
/// broadcasts, 24 FMAs) pass over it. `x` is read in place: a kernel's six rows at one
/// reduction index are `k` floats apart, six streams the prefetcher follows, so `x` is
/// neither transposed nor packed.
fn wide(
    x: &[f32],
    m: usize,
    w: &PackedWeight,
    bias: Option<&[f32]>,
    then: Then,
    out: &mut [MaybeUninit<f32>],
    isa: Isa,
) {
    let (k, n) = (w.k, w.n);
    let threads = rayon::current_num_threads().max(1);
    // Blocks of about MC rows, whole kernels, as many as fill the threads in equal parts
    // (several per thread, so that a thread slowed by the machine is made up for).
    let blocks = m.div_ceil(MC).div_ceil(threads) * threads;
    let rows_per = m.div_ceil(blocks).div_ceil(MW) * MW;
    let blocks = m.div_ceil(rows_per);
    let out_ptr = OutPtr(out.as_mut_ptr().cast());
    let task = |t: usize| {
        let r0 = t * rows_per;
        let rows = rows_per.min(m - r0);
        // SAFETY: the tasks write disjoint rows of `out` (m × n floats); the caller checked
        // the CPU's features.
        unsafe {
            block_wide(
                &x[r0 * k..(r0 + rows) * k],
                rows,
                w,
                bias,
                then,
                (out_ptr.offset(r0 * n), n),
                isa,
            )
        };
    };
    if blocks == 1 {
        task(0);
    } else {
        use rayon::prelude::*;
        (0..blocks).into_par_iter().for_each(task);
    }
}

/// `rows` rows of `x` (row-major, `w.k` floats a row) against the whole (f32) weight, into
/// `out`'s rows at stride `ldc`; see [`wide`].
///
/// # Safety
/// `out` covers `rows` rows of `w.n` floats at stride `ldc`, which no other thread writes;
/// the CPU has `isa`.
unsafe fn block_wide(
    x: &[f32],
    rows: usize,
    w: &PackedWeight,
    bias: Option<&[f32]>,
    then: Then,
    (out, ldc): (OutPtr, usize),
    isa: Isa,
) {
    let (n, k) = (w.n, w.steps);
    debug_assert!(w.precision == Precision::F32 && x.len() == rows * k);
    let (kw, nw) = isa.wide_block();
    let panels = n.div_ceil(NR);
    let passes = k.div_ceil(kw);
    let kc_max = k.div_ceil(passes);
    let wdata = w.data.as_slice();
    for p0 in (0..panels).step_by(nw / NR) {
        let p1 = (p0 + nw / NR).min(panels);
        for pass in 0..passes {
            let k0 = pass * kc_max;
            let kc = kc_max.min(k - k0);
            let first = pass == 0;
            for b0 in (0..rows).step_by(MW) {
                let r = MW.min(rows - b0);
                // Rows b0 .. b0 + r at reduction index k0, k floats apart.
                let a = &x[b0 * k + k0..(b0 + r - 1) * k + k0 + kc];
                for p in (p0..p1).step_by(2) {
                    let pair = p + 1 < p1;
                    let j0 = p * NR;
                    let cols = (if pair { 2 * NR } else { NR }).min(n - j0);
                    let panel = |q: usize| wdata[(q * k + k0) * NR..][..kc * NR].as_ptr();
                    let c = unsafe { out.0.add(b0 * ldc + j0) };
                    let tile = Wide {
                        steps: kc,
                        a: a.as_ptr(),
                        lda: k,
                        b: [panel(p), if pair { panel(p + 1) } else { panel(p) }],
                        c,
                        ldc,
                        cols,
                        first,
                        bias: if first {
                            bias.map(|b| &b[j0..j0 + cols])
                        } else {
                            None
                        },
                    };
                    // SAFETY: the kernel reads r rows of kc floats from `a` (k apart), kc × NR
                    // of each panel, and writes r rows of `cols` floats at stride ldc from `c`,
                    // inside this block's rows; the CPU's features per the caller.
                    unsafe { tile.run(r, pair, isa) };
                    if pass + 1 == passes
                        && let Some(f) = then
                    {
                        // SAFETY: as above.
                        unsafe { finish(f, c, r, cols, ldc) };
                    }
                }
            }
        }
    }
}

/// One large-batch kernel call: `C[R, cols] (+)= A B` over `steps` steps, `A`'s rows `lda`
/// floats apart (one float a step), `B` one or two panels (`NR` words a step each, 64-byte
/// aligned), `C` `R` rows of `cols` (at most `2 NR`) floats at stride `ldc`; `first` and
/// `bias` as in [`Tile`].
struct Wide<'a> {
    steps: usize,
    a: *const f32,
    lda: usize,
    b: [*const u32; 2],
    c: *mut f32,
    ldc: usize,
    cols: usize,
    first: bool,
    bias: Option<&'a [f32]>,
}

impl Wide<'_> {
    /// Runs the kernel for `r` (1 ..= MW) rows and two panels (`pair`) or one.
    ///
    /// # Safety
    /// The pointers cover what [`Wide`] describes and the CPU has `isa`.
    unsafe fn run(&self, r: usize, pair: bool, isa: Isa) {
        if isa == Isa::Avx2 {
            // Each panel in two halves of 16 columns, a 6 × 16 kernel each; the half reads its
            // own cache line of each step and fetches it PREFETCH_WIDE steps ahead from L2.
            for q in 0..if pair { 4 } else { 2 } {
                let cols = self.cols.saturating_sub(16 * q).min(16);
                if cols == 0 {
                    break;
                }
                let b = self.b[q / 2].cast::<f32>().wrapping_add(16 * (q % 2));
                let call = Avx2Call {
                    steps: self.steps,
                    a: self.a,
                    lda: self.lda,
                    b,
                    c: self.c.wrapping_add(16 * q),
                    ldc: self.ldc,
                    cols,
                    first: self.first,
                    bias: self.bias.map(|b| &b[16 * q..16 * q + cols]),
                    near: b.wrapping_add(PREFETCH_WIDE * NR),
                    near_lines: 1,
                    switch: usize::MAX,
                    next: b,
                    far_from: b,
                    far: 0,
                };
                // SAFETY: the half's rows, steps and columns lie inside what `self` covers.
                unsafe { call.run::<false>(r) };
            }
            return;
        }
        macro_rules! go {
            ($($r:literal)*) => {
                match (r, pair) {
                    $(($r, true) => unsafe { kernel_wide::<$r, 2, 4>(self) },
                      ($r, false) => unsafe { kernel_wide::<$r, 1, 2>(self) },)*
                    _ => unreachable!("1 ..= MW rows"),
                }
            };
        }
        go!(1 2 3 4 5 6)
    }
}

/// The large-batch kernel: `R` rows against `P` panels (`V = 2P` vectors of the weight a
/// step), `R · V` accumulators.
///
/// # Safety
/// As [`Wide::run`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_wide<const R: usize, const P: usize, const V: usize>(t: &Wide) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    let mut a = t.a;
    let mut b = t.b.map(|p| p.cast::<f32>());
    for _ in 0..t.steps {
        let mut bv = [_mm512_setzero_ps(); V];
        for (v, bv) in bv.iter_mut().enumerate() {
            // SAFETY: each panel has NR aligned floats per step (the caller's contract).
            *bv = unsafe { _mm512_load_ps(b[v / 2].add(16 * (v % 2))) };
        }
        for q in b.iter().take(P) {
            // A pass's block of the weight is in L2: fetch it into L1 ahead (a prefetch
            // never faults, so past the end is harmless).
            _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(PREFETCH_WIDE * NR).cast::<i8>());
            _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(PREFETCH_WIDE * NR + 16).cast::<i8>());
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: row i at this step lies in `a` (the caller's contract).
            let av = _mm512_set1_ps(unsafe { *a.add(i * t.lda) });
            for (acc, &bv) in acc.iter_mut().zip(&bv) {
                *acc = _mm512_fmadd_ps(av, bv, *acc);
            }
        }
        a = a.wrapping_add(1);
        for q in b.iter_mut().take(P) {
            *q = q.wrapping_add(NR);
        }
    }
    // SAFETY: masked loads and stores touch only the first `cols` floats of each row (see
    // `store`).
    unsafe {
        for h in 0..P {
            let cols = t.cols.saturating_sub(h * NR).min(NR);
            let bias = t.bias.map(|b| &b[h * NR..h * NR + cols]);
            let (lo, hi, base0, base1) = row_edge(cols, bias);
            for (i, acc) in acc.iter().enumerate() {
                let row = t.c.add(i * t.ldc + h * NR);
                let row_hi = row.wrapping_add(16);
                let (c0, c1) = if t.first {
                    (base0, base1)
                } else {
                    (
                        _mm512_maskz_loadu_ps(lo, row),
                        _mm512_maskz_loadu_ps(hi, row_hi),
                    )
                };
                _mm512_mask_storeu_ps(row, lo, _mm512_add_ps(acc[2 * h], c0));
                _mm512_mask_storeu_ps(row_hi, hi, _mm512_add_ps(acc[2 * h + 1], c1));
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel_wide<const R: usize, const P: usize, const V: usize>(_t: &Wide) {
    unreachable!("matmul checks `available`")
}

/// `C = A W` on this thread, for `A` (`m × w.k`) given transposed: `at[i·lda + r]` is row `r`,
/// reduction index `i` (`m ≤ lda`). `C`'s rows are `ldc` apart from `c`. The attention's
/// per-head products use it.
///
/// # Safety
/// `c` covers `m` rows of `w.n` floats at stride `ldc`; no other thread writes them; `w` is
/// f32 and [`available`] holds.
pub(crate) unsafe fn product_t(
    at: &[f32],
    lda: usize,
    m: usize,
    w: &PackedWeight,
    c: *mut f32,
    ldc: usize,
) {
    assert!(m <= lda && at.len() >= w.k * lda && w.precision == Precision::F32);
    // SAFETY: the caller's contract.
    unsafe {
        block(
            at,
            (0, m, lda),
            w,
            None,
            None,
            0..w.n.div_ceil(NR),
            (OutPtr(c), ldc),
            isa().expect("the caller checked `available`"),
        )
    };
}

/// One kernel call: `C[R, cols] (+)= A B` over `steps` steps. `a` holds, at each step, `R`
/// words (the rows side by side) `lda` apart; `b` `NR` words a step (64-byte aligned); `c`
/// `R` rows of `cols` floats at stride `ldc`. `first`: overwrite `C` with the product plus
/// `bias` (zero without one); otherwise add the product to `C`.
struct Tile<'a> {
    steps: usize,
    a: *const u32,
    lda: usize,
    b: *const u32,
    /// The slice of the weight the loop takes after this one (prefetched only).
    next: *const u32,
    /// Where in the next slice to start fetching into L2, and how many steps (0: none; the
    /// kernel then prefetches its own slice ahead into L1 instead). Prefetched only.
    far_from: *const u32,
    far: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    first: bool,
    bias: Option<&'a [f32]>,
}

impl Tile<'_> {
    /// Runs the kernel for `r` (1 ..= MR) rows.
    ///
    /// # Safety
    /// The pointers cover what [`Tile`] describes and the CPU has `isa`.
    unsafe fn run(&self, r: usize, isa: Isa) {
        if isa == Isa::Avx2 {
            // Rows in groups of six, the panel in two halves of 16 columns: four 6 × 16
            // kernels. The first (rows 0 .., columns 0 .. 16) streams the slice from memory
            // and does the prefetching the AVX-512 kernel does (both lines of a step); the
            // others find the slice in L1.
            for g in (0..r).step_by(6) {
                let rg = 6.min(r - g);
                for h in 0..2 {
                    let cols = self.cols.saturating_sub(16 * h).min(16);
                    if cols == 0 {
                        break;
                    }
                    let lead = g == 0 && h == 0;
                    let b = self.b.cast::<f32>().wrapping_add(16 * h);
                    let call = Avx2Call {
                        steps: self.steps,
                        a: self.a.cast::<f32>().wrapping_add(g),
                        lda: self.lda,
                        b,
                        c: self.c.wrapping_add(g * self.ldc + 16 * h),
                        ldc: self.ldc,
                        cols,
                        first: self.first,
                        bias: self.bias.map(|b| &b[16 * h..16 * h + cols]),
                        near: b.wrapping_add(PREFETCH * NR),
                        near_lines: if lead && self.far == 0 { 2 } else { 0 },
                        switch: self.steps.saturating_sub(PREFETCH),
                        next: self.next.cast(),
                        far_from: self.far_from.cast(),
                        far: if lead { self.far } else { 0 },
                    };
                    // SAFETY: the group's rows and the half's columns lie inside the tile.
                    unsafe { call.run::<true>(rg) };
                }
            }
            return;
        }
        macro_rules! go {
            ($($r:literal)*) => {
                match r {
                    $($r => unsafe { kernel_f32::<$r>(self) },)*
                    _ => unreachable!("1 ..= MR rows"),
                }
            };
        }
        go!(1 2 3 4 5 6 7 8 9 10 11 12)
    }
}

/// The `f32` kernel: per step two vectors of `b`, `R` broadcasts of `a`, `2R` FMAs.
///
/// # Safety
/// As [`Tile::run`], with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_f32<const R: usize>(t: &Tile) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    let (mut a, mut b) = (t.a.cast::<f32>(), t.b.cast::<f32>());
    // The weight streams from memory at small batches (a ViT-B's are 350 MB). Without a
    // `far` share, fetch it PREFETCH steps ahead into L1, running on into the next slice for
    // the last PREFETCH steps (measured on CLIP B/32's linear layers at 50 rows: 69-87 ms
    // without prefetching, 58-63 ms with). With one, spread that many steps of the next
    // slice, from `far_from`, evenly over this call's steps, into L2. A prefetch never
    // faults, so addresses past the end are harmless.
    let switch = t.steps.saturating_sub(PREFETCH);
    let mut pf = b.wrapping_add(PREFETCH * NR);
    let mut fp = t.far_from.cast::<f32>();
    let mut ctr = 0;
    for s in 0..t.steps {
        // SAFETY: `b` has NR aligned words per step and `a` R (the caller's contract).
        let (b0, b1) = unsafe { (_mm512_load_ps(b), _mm512_load_ps(b.add(16))) };
        if t.far == 0 {
            if s == switch {
                pf = t.next.cast::<f32>();
            }
            _mm_prefetch::<_MM_HINT_T0>(pf.cast::<i8>());
            _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(16).cast::<i8>());
            pf = pf.wrapping_add(NR);
        } else {
            far_prefetch(&mut ctr, &mut fp, t.far, t.steps);
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: as above.
            let av = _mm512_set1_ps(unsafe { *a.add(i) });
            acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
            acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
        }
        a = a.wrapping_add(t.lda);
        // SAFETY: stays within (or one past) `b`.
        b = unsafe { b.add(NR) };
    }
    // SAFETY: the caller's contract.
    unsafe { store(t, &acc) }
}

/// One step of spreading `far` steps of the next slice (from `*fp`) evenly over a call's
/// `steps` steps: fetches both lines of a step into L2 whenever the counter passes `steps`.
/// A prefetch never faults, so addresses past the end are harmless.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn far_prefetch(ctr: &mut usize, fp: &mut *const f32, far: usize, steps: usize) {
    use std::arch::x86_64::*;
    *ctr += far;
    if *ctr >= steps {
        *ctr -= steps;
        // SAFETY: prefetching has no architectural effect and never faults.
        unsafe {
            _mm_prefetch::<_MM_HINT_T1>(fp.cast::<i8>());
            _mm_prefetch::<_MM_HINT_T1>(fp.wrapping_add(16).cast::<i8>());
        }
        *fp = fp.wrapping_add(NR);
    }
}

/// The lane masks of the first `cols` (at most 32) floats of an output row, in two vectors,
/// and the bias (zero without one) loaded under them.
///
/// # Safety
/// `bias` has at least `cols` floats; AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn row_edge(
    cols: usize,
    bias: Option<&[f32]>,
) -> (
    u16,
    u16,
    std::arch::x86_64::__m512,
    std::arch::x86_64::__m512,
) {
    use std::arch::x86_64::*;
    let lo = if cols >= 16 {
        0xffff
    } else {
        (1u32 << cols) - 1
    } as u16;
    let hi = if cols >= 32 {
        0xffff
    } else if cols > 16 {
        (1u32 << (cols - 16)) - 1
    } else {
        0
    } as u16;
    // SAFETY: masked-out lanes are not read (AVX-512 suppresses their faults); the second
    // half's address is formed with wrapping arithmetic.
    let (b0, b1) = match bias {
        Some(bv) => unsafe {
            (
                _mm512_maskz_loadu_ps(lo, bv.as_ptr()),
                _mm512_maskz_loadu_ps(hi, bv.as_ptr().wrapping_add(16)),
            )
        },
        None => (_mm512_setzero_ps(), _mm512_setzero_ps()),
    };
    (lo, hi, b0, b1)
}

/// Writes the accumulators to `C` (see [`Tile`]).
///
/// # Safety
/// As [`Tile::run`], with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store<const R: usize>(t: &Tile, acc: &[[std::arch::x86_64::__m512; 2]; R]) {
    use std::arch::x86_64::*;
    // SAFETY: masked loads and stores touch only the first `cols` floats of each row; the
    // masked-out lanes are neither read nor written (AVX-512 suppresses their faults), and
    // the second half's address is formed with wrapping arithmetic.
    unsafe {
        let (lo, hi, base0, base1) = row_edge(t.cols, t.bias);
        for (i, acc) in acc.iter().enumerate() {
            let row = t.c.add(i * t.ldc);
            let row_hi = row.wrapping_add(16);
            let (c0, c1) = if t.first {
                (base0, base1)
            } else {
                (
                    _mm512_maskz_loadu_ps(lo, row),
                    _mm512_maskz_loadu_ps(hi, row_hi),
                )
            };
            _mm512_mask_storeu_ps(row, lo, _mm512_add_ps(acc[0], c0));
            _mm512_mask_storeu_ps(row_hi, hi, _mm512_add_ps(acc[1], c1));
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel_f32<const R: usize>(_t: &Tile) {
    unreachable!("matmul checks `available`")
}

/// One AVX2 kernel call: `C[R, cols] (+)= A B` for up to 6 rows and one half panel (16
/// columns). `A`'s element (row `i`, step `s`) is `a[s·lda + i]` when transposed (the
/// small-batch layout) and `a[i·lda + s]` otherwise (the large-batch one); `b` is the half's
/// first float, `NR` floats a step (32-byte aligned); `c`, `cols` (1 ..= 16), `first` and
/// `bias` (the half's) as in [`Tile`].
struct Avx2Call<'a> {
    steps: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    first: bool,
    bias: Option<&'a [f32]>,
    /// Prefetched into L1, `near_lines` (0, 1 or 2) lines a step from `near`, `NR` floats a
    /// step; from step `switch` on, from `next` instead.
    near: *const f32,
    near_lines: usize,
    switch: usize,
    next: *const f32,
    /// `far` steps from `far_from` prefetched into L2, spread over the call (see
    /// [`kernel_f32`]).
    far_from: *const f32,
    far: usize,
}

impl Avx2Call<'_> {
    /// Runs the kernel for `r` (1 ..= 6) rows, `A` transposed or not (`T`).
    ///
    /// # Safety
    /// The pointers cover what [`Avx2Call`] describes and the CPU has AVX2 and FMA.
    unsafe fn run<const T: bool>(&self, r: usize) {
        // The prefetching chosen once per call, so that the loop carries no tests for it.
        let mode = match (self.near_lines, self.far) {
            (0, 0) => PF_NONE,
            (0, _) => PF_FAR,
            (1, _) => PF_NEAR1,
            _ => PF_NEAR2,
        };
        macro_rules! go {
            ($($r:literal)*) => {
                match (r, mode) {
                    $(($r, PF_NONE) => unsafe { kernel_avx2::<$r, T, PF_NONE>(self) },
                      ($r, PF_FAR) => unsafe { kernel_avx2::<$r, T, PF_FAR>(self) },
                      ($r, PF_NEAR1) => unsafe { kernel_avx2::<$r, T, PF_NEAR1>(self) },
                      ($r, _) => unsafe { kernel_avx2::<$r, T, PF_NEAR2>(self) },)*
                    _ => unreachable!("1 ..= 6 rows"),
                }
            };
        }
        go!(1 2 3 4 5 6)
    }
}

/// The AVX2 kernel's prefetching: none, `far` into L2, or `near` (one or two lines a step)
/// into L1.
const PF_NONE: u8 = 0;
const PF_FAR: u8 = 1;
const PF_NEAR1: u8 = 2;
const PF_NEAR2: u8 = 3;

/// The AVX2 kernel: per step two vectors of `b`, `R` broadcasts of `a`, `2R` FMAs into
/// `2R` (at most 12) of the 16 registers; prefetching as `PF` says.
///
/// # Safety
/// As [`Avx2Call::run`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2<const R: usize, const T: bool, const PF: u8>(t: &Avx2Call) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    let (mut a, mut b) = (t.a, t.b);
    let (ri, rs) = if T { (1, t.lda) } else { (t.lda, 1) };
    let mut pf = t.near;
    let mut fp = t.far_from;
    let mut ctr = 0;
    for s in 0..t.steps {
        // SAFETY: `b` has NR aligned floats per step, `a` R rows (the caller's contract).
        let (b0, b1) = unsafe { (_mm256_load_ps(b), _mm256_load_ps(b.add(8))) };
        if PF == PF_NEAR1 || PF == PF_NEAR2 {
            if s == t.switch {
                pf = t.next;
            }
            _mm_prefetch::<_MM_HINT_T0>(pf.cast::<i8>());
            if PF == PF_NEAR2 {
                _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(16).cast::<i8>());
            }
            pf = pf.wrapping_add(NR);
        }
        if PF == PF_FAR {
            far_prefetch(&mut ctr, &mut fp, t.far, t.steps);
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: as above.
            let av = _mm256_set1_ps(unsafe { *a.add(i * ri) });
            acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
            acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
        }
        a = a.wrapping_add(rs);
        b = b.wrapping_add(NR);
    }
    // SAFETY: whole rows are stored unmasked; a partial one only under the lane masks, which
    // touch just its first `cols` floats (the bias's too).
    unsafe {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let cols = t.cols as i32;
        let lo = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols), lanes);
        let hi = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols - 8), lanes);
        let full = t.cols == 16;
        let (base0, base1) = match t.bias {
            Some(bv) if full => (
                _mm256_loadu_ps(bv.as_ptr()),
                _mm256_loadu_ps(bv.as_ptr().add(8)),
            ),
            Some(bv) => (
                _mm256_maskload_ps(bv.as_ptr(), lo),
                _mm256_maskload_ps(bv.as_ptr().wrapping_add(8), hi),
            ),
            None => (_mm256_setzero_ps(), _mm256_setzero_ps()),
        };
        for (i, acc) in acc.iter().enumerate() {
            let row = t.c.add(i * t.ldc);
            let row_hi = row.wrapping_add(8);
            if full {
                let (c0, c1) = if t.first {
                    (base0, base1)
                } else {
                    (_mm256_loadu_ps(row), _mm256_loadu_ps(row_hi))
                };
                _mm256_storeu_ps(row, _mm256_add_ps(acc[0], c0));
                _mm256_storeu_ps(row_hi, _mm256_add_ps(acc[1], c1));
            } else {
                let (c0, c1) = if t.first {
                    (base0, base1)
                } else {
                    (_mm256_maskload_ps(row, lo), _mm256_maskload_ps(row_hi, hi))
                };
                _mm256_maskstore_ps(row, lo, _mm256_add_ps(acc[0], c0));
                _mm256_maskstore_ps(row_hi, hi, _mm256_add_ps(acc[1], c1));
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel_avx2<const R: usize, const T: bool, const PF: u8>(_t: &Avx2Call) {
    unreachable!("matmul checks `available`")
}

/// The bfloat16 product on the AMX tile unit: `x` rounded to bfloat16 row by row, 32 rows
/// (two A tiles) against a panel's 32 columns (two B tiles) into four 16 × 16 `f32`
/// accumulator tiles, 32 reduction indices a step (`tdpbf16ps`: 16 × 16 × 32 products each).
#[cfg(target_arch = "x86_64")]
mod amx {
    use super::{AMX_K, NR, OutPtr, PackedWeight, bf16};
    use std::arch::asm;

    /// Rows of `x` per kernel call: two A tiles of 16.
    const TM: usize = 32;

    /// The tile configuration (palette 1): tmm0 ..= tmm7, each 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    impl Config {
        fn new() -> Config {
            let mut c = [0u8; 64];
            c[0] = 1;
            for t in 0..8 {
                c[16 + 2 * t] = 64;
                c[48 + t] = 16;
            }
            Config(c)
        }
    }

    /// See [`super::matmul`]; `w` is packed in bfloat16.
    pub(super) fn matmul(
        x: &[f32],
        m: usize,
        w: &PackedWeight,
        bias: Option<&[f32]>,
        out: &mut [std::mem::MaybeUninit<f32>],
    ) {
        let (k, n, steps) = (w.k, w.n, w.steps);
        let kp = 2 * steps;
        let blocks = m.div_ceil(TM);
        // x in bfloat16, row-major, padded with zero rows and columns to whole tiles.
        let mut xb = vec![0u16; blocks * TM * kp];
        for (row, dst) in x.chunks_exact(k).zip(xb.chunks_exact_mut(kp)) {
            // SAFETY: `available_bf16` (checked by the caller) includes AVX512-BF16.
            unsafe { to_bf16(row, &mut dst[..k]) };
        }
        let panels = n.div_ceil(NR);
        let threads = if m * k * n < 1 << 18 {
            1
        } else {
            rayon::current_num_threads().max(1)
        };
        // Each thread reads all of x and the weight's panels it is given, or the reverse: the
        // larger operand is the one split.
        let (row_groups, col_groups) = if m > n && blocks >= threads {
            (threads, 1)
        } else {
            (1, threads.min(panels))
        };
        let blocks_per = blocks.div_ceil(row_groups);
        let panels_per = panels.div_ceil(col_groups);
        let (row_groups, col_groups) = (blocks.div_ceil(blocks_per), panels.div_ceil(panels_per));
        let out_ptr = OutPtr(out.as_mut_ptr().cast());
        let task = |t: usize| {
            let (rg, cg) = (t / col_groups, t % col_groups);
            let bs = rg * blocks_per..((rg + 1) * blocks_per).min(blocks);
            let ps = cg * panels_per..((cg + 1) * panels_per).min(panels);
            // SAFETY: the tasks write disjoint blocks of `out` (m × n floats); the caller
            // checked AMX (`available_bf16`).
            unsafe { run(&xb, kp, (m, bs), w, ps, bias, out_ptr) };
        };
        let tasks = row_groups * col_groups;
        if tasks == 1 {
            task(0);
        } else {
            use rayon::prelude::*;
            (0..tasks).into_par_iter().for_each(task);
        }
    }

    /// `dst = src` in bfloat16, rounded to nearest even by `vcvtneps2bf16` (which also flushes
    /// denormal inputs and outputs to zero, as the CPU backend's threads do anyway).
    ///
    /// # Safety
    /// The CPU has AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn to_bf16(src: &[f32], dst: &mut [u16]) {
        use std::arch::x86_64::*;
        let mut chunks = src.chunks_exact(16);
        let mut out = dst.chunks_exact_mut(16);
        for (s, d) in (&mut chunks).zip(&mut out) {
            // SAFETY: 16 floats read from `s`, 16 halves written to `d`.
            unsafe {
                let v: __m256i =
                    std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(s.as_ptr())));
                _mm256_storeu_si256(d.as_mut_ptr().cast(), v);
            }
        }
        for (d, &v) in out.into_remainder().iter_mut().zip(chunks.remainder()) {
            *d = bf16(v) as u16;
        }
    }

    /// Row blocks `blocks` (of `m` rows) against panels `panels`.
    ///
    /// # Safety
    /// AMX is enabled for this process; `out` has `m × w.n` floats, this block of which no
    /// other thread writes.
    #[target_feature(enable = "avx512f")]
    unsafe fn run(
        xb: &[u16],
        kp: usize,
        (m, blocks): (usize, std::ops::Range<usize>),
        w: &PackedWeight,
        panels: std::ops::Range<usize>,
        bias: Option<&[f32]>,
        out: OutPtr,
    ) {
        let config = Config::new();
        let mut acc = super::Aligned::zeroed(TM * NR);
        let lda = kp * 2;
        // SAFETY: loads this thread's tile configuration (released below).
        unsafe { asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly)) };
        // Row blocks in chunks of about 1 MiB of x, which stay in L2 while every panel
        // passes over them.
        let per_chunk = ((1 << 20) / (TM * lda)).max(1);
        let mut chunk = blocks.start;
        while chunk < blocks.end {
            let chunk_end = (chunk + per_chunk).min(blocks.end);
            for p in panels.clone() {
                // SAFETY: the caller's contract; the configuration is loaded.
                unsafe { run_panel(xb, kp, (m, chunk..chunk_end), w, p, bias, out, &mut acc) };
            }
            chunk = chunk_end;
        }
        // SAFETY: returns the tile state taken above.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    /// Row blocks `blocks` against panel `p`, with the tile configuration loaded.
    ///
    /// # Safety
    /// As [`run`], after its `ldtilecfg`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_panel(
        xb: &[u16],
        kp: usize,
        (m, blocks): (usize, std::ops::Range<usize>),
        w: &PackedWeight,
        p: usize,
        bias: Option<&[f32]>,
        out: OutPtr,
        acc: &mut super::Aligned,
    ) {
        let (n, steps) = (w.n, w.steps);
        let wdata = w.data.as_slice();
        let lda = kp * 2;
        let ldb = NR * 4;
        {
            let j0 = p * NR;
            let cols = NR.min(n - j0);
            let b = wdata[p * steps * NR..][..steps * NR].as_ptr();
            for blk in blocks {
                let a = xb[blk * TM * kp..][..TM * kp].as_ptr();
                let c = acc.as_mut_slice().as_mut_ptr().cast::<f32>();
                // SAFETY: the tiles read 32 rows of `lda` bytes of `a` (kp / 32 steps of 64
                // bytes each) and 16 rows of 128 bytes of `b` per step, inside both; the four
                // accumulators are stored into `acc` (32 × 32 floats).
                unsafe {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nostack, nomem)
                    );
                    for q in 0..kp / AMX_K {
                        let a0 = a.add(q * AMX_K);
                        let a1 = a0.add(16 * kp);
                        let b0 = b.add(q * (AMX_K / 2) * NR);
                        let b1 = b0.add(16);
                        asm!(
                            "tileloadd tmm4, [{a0} + {lda}*1]",
                            "tileloadd tmm5, [{a1} + {lda}*1]",
                            "tileloadd tmm6, [{b0} + {ldb}*1]",
                            "tileloadd tmm7, [{b1} + {ldb}*1]",
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            "tdpbf16ps tmm2, tmm5, tmm6",
                            "tdpbf16ps tmm3, tmm5, tmm7",
                            a0 = in(reg) a0,
                            a1 = in(reg) a1,
                            b0 = in(reg) b0,
                            b1 = in(reg) b1,
                            lda = in(reg) lda,
                            ldb = in(reg) ldb,
                            options(nostack, readonly)
                        );
                    }
                    let ldc = NR * 4;
                    asm!(
                        "tilestored [{c0} + {ldc}*1], tmm0",
                        "tilestored [{c1} + {ldc}*1], tmm1",
                        "tilestored [{c2} + {ldc}*1], tmm2",
                        "tilestored [{c3} + {ldc}*1], tmm3",
                        c0 = in(reg) c,
                        c1 = in(reg) c.add(16),
                        c2 = in(reg) c.add(16 * NR),
                        c3 = in(reg) c.add(16 * NR + 16),
                        ldc = in(reg) ldc,
                        options(nostack)
                    );
                }
                let r0 = blk * TM;
                let rows = TM.min(m - r0);
                // SAFETY: rows r0 .. r0 + rows and columns j0 .. j0 + cols of `out` belong to
                // this block.
                unsafe {
                    write(
                        acc,
                        rows,
                        cols,
                        out.0.add(r0 * n + j0),
                        n,
                        bias.map(|b| &b[j0..j0 + cols]),
                    )
                };
            }
        }
    }

    /// `C[rows, cols] = acc + bias` (`acc`: 32 × NR floats, `C` at stride `ldc`).
    ///
    /// # Safety
    /// `c` covers `rows` rows of `cols` floats at stride `ldc`.
    #[target_feature(enable = "avx512f")]
    unsafe fn write(
        acc: &super::Aligned,
        rows: usize,
        cols: usize,
        c: *mut f32,
        ldc: usize,
        bias: Option<&[f32]>,
    ) {
        use std::arch::x86_64::*;
        let acc = acc.as_slice().as_ptr().cast::<f32>();
        // SAFETY: masked lanes are neither read nor written; the rest lie inside `acc`, the
        // bias and `c`'s rows.
        unsafe {
            let (lo, hi, b0, b1) = super::row_edge(cols, bias);
            for r in 0..rows {
                let src = acc.add(r * NR);
                let row = c.add(r * ldc);
                _mm512_mask_storeu_ps(row, lo, _mm512_add_ps(_mm512_load_ps(src), b0));
                _mm512_mask_storeu_ps(
                    row.wrapping_add(16),
                    hi,
                    _mm512_add_ps(_mm512_load_ps(src.add(16)), b1),
                );
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod amx {
    pub(super) fn matmul(
        _x: &[f32],
        _m: usize,
        _w: &super::PackedWeight,
        _bias: Option<&[f32]>,
        _out: &mut [std::mem::MaybeUninit<f32>],
    ) {
        unreachable!("matmul checks `available_bf16`")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain product in f64, `x` `[m, k]`, `W[i, j] = w[start + i rs + j cs]`.
    fn reference(
        x: &[f32],
        m: usize,
        w: &[f32],
        (start, rs, cs): (usize, isize, isize),
        k: usize,
        n: usize,
        bias: Option<&[f32]>,
    ) -> Vec<f32> {
        let mut out = vec![0.0f32; m * n];
        for r in 0..m {
            for j in 0..n {
                let mut s = bias.map_or(0.0, |b| b[j] as f64);
                for i in 0..k {
                    let wi = (start as isize + i as isize * rs + j as isize * cs) as usize;
                    s += x[r * k + i] as f64 * w[wi] as f64;
                }
                out[r * n + j] = s as f32;
            }
        }
        out
    }

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The f32 kernels this CPU runs: AVX2's on an AVX-512 machine too.
    fn isas() -> Vec<Isa> {
        let mut isas = Vec::new();
        if std::arch::is_x86_feature_detected!("avx512f") {
            isas.push(Isa::Avx512);
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            isas.push(Isa::Avx2);
        }
        isas
    }

    #[test]
    fn packed_product_equals_the_plain_one() {
        if !available() {
            eprintln!("neither AVX-512F nor AVX2 with FMA on this CPU: the kernel is not used");
            return;
        }
        // Ragged rows (tails of every kernel height), columns (partial panels, an odd last
        // panel, several column blocks of the large-batch kernel), reductions (several passes
        // of unequal length), both weight layouts, with and without bias; both kernels (up to
        // and above MAX_ROWS rows); large enough to be split across threads.
        let cases = [
            (1, 1, 1),
            (5, 7, 3),
            (13, 33, 31),
            (50, 768, 96),
            (151, 300, 65),
            (300, 520, 17),
            (97, 800, 1100),
            (400, 300, 600),
        ];
        // In bfloat16 the reference takes the inputs rounded as the kernel rounds them: what
        // is left is the f32 summation.
        let rounded =
            |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| f32::from_bits(bf16(x) << 16)).collect() };
        let mut precisions = vec![Precision::F32];
        if available_bf16() {
            precisions.push(Precision::Bf16);
        } else {
            eprintln!("no AVX512-BF16 on this CPU: only the f32 kernel is tested here");
        }
        for precision in precisions {
            for (case, &(m, k, n)) in cases.iter().enumerate() {
                let x = values(m * k, 1 + case as u64);
                let bias = values(n, 100 + case as u64);
                for layout_kind in 0..3 {
                    // Row-major [k, n], the transpose of a row-major [n, k] with an offset, or
                    // every other element of a row-major [k, 2n] (the packing's general loop).
                    let seed = 200 + 100 * layout_kind as u64 + case as u64;
                    let (w, layout) = match layout_kind {
                        0 => (values(k * n, seed), (0, n as isize, 1)),
                        1 => (values(n * k + 3, seed), (3, 1, k as isize)),
                        _ => (values(2 * k * n, seed), (1, 2 * n as isize, 2)),
                    };
                    let packed = PackedWeight::new(&w, layout, k, n, precision).unwrap();
                    let (xr, wr) = match precision {
                        Precision::F32 => (x.clone(), w.clone()),
                        Precision::Bf16 => (rounded(&x), rounded(&w)),
                    };
                    // The bf16 product has one kernel; the f32 one each ISA's.
                    let isas = match precision {
                        Precision::F32 => isas(),
                        Precision::Bf16 => vec![isa().unwrap()],
                    };
                    for (b, isa) in [None, Some(&bias[..])]
                        .into_iter()
                        .flat_map(|b| isas.iter().map(move |&isa| (b, isa)))
                    {
                        let want = reference(&xr, m, &wr, layout, k, n, b);
                        let mut got = vec![f32::NAN; m * n];
                        // SAFETY: the same memory seen as possibly uninitialised.
                        let out = unsafe {
                            &mut *(std::ptr::from_mut(&mut got[..]) as *mut [MaybeUninit<f32>])
                        };
                        matmul_isa(&x, m, &packed, b, None, out, isa);
                        let worst = crate::nn::cpu::worst_diff(&got, &want, false);
                        assert!(
                            worst < 1e-4 * (k as f32).sqrt(),
                            "{precision:?} {isa:?} m {m} k {k} n {n} layout {layout_kind} \
                             bias {}: {worst}",
                            b.is_some()
                        );
                    }
                }
            }
        }
    }

    /// Rounding to bfloat16: to nearest with ties to even, overflow to infinity, NaN kept.
    #[test]
    fn bf16_rounds_to_nearest_even() {
        let back = |x: f32| f32::from_bits(bf16(x) << 16);
        assert_eq!(back(1.0), 1.0);
        assert_eq!(back(-2.5), -2.5);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even (1).
        assert_eq!(back(1.0 + 2f32.powi(-8)), 1.0);
        // 1 + 3·2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: the even is 1 + 2^-6.
        assert_eq!(back(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        assert_eq!(
            back(1.0 + 2f32.powi(-8) + 2f32.powi(-12)),
            1.0 + 2f32.powi(-7)
        );
        assert_eq!(back(f32::MAX), f32::INFINITY);
        assert!(back(f32::NAN).is_nan());
        assert_eq!(back(0.1).to_bits(), 0x3dcd_0000);
    }

    /// The cache hands out one packing per weight tensor, and a weight changed by a tensor op
    /// (burn-flex writes in place into unshared storage) gets a packing of its new values.
    #[test]
    fn the_cache_follows_the_weight_tensor() {
        use burn::backend::flex::Flex;
        use burn::prelude::*;
        if !available() {
            eprintln!("no AVX-512F on this CPU: the kernel is not used here");
            return;
        }
        let (k, n) = (20, 37);
        let vals = values(k * n, 7);
        let w = Tensor::<2>::from_data(TensorData::new(vals.clone(), [k, n]), &Device::flex());
        let prim = |t: &Tensor<2>| t.clone().try_into_primitive::<Flex>().unwrap();
        let first = packed(&prim(&w), Precision::F32).unwrap();
        assert!(Arc::ptr_eq(
            &first,
            &packed(&prim(&w), Precision::F32).unwrap()
        ));
        // x = I: the product is the packed weight itself.
        let eye: Vec<f32> = (0..k * k)
            .map(|i| if i / k == i % k { 1.0 } else { 0.0 })
            .collect();
        let unpack = |p: &PackedWeight| {
            let mut out = vec![f32::NAN; k * n];
            matmul(&eye, k, p, None, &mut out);
            out
        };
        assert_eq!(unpack(&first), vals);
        let w = w + 1.0;
        let second = packed(&prim(&w), Precision::F32).unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        let want: Vec<f32> = vals.iter().map(|v| v + 1.0).collect();
        assert_eq!(unpack(&second), want);
    }

    #[test]
    fn packing_refuses_indices_outside_the_storage() {
        let w = vec![0.0f32; 12];
        let f32 = Precision::F32;
        assert!(PackedWeight::new(&w, (0, 4, 1), 3, 4, f32).is_some());
        assert!(PackedWeight::new(&w, (1, 4, 1), 3, 4, f32).is_none());
        assert!(PackedWeight::new(&w, (0, 4, 1), 4, 4, f32).is_none());
        assert!(PackedWeight::new(&w, (0, 4, 1), 0, 4, f32).is_none());
    }
}
