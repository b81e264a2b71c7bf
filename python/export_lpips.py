"""Writes LPIPS (VGG) weights as one safetensors file for `tuwen train vqgan --lpips FILE`.

    pip install lpips          # the learned layers ship with it; VGG-16 comes from torchvision
    python3 python/export_lpips.py lpips_vgg.safetensors

The file holds the `lpips` package's state dict as it is (`scaling_layer.shift/scale`,
`net.slice1..5.*`, `lin0..4.model.1.weight`), which taming-transformers' LPIPS uses too.
tuwen ships no weights of its own.
"""

import sys

import lpips
from safetensors.torch import save_file


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    model = lpips.LPIPS(net="vgg", verbose=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, sys.argv[1],
              metadata={"format": "pt"})
    print(f"wrote {sys.argv[1]}")


if __name__ == "__main__":
    main()
