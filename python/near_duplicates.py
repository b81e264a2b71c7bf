"""Image queries on the quickstart's test pictures: does a picture find itself first and its
near-duplicates next? Copies some pictures as JPEG (quality 70) and slightly brightened PNG
into a folder with all test pictures, indexes it with `tuwen index`, and queries with each
original through `tuwen search --image`.

    python3 python/near_duplicates.py TUWEN_BINARY QUICKSTART_DIR WORK_DIR [N]
"""
import json
import os
import shutil
import subprocess
import sys

from PIL import Image, ImageEnhance

tuwen, qs, work = sys.argv[1:4]
n = int(sys.argv[4]) if len(sys.argv) > 4 else 10
images = os.path.join(work, "images")
shutil.rmtree(work, ignore_errors=True)
os.makedirs(images)
src = os.path.join(qs, "data", "images")
tests = sorted(f for f in os.listdir(src) if f.startswith("test-"))
for f in tests:
    shutil.copy(os.path.join(src, f), images)
# A prime stride: every 40th test picture has the same held-out pairing.
picked = tests[::37][:n]
for f in picked:
    im = Image.open(os.path.join(src, f)).convert("RGB")
    stem = f[:-4]
    im.save(os.path.join(images, stem + "-dup.jpg"), quality=70)
    ImageEnhance.Brightness(im).enhance(1.08).save(os.path.join(images, stem + "-dup-bright.png"))
db = os.path.join(work, "index.db")
subprocess.run([tuwen, "index", images, "--model", os.path.join(qs, "model"), "--db", db, "--json"],
               check=True, capture_output=True)
self_first = dups_next = dups_top10 = 0
import csv
label = {os.path.basename(r["filepath"])[:-4]: r["caption"]
         for r in csv.DictReader(open(os.path.join(qs, "data", "test.csv")))}
for f in picked:
    out = subprocess.run([tuwen, "search", "--db", db, "--image", os.path.join(images, f),
                          "--top-k", "10", "--json"], check=True, capture_output=True, text=True)
    hits = [os.path.basename(h["path"]) for h in json.loads(out.stdout)["hits"]]
    stem = f[:-4]
    self_first += hits[0] == f
    dups = [stem + "-dup-bright.png", stem + "-dup.jpg"]
    dups_next += sorted(hits[1:3]) == sorted(dups)
    dups_top10 += sum(d in hits for d in dups)
    print(f, label[stem], "->", [(h, label[h.split(".")[0].split("-dup")[0]]) for h in hits[1:4]])
print(json.dumps({"queries": len(picked), "itself_first": self_first,
                  "both_near_duplicates_next": dups_next,
                  "near_duplicates_in_top10": dups_top10, "near_duplicates": 2 * len(picked)}))
