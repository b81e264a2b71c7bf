"""Image-embedding throughput of a CLIP folder in PyTorch, as `tuwen index` measures it: every
image file under DIR decoded with PIL, preprocessed by the folder's CLIPImageProcessor and
embedded by `get_image_features`, BATCH at a time, on THREADS threads.

    python3 python/bench_index.py MODEL_DIR IMAGE_DIR [--batch 32] [--threads 2]

Prints `images/s`. See BENCHMARKS.md for the paired tuwen command.
"""

import argparse
import os
import time

import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("images")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = CLIPModel.from_pretrained(a.model).eval()
    proc = CLIPImageProcessor.from_pretrained(a.model)
    exts = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
    paths = sorted(os.path.join(r, f) for r, _, fs in os.walk(a.images) for f in fs
                   if f.lower().endswith(exts))
    t0 = time.perf_counter()
    n = 0
    with torch.inference_mode():
        for i in range(0, len(paths), a.batch):
            imgs = [Image.open(p).convert("RGB") for p in paths[i:i + a.batch]]
            x = proc(images=imgs, return_tensors="pt")["pixel_values"]
            e = model.get_image_features(pixel_values=x)
            if not torch.is_tensor(e):
                e = e.pooler_output
            e = e / e.norm(dim=-1, keepdim=True)
            n += len(imgs)
    dt = time.perf_counter() - t0
    print(f"{n} images in {dt:.2f} s: {n / dt:.1f} images/s")


if __name__ == "__main__":
    main()
