"""Exports scikit-learn's handwritten digits (1,797 8x8 scans from UCI's optdigits) as a
captioned image set for `tuwen train`: PNGs upscaled to 32x32, `train.csv` and `test.csv`
(filepath, caption, label) with a seeded 80/20 split.

    /work/pyenv/bin/python python/make_digits.py --out /tmp/digits
    tuwen train siglip --data /tmp/digits/train.csv --val /tmp/digits/test.csv \
        --val-template "a handwritten {}" --out /tmp/digits-siglip

With `--template "a handwritten digit {w}" --upscale nearest` every caption follows one
template, as labelled data turned into captions does (many identical captions per batch).
"""

import argparse
import csv
import os

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# Captions name the digit in several ways, as alt-texts would.
TEMPLATES = [
    "a handwritten {w}",
    "the digit {w}",
    "a scan of the number {d}",
    "handwritten {d}",
    "a {w} written by hand",
]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--template", help="one caption template for every image, e.g. "
                   "'a handwritten digit {w}' ({w}: the word, {d}: the numeral)")
    p.add_argument("--upscale", choices=["bicubic", "nearest"], default="bicubic")
    a = p.parse_args()
    resample = Image.NEAREST if a.upscale == "nearest" else Image.BICUBIC
    d = load_digits()
    os.makedirs(os.path.join(a.out, "images"), exist_ok=True)
    rng = np.random.default_rng(a.seed)
    order = rng.permutation(len(d.target))
    n_test = len(order) // 5
    test = set(order[:n_test].tolist())
    rows = {"train": [], "test": []}
    for i, (img, label) in enumerate(zip(d.images, d.target)):
        pixels = (img / 16.0 * 255.0).round().astype(np.uint8)
        im = Image.fromarray(pixels, "L").resize((a.size, a.size), resample).convert("RGB")
        name = f"images/{i:04d}.png"
        im.save(os.path.join(a.out, name))
        t = TEMPLATES[rng.integers(len(TEMPLATES))]
        t = a.template or t
        caption = t.format(w=WORDS[label], d=label)
        rows["test" if i in test else "train"].append((name, caption, WORDS[label]))
    for split, r in rows.items():
        with open(os.path.join(a.out, f"{split}.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["filepath", "caption", "label"])
            w.writerows(r)
    print(f"{len(rows['train'])} training and {len(rows['test'])} test digits in {a.out}")


if __name__ == "__main__":
    main()
