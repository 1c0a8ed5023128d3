#!/bin/sh
# OPQ with a rotation that drops dimensions: opq92 on 384 dims rotates to 368 (92 sub-vectors
# of 4), the ≤ 100 B point of #12's targets, beside pq96 (104 B) in the same run. Results in
# bench/results/opq_reduced/{gcide,fortunes}/; ~4 min of OPQ training per corpus on 2 cores.
#
#   python bench/prepare.py gcide && python bench/prepare.py fortunes
#   sh bench/opq_reduced.sh
set -e
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
configs="opq92/flat opq92/flat/rescore=4 pq96/flat"
qvec bench --corpus bench/data/gcide/docs.jsonl --queries bench/data/gcide/headwords.jsonl \
    --cache-dir bench/data/cache --out bench/results/opq_reduced/gcide \
    --name "GCIDE definitions, headword queries" $(for c in $configs; do printf -- '--config %s ' "$c"; done)
qvec bench --corpus bench/data/fortunes/docs.jsonl --queries bench/data/fortunes/queries.jsonl \
    --cache-dir bench/data/cache --out bench/results/opq_reduced/fortunes \
    --name "Debian fortunes" $(for c in $configs; do printf -- '--config %s ' "$c"; done)
