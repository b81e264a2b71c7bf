"""Reference values and gradients of the grouped contrastive losses (identical captions are
positives) on small random unit embeddings, for crates/tuwen/tests/loss_grads.rs.

    python3 python/make_loss_fixtures.py   # torch and safetensors of python/requirements.txt

The losses are computed in float64 from the float32 inputs that the file stores, so the stored
values are the exact answers for those inputs, rounded once to float32.
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "loss_reference.safetensors"

N, D = 12, 7
# Groups of 4, 3, 2, 1 and 2 pairs, interleaved (as from text_groups on captions).
GROUPS = [0, 1, 0, 2, 1, 0, 3, 2, 0, 1, 4, 4]


def clip_loss_grouped(img, txt, logit_scale, groups):
    """Soft-target cross-entropy both ways: a row's target is uniform over its group."""
    scale = logit_scale.exp().clamp(max=100.0)
    logits = img @ txt.t() * scale
    same = (groups[:, None] == groups[None, :]).to(logits.dtype)
    per_image = same / same.sum(1, keepdim=True)
    per_text = same.t() / same.t().sum(1, keepdim=True)
    return (F.cross_entropy(logits, per_image) + F.cross_entropy(logits.t(), per_text)) / 2


def siglip_loss_grouped(img, txt, logit_scale, logit_bias, groups):
    """-(1/n) sum_ij w_ij log sigmoid(z_ij (exp(t) <x_i, y_j> + b)), z_ij = +1 within a group,
    w_ij = 1/|group of i| for positives and 1 for negatives."""
    logits = img @ txt.t() * logit_scale.exp() + logit_bias
    same = groups[:, None] == groups[None, :]
    z = torch.where(same, 1.0, -1.0).to(logits.dtype)
    size = same.sum(1, keepdim=True).to(logits.dtype)
    w = torch.where(same, 1.0 / size, torch.ones_like(size))
    return -(w * F.logsigmoid(z * logits)).sum() / len(img)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main():
    rng = np.random.default_rng(20260)
    x = unit(rng.standard_normal((N, D))).astype(np.float32)
    y = unit(rng.standard_normal((N, D))).astype(np.float32)
    # A scale under CLIP's clamp at 100, so the temperature has a gradient in both losses.
    t = np.log(rng.uniform(8.0, 20.0, size=1)).astype(np.float32)
    b = rng.uniform(-4.0, -2.0, size=1).astype(np.float32)
    groups = np.array(GROUPS, dtype=np.int64)
    g = torch.from_numpy(groups)

    def leaves():
        return [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (x, y, t, b)]

    # The reference's own check: ids 0..n give the standard CLIP loss.
    xx, yy, tt, _ = leaves()
    logits = xx @ yy.t() * tt.exp()
    labels = torch.arange(N)
    standard = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    assert torch.allclose(clip_loss_grouped(xx, yy, tt, torch.arange(N)), standard, atol=1e-12)

    ref = {"x": x, "y": y, "t": t, "b": b, "groups": groups}
    xx, yy, tt, bb = leaves()
    loss = clip_loss_grouped(xx, yy, tt, g)
    loss.backward()
    ref["clip/loss"] = loss.detach().numpy().reshape(1)
    for name, leaf in [("x", xx), ("y", yy), ("t", tt)]:
        ref[f"clip/grad_{name}"] = leaf.grad.numpy()

    xx, yy, tt, bb = leaves()
    loss = siglip_loss_grouped(xx, yy, tt, bb, g)
    loss.backward()
    ref["siglip/loss"] = loss.detach().numpy().reshape(1)
    for name, leaf in [("x", xx), ("y", yy), ("t", tt), ("b", bb)]:
        ref[f"siglip/grad_{name}"] = leaf.grad.numpy()

    ref = {k: np.ascontiguousarray(v if v.dtype == np.int64 else v.astype(np.float32)) for k, v in ref.items()}
    save_file(ref, OUT)
    print(f"wrote {OUT}: clip {ref['clip/loss'][0]:.6f}, siglip {ref['siglip/loss'][0]:.6f}")


if __name__ == "__main__":
    main()
