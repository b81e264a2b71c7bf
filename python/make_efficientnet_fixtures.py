"""A tiny random-weight EfficientNet with unusual width, depth and resolution (width 0.3, depth
0.4, 67 px, symmetric padding in one stride-2 block), batch-norm statistics far from the
defaults, and transformers' logits on real photos, for tuwen's parity test.

    /work/pyenv/bin/python python/make_efficientnet_fixtures.py [TUWEN_SAVED_FOLDER]
"""

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors.numpy import save_file
from transformers import EfficientNetConfig, EfficientNetForImageClassification
from transformers.models.efficientnet.image_processing_pil_efficientnet import EfficientNetImageProcessorPil

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
TAG = "efficientnet-odd"
IMAGES = ["astronaut.png", "coffee.bmp", "chelsea.jpg"]


def load(name):
    return ImageOps.exif_transpose(Image.open(FIX / "images" / name)).convert("RGB")


def round_filters(cfg, c):
    d = cfg.depth_divisor
    c *= cfg.width_coefficient
    n = max(d, int(c + d / 2) // d * d)
    return int(n + d if n < 0.9 * c else n)


def main():
    torch.manual_seed(0)
    cfg = EfficientNetConfig(width_coefficient=0.3, depth_coefficient=0.4, image_size=67,
                             depthwise_padding=[2], dropout_rate=0.2, num_labels=5,
                             initializer_range=0.1)
    cfg.hidden_dim = round_filters(cfg, 1280)
    model = EfficientNetForImageClassification(cfg)
    proc = EfficientNetImageProcessorPil(size={"height": 67, "width": 67})
    px = proc(images=[load(n) for n in IMAGES], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bn" in name or "norm" in name or name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
        # Running statistics of real activations (one pass over the photos in training mode,
        # as a cumulative average), then moved off them, so that they are neither the
        # defaults nor the batch's own.
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        model.train()
        model(pixel_values=px)
        model.eval()
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.add_(torch.randn_like(buf) * 0.2 * buf.abs().mean())
            elif name.endswith("running_var"):
                buf.mul_(torch.rand_like(buf) * 0.6 + 0.7)
    out = FIX / TAG
    model.save_pretrained(out)
    proc.save_pretrained(out)
    with torch.no_grad():
        logits = model(pixel_values=px).logits
    save_file({"pixel_values": px.numpy(), "logits": logits.numpy()},
              str(FIX / "efficientnet_reference.safetensors"))
    n = sum(p.numel() for p in model.parameters())
    print("wrote", out, "logits", logits.numpy().round(3).tolist(), "params", n)
    if len(sys.argv) > 1:
        back = EfficientNetForImageClassification.from_pretrained(sys.argv[1]).eval()
        with torch.no_grad():
            d = (back(pixel_values=px).logits - logits).abs().max().item()
        print(f"tuwen-saved folder reloads in transformers: max logit difference {d:.2e}")
        assert d < 1e-4


if __name__ == "__main__":
    main()
