//! Wasserstein-1 (earth mover's) distances between two sets of samples, in f64.
//!
//! - [`w1_1d`]: exact, for scalars with optional weights: the integral of |F_a − F_b| over the
//!   merged sorted support, as `scipy.stats.wasserstein_distance` computes it.
//! - [`exact_ot`]: exact, for small sets in any dimension with uniform weights and Euclidean
//!   ground cost: an optimal assignment when the sizes are equal ([`assignment`]), an optimal
//!   transportation plan when they are not.
//! - [`sliced`]: the sliced distance, the mean exact 1-D distance of the sets projected on
//!   random directions. It is cheap for large sets but it is a different quantity: never more
//!   than W1 and in general less (a shift by `t` in 2-D has W1 = |t| and sliced W1 = 2|t|/π).
//! - [`distance`]: picks one of them for two sets of points.

use serde::Serialize;

use crate::data::arrays::Points;
use crate::data::shapes::SplitMix64;
use crate::{Error, Result};

/// The most points per set [`exact_ot`] takes. Both methods hold an n×m cost matrix of f64
/// (200 MB at the limit) and take seconds there (measured: 5000 vs 5000 in 2-D about 11 s for
/// the assignment, 5000 vs 4999 about 5 s for the transportation problem, in an optimised build).
pub const MAX_EXACT_POINTS: usize = 5000;

/// A distance and the method that computed it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The Wasserstein-1 distance (the sliced one for `method == "sliced"`).
    pub w1: f64,
    /// `"exact-1d"`, `"exact-ot"` or `"sliced"`.
    pub method: &'static str,
}

/// The W1 distance between two sets of points: exact in 1-D (`"exact-1d"`), sliced over
/// `sliced` random directions drawn from `seed` when asked (`"sliced"`), otherwise exact optimal
/// transport (`"exact-ot"`, an error past [`MAX_EXACT_POINTS`] points per set).
pub fn distance(a: &Points, b: &Points, sliced: Option<usize>, seed: u64) -> Result<Report> {
    check_pair(a, b)?;
    if sliced == Some(0) {
        return Err(Error::InvalidInput(
            "the sliced distance needs at least one projection".into(),
        ));
    }
    if a.dims == 1 {
        return Ok(Report {
            w1: w1_1d(&a.data, None, &b.data, None)?,
            method: "exact-1d",
        });
    }
    match sliced {
        Some(n) => Ok(Report {
            w1: self::sliced(a, b, n, seed)?,
            method: "sliced",
        }),
        None => Ok(Report {
            w1: exact_ot(a, b)?,
            method: "exact-ot",
        }),
    }
}

/// The exact W1 distance between two 1-D empirical distributions: values `a` with weights `wa`
/// and values `b` with weights `wb` (uniform when `None`; non-negative, normalised to sum 1).
pub fn w1_1d(a: &[f64], wa: Option<&[f64]>, b: &[f64], wb: Option<&[f64]>) -> Result<f64> {
    let (xa, ca) = sorted_cumulative(a, wa, "first")?;
    let (xb, cb) = sorted_cumulative(b, wb, "second")?;
    let (ta, tb) = (ca[xa.len()], cb[xb.len()]);
    let mut all: Vec<f64> = xa.iter().chain(&xb).copied().collect();
    all.sort_by(f64::total_cmp);
    let (mut i, mut j, mut total) = (0, 0, 0.0);
    for w in all.windows(2) {
        while i < xa.len() && xa[i] <= w[0] {
            i += 1;
        }
        while j < xb.len() && xb[j] <= w[0] {
            j += 1;
        }
        total += (ca[i] / ta - cb[j] / tb).abs() * (w[1] - w[0]);
    }
    Ok(total)
}

