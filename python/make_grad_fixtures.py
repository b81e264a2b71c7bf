"""Reference gradients of the contrastive training losses for every parameter of two tiny
checkpoints (CLIP with the legacy end-token rule, SigLIP with a SentencePiece tokenizer), on one
batch of four real photos and four captions. Run after make_clip_fixtures.py.

    .venv/bin/python python/make_grad_fixtures.py
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors.numpy import save_file
from transformers import AutoTokenizer, CLIPModel, PreTrainedTokenizerFast, SiglipModel, SiglipTokenizer
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
IMAGES = ["astronaut.png", "coffee.bmp", "rocket.webp", "hubble.gif"]


def load(name):
    return ImageOps.exif_transpose(Image.open(FIX / "images" / name)).convert("RGB")


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def clip_loss(img, txt, logit_scale):
    scale = logit_scale.exp().clamp(max=100.0)
    logits = img @ txt.t() * scale
    labels = torch.arange(len(img))
    return (torch.nn.functional.cross_entropy(logits, labels)
            + torch.nn.functional.cross_entropy(logits.t(), labels)) / 2


def siglip_loss(img, txt, logit_scale, logit_bias):
    logits = img @ txt.t() * logit_scale.exp() + logit_bias
    z = 2 * torch.eye(len(img)) - 1
    return -torch.nn.functional.logsigmoid(z * logits).sum() / len(img)


def main():
    texts = json.loads((FIX / "clip_texts.json").read_text())[:4]
    ref = {}
    for tag, cls, proc_cls in [("clip-legacy", CLIPModel, CLIPImageProcessorPil),
                               ("siglip-spiece", SiglipModel, SiglipImageProcessorPil)]:
        model = cls.from_pretrained(FIX / tag).eval()
        proc = proc_cls.from_pretrained(FIX / tag)
        px = proc(images=[load(n) for n in IMAGES], return_tensors="pt")["pixel_values"]
        if tag.startswith("siglip"):
            tok = SiglipTokenizer.from_pretrained(FIX / tag)
            ids = tok(texts, padding="max_length", max_length=model.config.text_config.max_position_embeddings,
                      truncation=True, return_tensors="pt")["input_ids"]
        else:
            tok = PreTrainedTokenizerFast(tokenizer_file=str(FIX / tag / "tokenizer.json"), pad_token="<|startoftext|>")
            ids = tok(texts, padding=True, truncation=True, max_length=model.config.text_config.max_position_embeddings,
                      return_tensors="pt")["input_ids"]
        model.zero_grad()
        img = unit(model.get_image_features(pixel_values=px).pooler_output)
        txt = unit(model.get_text_features(input_ids=ids).pooler_output)
        if tag.startswith("siglip"):
            loss = siglip_loss(img, txt, model.logit_scale, model.logit_bias)
        else:
            loss = clip_loss(img, txt, model.logit_scale)
        loss.backward()
        ref[f"{tag}/loss"] = loss.detach().numpy().reshape(1)
        ref[f"{tag}/input_ids"] = ids.numpy().astype(np.int64)
        n = 0
        for name, p in model.named_parameters():
            assert p.grad is not None, name
            g = p.grad.numpy()
            ref[f"{tag}/grad/{name}"] = g.reshape(1) if g.ndim == 0 else g
            n += 1
        print(f"{tag}: loss {loss.item():.4f}, {n} parameter gradients")
    save_file({k: np.ascontiguousarray(v) for k, v in ref.items()}, FIX / "grad_reference.safetensors")


if __name__ == "__main__":
    sys.exit(main())
