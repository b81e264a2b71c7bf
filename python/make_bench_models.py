"""Random-weight checkpoint folders of the published sizes for the performance harness
(BENCHMARKS.md, `tuwen bench infer|train --model DIR`, python/bench_hf.py).

    python3 python/make_bench_models.py --out target/bench-models

Each folder is what `save_pretrained` writes (config.json and model.safetensors): no processor
or tokenizer files, which the harness does not need. The weights are transformers' own
initialisation with seed 0; timing does not depend on their values.
"""

import argparse
import os

import torch
from transformers import (CLIPConfig, CLIPModel, EfficientNetConfig,
                          EfficientNetForImageClassification, SiglipConfig, SiglipModel,
                          ViTConfig, ViTForImageClassification, ViTMAEConfig,
                          ViTMAEForPreTraining)

# The training workloads' small CLIPs: vision (width, layers, heads, patch, image),
# text (width, layers, heads, length), projection.
SMALL_CLIPS = {
    "clip-tiny": ((64, 3, 4, 8, 32), (64, 2, 4, 24), 64),
    "clip-small": ((192, 6, 3, 16, 64), (192, 6, 3, 32), 128),
}


def small_clip(spec):
    (vd, vl, vh, patch, image), (td, tl, th, length), embed = spec
    vision = dict(hidden_size=vd, intermediate_size=4 * vd, num_hidden_layers=vl,
                  num_attention_heads=vh, image_size=image, patch_size=patch)
    text = dict(vocab_size=1000, hidden_size=td, intermediate_size=4 * td, num_hidden_layers=tl,
                num_attention_heads=th, max_position_embeddings=length, eos_token_id=2,
                pad_token_id=1, bos_token_id=0)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed))


def build(name):
    if name == "vit-b16":  # google/vit-base-patch16-224: ViTConfig's defaults, 1000 classes
        return ViTForImageClassification(ViTConfig(num_labels=1000))
    if name == "clip-b32":  # openai/clip-vit-base-patch32: CLIPConfig's defaults
        return CLIPModel(CLIPConfig())
    if name == "siglip-b16":  # google/siglip-base-patch16-224: SiglipConfig's defaults
        return SiglipModel(SiglipConfig())
    if name == "efficientnet-b0":  # google/efficientnet-b0 (EfficientNetConfig defaults to B7)
        return EfficientNetForImageClassification(EfficientNetConfig(
            width_coefficient=1.0, depth_coefficient=1.0, image_size=224, dropout_rate=0.2, hidden_dim=1280,
            num_labels=1000))
    if name == "mae-b":  # facebook/vit-mae-base: ViTMAEConfig's defaults (75% masking)
        return ViTMAEForPreTraining(ViTMAEConfig())
    return small_clip(SMALL_CLIPS[name])


NAMES = ["vit-b16", "clip-b32", "siglip-b16", "efficientnet-b0", "mae-b", *SMALL_CLIPS]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="target/bench-models")
    ap.add_argument("--only", nargs="*", default=NAMES, choices=NAMES)
    a = ap.parse_args()
    for name in a.only:
        folder = os.path.join(a.out, name)
        if os.path.exists(os.path.join(folder, "config.json")):
            print(f"{folder}: exists")
            continue
        torch.manual_seed(0)
        model = build(name)
        model.save_pretrained(folder)
        n = sum(p.numel() for p in model.parameters())
        print(f"{folder}: {n / 1e6:.1f} M parameters")


if __name__ == "__main__":
    main()
