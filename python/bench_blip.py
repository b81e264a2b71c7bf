"""transformers' side of `tuwen bench caption`: one greedy caption of exactly N tokens of a
random image at the model's size (image encoder included), with or without the cache.

    python python/bench_blip.py --model DIR --tokens 20 --threads 2 [--no-cache] [--runs 5]
"""

import argparse
import json
import statistics
import time

import torch
from transformers import BlipForConditionalGeneration


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--tokens", type=int, default=20)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-cache", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = BlipForConditionalGeneration.from_pretrained(a.model).eval()
    size = model.config.vision_config.image_size
    times = []
    for run in range(a.runs + 1):
        pixels = torch.randn(1, 3, size, size)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(pixel_values=pixels, max_new_tokens=a.tokens, min_new_tokens=a.tokens,
                                 num_beams=1, do_sample=False, use_cache=not a.no_cache)
        ms = (time.perf_counter() - t0) * 1e3
        assert out.shape[1] == a.tokens + 1, out.shape
        if run > 0:
            times.append(ms)
    print(json.dumps({"ms": statistics.median(times), "runs": times, "tokens": a.tokens, "cache": not a.no_cache}))


if __name__ == "__main__":
    main()
