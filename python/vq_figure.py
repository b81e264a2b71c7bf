"""Composes docs/vqgan_digits.png from a VQGAN run's reconstructions.png and per-class prior
samples (`tuwen sample ... --class C --out DIR/C.npy`), plus uniformly random codes decoded
(`random.npy`), as the README's "Measured" commands write them.

    python3 python/vq_figure.py RUN/reconstructions.png SAMPLES_DIR docs/vqgan_digits.png
"""

import os
import sys

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def tile(arr, scale=4):
    """[n, c, h, w] in [-1, 1] -> one row image."""
    imgs = []
    for a in arr:
        g = ((np.clip(a, -1, 1) + 1) * 127.5).round().astype(np.uint8)
        g = g[0] if g.shape[0] == 1 else g.transpose(1, 2, 0)
        im = Image.fromarray(g).resize((g.shape[1] * scale, g.shape[0] * scale), Image.NEAREST)
        imgs.append(im.convert("RGB"))
    w, h = imgs[0].size
    row = Image.new("RGB", (len(imgs) * (w + 2), h + 2), "white")
    for i, im in enumerate(imgs):
        row.paste(im, (i * (w + 2) + 1, 1))
    return row


def main():
    rec_png, samples, out = sys.argv[1:4]
    rows = [("prior, class " + c, tile(np.load(os.path.join(samples, c + ".npy")))) for c in CLASSES]
    rnd = os.path.join(samples, "random.npy")
    if os.path.exists(rnd):
        rows.append(("random codes", tile(np.load(rnd))))
    label_w = 150
    width = max(r.size[0] for _, r in rows) + label_w
    rec = Image.open(rec_png).convert("RGB")
    scale = width / rec.size[0]
    rec = rec.resize((int(rec.size[0] * scale), int(rec.size[1] * scale)), Image.NEAREST)
    height = 30 + rec.size[1] + 30 + sum(r.size[1] for _, r in rows)
    fig = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(fig)
    d.text((6, 8), "held-out digits (rows 1, 3) and their VQGAN reconstructions (rows 2, 4)", fill="black")
    fig.paste(rec, (0, 30))
    y = 30 + rec.size[1] + 8
    d.text((6, y), "GPT-2 prior samples, decoded (one row per class asked for)", fill="black")
    y += 22
    for name, r in rows:
        d.text((6, y + r.size[1] // 2 - 6), name, fill="black")
        fig.paste(r, (label_w, y))
        y += r.size[1]
    fig.save(out)
    print("wrote", out, fig.size)


if __name__ == "__main__":
    main()
