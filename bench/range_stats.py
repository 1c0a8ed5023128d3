"""Which FAISS range statistic should int8/int4 learn their per-dimension scales with?

    python bench/range_stats.py      # writes bench/results/range_stats.{json,md}

Builds int8 and int4 flat stores over the 100K GCIDE embeddings (bench/prepare.py) with
each statistic and reports recall@10 against exact FP32 search. The winner is qvec's
default (qvec/quantization.py: DEFAULT_RANGE_STAT).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from core import DATA, RESULTS

import qvec
from qvec.bench import machine, result_rows
from qvec.config import RANGE_STATS
from qvec.metrics import exact_knn, recall_at_k


def main():
    xb, xq = np.load(DATA / "xb.npy"), np.load(DATA / "xq.npy")
    _, gt = exact_knn(xb, xq, 100)
    records = []
    for q in ("int8", "int4"):
        for stat in RANGE_STATS:
            with tempfile.TemporaryDirectory() as d, qvec.open(Path(d) / "s", quantization=q, range_stat=stat) as s:
                s.add(vectors=xb, ids=[str(i) for i in range(len(xb))])
                s.train()
                I = result_rows(s.search_batch(xq, 100, include=()), 100)
            r = {"quantization": q, "range_stat": stat, "recall_at_1": round(recall_at_k(I, gt, 1), 4),
                 "recall_at_10": round(recall_at_k(I, gt, 10), 4), "recall_at_100": round(recall_at_k(I, gt, 100), 4)}
            print(json.dumps(r), flush=True)
            records.append(r)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "range_stats.json").write_text(json.dumps({"machine": machine(), "n_docs": len(xb),
                                                          "n_queries": len(xq), "records": records}, indent=1))
    lines = ["# int8/int4 range statistics on 100K GCIDE MiniLM embeddings (recall against exact FP32)", "",
             "| quantization | range_stat | recall@1 | recall@10 | recall@100 |", "|---|---|---|---|---|"]
    lines += [f"| {r['quantization']} | {r['range_stat']} | {r['recall_at_1']} | {r['recall_at_10']} | "
              f"{r['recall_at_100']} |" for r in records]
    (RESULTS / "range_stats.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
