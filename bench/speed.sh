#!/bin/sh
# #13's speed runs on 100K GCIDE definitions (headword queries): every fast path through the
# store against the same FAISS index searched directly, in one run (q/s ratios), and the
# configurations that reach recall@10 >= 0.99 fast, beside the int8 flat scan whose
# single-query speed they are measured against; then every configuration's batch again, all in
# turn for 9 rounds (q/s in turn), so that configurations compare with each other. Results in bench/results/speed/.
#
#   python bench/prepare.py gcide && sh bench/speed.sh      # ~20 min on 2 cores
set -e
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
configs="int8/flat fp32/flat int4/flat pq48/flat pq96x4fs/flat pq96x4fs/flat/rescore=4 rabitq/flat/rescore=4
binary/flat/rescore=8 int8/ivf1024 int8/ivf1024/rescore=4/nprobe=64 pq96x4fs/ivf1024/rescore=4/nprobe=64
int8/hnsw32 int8/hnsw32/rescore=4/ef=64 int8/hnsw32/rescore=4/ef=96 int8/hnsw32/rescore=4/ef=128"
qvec bench --corpus bench/data/gcide/docs.jsonl --queries bench/data/gcide/headwords.jsonl \
    --cache-dir bench/data/cache --out bench/results/speed --name "GCIDE definitions, headword queries: speed" \
    --rounds 9 \
    $(for c in $configs; do printf -- '--config %s ' "$c"; done)
python bench/fast_paths.py bench/data/gcide --out bench/results/speed/fast_paths.md
