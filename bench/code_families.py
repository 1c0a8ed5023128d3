"""Which codes keep the most recall per byte on real embeddings: every candidate family,
measured the same way, before any becomes a store default.

    python bench/code_families.py bench/data/fortunes      # ~10 min on 2 cores
    python bench/code_families.py bench/data/gcide --train 50000

Reads xb.npy / xq.npy (bench/prepare.py), builds each candidate as a plain FAISS index (or,
for the fixed-level scalar codes FAISS does not have, numpy's encode/decode then an exact
search of the decoded vectors), and records for each: code bytes, RAM bytes per vector as
a store holds it (codes + the 8-byte id), training seconds, recall@10 of the codes alone,
and recall@10 after re-ranking the top 10 × oversample (4) by exact FP32 scores (what the
store's ``rescore=True`` does). Results: bench/results/code_families_<corpus>.{json,md}.

Families: uniform int4 (qvec's int4), fixed non-uniform 4-bit levels (FP4 E2M1, NF4) on
per-dimension scales, per-dimension Lloyd-Max levels (16 k-means levels per dimension:
FAISS PQ with one-dimensional sub-vectors), RaBitQ with 1-4 bits, PQ with 8-bit and 4-bit
fast-scan codes, OPQ (including a rotation to 352 dimensions so 88 sub-vectors fit 96 B),
and the additive quantizers (residual, local search, product residual).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import faiss
import numpy as np

K = 10
OVERSAMPLE = 4
RESULTS = Path(__file__).parent / "results"

# 4-bit level tables, on [-1, 1] after each dimension is divided by its scale.
FP4_E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float32) / 6
FP4 = np.unique(np.concatenate([-FP4_E2M1, FP4_E2M1]))  # 15 values: +0 and -0 are one
NF4 = np.array([-1.0, -0.6961928, -0.5250731, -0.3949175, -0.2844414, -0.1847734, -0.0910500, 0.0,
                0.0795803, 0.1609302, 0.2461123, 0.3379152, 0.4407098, 0.5626170, 0.7229568, 1.0], np.float32)

# name: (FAISS factory string | level table, code bytes note)
FAISS_CANDIDATES = [
    "SQ4",  # qvec int4 (quantiles range: set below)
    "PQ384x4fs",  # per-dimension Lloyd-Max, 16 levels
    "RaBitQ", "RaBitQ2", "RaBitQ3", "RaBitQ4",
    "PQ48np", "OPQ48,PQ48np", "PQ96x4fs", "OPQ96,PQ96x4fs",
    "PQ96np", "OPQ96,PQ96np", "OPQ88_352,PQ88np", "PQ192x4fs", "OPQ192,PQ192x4fs", "OPQ176_352,PQ176x4fs",
    "RQ48x8", "PRQ8x6x8", "LSQ48x8", "RQ88x8",
    # 8-bit PQ on pairs of dimensions: 192 B, the int4 budget
    "PQ192np", "OPQ192,PQ192np",
    # IVF with every list probed: the codes are residuals to the vector's list centroid,
    # whose number is the list it sits in: bits no vector pays for
    "IVF1024,PQ48np", "OPQ48,IVF1024,PQ48np", "IVF1024,PQ96x4fs", "IVF1024,PQ96np", "OPQ96,IVF1024,PQ96np",
    "IVF1024,PQ192np", "IVF1024,RaBitQ4", "IVF1024,SQ4",
]


def exact_topk(xq, xb, k):
    return faiss.knn(xq, xb, k, metric=faiss.METRIC_INNER_PRODUCT)[1]


def recall(found, truth, k=K):
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def rerank(xq, xb, cand, k=K):
    scores = np.einsum("qcd,qd->qc", xb[np.maximum(cand, 0)], xq)
    scores[cand < 0] = -np.inf
    return np.take_along_axis(cand, np.argsort(-scores, axis=1)[:, :k], 1)


def fixed_levels(table, xb, xtrain, xq, k):
    """4-bit codes over a fixed level table on per-dimension scales (absmax of the
    training data's 99.9th percentile), decoded and searched exactly."""
    scale = np.quantile(np.abs(xtrain), 0.999, axis=0)
    t0 = time.perf_counter()
    u = np.clip(xb / scale, -1, 1)
    idx = np.abs(u[:, :, None] - table[None, None, :]).argmin(-1)
    dec = (table[idx] * scale).astype(np.float32)
    train_s = time.perf_counter() - t0
    return dec, train_s


def measure(name, xb, xq, xtrain, truth):
    d = xb.shape[1]
    if name in ("FP4", "NF4"):
        dec, train_s = fixed_levels(FP4 if name == "FP4" else NF4, xb, xtrain, xq, K)
        code_bytes = d // 2
        cand = exact_topk(xq, dec, K * OVERSAMPLE)
    else:
        index = faiss.index_factory(d, name, faiss.METRIC_INNER_PRODUCT)
        inner = faiss.downcast_index(index.index if isinstance(index, faiss.IndexPreTransform) else index)
        if name == "SQ4":
            inner.sq.rangestat = faiss.ScalarQuantizer.RS_quantiles
            inner.sq.rangestat_arg = 0.001
        t0 = time.perf_counter()
        index.train(xtrain)
        train_s = time.perf_counter() - t0
        index.add(xb)
        code_bytes = int(inner.code_size)
        params = None
        if isinstance(inner, (faiss.IndexRaBitQ, faiss.IndexRaBitQFastScan)):
            params = faiss.RaBitQSearchParameters(qb=8)  # queries at 8 bits (default 4 loses ~0.01)
        if isinstance(inner, faiss.IndexIVF):
            inner.nprobe = inner.nlist  # every list: the lists only lend their centroids to the codes
            if hasattr(inner, "qb"):
                inner.qb = 8
        cand = index.search(xq, K * OVERSAMPLE, params=params)[1]
    return {
        "codes": name, "code_bytes": code_bytes, "bytes_per_vector": code_bytes + 8, "train_s": round(train_s, 2),
        "recall_at_10": round(recall(cand, truth), 4),
        "recall_at_10_rescore4": round(recall(rerank(xq, xb, cand), truth), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--train", type=int, default=20_000, help="training sample (vectors)")
    ap.add_argument("--only", nargs="*", help="these candidates only")
    ap.add_argument("--skip", nargs="*", default=[], help="leave these out (e.g. LSQ48x8: minutes to train)")
    args = ap.parse_args()
    xb = np.load(args.data / "xb.npy")
    xq = np.load(args.data / "xq.npy")
    rng = np.random.default_rng(0)
    xtrain = xb[np.sort(rng.choice(len(xb), min(args.train, len(xb)), replace=False))]
    truth = exact_topk(xq, xb, K)
    names = args.only or ["FP4", "NF4", *FAISS_CANDIDATES]
    corpus = args.data.name
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; faiss {faiss.__version__}; "
               f"{len(xb):,} × {xb.shape[1]} vectors, {len(xq):,} queries, training sample {len(xtrain):,}")
    old = RESULTS / f"code_families_{corpus}.json"
    # a partial run (--only) adds to, or replaces rows of, the results already there
    kept = json.loads(old.read_text())["rows"] if args.only and old.exists() else []
    rows = []
    for name in names:
        if name in args.skip:
            continue
        row = measure(name, xb, xq, xtrain, truth)
        rows.append(row)
        print(json.dumps(row), flush=True)
        done = {r["codes"] for r in rows}
        # written after each row: a run stopped part way keeps what it measured
        write(corpus, machine, [r for r in kept if r["codes"] not in done] + rows)


def write(corpus: str, machine: str, rows: list[dict]) -> None:
    out = {"corpus": corpus, "machine": machine, "date": time.strftime("%Y-%m-%d"), "k": K, "oversample": OVERSAMPLE,
           "rows": rows}
    (RESULTS / f"code_families_{corpus}.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = [f"# Code families per byte: {corpus}", "", f"{machine}. Run {out['date']} by bench/code_families.py.", "",
             "RAM B/vec = code bytes + the 8-byte id a store keeps. Recall@10 against exact FP32 search; "
             f"rescored = the top {K * OVERSAMPLE} re-ranked by exact FP32 scores (oversample {OVERSAMPLE}). "
             "Training seconds are wall time on a shared machine (other jobs ran beside some rows).", "",
             "| codes | RAM B/vec | recall@10 | recall@10 rescored ×4 | train s |", "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (-r["bytes_per_vector"], -r["recall_at_10"])):
        lines.append(f"| `{r['codes']}` | {r['bytes_per_vector']} | {r['recall_at_10']} | "
                     f"{r['recall_at_10_rescore4']} | {r['train_s']} |")
    (RESULTS / f"code_families_{corpus}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
