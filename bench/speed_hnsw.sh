#!/bin/sh
# #13's "recall@10 >= 0.99 at >= 10x the int8 flat scan's single-query speed": int8/hnsw32
# (efConstruction 200) at search breadths 48-80, with and without re-ranking, beside the
# int8 flat scan, in one run. Results in bench/results/speed_hnsw/.
#
#   python bench/prepare.py gcide && sh bench/speed_hnsw.sh      # ~6 min on 2 cores
set -e
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
qvec bench --corpus bench/data/gcide/docs.jsonl --queries bench/data/gcide/headwords.jsonl \
    --cache-dir bench/data/cache --out bench/results/speed_hnsw --name "GCIDE definitions, headword queries: HNSW speed" \
    --config int8/flat --config int8/hnsw32/ef=64 --config int8/hnsw32/ef=72 --config int8/hnsw32/ef=80 \
    --config int8/hnsw32/rescore=2/ef=48 --config int8/hnsw32/rescore=2/ef=56 --config int8/hnsw32/rescore=2/ef=64 \
    --config int8/hnsw32/rescore=2/ef=72
