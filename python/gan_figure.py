"""Puts the sample pictures of several `tuwen train gan` runs side by side, each under a
caption, as one PNG (the figures in README.md's GAN section).

    python3 python/gan_figure.py --out docs/gan_8gaussians.png \
        "WGAN-GP|runs/wgan-gp/samples/final.png" "minimax|runs/minimax/samples/final.png"
"""

import argparse

from PIL import Image, ImageDraw


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--cols", type=int, default=2)
    p.add_argument("panels", nargs="+", help="CAPTION|PATH")
    a = p.parse_args()
    panels = [(c, Image.open(f).convert("RGB")) for c, f in (x.split("|", 1) for x in a.panels)]
    w = max(im.width for _, im in panels)
    h = max(im.height for _, im in panels) + 18
    rows = (len(panels) + a.cols - 1) // a.cols
    out = Image.new("RGB", (w * a.cols, h * rows), "white")
    d = ImageDraw.Draw(out)
    for k, (caption, im) in enumerate(panels):
        x, y = (k % a.cols) * w, (k // a.cols) * h
        out.paste(im, (x, y + 18))
        d.text((x + 6, y + 3), caption, fill=(20, 20, 20))
    out.save(a.out)


if __name__ == "__main__":
    main()