/// The values sorted, and the cumulative weights before each (`c[0] = 0`, `c[len]` = total).
fn sorted_cumulative(
    values: &[f64],
    weights: Option<&[f64]>,
    which: &str,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let bad = |m: String| Err(Error::InvalidInput(format!("{which} set: {m}")));
    if values.is_empty() {
        return bad("no values".into());
    }
    if let Some(k) = values.iter().position(|v| !v.is_finite()) {
        return bad(format!(
            "value {k} is {} (values must be finite)",
            values[k]
        ));
    }
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&i, &j| values[i].total_cmp(&values[j]));
    let sorted = order.iter().map(|&i| values[i]).collect();
    let mut cumulative = Vec::with_capacity(values.len() + 1);
    cumulative.push(0.0);
    match weights {
        None => cumulative.extend((1..=values.len()).map(|k| k as f64)),
        Some(w) => {
            if w.len() != values.len() {
                return bad(format!("{} weights for {} values", w.len(), values.len()));
            }
            if let Some(k) = w.iter().position(|v| !v.is_finite() || *v < 0.0) {
                return bad(format!("weight {k} is {} (weights must be >= 0)", w[k]));
            }
            let mut sum = 0.0;
            for &i in &order {
                sum += w[i];
                cumulative.push(sum);
            }
            if !(sum > 0.0 && sum.is_finite()) {
                return bad(format!("the weights sum to {sum}, not a positive number"));
            }
        }
    }
    Ok((sorted, cumulative))
}

/// The optimal assignment of an `n`×`n` cost matrix (row-major): `result[row] = column`,
/// minimising the sum of the chosen costs. Shortest augmenting paths with potentials
/// (the Hungarian method in Jonker-Volgenant form), O(n³).
///
/// # Panics
/// When `cost.len() != n * n` or a cost is not finite.
pub fn assignment(cost: &[f64], n: usize) -> Vec<usize> {
    assert_eq!(cost.len(), n * n, "the cost matrix must be n x n");
    assert!(cost.iter().all(|c| c.is_finite()), "costs must be finite");
    hungarian(n, |i, j| cost[i * n + j])
}

