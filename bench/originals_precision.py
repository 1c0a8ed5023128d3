"""What rescoring loses when the originals on disk are kept at lower precision, and which
INT8 layouts were tried: the store's own per-row scale, an asymmetric per-row range, a
per-row scale after a random rotation, and per-dimension ranges learned from the data.

    python bench/originals_precision.py bench/data/fortunes bench/data/gcide   # ~1 min

Candidates are the top 40 of int4 codes (FAISS SQ4, the 0.1% tails clipped, as qvec's
int4), re-ranked by exact inner products with each version of the originals; recall@10
against exact FP32 search. Results: bench/results/originals_precision.{json,md}.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from qvec.originals import decode_rows, encode_rows

RESULTS = Path(__file__).parent / "results"
K, CANDIDATES = 10, 40


def rotated_int8(x: np.ndarray) -> np.ndarray:
    r = np.linalg.qr(np.random.default_rng(0).normal(size=(x.shape[1],) * 2))[0].astype(np.float32)
    y = x @ r
    return decode_rows(encode_rows(y, "int8"), x.shape[1], "int8") @ r.T


def asymmetric_int8(x: np.ndarray) -> np.ndarray:
    lo, hi = x.min(1, keepdims=True), x.max(1, keepdims=True)
    step = (hi - lo) / 255
    return np.rint((x - lo) / step) * step + lo


def per_dimension_int8(x: np.ndarray) -> np.ndarray:
    lo, hi = x.min(0), x.max(0)
    step = (hi - lo) / 255
    return np.rint((x - lo) / step) * step + lo


VARIANTS = {
    "fp32": lambda x: x,
    "fp16 (rescore=\"fp16\")": lambda x: decode_rows(encode_rows(x, "fp16"), x.shape[1], "fp16"),
    "int8, per-row scale (rescore=\"int8\")": lambda x: decode_rows(encode_rows(x, "int8"), x.shape[1], "int8"),
    "int8, per-row min..max": asymmetric_int8,
    "int8, per-row scale after a random rotation": rotated_int8,
    "int8, per-dimension min..max": per_dimension_int8,
}


def measure(data: Path) -> dict:
    xb, xq = np.load(data / "xb.npy"), np.load(data / "xq.npy")
    gt = faiss.knn(xq, xb, K, metric=faiss.METRIC_INNER_PRODUCT)[1]
    sq = faiss.index_factory(xb.shape[1], "SQ4", faiss.METRIC_INNER_PRODUCT)
    sq.sq.rangestat, sq.sq.rangestat_arg = faiss.ScalarQuantizer.RS_quantiles, 0.001
    sq.train(xb)
    sq.add(xb)
    cand = sq.search(xq, CANDIDATES)[1]
    out = {}
    for name, f in VARIANTS.items():
        x = f(xb).astype(np.float32)
        scores = np.einsum("qcd,qd->qc", x[cand], xq)
        top = np.take_along_axis(cand, np.argsort(-scores, 1)[:, :K], 1)
        out[name] = round(float(np.mean([len(set(a) & set(b)) / K for a, b in zip(top, gt)])), 4)
    return {"corpus": data.name, "n": len(xb), "queries": len(xq), "recall_at_10": out}


def main() -> None:
    runs = [measure(Path(p)) for p in sys.argv[1:]]
    machine = f"{platform.machine()}, {os.cpu_count()} cores; faiss {faiss.__version__}"
    (RESULTS / "originals_precision.json").write_text(json.dumps({"machine": machine, "runs": runs}, indent=1) + "\n")
    names = list(VARIANTS)
    lines = ["# Rescoring from originals kept at lower precision", "",
             f"{machine}. Run {time.strftime('%Y-%m-%d')} by bench/originals_precision.py: the top {CANDIDATES} "
             f"of int4 codes re-ranked by each version of the originals; recall@{K} against exact FP32.", "",
             "| originals | " + " | ".join(f"{r['corpus']} ({r['n']:,})" for r in runs) + " |",
             "|---|" + "---|" * len(runs)]
    lines += [f"| {n} | " + " | ".join(str(r["recall_at_10"][n]) for r in runs) + " |" for n in names]
    (RESULTS / "originals_precision.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
