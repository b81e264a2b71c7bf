"""A tiny random-weight ViTMAE checkpoint with odd sizes (40 px images, 8 px patches, widths 36
and 20) and transformers' outputs on three real photos: logits, mask and loss at mask ratio
0.75 with fixed noise (plain and norm_pix_loss), logits at mask ratio 0, and the gradient of
every trained parameter. Also checks that a folder tuwen saved loads back (pass its path).

    /work/pyenv/bin/python python/make_mae_fixtures.py [TUWEN_SAVED_FOLDER]
"""

import re
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors.numpy import save_file
from transformers import ViTMAEConfig, ViTMAEForPreTraining
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
TAG = "vit-mae-odd"
IMAGES = ["chelsea.jpg", "astronaut.png", "coffee.bmp"]


def load(name):
    return ImageOps.exif_transpose(Image.open(FIX / "images" / name)).convert("RGB")


def legacy(name):
    """transformers 5's internal parameter names to the published ones."""
    name = re.sub(r"(^|\.)layers\.(\d+)\.", r"\1encoder.layer.\2.", name)
    for new, old in [("attention.q_proj", "attention.attention.query"), ("attention.k_proj", "attention.attention.key"),
                     ("attention.v_proj", "attention.attention.value"), ("attention.o_proj", "attention.output.dense"),
                     ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")]:
        name = name.replace(f".{new}.", f".{old}.")
    return name


def main():
    torch.manual_seed(0)
    cfg = ViTMAEConfig(
        image_size=40, patch_size=8, hidden_size=36, num_hidden_layers=2, num_attention_heads=3,
        intermediate_size=52, decoder_hidden_size=20, decoder_num_hidden_layers=2,
        decoder_num_attention_heads=4, decoder_intermediate_size=28, initializer_range=0.2,
        mask_ratio=0.75, norm_pix_loss=False, hidden_act="gelu",
    )
    model = ViTMAEForPreTraining(cfg).eval()
    with torch.no_grad():
        # Large enough weights that inputs visibly move outputs; a non-zero mask token and
        # norms, so that every parameter matters.
        for name, p in model.named_parameters():
            if "pos_embed" in name or "position_embeddings" in name:
                continue
            if name.endswith("mask_token") or "norm" in name or name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "norm" in name and "weight" in name else 0.0))
    out = FIX / TAG
    model.save_pretrained(out)
    proc = ViTImageProcessorPil(size={"height": 40, "width": 40})
    proc.save_pretrained(out)
    px = proc(images=[load(n) for n in IMAGES], return_tensors="pt")["pixel_values"]
    g = torch.Generator().manual_seed(1)
    noise = torch.rand(len(IMAGES), 25, generator=g)
    ref = {"pixel_values": px.numpy(), "noise": noise.numpy()}

    o = model(pixel_values=px, noise=noise)
    ref["logits"] = o.logits.detach().numpy()
    ref["mask"] = o.mask.numpy()
    ref["loss"] = o.loss.detach().reshape(1).numpy()
    model.zero_grad()
    o.loss.backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            ref[f"grad/{legacy(name)}"] = p.grad.numpy().copy()
    model.config.norm_pix_loss = True
    with torch.no_grad():
        ref["loss_norm_pix"] = model(pixel_values=px, noise=noise).loss.reshape(1).numpy()
    model.config.norm_pix_loss = False
    model.config.mask_ratio = 0.0
    with torch.no_grad():
        ref["logits_ratio0"] = model(pixel_values=px, noise=noise).logits.numpy()
        # Without noise (a random order): the same logits, the order is undone.
        ref["logits_ratio0_random"] = model(pixel_values=px).logits.numpy()
    assert np.allclose(ref["logits_ratio0"], ref["logits_ratio0_random"], atol=1e-5)
    save_file({k: np.ascontiguousarray(v) for k, v in ref.items()}, str(FIX / "mae_reference.safetensors"))
    print("wrote", out, "and mae_reference.safetensors:", ref["logits"].shape, "loss", ref["loss"])
    print("parameter names:", [n for n, _ in model.named_parameters()][:6])

    if len(sys.argv) > 1:
        back = ViTMAEForPreTraining.from_pretrained(sys.argv[1]).eval()
        with torch.no_grad():
            d = (back(pixel_values=px, noise=noise).logits - o.logits).abs().max().item()
        print(f"tuwen-saved folder reloads in transformers: max logit difference {d:.2e}")
        assert d < 1e-4


if __name__ == "__main__":
    main()
