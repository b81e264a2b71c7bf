"""CapFilt in miniature (BLIP's Table 1): corrupt a known share of the digits' captions,
bootstrap them with `tuwen capfilt`, and measure the filter.

    python python/capfilt_demo.py corrupt --data /tmp/digits/train.csv --out /tmp/cf/noisy.csv --share 0.4
    python python/capfilt_demo.py score --noisy /tmp/cf/noisy.csv --report /tmp/cf/clean_report.json

`corrupt` replaces the caption of a random share of the rows by another digit's caption and
records which (column `corrupted`); `score` gives the filter's precision and recall at
dropping the corrupted original captions, from `tuwen capfilt`'s per-image decisions.
"""

import argparse
import csv
import json
import random


def corrupt(a):
    rows = list(csv.DictReader(open(a.data)))
    rng = random.Random(a.seed)
    others = {}
    for r in rows:
        others.setdefault(r["label"], []).append(r["caption"])
    labels = sorted(others)
    bad = set(rng.sample(range(len(rows)), int(a.share * len(rows))))
    with open(a.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "caption", "label", "corrupted"])
        for i, r in enumerate(rows):
            caption = r["caption"]
            if i in bad:
                wrong = rng.choice([l for l in labels if l != r["label"]])
                caption = rng.choice(others[wrong])
            w.writerow([r["filepath"], caption, r["label"], int(i in bad)])
    print(json.dumps({"rows": len(rows), "corrupted": len(bad)}))


def score(a):
    rows = list(csv.DictReader(open(a.noisy)))
    report = json.load(open(a.report))
    decisions = report["decisions"]
    assert len(decisions) == len(rows), (len(decisions), len(rows))
    tp = fp = fn = tn = 0
    for r, d in zip(rows, decisions):
        dropped = not d["original"][2]
        bad = r["corrupted"] == "1"
        tp += dropped and bad
        fp += dropped and not bad
        fn += (not dropped) and bad
        tn += (not dropped) and not bad
    print(json.dumps({
        "corrupted": tp + fn, "clean": fp + tn, "dropped": tp + fp,
        "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1),
        "clean_kept": tn / max(tn + fp, 1),
    }))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("corrupt")
    c.add_argument("--data", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--share", type=float, default=0.4)
    c.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("score")
    s.add_argument("--noisy", required=True)
    s.add_argument("--report", required=True)
    a = p.parse_args()
    corrupt(a) if a.cmd == "corrupt" else score(a)


if __name__ == "__main__":
    main()
