//! The inference GEMM of linear layers at small batches, `x W + b`, with the weight packed once
//! (AVX-512).
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
//! Used for untracked `f32` linear layers of at most [`MAX_ROWS`] rows when the CPU has
//! AVX-512F ([`available`]); tested against the plain product on ragged sizes and strided
//! weights.

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

/// Above this many rows of `x` the general GEMM (`gemm` crate) measured faster: its packing
/// of the weight is shared by enough rows, and its kernel reached 5-15% more of the peak on
/// the ViT-B shapes (768 × 2304 and 3072 × 768 weights, 150-1600 rows, 2 threads). At 50 rows
/// this kernel is 1.5-2× faster.
pub const MAX_ROWS: usize = 128;

/// Whether this CPU runs the kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One cache line of floats; buffers of these are 64-byte aligned.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([f32; 16]);

/// A zeroed, 64-byte-aligned `f32` buffer.
struct Aligned {
    lines: Vec<Line>,
    len: usize,
}

impl Aligned {
    fn zeroed(len: usize) -> Aligned {
        Aligned {
            lines: vec![Line([0.0; 16]); len.div_ceil(16)],
            len,
        }
    }

    fn as_slice(&self) -> &[f32] {
        // SAFETY: `lines` holds at least `len` contiguous, initialised floats.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<f32>(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as above, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<f32>(), self.len) }
    }
}

/// A `[k, n]` weight in column panels: panel `p` holds columns `p·NR ..`, row after row
/// (`k × NR` floats, the last panel's missing columns zero).
pub struct PackedWeight {
    k: usize,
    n: usize,
    data: Aligned,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeight[{}, {}]", self.k, self.n)
    }
}

impl PackedWeight {
    /// Packs `W[i, j] = w[start + i·rs + j·cs]` for `i < k`, `j < n`. `None` when an index
    /// falls outside `w` or a size is zero.
    pub fn new(w: &[f32], start: usize, rs: isize, cs: isize, k: usize, n: usize) -> Option<Self> {
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
        let panels = n.div_ceil(NR);
        let mut data = Aligned::zeroed(panels * k * NR);
        let d = data.as_mut_slice();
        for p in 0..panels {
            let j0 = p * NR;
            let cols = NR.min(n - j0);
            for i in 0..k {
                let dst = &mut d[(p * k + i) * NR..][..cols];
                if cs == 1 {
                    let s = index(i, j0) as usize;
                    dst.copy_from_slice(&w[s..s + cols]);
                } else {
                    for (c, v) in dst.iter_mut().enumerate() {
                        *v = w[index(i, j0 + c) as usize];
                    }
                }
            }
        }
        Some(PackedWeight { k, n, data })
    }

    /// Rows (the reduction) and columns.
    pub fn shape(&self) -> (usize, usize) {
        (self.k, self.n)
    }
}

/// A weight tensor's identity: its storage, offset, shape and strides.
type Key = (usize, usize, [usize; 2], [isize; 2]);

struct Entry {
    key: Key,
    /// A clone of the weight: while the cache holds it, its storage can be neither freed (and
    /// its address reused) nor written in place (burn-flex writes in place only into unshared
    /// storage), so the key identifies the same values.
    keep: FlexTensor,
    packed: Arc<PackedWeight>,
}

static CACHE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// `w` (`[k, n]`, `f32`, any strides) packed, from the cache when this tensor was packed
/// before. Entries whose weight nobody else holds any more are dropped on each miss.
pub fn packed(w: &FlexTensor) -> Option<Arc<PackedWeight>> {
    let layout = w.layout();
    let shape = layout.shape();
    if w.dtype() != burn::tensor::DType::F32 || shape.num_dims() != 2 {
        return None;
    }
    let storage = w.storage::<f32>();
    let strides = layout.strides();
    let key: Key = (
        storage.as_ptr() as usize,
        layout.start_offset(),
        [shape[0], shape[1]],
        [strides[0], strides[1]],
    );
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = cache.iter().find(|e| e.key == key) {
        return Some(e.packed.clone());
    }
    cache.retain(|e| !e.keep.is_unique());
    let packed = Arc::new(PackedWeight::new(
        storage,
        layout.start_offset(),
        strides[0],
        strides[1],
        shape[0],
        shape[1],
    )?);
    cache.push(Entry {
        key,
        keep: w.clone(),
        packed: packed.clone(),
    });
    Some(packed)
}

