"""The PyTorch side of BENCHMARKS.md for image classifiers: inference and a training step
(forward, cross-entropy, backward, AdamW) of the same transformers EfficientNet or ViT that
`tuwen bench classifier` times, on random images, with the same number of threads.

    /work/pyenv/bin/python python/bench_torch_classifier.py --arch efficientnet-b0 --batch-size 8 --threads 2
"""

import argparse
import statistics
import time

import torch
from transformers import (EfficientNetConfig, EfficientNetForImageClassification, ViTConfig,
                          ViTForImageClassification)

EFFNET = {  # width, depth, resolution, dropout (the paper's family)
    f"efficientnet-b{i}": v for i, v in enumerate([
        (1.0, 1.0, 224, 0.2), (1.0, 1.1, 240, 0.2), (1.1, 1.2, 260, 0.3), (1.2, 1.4, 300, 0.3),
        (1.4, 1.8, 380, 0.4), (1.6, 2.2, 456, 0.4), (1.8, 2.6, 528, 0.5), (2.0, 3.1, 600, 0.5)])
}
VIT = {"vit-ti16": (192, 12, 3, 16), "vit-s16": (384, 12, 6, 16), "vit-b16": (768, 12, 12, 16)}


def round_filters(w, c, d=8):
    c *= w
    n = max(d, int(c + d / 2) // d * d)
    return int(n + d if n < 0.9 * c else n)


def build(arch, size):
    if arch in EFFNET:
        w, d, r, drop = EFFNET[arch]
        cfg = EfficientNetConfig(width_coefficient=w, depth_coefficient=d, image_size=size or r,
                                 dropout_rate=drop, num_labels=1000, hidden_dim=round_filters(w, 1280))
        return EfficientNetForImageClassification(cfg), size or r
    h, l, heads, p = VIT[arch]
    cfg = ViTConfig(hidden_size=h, num_hidden_layers=l, num_attention_heads=heads, intermediate_size=4 * h,
                    patch_size=p, image_size=size or 224, num_labels=1000)
    return ViTForImageClassification(cfg), size or 224


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="efficientnet-b0")
    ap.add_argument("--image-size", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model, size = build(a.arch, a.image_size)
    px = torch.rand(a.batch_size, 3, size, size)
    y = torch.arange(a.batch_size) % 1000
    model.eval()
    infer = []
    with torch.no_grad():
        for i in range(a.warmup + a.steps):
            t0 = time.perf_counter()
            model(pixel_values=px)
            if i >= a.warmup:
                infer.append(time.perf_counter() - t0)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    train = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(pixel_values=px).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= a.warmup:
            train.append(time.perf_counter() - t0)
    i, t = statistics.median(infer), statistics.median(train)
    print(f"torch {a.arch} {size}px batch {a.batch_size}, {a.threads} threads: inference median {i * 1e3:.1f} ms "
          f"({a.batch_size / i:.1f} images/s), training step median {t * 1e3:.1f} ms ({a.batch_size / t:.1f} images/s)")


if __name__ == "__main__":
    main()
