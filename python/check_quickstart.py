"""Checks that the model `tuwen quickstart` wrote loads in transformers and scores as tuwen
says: zero-shot classification of the test pictures, with the same prompts, must reach the
same top-1 accuracy as metrics.json reports (PNG inputs, so preprocessing is identical).

    /work/pyenv/bin/python python/check_quickstart.py tuwen-quickstart
"""

import csv
import json
import os
import sys

import torch
from PIL import Image
from transformers import AutoTokenizer, SiglipImageProcessorPil, SiglipModel


def features(out):
    """transformers 5 returns an output object where 4 returned the pooled tensor."""
    return out if torch.is_tensor(out) else out.pooler_output


def main():
    report = sys.argv[1] if len(sys.argv) > 1 else "tuwen-quickstart"
    folder = os.path.join(report, "model")
    model = SiglipModel.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    proc = SiglipImageProcessorPil.from_pretrained(folder)
    rows = list(csv.DictReader(open(os.path.join(report, "data", "test.csv"))))
    labels = list(dict.fromkeys(r["label"] for r in rows))
    with torch.no_grad():
        t = tok([f"a {l}" for l in labels], padding="max_length", return_tensors="pt")
        text = features(model.get_text_features(input_ids=t["input_ids"]))
        text = torch.nn.functional.normalize(text, dim=-1)
        hits = {"all": [0, 0], "held_out": [0, 0]}
        for i in range(0, len(rows), 64):
            batch = rows[i : i + 64]
            ims = [Image.open(os.path.join(report, "data", r["filepath"])).convert("RGB") for r in batch]
            px = proc(images=ims, return_tensors="pt")["pixel_values"]
            img = features(model.get_image_features(pixel_values=px))
            img = torch.nn.functional.normalize(img, dim=-1)
            pred = (img @ text.T).argmax(-1)
            for r, p in zip(batch, pred.tolist()):
                ok = labels[p] == r["label"]
                for k in ["all"] + (["held_out"] if r["held_out"] == "true" else []):
                    hits[k][0] += ok
                    hits[k][1] += 1
    m = json.load(open(os.path.join(report, "metrics.json")))
    ours = {"all": m["zero_shot"]["top1"], "held_out": m["zero_shot_held_out"]["top1"]}
    for k, (h, n) in hits.items():
        theirs = h / n
        print(f"{k}: transformers top-1 {theirs:.4f} on {n}, tuwen {ours[k]:.4f}")
        # Allow one picture of difference for float ties.
        assert abs(theirs - ours[k]) <= 1.0 / n + 1e-9, (k, theirs, ours[k])
    print("OK: the quickstart model loads in transformers and scores the same")


if __name__ == "__main__":
    main()