/// `out = x W + bias` for `x` `[m, k]` and `out` `[m, n]`, both row-major and contiguous.
/// Must only be called when [`available`] says so.
///
/// # Panics
/// When the sizes do not fit.
pub fn matmul(x: &[f32], m: usize, w: &PackedWeight, bias: Option<&[f32]>, out: &mut [f32]) {
    let (k, n) = (w.k, w.n);
    assert!(available(), "sgemm::matmul needs AVX-512F");
    assert_eq!(x.len(), m * k, "x is not [m, k]");
    assert_eq!(out.len(), m * n, "out is not [m, n]");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "bias is not [n]");
    }
    if m == 0 {
        return;
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
    // x transposed (`[k, m]`), once for all tasks: the kernel reads a block's rows at one
    // reduction index side by side.
    let mut xt = vec![0.0f32; k * m];
    for k0 in (0..k).step_by(16) {
        let k1 = (k0 + 16).min(k);
        for (r, row) in x.chunks_exact(k).enumerate() {
            for (kk, &v) in row[k0..k1].iter().enumerate() {
                xt[(k0 + kk) * m + r] = v;
            }
        }
    }
    let out_ptr = OutPtr(out.as_mut_ptr());
    let task = |t: usize| {
        let (chunk, group) = (t / groups, t % groups);
        let r0 = chunk * rows_per;
        let rows = rows_per.min(m - r0);
        let p0 = group * panels_per;
        let p1 = (p0 + panels_per).min(panels);
        // SAFETY: the tasks write disjoint blocks of `out` (rows r0.., columns of panels
        // p0..p1), which has m × n elements; AVX-512F was checked above.
        unsafe { block(&xt, r0, rows, w, bias, p0..p1, out_ptr, m) };
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
// SAFETY: see `matmul`: disjoint writes.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// Rows `r0 .. r0 + rows` of the output, panels `panels` of the weight.
///
/// # Safety
/// `out` points at `m × w.n` floats that no other thread writes in this block; AVX-512F.
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    xt: &[f32],
    r0: usize,
    rows: usize,
    w: &PackedWeight,
    bias: Option<&[f32]>,
    panels: std::ops::Range<usize>,
    out: OutPtr,
    m: usize,
) {
    let (k, n) = (w.k, w.n);
    debug_assert!(r0 + rows <= m && xt.len() == k * m);
    let passes = k.div_ceil(KC);
    let kc_max = k.div_ceil(passes);
    let wdata = w.data.as_slice();
    for pass in 0..passes {
        let k0 = pass * kc_max;
        let kc = kc_max.min(k - k0);
        for p in panels.clone() {
            let j0 = p * NR;
            let cols = NR.min(n - j0);
            let b = &wdata[(p * k + k0) * NR..][..kc * NR];
            let first = pass == 0;
            let bias = if first {
                bias.map(|b| &b[j0..j0 + cols])
            } else {
                None
            };
            for b0 in (0..rows).step_by(MR) {
                let r = MR.min(rows - b0);
                // Rows r0 + b0 .. + r of x at reduction indices k0 .., m floats apart.
                let a = &xt[k0 * m + r0 + b0..][..(kc - 1) * m + r];
                // SAFETY: rows r0 + b0 .. + r and columns j0 .. j0 + cols lie inside `out`
                // and belong to this block.
                let c = unsafe { out.0.add((r0 + b0) * n + j0) };
                // SAFETY: the kernel reads r floats at each of kc steps of m in `a`, kc × NR
                // of `b` and writes r rows of `cols` floats at stride n from `c`; AVX-512F
                // per the caller.
                unsafe { kernel_any(r, kc, a.as_ptr(), m, b.as_ptr(), c, n, cols, first, bias) };
            }
        }
    }
}

/// [`kernel`] for `r` (1 ..= MR) rows.
///
/// # Safety
/// As [`kernel`].
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_any(
    r: usize,
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    first: bool,
    bias: Option<&[f32]>,
) {
    macro_rules! go {
        ($($r:literal)*) => {
            match r {
                $($r => unsafe { kernel::<$r>(kc, a, lda, b, c, ldc, cols, first, bias) },)*
                _ => unreachable!("1 ..= MR rows"),
            }
        };
    }
    go!(1 2 3 4 5 6 7 8 9 10 11 12)
}

/// `C[R, cols] (+)= A B`: `a` holds `kc` groups of `R` floats `lda` apart (the rows side by
/// side), `b`
/// `kc` rows of [`NR`] floats (64-byte aligned), `c` `R` rows of `cols` floats at stride
/// `ldc`. `first`: overwrite `C` with the product plus `bias` (zero without one); otherwise add
/// the product to `C`.
///
/// # Safety
/// The pointers cover what is described above and the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<const R: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    first: bool,
    bias: Option<&[f32]>,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    let (mut a, mut b) = (a, b);
    for _ in 0..kc {
        // SAFETY: `b` has NR aligned floats per step and `a` R floats (the caller's contract).
        let (b0, b1) = unsafe { (_mm512_load_ps(b), _mm512_load_ps(b.add(16))) };
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: as above.
            let av = _mm512_set1_ps(unsafe { *a.add(i) });
            acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
            acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
        }
        // SAFETY: stays within (or one past) the operands.
        unsafe {
            a = a.wrapping_add(lda);
            b = b.add(NR);
        }
    }
    let lo: __mmask16 = if cols >= 16 {
        0xffff
    } else {
        ((1u32 << cols) - 1) as __mmask16
    };
    let hi: __mmask16 = if cols >= 32 {
        0xffff
    } else if cols > 16 {
        ((1u32 << (cols - 16)) - 1) as __mmask16
    } else {
        0
    };
    // SAFETY: masked loads and stores touch only the first `cols` floats of each row; the
    // masked-out lanes are neither read nor written (AVX-512 suppresses their faults), and
    // the second half's address is formed with wrapping arithmetic.
    unsafe {
        let (base0, base1) = match bias {
            Some(bv) => (
                _mm512_maskz_loadu_ps(lo, bv.as_ptr()),
                _mm512_maskz_loadu_ps(hi, bv.as_ptr().wrapping_add(16)),
            ),
            None => (_mm512_setzero_ps(), _mm512_setzero_ps()),
        };
        for (i, acc) in acc.iter().enumerate() {
            let row = c.add(i * ldc);
            let row_hi = row.wrapping_add(16);
            let (c0, c1) = if first {
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
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<const R: usize>(
    _kc: usize,
    _a: *const f32,
    _lda: usize,
    _b: *const f32,
    _c: *mut f32,
    _ldc: usize,
    _cols: usize,
    _first: bool,
    _bias: Option<&[f32]>,
) {
    unreachable!("matmul checks `available`")
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

    #[test]
    fn packed_product_equals_the_plain_one() {
        if !available() {
            eprintln!("no AVX-512F on this CPU: the kernel is not used here");
            return;
        }
        // Ragged rows (tails of every kernel height), columns (partial panels), reductions
        // (several passes of unequal length), both weight layouts, with and without bias;
        // large enough to be split across threads.
        let cases = [
            (1, 1, 1),
            (5, 7, 3),
            (13, 33, 31),
            (50, 768, 96),
            (151, 300, 65),
            (300, 520, 17),
        ];
        for (case, &(m, k, n)) in cases.iter().enumerate() {
            let x = values(m * k, 1 + case as u64);
            let bias = values(n, 100 + case as u64);
            for transposed in [false, true] {
                // Row-major [k, n] or the transpose of a row-major [n, k] with an offset.
                let (w, layout) = if transposed {
                    (values(n * k + 3, 200 + case as u64), (3, 1, k as isize))
                } else {
                    (values(k * n, 300 + case as u64), (0, n as isize, 1))
                };
                let packed = PackedWeight::new(&w, layout.0, layout.1, layout.2, k, n).unwrap();
                for b in [None, Some(&bias[..])] {
                    let want = reference(&x, m, &w, layout, k, n, b);
                    let mut got = vec![f32::NAN; m * n];
                    matmul(&x, m, &packed, b, &mut got);
                    let worst = crate::nn::cpu::worst_diff(&got, &want, false);
                    assert!(
                        worst < 1e-4 * (k as f32).sqrt(),
                        "m {m} k {k} n {n} transposed {transposed} bias {}: {worst}",
                        b.is_some()
                    );
                }
            }
        }
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
        let first = packed(&prim(&w)).unwrap();
        assert!(Arc::ptr_eq(&first, &packed(&prim(&w)).unwrap()));
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
        let second = packed(&prim(&w)).unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        let want: Vec<f32> = vals.iter().map(|v| v + 1.0).collect();
        assert_eq!(unpack(&second), want);
    }

    #[test]
    fn packing_refuses_indices_outside_the_storage() {
        let w = vec![0.0f32; 12];
        assert!(PackedWeight::new(&w, 0, 4, 1, 3, 4).is_some());
        assert!(PackedWeight::new(&w, 1, 4, 1, 3, 4).is_none());
        assert!(PackedWeight::new(&w, 0, 4, 1, 4, 4).is_none());
        assert!(PackedWeight::new(&w, 0, 4, 1, 0, 4).is_none());
    }
}
