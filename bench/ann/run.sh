#!/bin/bash
# Runs the benchmark suite. Usage:
#   bench/ann/run.sh 100k            # every candidate at N=100k, dim 512
#   bench/ann/run.sh 1m CRATE [EFC]  # one candidate at N=1M (default ef_construction 200)
#   ANN_EXTRA="--reuse-index --keep-index" bench/ann/run.sh 1m hnsw_rs 100   # resume after a kill
# Results: bench/ann/results/<suite>.jsonl (one JSON line per crate x ef), logs next to them.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/hnsw-target}
nice -n 10 cargo build --release -j 2
BIN=$CARGO_TARGET_DIR/release/ann-bench
WORK=${ANN_WORK_DIR:-/work/hnsw-data}
suite=${1:-100k}
case "$suite" in
  100k)
    nice -n 10 "$BIN" --crate exact --n 100000 --work-dir "$WORK" >> results/100k.jsonl 2> results/100k-exact.log
    for c in hnsw_rs hnsw_rs+dot instant-distance usearch usearch-f16; do
      nice -n 10 "$BIN" --crate "$c" --n 100000 --m 16 --ef-construction 200 \
        --ef-search 10,16,32,64,128,256 --threads 2 --work-dir "$WORK" \
        >> results/100k.jsonl 2> "results/100k-$c.log"
    done ;;
  1m)
    c=${2:?crate}; efc=${3:-200}
    nice -n 10 "$BIN" --crate "$c" --n 1000000 --m 16 --ef-construction "$efc" \
      --ef-search 10,16,32,64,128,256 --threads 2 --brute-queries 100 --work-dir "$WORK" \
      ${ANN_EXTRA:-} >> results/1m.jsonl 2>> "results/1m-$c-efc$efc.log" ;;
  *) echo "unknown suite $suite" >&2; exit 2 ;;
esac
