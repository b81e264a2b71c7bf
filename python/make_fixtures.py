"""Writes the parity fixtures in tests/fixtures: small real photos in every supported format,
tiny random-weight ViT checkpoints made by transformers, and transformers' reference outputs.

    python -m venv .venv && .venv/bin/pip install -r python/requirements.txt
    .venv/bin/python python/make_fixtures.py          # from the repository root

Then it proves that what tuwen saves loads back into transformers: it runs
`cargo run -- convert` on a fixture checkpoint and compares transformers' logits on the result.
Everything is seeded, so a rerun rewrites the same files.
"""

import io
import json
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import skimage.data
import torch
from PIL import Image, ImageOps
from safetensors.numpy import save_file
from transformers import ViTConfig, ViTForImageClassification, ViTModel
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
IMAGES = FIX / "images"

LABELS = ["tabby cat", "astronaut", "coffee cup", "rocket", "camera", "galaxy", "cell", "tree", "car", "boat"]


def write_images():
    """Real photos, cut small, in each format and pixel layout tuwen must decode like PIL."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    chelsea = Image.fromarray(skimage.data.chelsea()).resize((240, 160), Image.BICUBIC)
    astronaut = Image.fromarray(skimage.data.astronaut()).resize((180, 216), Image.BICUBIC)
    coffee = Image.fromarray(skimage.data.coffee()).resize((150, 100), Image.BICUBIC)
    rocket = Image.fromarray(skimage.data.rocket()).resize((96, 144), Image.BICUBIC)
    camera = Image.fromarray(skimage.data.camera()).resize((96, 96), Image.BICUBIC)
    hubble = Image.fromarray(skimage.data.hubble_deep_field()[200:440, 300:520])

    chelsea.save(IMAGES / "chelsea.jpg", quality=90)
    # Same photo stored sideways with EXIF orientation 6: viewers (and transformers'
    # load_image) rotate it upright.
    exif = Image.Exif()
    exif[0x0112] = 6
    chelsea.resize((150, 100), Image.BICUBIC).transpose(Image.Transpose.ROTATE_90).save(
        IMAGES / "chelsea_exif6.jpg", quality=90, exif=exif
    )
    astronaut.save(IMAGES / "astronaut.png")
    rgba = coffee.convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, coffee.width).astype(np.uint8), (coffee.height, 1))
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(IMAGES / "coffee_rgba.png")
    camera.save(IMAGES / "camera_gray.png")
    # 16-bit grayscale: PIL opens it as mode I;16 and clips to 255 when converting to RGB.
    cam16 = (np.asarray(camera).astype(np.uint16) * 3).astype(np.uint16)
    iio.imwrite(IMAGES / "camera_gray16.png", cam16)
    # 16-bit RGB: PIL keeps the high byte.
    rgb16 = (np.asarray(rocket).astype(np.uint16) * 257 + 100).astype(np.uint16)
    write_png16(IMAGES / "rocket_rgb16.png", rgb16[:60, :40])
    rocket.save(IMAGES / "rocket.webp", lossless=True)
    hubble.resize((64, 70)).save(IMAGES / "hubble.gif")
    coffee.resize((70, 45)).save(IMAGES / "coffee.bmp")
    astronaut.resize((50, 60)).save(IMAGES / "astronaut.tiff")
    # An exact-size crop for the tiny models: no resampling involved.
    chelsea.crop((100, 30, 132, 62)).save(IMAGES / "chelsea_32.png")


# Gradients checked, by transformers 5's own parameter names.
GRAD_PARAMS = [
    "classifier.weight",
    "classifier.bias",
    "vit.embeddings.cls_token",
    "vit.embeddings.position_embeddings",
    "vit.embeddings.patch_embeddings.projection.weight",
    "vit.layers.0.attention.q_proj.weight",
    "vit.layers.0.mlp.fc1.bias",
    "vit.layers.1.layernorm_after.weight",
    "vit.layernorm.bias",
]


def write_png16(path, rgb):
    """A 16-bit RGB PNG, written by hand (PIL cannot write one)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)


