#!/usr/bin/env python3
"""Markdown tables from results/*.jsonl: python3 table.py results/100k.jsonl [...]"""
import json, sys

rows = []
for path in sys.argv[1:]:
    with open(path) as f:
        rows += [json.loads(l) for l in f if l.strip()]

def mib(b): return f"{b / 2**20:.0f}"

print("| crate | N | M | efC | build s (CPU s) | index file MiB | save s | load s | peak RSS build MiB (base) | RSS of loaded index MiB | recall check (built, ef) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
seen = set()
for r in rows:
    key = (r["crate"], r["n"], r["m"], r["ef_construction"])
    if r["crate"] == "exact" or key in seen:
        continue
    seen.add(key)
    print(f"| {r['crate']} {r['version']} | {r['n']:,} | {r['m']} | {r['ef_construction']} | "
          f"{r['build_s']:.0f} ({r['build_cpu_s']:.0f}) | {mib(r['index_bytes'])} | {r['save_s']:.1f} | {r['load_s']:.1f} | "
          f"{r['hwm_build_mib']:.0f} ({r['rss_base_mib']:.0f}) | {r['rss_loaded_delta_mib']:.0f} | "
          f"{r['recall_built_check']:.4f} @{r['check_ef']} |")
print()
print("| crate | N | ef | recall@10 | median µs | p99 µs | p99 thread-CPU µs | QPS (1 thread) |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    ef = r["ef_search"] if r["crate"] != "exact" else "exact"
    print(f"| {r['crate']} | {r['n']:,} | {ef} | {r['recall']:.4f} | {r['median_us']:.0f} | {r['p99_us']:.0f} | "
          f"{r['p99_cpu_us']:.0f} | {r['qps']:.0f} |")
