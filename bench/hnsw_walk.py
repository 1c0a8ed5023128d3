"""Where an HNSW query's graph walk could get faster, measured on FAISS itself (no store).

The single-query target of #13 (recall@10 >= 0.99 at >= 10x the int8 flat scan) is met by
int8/hnsw32 re-ranking 20 candidates at ef 56 with 0-20% to spare, and 244 of that query's
~330 us are FAISS's walk of the graph. This script asks what would make the walk itself
cheaper, each variant over the same 100K GCIDE definitions, efConstruction 200, inner product:

- ``sq8``: int8 codes as qvec stores them (per-dimension scales), M=32: the baseline;
- ``sq8 folded``: the same graph and codes read as uniform codes with the per-dimension steps
  folded into the query (as qvec's IVF int8 batches do), through a second index object whose
  codes and links are views of the first's: less decoding per distance;
- ``sq4``: 4-bit codes, M=32: half the bytes fetched per distance;
- ``sq8 M=48``: more links per node, fewer hops;
- ``sq8 clustered``: the baseline's graph and codes renumbered so that vectors of one k-means
  cluster lie together in memory (``permute_entries``): fewer cache and TLB misses.

Each: recall@10 of its 20 candidates re-ranked by exact FP32 scores (the 1,000 held-out
queries, against exact search), and the single-query p50 on one FAISS thread at ef 48-64,
the variants taking turns in rounds over the same 300 queries.

    python bench/prepare.py gcide && python bench/hnsw_walk.py   # ~8 min; bench/results/hnsw_walk.{json,md}
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import faiss
import numpy as np

from qvec.bench import machine, machine_line, write_report

HERE = Path(__file__).parent
DATA = HERE / "data" / "gcide"
RESULTS = HERE / "results"
EFS = (48, 56, 64)
CANDIDATES = 20  # k 10 × oversample 2
ROUNDS = 5
IP = faiss.METRIC_INNER_PRODUCT


def built(x: np.ndarray, qtype: int, m: int) -> faiss.IndexHNSWSQ:
    index = faiss.IndexHNSWSQ(x.shape[1], qtype, m, IP)
    index.hnsw.efConstruction = 200
    index.train(x)
    index.add(x)
    return index


def folded_view(index: faiss.IndexHNSWSQ, keep: list):
    """The same graph and codes as uniform int8 codes, for queries multiplied by the steps
    (scores then lack q · vmin, the same for every candidate of a query)."""
    storage = faiss.downcast_index(index.storage)
    d = index.d
    view = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit_uniform, IP)
    faiss.copy_array_to_vector(np.array([0, 255], np.float32), view.sq.trained)  # decodes c + 0.5
    view.is_trained = True
    view.codes = faiss.MaybeOwnedVectorUInt8.create_view(storage.codes.data(), storage.codes.size(),
                                                         storage.codes.owner)
    view.ntotal = storage.ntotal
    walk = faiss.IndexHNSW(view, index.hnsw.nb_neighbors(1))
    walk.own_fields = False
    src, dst = index.hnsw, walk.hnsw
    dst.neighbors = faiss.MaybeOwnedVectorInt32.create_view(src.neighbors.data(), src.neighbors.size(),
                                                            src.neighbors.owner)
    dst.levels, dst.offsets = src.levels, src.offsets
    dst.cum_nneighbor_per_level, dst.assign_probas = src.cum_nneighbor_per_level, src.assign_probas
    dst.entry_point, dst.max_level = src.entry_point, src.max_level
    walk.ntotal, walk.is_trained = index.ntotal, True
    keep.append(view)
    vmin, vdiff = faiss.vector_to_array(storage.sq.trained).reshape(2, -1)
    return walk, (vdiff / 255).astype(np.float32)


def clustered(index: faiss.IndexHNSWSQ, x: np.ndarray) -> tuple[faiss.Index, np.ndarray]:
    """A copy renumbered by k-means cluster; and new position → original row."""
    km = faiss.Kmeans(x.shape[1], 1024, niter=10, seed=1, spherical=True)
    km.train(x)
    _, assign = km.index.search(x, 1)
    perm = np.argsort(assign[:, 0], kind="stable").astype(np.int64)
    copy = faiss.clone_index(index)
    copy.permute_entries(perm)
    return copy, perm


def recall(xb: np.ndarray, xq: np.ndarray, cand: np.ndarray, gt: np.ndarray) -> float:
    got = 0
    for q, c, g in zip(xq, cand, gt):
        c = c[c >= 0]
        top = c[np.argsort(-(xb[c] @ q))[:10]]
        got += len(set(top.tolist()) & set(g.tolist()))
    return got / gt.size


def main() -> None:
    xb, xq = np.load(DATA / "xb.npy"), np.load(DATA / "xq.npy")
    xq = (xq / np.linalg.norm(xq, axis=1, keepdims=True)).astype(np.float32)
    _, gt = faiss.knn(xq, xb, 10, metric=IP)
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "rows": []}
    keep: list = []
    sq8 = built(xb, faiss.ScalarQuantizer.QT_8bit, 32)
    walk, step = folded_view(sq8, keep)
    tidy, perm = clustered(sq8, xb)
    sq4, m48 = built(xb, faiss.ScalarQuantizer.QT_4bit, 32), built(xb, faiss.ScalarQuantizer.QT_8bit, 48)

    def plain(index):
        return lambda q, p: index.search(q, CANDIDATES, params=p)

    # name → (search of queries at ef, original row of each position where the index renumbered them)
    variants = {"sq8": (plain(sq8), None),
                "sq8 folded": (lambda q, p: walk.search(q * step, CANDIDATES, params=p), None),
                "sq4": (plain(sq4), None), "sq8 M=48": (plain(m48), None), "sq8 clustered": (plain(tidy), perm)}
    params = {ef: faiss.SearchParametersHNSW(efSearch=ef) for ef in EFS}
    rec, same = {}, {}
    base_ids = {ef: sq8.search(xq, CANDIDATES, params=params[ef])[1] for ef in EFS}
    for name, (search, rows) in variants.items():
        for ef in EFS:
            _, I = search(xq, params[ef])
            if rows is not None:
                I = np.where(I >= 0, rows[np.maximum(I, 0)], -1)
            rec[name, ef] = round(recall(xb, xq, I, gt), 4)
            same[name, ef] = round(float((np.sort(I, 1) == np.sort(base_ids[ef], 1)).mean()), 4)
    p50s: dict = {key: [] for key in rec}
    faiss.omp_set_num_threads(1)
    keys = list(rec)
    for r in range(ROUNDS):
        for name, ef in keys[r % len(keys):] + keys[: r % len(keys)]:
            search, lat = variants[name][0], []
            for q in xq[:300]:
                t = time.perf_counter()
                search(q[None], params[ef])
                lat.append(time.perf_counter() - t)
            p50s[name, ef].append(statistics.median(lat))
    for name, ef in keys:
        ratios = np.array(p50s["sq8", ef]) / np.array(p50s[name, ef])
        out["rows"].append({"variant": name, "ef": ef, "recall_at_10": rec[name, ef],
                            "same_candidates_as_sq8": same[name, ef],
                            "p50_us": round(statistics.median(p50s[name, ef]) * 1e6, 1),
                            "speedup_vs_sq8": round(float(np.median(ratios)), 3)})
        print(json.dumps(out["rows"][-1]), flush=True)
    lines = ["# An HNSW query's graph walk: what would make it faster (FAISS alone)", "",
             machine_line(out["machine"], out["date"]) +
             "`python bench/hnsw_walk.py`: 100,000 GCIDE definitions, efConstruction 200, inner product. Recall@10 "
             f"of {CANDIDATES} candidates re-ranked exactly, over 1,000 held-out queries against exact search; "
             "same candidates: the share of the baseline's candidate slots a variant returns too; p50: single "
             f"queries on one FAISS thread, the median of {ROUNDS} rounds' p50s over 300 queries (the variants "
             "taking turns); speed-up: the median of the rounds' ratios to `sq8` at the same ef.", "",
             "| variant | ef | recall@10 | same candidates | p50 µs | speed-up vs sq8 |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['ef']} | {r['recall_at_10']} | {r['same_candidates_as_sq8']} | {r['p50_us']} | "
              f"{r['speedup_vs_sq8']} |" for r in out["rows"]]
    write_report(RESULTS / "hnsw_walk", out, lines)


if __name__ == "__main__":
    main()