/// The Hungarian method on rows and columns numbered from 1 (0 is a sentinel column that holds
/// the row being added).
fn hungarian(n: usize, cost: impl Fn(usize, usize) -> f64) -> Vec<usize> {
    let mut u = vec![0.0f64; n + 1]; // row potentials
    let mut v = vec![0.0f64; n + 1]; // column potentials
    let mut row_of = vec![0usize; n + 1]; // the row matched to each column (0: none)
    let mut way = vec![0usize; n + 1]; // the previous column on the shortest path
    let mut minv = vec![0.0f64; n + 1];
    let mut used = vec![false; n + 1];
    for i in 1..=n {
        row_of[0] = i;
        let mut j0 = 0;
        minv.fill(f64::INFINITY);
        used.fill(false);
        loop {
            used[j0] = true;
            let i0 = row_of[j0];
            let (mut delta, mut j1) = (f64::INFINITY, 0);
            for j in 1..=n {
                if !used[j] {
                    let cur = cost(i0 - 1, j - 1) - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=n {
                if used[j] {
                    u[row_of[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if row_of[j0] == 0 {
                break;
            }
        }
        while j0 != 0 {
            let j1 = way[j0];
            row_of[j0] = row_of[j1];
            j0 = j1;
        }
    }
    let mut result = vec![0; n];
    for j in 1..=n {
        result[row_of[j] - 1] = j - 1;
    }
    result
}

/// The exact W1 distance, Euclidean ground cost and uniform weights, between two sets of the
/// same dimension: the mean cost of an optimal assignment for equal sizes, the cost of an
/// optimal transportation plan (masses 1/n and 1/m, network simplex) otherwise. Sets of more
/// than [`MAX_EXACT_POINTS`] points are refused.
pub fn exact_ot(a: &Points, b: &Points) -> Result<f64> {
    check_pair(a, b)?;
    let (n, m) = (a.rows, b.rows);
    if n.max(m) > MAX_EXACT_POINTS {
        return Err(Error::InvalidInput(format!(
            "exact optimal transport of {n} vs {m} points is past the limit of \
             {MAX_EXACT_POINTS} points per set; use the sliced distance (--sliced N) instead"
        )));
    }
    let cost = cost_matrix(a, b);
    if n == m {
        let rows = hungarian(n, |i, j| cost[i * n + j]);
        let total: f64 = rows.iter().enumerate().map(|(i, &j)| cost[i * n + j]).sum();
        Ok(total / n as f64)
    } else {
        Ok(transport(&cost, n, m))
    }
}

/// Euclidean distances, row-major `a.rows × b.rows`.
fn cost_matrix(a: &Points, b: &Points) -> Vec<f64> {
    let mut cost = Vec::with_capacity(a.rows * b.rows);
    for i in 0..a.rows {
        let x = a.row(i);
        cost.extend((0..b.rows).map(|j| {
            let y = b.row(j);
            x.iter()
                .zip(y)
                .map(|(p, q)| (p - q) * (p - q))
                .sum::<f64>()
                .sqrt()
        }));
    }
    cost
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The optimal transportation cost between `n` sources of mass 1/n and `m` sinks of mass 1/m
/// with costs `cost[i * m + j]`, by the network simplex method.
///
/// The masses are scaled to integers, `m/g` per source and `n/g` per sink (g = gcd(n, m)), so
/// the total is lcm(n, m) and the flows stay exact integers. Nodes are the sources, the sinks
/// and a root; the first spanning tree joins every node to the root by an artificial arc
/// (source → root, root → sink) that costs more than any real arc, so the method drives all
/// flow onto real arcs. Each pivot brings in the most negative reduced cost arc of a block
/// (block search), pushes flow round the cycle it closes, and drops the blocking arc chosen
/// so that the tree stays strongly feasible (Cunningham's rule), which rules out cycling on
/// the many degenerate pivots of transportation problems. Potentials are kept so that tree
/// arcs have zero reduced cost `c + π(tail) − π(head)`; the method stops when no arc's is
/// below −1e-9 of the largest cost, which bounds the result's excess over the optimum by 1e-9
/// of the largest cost.
fn transport(cost: &[f64], n: usize, m: usize) -> f64 {
    let max_cost = cost.iter().copied().fold(0.0, f64::max);
    if max_cost == 0.0 {
        return 0.0;
    }
    let g = gcd(n, m);
    let (supply, demand) = ((m / g) as u64, (n / g) as u64);
    let mut tree = Tree::new(n, m, supply, demand, 2.0 * max_cost);
    let eps = 1e-9 * max_cost;
    // Block search: arcs are visited in row-major order, resuming where the last pivot stopped.
    let arcs = n * m;
    let block = ((arcs as f64).sqrt() as usize).clamp(1, arcs);
    let mut next = 0;
    loop {
        let mut best: Option<(usize, f64)> = None;
        let (mut seen, mut in_block) = (0, 0);
        while seen < arcs {
            let k = next;
            next = if next + 1 == arcs { 0 } else { next + 1 };
            seen += 1;
            in_block += 1;
            let (i, j) = (k / m, n + k % m);
            let rc = cost[k] + tree.pi[i] - tree.pi[j];
            if rc < best.map_or(-eps, |b| b.1) && tree.parent[i] != j && tree.parent[j] != i {
                best = Some((k, rc));
            }
            if in_block == block {
                if best.is_some() {
                    break;
                }
                in_block = 0;
            }
        }
        let Some((k, _)) = best else { break };
        tree.pivot(k / m, n + k % m, cost[k]);
    }
    let total: f64 = (0..n + m)
        .filter(|&x| !tree.artificial[x] && tree.flow[x] > 0)
        .map(|x| tree.flow[x] as f64 * tree.cost[x])
        .sum();
    total / (n as u64 * supply) as f64
}

/// The spanning tree of the network simplex of [`transport`]: every node but the root holds
/// the arc to its parent.
struct Tree {
    root: usize,
    parent: Vec<usize>,
    children: Vec<Vec<usize>>,
    /// Whether the arc runs from the node to its parent (else from the parent to the node).
    up: Vec<bool>,
    flow: Vec<u64>,
    cost: Vec<f64>,
    artificial: Vec<bool>,
    depth: Vec<usize>,
    /// Potentials: `cost + π(tail) − π(head) = 0` on tree arcs.
    pi: Vec<f64>,
    path: Vec<usize>,
}

impl Tree {
    /// The star of artificial arcs: sources `0..n` send `supply` to the root, the root sends
    /// `demand` to sinks `n..n + m`; each artificial arc costs `art`.
    fn new(n: usize, m: usize, supply: u64, demand: u64, art: f64) -> Self {
        let root = n + m;
        Tree {
            root,
            parent: vec![root; root + 1],
            children: (0..=root)
                .map(|x| {
                    if x == root {
                        (0..root).collect()
                    } else {
                        Vec::new()
                    }
                })
                .collect(),
            up: (0..=root).map(|x| x < n).collect(),
            flow: (0..=root)
                .map(|x| if x < n { supply } else { demand })
                .collect(),
            cost: vec![art; root + 1],
            artificial: vec![true; root + 1],
            depth: (0..=root).map(|x| usize::from(x != root)).collect(),
            pi: (0..=root)
                .map(|x| match x {
                    x if x < n => -art,
                    x if x < root => art,
                    _ => 0.0,
                })
                .collect(),
            path: Vec::new(),
        }
    }

    /// Brings arc `u → v` (cost `c`) into the tree and drops the blocking arc of its cycle.
    fn pivot(&mut self, u: usize, v: usize, c: f64) {
        let (mut a, mut b) = (u, v);
        while a != b {
            if self.depth[a] >= self.depth[b] {
                a = self.parent[a];
            } else {
                b = self.parent[b];
            }
        }
        let join = a;
        // Flow goes u → v → up to the join → down to u. On u's side the arcs pointing up lose
        // flow, on v's side those pointing down. Of the blocking arcs, the last one met from
        // the join in the cycle's direction leaves: the first (strict <) going up from u, or
        // (preferred) the last (<=) going up from v.
        let (mut delta, mut out, mut on_u_side) = (u64::MAX, u, true);
        let mut y = u;
        while y != join {
            if self.up[y] && self.flow[y] < delta {
                (delta, out) = (self.flow[y], y);
            }
            y = self.parent[y];
        }
        let mut y = v;
        while y != join {
            if !self.up[y] && self.flow[y] <= delta {
                (delta, out, on_u_side) = (self.flow[y], y, false);
            }
            y = self.parent[y];
        }
        // Arcs into sinks are uncapacitated and the graph has no directed cycle, so some arc
        // of the cycle always blocks.
        debug_assert!(delta < u64::MAX);
        if delta > 0 {
            for (start, gain_up) in [(u, false), (v, true)] {
                let mut y = start;
                while y != join {
                    if self.up[y] == gain_up {
                        self.flow[y] += delta;
                    } else {
                        self.flow[y] -= delta;
                    }
                    y = self.parent[y];
                }
            }
        }
        // The subtree cut off by the leaving arc hangs from the entering arc instead: reverse
        // the parent links from its endpoint up to the leaving arc.
        let (first, other) = if on_u_side { (u, v) } else { (v, u) };
        self.path.clear();
        let mut y = first;
        loop {
            self.path.push(y);
            if y == out {
                break;
            }
            y = self.parent[y];
        }
        let mut carried = (other, on_u_side, delta, c, false);
        for k in 0..self.path.len() {
            let y = self.path[k];
            let old = self.parent[y];
            let siblings = &mut self.children[old];
            if let Some(at) = siblings.iter().position(|&x| x == y) {
                siblings.swap_remove(at);
            }
            let before = (
                y,
                !self.up[y],
                self.flow[y],
                self.cost[y],
                self.artificial[y],
            );
            (
                self.parent[y],
                self.up[y],
                self.flow[y],
                self.cost[y],
                self.artificial[y],
            ) = carried;
            self.children[carried.0].push(y);
            carried = before;
        }
        // Depths and potentials of the moved subtree.
        self.path.clear();
        self.path.push(first);
        while let Some(x) = self.path.pop() {
            let p = self.parent[x];
            self.depth[x] = self.depth[p] + 1;
            self.pi[x] = if self.up[x] {
                self.pi[p] - self.cost[x]
            } else {
                self.pi[p] + self.cost[x]
            };
            self.path.extend_from_slice(&self.children[x]);
        }
        debug_assert!(self.depth[self.root] == 0);
    }
}

/// The sliced W1 distance: the mean over `projections` random unit directions (drawn from
/// `seed`, the same on every machine) of the exact 1-D W1 between the projected sets. It is at
/// most the exact W1, and usually less (by 2/π for a pure shift in 2-D).
pub fn sliced(a: &Points, b: &Points, projections: usize, seed: u64) -> Result<f64> {
    check_pair(a, b)?;
    if projections == 0 {
        return Err(Error::InvalidInput(
            "the sliced distance needs at least one projection".into(),
        ));
    }
    let mut rng = SplitMix64::new(seed);
    let mut total = 0.0;
    for _ in 0..projections {
        let dir = direction(&mut rng, a.dims);
        let project = |p: &Points| -> Vec<f64> {
            (0..p.rows)
                .map(|i| p.row(i).iter().zip(&dir).map(|(x, d)| x * d).sum())
                .collect()
        };
        total += w1_1d(&project(a), None, &project(b), None)?;
    }
    Ok(total / projections as f64)
}

/// A uniformly random unit vector: normal coordinates (Box-Muller), normalised.
fn direction(rng: &mut SplitMix64, dims: usize) -> Vec<f64> {
    loop {
        let mut v = Vec::with_capacity(dims + 1);
        while v.len() < dims {
            // u1 in (0, 1] so that its logarithm is finite; u2 in [0, 1).
            let u1 = ((rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
            let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let r = (-2.0 * u1.ln()).sqrt();
            let t = std::f64::consts::TAU * u2;
            v.extend([r * t.cos(), r * t.sin()]);
        }
        v.truncate(dims);
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
            return v;
        }
    }
}

/// Both sets valid and of the same dimension.
fn check_pair(a: &Points, b: &Points) -> Result<()> {
    a.validate()
        .map_err(|e| Error::InvalidInput(format!("first set: {e}")))?;
    b.validate()
        .map_err(|e| Error::InvalidInput(format!("second set: {e}")))?;
    if a.dims != b.dims {
        return Err(Error::InvalidInput(format!(
            "the sets differ in dimension: {} vs {} coordinates per point",
            a.dims, b.dims
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pts(data: &[f64], dims: usize) -> Points {
        Points::new(data.to_vec(), data.len() / dims, dims).unwrap()
    }

    fn close(x: f64, y: f64, tol: f64) -> bool {
        (x - y).abs() <= tol
    }

    /// Every permutation of 0..n (Heap's algorithm).
    fn permutations(n: usize) -> Vec<Vec<usize>> {
        fn go(k: usize, p: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
            if k <= 1 {
                out.push(p.clone());
                return;
            }
            for i in 0..k {
                go(k - 1, p, out);
                let swap = if k.is_multiple_of(2) { i } else { 0 };
                p.swap(swap, k - 1);
            }
        }
        let mut out = Vec::new();
        go(n, &mut (0..n).collect(), &mut out);
        out
    }

    fn brute_force_assignment(cost: &[f64], n: usize) -> f64 {
        permutations(n)
            .iter()
            .map(|p| p.iter().enumerate().map(|(i, &j)| cost[i * n + j]).sum())
            .fold(f64::INFINITY, f64::min)
    }

    /// Exact OT for unequal sizes by brute force: each point repeated to lcm(n, m) points.
    fn brute_force_ot(a: &Points, b: &Points) -> f64 {
        let l = a.rows / gcd(a.rows, b.rows) * b.rows;
        let rep = |p: &Points| {
            let k = l / p.rows;
            let data = (0..p.rows)
                .flat_map(|i| std::iter::repeat_n(p.row(i), k).flatten().copied())
                .collect();
            Points::new(data, l, p.dims).unwrap()
        };
        let cost = cost_matrix(&rep(a), &rep(b));
        brute_force_assignment(&cost, l) / l as f64
    }

    #[test]
    fn w1_1d_hand_computed() {
        let w = w1_1d(&[0.0, 1.0, 3.0], None, &[5.0, 6.0, 8.0], None).unwrap();
        assert!(close(w, 5.0, 1e-12), "{w}");
        assert!(close(w1_1d(&[1.0], None, &[1.0], None).unwrap(), 0.0, 0.0));
        // Unequal sizes: {0, 1} vs {0}: half the mass moves by 1.
        let w = w1_1d(&[0.0, 1.0], None, &[0.0], None).unwrap();
        assert!(close(w, 0.5, 1e-12), "{w}");
        // {0, 2} vs {1, 1, 1}: all mass moves by 1.
        let w = w1_1d(&[0.0, 2.0], None, &[1.0, 1.0, 1.0], None).unwrap();
        assert!(close(w, 1.0, 1e-12), "{w}");
        // scipy's doc examples.
        let w = w1_1d(&[0.0, 1.0, 3.0], None, &[5.0, 6.0, 8.0], None).unwrap();
        assert!(close(w, 5.0, 1e-12));
        let w = w1_1d(
            &[3.4, 3.9, 7.5, 7.8],
            Some(&[1.4, 0.9, 3.1, 7.2]),
            &[4.5, 1.4],
            Some(&[3.2, 3.5]),
        )
        .unwrap();
        assert!(close(w, 4.078133143804786, 1e-12), "{w}");
    }

    #[test]
    fn w1_1d_weights() {
        // Weights 3:1 on {0, 4} vs a point at 1: 0.75 * 1 + 0.25 * 3.
        let w = w1_1d(&[0.0, 4.0], Some(&[3.0, 1.0]), &[1.0], None).unwrap();
        assert!(close(w, 1.5, 1e-12), "{w}");
        // Scaling the weights changes nothing; a zero weight drops a point.
        let w2 = w1_1d(&[0.0, 4.0], Some(&[0.3, 0.1]), &[1.0], Some(&[7.0])).unwrap();
        assert!(close(w, w2, 1e-12));
        let w = w1_1d(&[0.0, 9.0], Some(&[1.0, 0.0]), &[2.0], None).unwrap();
        assert!(close(w, 2.0, 1e-12), "{w}");
    }

    #[test]
    fn w1_1d_rejects_bad_input() {
        assert!(w1_1d(&[], None, &[1.0], None).is_err());
        assert!(w1_1d(&[f64::NAN], None, &[1.0], None).is_err());
        assert!(w1_1d(&[1.0], Some(&[1.0, 2.0]), &[1.0], None).is_err());
        assert!(w1_1d(&[1.0, 2.0], Some(&[1.0, -2.0]), &[1.0], None).is_err());
        assert!(w1_1d(&[1.0, 2.0], Some(&[0.0, 0.0]), &[1.0], None).is_err());
        assert!(w1_1d(&[1.0], None, &[1.0], Some(&[f64::INFINITY])).is_err());
    }

    #[test]
    fn assignment_small_matrix() {
        let cost = [4.0, 1.0, 3.0, 2.0, 0.0, 5.0, 3.0, 2.0, 2.0];
        let rows = assignment(&cost, 3);
        assert_eq!(rows, vec![1, 0, 2]);
        assert_eq!(assignment(&[], 0), Vec::<usize>::new());
        assert_eq!(assignment(&[7.0], 1), vec![0]);
    }

    #[test]
    fn exact_ot_hand_computed() {
        // Unit square corners vs the same shifted by (3, 4): every point moves 5.
        let a = pts(&[0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0], 2);
        let b = pts(&[3.0, 4.0, 4.0, 4.0, 3.0, 5.0, 4.0, 5.0], 2);
        assert!(close(exact_ot(&a, &b).unwrap(), 5.0, 1e-12));
        // Two points vs their midpoint: each mass 1/2 moves by 1.
        let a = pts(&[-1.0, 0.0, 1.0, 0.0], 2);
        let b = pts(&[0.0, 0.0], 2);
        assert!(close(exact_ot(&a, &b).unwrap(), 1.0, 1e-12));
    }

    #[test]
    fn exact_ot_unequal_vs_brute_force() {
        let mut rng = SplitMix64::new(7);
        for (n, m, dims) in [
            (2, 3, 2),
            (3, 2, 2),
            (2, 4, 3),
            (4, 8, 2),
            (1, 5, 2),
            (6, 3, 1),
        ] {
            for _ in 0..5 {
                let mut draw = |k: usize| -> Points {
                    let data = (0..k * dims).map(|_| f64::from(rng.unit()) * 4.0).collect();
                    Points::new(data, k, dims).unwrap()
                };
                let (a, b) = (draw(n), draw(m));
                let (got, want) = (exact_ot(&a, &b).unwrap(), brute_force_ot(&a, &b));
                assert!(close(got, want, 1e-9), "{n} vs {m}: {got} != {want}");
            }
        }
    }

    #[test]
    fn transport_with_equal_sizes_matches_the_assignment() {
        let mut rng = SplitMix64::new(3);
        let n = 40;
        let cost: Vec<f64> = (0..n * n).map(|_| f64::from(rng.unit())).collect();
        let rows = assignment(&cost, n);
        let want: f64 = rows.iter().enumerate().map(|(i, &j)| cost[i * n + j]).sum();
        assert!(close(transport(&cost, n, n), want / n as f64, 1e-12));
    }

    #[test]
    fn exact_ot_in_1d_matches_w1_1d() {
        let mut rng = SplitMix64::new(11);
        for (n, m) in [(30, 30), (30, 45), (17, 5)] {
            let a: Vec<f64> = (0..n).map(|_| f64::from(rng.unit())).collect();
            let b: Vec<f64> = (0..m).map(|_| f64::from(rng.unit()) * 2.0).collect();
            let ot = exact_ot(&pts(&a, 1), &pts(&b, 1)).unwrap();
            let exact = w1_1d(&a, None, &b, None).unwrap();
            assert!(close(ot, exact, 1e-9), "{n} vs {m}: {ot} != {exact}");
        }
    }

    #[test]
    fn sliced_is_exact_in_1d() {
        let a = pts(&[0.0, 1.0, 3.0, 2.5], 1);
        let b = pts(&[5.0, 6.0, 8.0], 1);
        let exact = w1_1d(&a.data, None, &b.data, None).unwrap();
        for seed in 0..5 {
            let s = sliced(&a, &b, 3, seed).unwrap();
            assert!(close(s, exact, 1e-12), "{s} != {exact}");
        }
    }

    #[test]
    fn sliced_shift_in_2d_is_two_over_pi_of_exact() {
        // A shift by t: W1 = |t| exactly; the sliced distance is E|<θ, t>| = 2|t|/π.
        let mut rng = SplitMix64::new(5);
        let a: Vec<f64> = (0..200).map(|_| f64::from(rng.unit())).collect();
        let b: Vec<f64> = a.chunks(2).flat_map(|p| [p[0] + 3.0, p[1] - 4.0]).collect();
        let (a, b) = (pts(&a, 2), pts(&b, 2));
        let exact = exact_ot(&a, &b).unwrap();
        assert!(close(exact, 5.0, 1e-9), "{exact}");
        let s = sliced(&a, &b, 5000, 1).unwrap();
        let want = exact * 2.0 / std::f64::consts::PI;
        assert!((s - want).abs() <= 0.03 * want, "{s} vs {want}");
        assert_eq!(s, sliced(&a, &b, 5000, 1).unwrap(), "deterministic");
        assert_ne!(
            sliced(&a, &b, 50, 1).unwrap(),
            sliced(&a, &b, 50, 2).unwrap(),
            "the seed matters"
        );
    }

    #[test]
    fn sliced_never_exceeds_exact() {
        let mut rng = SplitMix64::new(9);
        let mut draw = |k: usize, s: f64| -> Points {
            let data = (0..k * 3).map(|_| f64::from(rng.unit()) * s).collect();
            Points::new(data, k, 3).unwrap()
        };
        let (a, b) = (draw(60, 1.0), draw(60, 2.0));
        let exact = exact_ot(&a, &b).unwrap();
        let s = sliced(&a, &b, 500, 0).unwrap();
        assert!(s <= exact + 1e-12 && s > 0.2 * exact, "{s} vs {exact}");
    }

    #[test]
    fn distance_picks_the_method() {
        let a1 = pts(&[0.0, 1.0, 3.0], 1);
        let b1 = pts(&[5.0, 6.0, 8.0], 1);
        let r = distance(&a1, &b1, None, 0).unwrap();
        assert_eq!(r.method, "exact-1d");
        assert!(close(r.w1, 5.0, 1e-12));
        assert_eq!(distance(&a1, &b1, Some(10), 0).unwrap().method, "exact-1d");
        let a2 = pts(&[0.0, 0.0, 1.0, 1.0], 2);
        let b2 = pts(&[0.0, 1.0, 1.0, 0.0], 2);
        assert_eq!(distance(&a2, &b2, None, 0).unwrap().method, "exact-ot");
        assert_eq!(distance(&a2, &b2, Some(8), 0).unwrap().method, "sliced");
        assert!(distance(&a2, &b2, Some(0), 0).is_err());
        let json = serde_json::to_string(&distance(&a1, &b1, None, 0).unwrap()).unwrap();
        assert_eq!(json, r#"{"w1":5.0,"method":"exact-1d"}"#);
    }

    #[test]
    fn distance_rejects_bad_sets() {
        let a1 = pts(&[0.0, 1.0], 1);
        let a2 = pts(&[0.0, 1.0], 2);
        let e = distance(&a1, &a2, None, 0).unwrap_err().to_string();
        assert!(e.contains("dimension"), "{e}");
        let bad = Points {
            data: vec![f64::NAN],
            rows: 1,
            dims: 1,
        };
        assert!(distance(&bad, &a1, None, 0).is_err());
        let empty = Points {
            data: vec![],
            rows: 0,
            dims: 2,
        };
        assert!(distance(&empty, &a2, None, 0).is_err());
        assert!(sliced(&a2, &a2, 0, 0).is_err());
    }

    #[test]
    fn exact_ot_refuses_large_sets() {
        let n = MAX_EXACT_POINTS + 1;
        let a = Points::new(vec![0.0; 2 * n], n, 2).unwrap();
        let b = pts(&[1.0, 1.0], 2);
        let e = exact_ot(&a, &b).unwrap_err().to_string();
        assert!(e.contains("--sliced"), "{e}");
        let e = distance(&a, &b, None, 0).unwrap_err().to_string();
        assert!(e.contains("--sliced"), "{e}");
        assert_eq!(distance(&a, &b, Some(4), 0).unwrap().method, "sliced");
        assert!(
            exact_ot(&a, &a)
                .unwrap_err()
                .to_string()
                .contains("--sliced")
        );
    }

    proptest! {
        #[test]
        fn assignment_matches_brute_force(
            (n, cost) in (1usize..7).prop_flat_map(|n| {
                (Just(n), prop::collection::vec(0.0f64..10.0, n * n))
            })
        ) {
            let rows = assignment(&cost, n);
            let mut seen = rows.clone();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..n).collect::<Vec<_>>());
            let got: f64 = rows.iter().enumerate().map(|(i, &j)| cost[i * n + j]).sum();
            let want = brute_force_assignment(&cost, n);
            prop_assert!(close(got, want, 1e-9), "{} != {}", got, want);
        }

        #[test]
        fn assignment_with_integer_ties_matches_brute_force(
            (n, cost) in (1usize..7).prop_flat_map(|n| {
                (Just(n), prop::collection::vec(0u8..4, n * n))
            })
        ) {
            let cost: Vec<f64> = cost.into_iter().map(f64::from).collect();
            let rows = assignment(&cost, n);
            let got: f64 = rows.iter().enumerate().map(|(i, &j)| cost[i * n + j]).sum();
            prop_assert_eq!(got, brute_force_assignment(&cost, n));
        }

        #[test]
        fn transport_matches_brute_force(
            (n, m) in prop::sample::select(vec![(1, 2), (2, 1), (1, 6), (2, 3), (3, 2), (2, 6), (3, 6), (4, 2)]),
            seed in any::<u64>(),
        ) {
            let mut rng = SplitMix64::new(seed);
            let mut draw = |k: usize| -> Points {
                let data = (0..k * 2).map(|_| f64::from(rng.unit())).collect();
                Points::new(data, k, 2).unwrap()
            };
            let (a, b) = (draw(n), draw(m));
            let (got, want) = (exact_ot(&a, &b).unwrap(), brute_force_ot(&a, &b));
            prop_assert!(close(got, want, 1e-9), "{} != {}", got, want);
        }

        #[test]
        fn transport_with_ties_matches_brute_force(
            (n, m) in prop::sample::select(vec![(2, 3), (3, 2), (2, 6), (3, 6), (6, 3), (4, 2)]),
            seed in any::<u64>(),
        ) {
            // Points on a 3×3 grid: many equal costs, so many degenerate pivots.
            let mut rng = SplitMix64::new(seed);
            let mut draw = |k: usize| -> Points {
                let data = (0..k * 2).map(|_| rng.below(3) as f64).collect();
                Points::new(data, k, 2).unwrap()
            };
            let (a, b) = (draw(n), draw(m));
            let (got, want) = (exact_ot(&a, &b).unwrap(), brute_force_ot(&a, &b));
            prop_assert!(close(got, want, 1e-9), "{} != {}", got, want);
        }

        #[test]
        fn transport_of_equal_sizes_matches_the_assignment(
            (n, cost) in (1usize..30).prop_flat_map(|n| {
                (Just(n), prop::collection::vec(0u8..5, n * n))
            })
        ) {
            let cost: Vec<f64> = cost.into_iter().map(f64::from).collect();
            let rows = assignment(&cost, n);
            let want: f64 = rows.iter().enumerate().map(|(i, &j)| cost[i * n + j]).sum();
            prop_assert!(close(transport(&cost, n, n), want / n as f64, 1e-12));
        }
    }
}