def fingerprint(a):
    """[height, width, channels, FNV-1a-64 of the bytes]: an exact check that stays small."""
    h = 0xCBF29CE484222325
    for b in np.ascontiguousarray(a, dtype=np.uint8).tobytes():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return np.array([a.shape[0], a.shape[1], a.shape[2], h], dtype=np.uint64)


def load_like_transformers(path):
    """transformers.image_utils.load_image: EXIF transpose, then RGB."""
    img = Image.open(path)
    img = ImageOps.exif_transpose(img)
    return img.convert("RGB")


def randomize(model, seed):
    """Weights big enough that different images give visibly different outputs, and layer
    norms and biases far from their defaults so a mis-mapped tensor cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "layernorm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * r)
            elif name.endswith("bias"):
                p.copy_(0.1 * r)
            elif name.endswith(("cls_token", "position_embeddings")):
                p.copy_(0.5 * r)
            elif p.dim() >= 2:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(r / np.sqrt(fan_in))
            else:
                raise ValueError(f"no rule for {name}")


def tiny_config(**kw):
    base = dict(
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        image_size=32,
        patch_size=8,
        layer_norm_eps=1e-12,
        id2label={i: l for i, l in enumerate(LABELS)},
        label2id={l: i for i, l in enumerate(LABELS)},
    )
    base.update(kw)
    return ViTConfig(**base)


def main():
    torch.manual_seed(0)
    if FIX.exists():
        for sub in ["images", "vit-tiny", "vit-odd", "vit-base-newnames", "vit-sharded"]:
            shutil.rmtree(FIX / sub, ignore_errors=True)
    write_images()
    ref = {}
    names = sorted(p.name for p in IMAGES.iterdir())

    # What PIL decodes, for the decoder tests: whole arrays for lossy JPEG (compared with a
    # tolerance), a fingerprint for the lossless formats (compared exactly).
    for n in names:
        a = np.ascontiguousarray(np.asarray(load_like_transformers(IMAGES / n)))
        if n.endswith(".jpg"):
            ref[f"decoded/{n}"] = a
        else:
            ref[f"decoded_fnv/{n}"] = fingerprint(a)

    # PIL's resize on real photos, up and down, for the byte-exact resize tests.
    for n in ["astronaut.png", "coffee_rgba.png"]:
        img = load_like_transformers(IMAGES / n)
        for code in [0, 2, 3]:
            for w, h in [(37, 23), (120, 17), (48, 48), (5, 90), (200, 240), (151, 1)]:
                out = np.asarray(img.resize((w, h), resample=code))
                ref[f"resize_fnv/{n}/{code}/{w}x{h}"] = fingerprint(out)

    # Model 1: ViT's default processor (exact 32x32, bilinear, mean/std 0.5).
    tiny = ViTForImageClassification(tiny_config()).eval()
    randomize(tiny, 1)
    tiny.save_pretrained(FIX / "vit-tiny")
    p_tiny = ViTImageProcessorPil(size={"height": 32, "width": 32})
    p_tiny.save_pretrained(FIX / "vit-tiny")

    # Model 2: other sizes throughout, no qkv bias, tanh GELU, and a CLIP-style processor
    # (shortest edge, center crop, bicubic, CLIP mean/std).
    odd_cfg = tiny_config(
        hidden_size=36,
        num_hidden_layers=3,
        num_attention_heads=3,
        intermediate_size=60,
        image_size=40,
        patch_size=10,
        qkv_bias=False,
        hidden_act="gelu_new",
        layer_norm_eps=1e-6,
    )
    odd = ViTForImageClassification(odd_cfg).eval()
    randomize(odd, 2)
    odd.save_pretrained(FIX / "vit-odd")
    p_odd = ViTImageProcessorPil(
        size={"shortest_edge": 44},
        do_center_crop=True,
        crop_size={"height": 40, "width": 40},
        resample=3,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    p_odd.save_pretrained(FIX / "vit-odd")

    for tag, model, proc in [("vit-tiny", tiny, p_tiny), ("vit-odd", odd, p_odd)]:
        all_logits = []
        for n in names:
            img = load_like_transformers(IMAGES / n)
            pixels = proc(images=img, return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                logits = model(pixel_values=pixels).logits[0]
            ref[f"pixels/{tag}/{n}"] = pixels[0].numpy().astype(np.float32)
            ref[f"logits/{tag}/{n}"] = logits.numpy().astype(np.float32)
            all_logits.append(logits.numpy())
        spread = np.std(np.stack(all_logits), axis=0).mean()
        print(f"{tag}: logit spread across images {spread:.3f}")
        assert spread > 0.2, "weights too small: outputs barely depend on the image"

    # Position-embedding interpolation: another input size.
    g = torch.Generator().manual_seed(3)
    px = torch.randn(2, 3, 48, 40, generator=g)
    with torch.no_grad():
        ref["interp/pixels"] = px.numpy()
        ref["interp/logits"] = tiny(pixel_values=px, interpolate_pos_encoding=True).logits.numpy()

    # Gradients of a cross-entropy loss at that other input size, so the backward pass through
    # every block, including the position-embedding interpolation, is checked.
    tiny.zero_grad()
    logits = tiny(pixel_values=px, interpolate_pos_encoding=True).logits
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([3, 7]))
    loss.backward()
    ref["grad/loss"] = loss.detach().numpy().reshape(1)
    params = dict(tiny.named_parameters())
    for name in GRAD_PARAMS:
        ref[f"grad/{name}"] = params[name].grad.numpy()
    tiny.zero_grad()

    # Model 3: a bare ViTModel with a pooler, saved with transformers 5's own tensor names.
    base_cfg = tiny_config(pooler_output_size=20, pooler_act="tanh")
    base = ViTModel(base_cfg, add_pooling_layer=True).eval()
    randomize(base, 4)
    base.save_pretrained(FIX / "vit-base-newnames", save_original_format=False)
    px = torch.randn(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        out = base(pixel_values=px)
    ref["base/pixels"] = px.numpy()
    ref["base/last_hidden_state"] = out.last_hidden_state.numpy()
    ref["base/pooler_output"] = out.pooler_output.numpy()

    # Model 4: the tiny classifier in shards with an index.
    tiny.save_pretrained(FIX / "vit-sharded", max_shard_size="40KB")
    p_tiny.save_pretrained(FIX / "vit-sharded")
    assert (FIX / "vit-sharded" / "model.safetensors.index.json").exists()

    save_file({k: np.ascontiguousarray(v) for k, v in ref.items()}, FIX / "reference.safetensors")
    print(f"wrote {len(ref)} reference arrays")

    prove_saved_folder_loads(odd, p_odd)


def prove_saved_folder_loads(model, proc):
    """tuwen loads a checkpoint and writes it again; transformers must load what it wrote and
    give the same logits."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "resaved"
        subprocess.run(
            ["cargo", "run", "-q", "--", "convert", "--model", str(FIX / "vit-odd"), "--out", str(out)],
            cwd=ROOT,
            check=True,
        )
        again, info = ViTForImageClassification.from_pretrained(out, output_loading_info=True)
        again.eval()
        problems = {k: v for k, v in info.items() if v}
        assert not problems, f"transformers reports {problems}"
        img = load_like_transformers(IMAGES / "chelsea.jpg")
        px = proc(images=img, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            a = model(pixel_values=px).logits
            b = again(pixel_values=px).logits
        diff = (a - b).abs().max().item()
        print(f"tuwen-saved folder reloaded in transformers: max logit difference {diff:.2e}")
        assert diff < 1e-5, diff


if __name__ == "__main__":
    sys.exit(main())
