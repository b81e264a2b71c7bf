"""The PyTorch side of BENCHMARKS.md: seconds per training step (forward, backward, AdamW) of
the same tiny CLIP/SigLIP that `tuwen bench train` times, on random pixels and captions, with
the same number of threads.

    .venv/bin/python python/bench_torch.py --family clip --arch tiny --image-size 32 --batch-size 64 --threads 2
"""

import argparse
import statistics
import time

import torch
from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

ARCHS = {  # vision (width, layers, heads, patch), text (width, layers, heads, length), embed
    "tiny": ((64, 3, 4, 8), (64, 2, 4, 24), 64),
    "small": ((192, 6, 3, 16), (192, 6, 3, 32), 128),
}


def build(family, arch, image_size, vocab):
    (vd, vl, vh, patch), (td, tl, th, length), embed = ARCHS[arch]
    vision = dict(hidden_size=vd, intermediate_size=4 * vd, num_hidden_layers=vl, num_attention_heads=vh,
                  image_size=image_size, patch_size=patch)
    text = dict(vocab_size=vocab, hidden_size=td, intermediate_size=4 * td, num_hidden_layers=tl,
                num_attention_heads=th, max_position_embeddings=length, eos_token_id=0, pad_token_id=0)
    if family == "clip":
        return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed)), length
    text["projection_size"] = vd
    return SiglipModel(SiglipConfig(text_config=text, vision_config=vision)), length


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="clip", choices=["clip", "siglip"])
    ap.add_argument("--arch", default="tiny", choices=list(ARCHS))
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model, length = build(a.family, a.arch, a.image_size, 64)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)
    px = torch.randn(a.batch_size, 3, a.image_size, a.image_size)
    # Captions of 11 tokens ending in the end token (id 0), as long as the Rust side's.
    n = 11 if a.family == "clip" else length
    ids = torch.randint(3, 64, (a.batch_size, n))
    ids[:, -1] = 0
    times = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        out = model(input_ids=ids, pixel_values=px, return_loss=True)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"pytorch {a.family} {a.arch} {a.image_size}px batch {a.batch_size}, {a.threads} threads: "
          f"median {med * 1000:.1f} ms/step, {a.batch_size / med:.0f} samples/s")


if __name__ == "__main__":
    main()
