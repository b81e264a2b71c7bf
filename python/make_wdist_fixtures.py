"""Sample sets and scipy's Wasserstein-1 distances between them, for
crates/tuwen/tests/wdist_scipy.rs.

    python3 python/make_wdist_fixtures.py   # numpy and scipy of python/requirements.txt

Writes tests/fixtures/wdist/: the sets (.npy float64 or float32, .csv with a header line),
weights.json (weights of the weighted 1-D pair) and expected.json:

- 1-D pairs: scipy.stats.wasserstein_distance (with the weights for the weighted pair);
- equal-size N-D pairs: the mean cost of scipy.optimize.linear_sum_assignment on the Euclidean
  cost matrix (scipy.spatial.distance.cdist);
- one unequal-size 2-D pair: scipy.stats.wasserstein_distance_nd (exact, a linear program).

A float32 set is compared as its float32 values widened to float64, as tuwen reads it.
"""

import json
from pathlib import Path

import numpy as np
import scipy
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist
from scipy.stats import wasserstein_distance, wasserstein_distance_nd

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "wdist"


def save_npy(name, x, dtype=np.float64, shape=None):
    x = np.ascontiguousarray(x, dtype=dtype)
    if shape is not None:
        x = x.reshape(shape)
    np.save(OUT / name, x)
    # What tuwen reads: the first axis is the sample axis, the rest are flattened.
    return x.astype(np.float64).reshape(x.shape[0], -1)


def save_csv(name, x, header):
    """Numbers as Python's shortest round-trip repr, so the file holds exactly x."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    lines = [header] + [",".join(repr(float(v)) for v in row) for row in x]
    (OUT / name).write_text("\n".join(lines) + "\n")
    return x


def assignment_w1(a, b):
    cost = cdist(a, b)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240613)
    pairs = []

    # 1-D, unequal sizes, different distributions; one .npy and one .csv.
    a1 = save_npy("a1.npy", rng.normal(0.0, 1.0, 300))
    b1 = save_csv("b1.csv", rng.gamma(2.0, 0.8, 517) - 1.0, "value")
    pairs.append(
        {
            "a": "a1.npy",
            "b": "b1.csv",
            "method": "exact-1d",
            "w1": float(wasserstein_distance(a1[:, 0], b1[:, 0])),
        }
    )

    # 1-D with weights (some zero), unequal sizes, ties between the sets.
    aw = save_npy("aw.npy", np.round(rng.uniform(-2.0, 2.0, 40), 1))
    bw = save_npy("bw.npy", np.round(rng.normal(0.5, 1.0, 57), 1))
    wa = rng.uniform(0.0, 3.0, 40)
    wa[[3, 17]] = 0.0
    wb = rng.exponential(1.0, 57)
    weights = {"aw.npy": wa.tolist(), "bw.npy": wb.tolist()}
    (OUT / "weights.json").write_text(json.dumps(weights, indent=1) + "\n")
    pairs.append(
        {
            "a": "aw.npy",
            "b": "bw.npy",
            "weighted": True,
            "method": "exact-1d",
            "w1": float(wasserstein_distance(aw[:, 0], bw[:, 0], wa, wb)),
        }
    )

    # 2-D, 64 vs 64: the first set also as .csv, the second as float32.
    x = rng.normal(0.0, 1.0, (64, 2))
    a64 = save_npy("a2_64.npy", x)
    save_csv("a2_64.csv", x, "x,y")
    b64 = save_npy("b2_64.npy", rng.normal(0.0, 1.0, (64, 2)) * [1.5, 0.5] + [1.0, 0.0], np.float32)
    pairs.append({"a": "a2_64.npy", "b": "b2_64.npy", "method": "exact-ot", "w1": assignment_w1(a64, b64)})

    # 2-D, 200 vs 200: a ring against a blob.
    t = rng.uniform(0.0, 2 * np.pi, 200)
    ring = np.stack([np.cos(t), np.sin(t)], 1) * 2.0 + rng.normal(0.0, 0.1, (200, 2))
    a200 = save_npy("a2_200.npy", ring)
    b200 = save_npy("b2_200.npy", rng.normal(0.0, 0.7, (200, 2)))
    pairs.append({"a": "a2_200.npy", "b": "b2_200.npy", "method": "exact-ot", "w1": assignment_w1(a200, b200)})

    # 3-D, 50 vs 50; the second stored with shape (50, 3, 1) (trailing axes are flattened).
    a3 = save_npy("a3_50.npy", rng.uniform(-1.0, 1.0, (50, 3)))
    b3 = save_npy("b3_50.npy", rng.normal(0.2, 0.6, (50, 3)), shape=(50, 3, 1))
    pairs.append({"a": "a3_50.npy", "b": "b3_50.npy", "method": "exact-ot", "w1": assignment_w1(a3, b3)})

    # 2-D, 30 vs 45 (unequal sizes): exact optimal transport by a linear program.
    a30 = save_npy("a2_30.npy", rng.normal(0.0, 1.0, (30, 2)))
    b45 = save_npy("b2_45.npy", rng.uniform(-1.0, 2.0, (45, 2)))
    pairs.append(
        {"a": "a2_30.npy", "b": "b2_45.npy", "method": "exact-ot", "w1": float(wasserstein_distance_nd(a30, b45))}
    )

    expected = {
        "generator": "python/make_wdist_fixtures.py",
        "scipy": scipy.__version__,
        "numpy": np.__version__,
        "pairs": pairs,
        "same_points": [["a2_64.csv", "a2_64.npy"]],
    }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {OUT} ({total} bytes)")
    for p in pairs:
        print(f"  {p['a']} vs {p['b']}: {p['w1']:.12f}")


if __name__ == "__main__":
    main()
