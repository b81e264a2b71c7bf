"""The PyTorch side of the performance harness: the same workload as
`tuwen bench infer|train --model DIR`, on the same checkpoint folder, through transformers.

    python3 python/bench_hf.py infer --model target/bench-models/vit-b16 --batch-size 8 --threads 2
    python3 python/bench_hf.py train --model target/bench-models/clip-tiny --batch-size 64 --threads 2
    python3 python/bench_hf.py gemm --threads 2

Workloads (random inputs of the model's size):
- infer: ViT and EfficientNet logits; CLIP and SigLIP image embeddings (`--text`: text
  embeddings at the model's text length); ViT-MAE the encoder on the unmasked patches at the
  config's mask_ratio.
- train: forward, the family's loss (cross-entropy for classifiers, the contrastive loss for
  CLIP and SigLIP, the pixel loss for MAE), backward, global-norm clipping to 1 and AdamW.

Prints one JSON line: {"ms": median per batch, "runs": [...], "peak_rss_mb", "load_ms", "flops"}.
`flops` is one batch's multiply-adds times two as torch's FlopCounterMode counts them (matmuls,
convolutions, attention), the numerator of the share of machine peak.
"""

import argparse
import json
import resource
import statistics
import sys
import time

import torch


def load(folder, train):
    from transformers import (AutoConfig, CLIPModel, EfficientNetForImageClassification,
                              SiglipModel, ViTForImageClassification, ViTMAEForPreTraining)
    cfg = AutoConfig.from_pretrained(folder)
    cls = {
        "vit": ViTForImageClassification,
        "efficientnet": EfficientNetForImageClassification,
        "clip": CLIPModel,
        "siglip": SiglipModel,
        "vit_mae": ViTMAEForPreTraining,
    }[cfg.model_type]
    model = cls.from_pretrained(folder)
    model.train(train)
    return model, cfg


def inputs(model, cfg, batch, text, gen):
    """The workload's random inputs, and a function of them that returns what is timed."""
    kind = cfg.model_type
    if kind in ("clip", "siglip") and text:
        t = cfg.text_config
        length = t.max_position_embeddings
        ids = torch.randint(3, t.vocab_size, (batch, length), generator=gen)
        if kind == "clip":
            ids[:, -1] = t.eos_token_id
        return (ids,), lambda ids: model.get_text_features(input_ids=ids)
    vc = cfg.vision_config if kind in ("clip", "siglip") else cfg
    px = torch.randn(batch, 3, vc.image_size, vc.image_size, generator=gen)
    if kind in ("clip", "siglip"):
        return (px,), lambda px: model.get_image_features(pixel_values=px)
    if kind == "vit_mae":
        return (px,), lambda px: model.vit(pixel_values=px).last_hidden_state
    return (px,), lambda px: model(pixel_values=px).logits


def train_step(model, cfg, batch, gen):
    kind = cfg.model_type
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    if kind in ("clip", "siglip"):
        t, v = cfg.text_config, cfg.vision_config
        ids = torch.randint(3, t.vocab_size, (batch, t.max_position_embeddings), generator=gen)
        if kind == "clip":
            ids[:, -1] = t.eos_token_id
        px = torch.randn(batch, 3, v.image_size, v.image_size, generator=gen)

        def loss():
            return model(input_ids=ids, pixel_values=px, return_loss=True).loss
    elif kind == "vit_mae":
        px = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=gen)

        def loss():
            return model(pixel_values=px).loss
    else:
        px = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=gen)
        labels = torch.arange(batch) % cfg.num_labels

        def loss():
            return torch.nn.functional.cross_entropy(model(pixel_values=px).logits, labels)

    def step():
        opt.zero_grad(set_to_none=True)
        out = loss()
        out.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return out

    return step


def count_flops(fn):
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gemm(a):
    n = a.size
    x, y = torch.randn(n, n), torch.randn(n, n)
    runs = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        torch.mm(x, y)
        if i >= a.warmup:
            runs.append(time.perf_counter() - t0)
    ms = statistics.median(runs) * 1e3
    print(json.dumps({"ms": ms, "runs": [r * 1e3 for r in runs], "flops": 2 * n ** 3,
                      "gflops": 2 * n ** 3 / ms / 1e6, "peak_rss_mb": peak_rss_mb()}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("task", choices=["infer", "train", "gemm"])
    ap.add_argument("--model")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--text", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--size", type=int, default=2048, help="gemm: the square matrices' side")
    ap.add_argument("--bf16", action="store_true", help="infer under CPU autocast to bfloat16")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.task == "gemm":
        return gemm(a)
    if not a.model:
        sys.exit("--model is required")
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    model, cfg = load(a.model, a.task == "train")
    load_ms = (time.perf_counter() - t0) * 1e3
    if a.task == "infer":
        args, fn = inputs(model, cfg, a.batch_size, a.text, gen)

        def step():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                        enabled=a.bf16):
                return fn(*args)
    else:
        step = train_step(model, cfg, a.batch_size, gen)
    flops = count_flops(step)
    runs = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        step()
        if i >= a.warmup:
            runs.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({"ms": statistics.median(runs), "runs": runs, "peak_rss_mb": peak_rss_mb(),
                      "load_ms": load_ms, "flops": flops}))


if __name__ == "__main__":
    main()
