#!/bin/sh
# The recall-vs-memory results in bench/results/{gcide,fortunes}/, made with `qvec bench`
# (its default sweep: every family of codes, with and without rescoring from FP32, FP16 and
# INT8 originals) on the real corpora that bench/prepare.py builds (and embeds, once, into
# bench/data/cache).
#
#   python bench/prepare.py gcide && python bench/prepare.py fortunes
#   sh bench/recall_memory.sh            # ~30 min on 2 cores
#   sh bench/recall_memory.sh --quick    # the best configuration at each budget step, ~10 min
set -e
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
# 100K GCIDE definitions; 1,000 headword queries, each labelled with every sense of its word.
qvec bench --corpus bench/data/gcide/docs.jsonl --queries bench/data/gcide/headwords.jsonl \
    --cache-dir bench/data/cache --out bench/results/gcide --name "GCIDE definitions, headword queries" "$@"
# 13,910 fortunes; 1,000 held-out fortunes as queries (no labels: recall only).
qvec bench --corpus bench/data/fortunes/docs.jsonl --queries bench/data/fortunes/queries.jsonl \
    --cache-dir bench/data/cache --out bench/results/fortunes --name "Debian fortunes" "$@"
