"""An HNSW store's vectors laid out by k-means cluster (``index.LAYOUT_MIN_ROWS``) against
the order they were added in, through the store.

Two int8/hnsw32 stores of the 100K GCIDE definitions with FP32 originals, built the same way
(one ``add`` of every row, which trains the codes and then builds the graph at once), one with
the layout switched off (``LAYOUT_MIN_ROWS`` beyond reach: qvec before this change). Build
time (the add, the training, the graph and the checkpoint), recall@10 of the 1,000 held-out
queries against exact search (``rescore=2``, ef 56: the README's 0.99 configuration), single
queries (``include=()``, one FAISS thread; in each round both stores answer the same 200
queries, the order of the two alternating by round), and a batch of all 1,000 (best of 5,
in turn).

    python bench/prepare.py gcide && python bench/hnsw_layout.py   # ~5 min; bench/results/hnsw_layout.{json,md}
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import qvec
import qvec.index as index_module
from qvec.bench import machine, machine_line, one_faiss_thread, result_rows, write_report
from qvec.metrics import exact_knn, recall_at_k

HERE = Path(__file__).parent
DATA = HERE / "data" / "gcide"
RESULTS = HERE / "results"
PARAMS = {"ef_search": 56, "oversample": 2}
ROUNDS = 9


def build(path: Path, xb: np.ndarray, ids: list[str], layout: bool):
    saved = index_module.LAYOUT_MIN_ROWS
    index_module.LAYOUT_MIN_ROWS = saved if layout else 10**12
    try:
        t = time.perf_counter()
        store = qvec.open(path, quantization="int8", index="hnsw32", rescore=True)
        store.add(vectors=xb, ids=ids)  # trains once it holds enough rows, then adds them all at once
        store.train()
        store.checkpoint()
        seconds = time.perf_counter() - t
    finally:
        index_module.LAYOUT_MIN_ROWS = saved
    return store, seconds


def main() -> None:
    xb, xq = np.load(DATA / "xb.npy"), np.load(DATA / "xq.npy")
    gt_scores, gt = exact_knn(xb, xq, 100)
    ids = [str(i) for i in range(len(xb))]
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "params": PARAMS, "rows": []}
    names = ["added order (before)", "by cluster (now)"]
    with tempfile.TemporaryDirectory(dir=HERE / "data") as tmp:
        stores, build_s = {}, {}
        for name, layout in zip(names, (False, True)):
            stores[name], build_s[name] = build(Path(tmp) / str(layout), xb, ids, layout)
        recall = {name: round(recall_at_k(result_rows(s.search_batch(xq, 10, include=(), **PARAMS), 10), gt, 10,
                                          gt_scores), 4) for name, s in stores.items()}
        p50s: dict[str, list[float]] = {name: [] for name in names}
        with one_faiss_thread():
            for r in range(ROUNDS):
                for name in names[:: 1 if r % 2 else -1]:
                    s, lat = stores[name], []
                    for q in xq[:200]:
                        t = time.perf_counter()
                        s.search(q, 10, include=(), **PARAMS)
                        lat.append(time.perf_counter() - t)
                    p50s[name].append(statistics.median(lat))
        batch: dict[str, list[float]] = {name: [] for name in names}
        for r in range(5):
            for name in names[:: 1 if r % 2 else -1]:
                t = time.perf_counter()
                stores[name].search_batch(xq, 10, include=(), **PARAMS)
                batch[name].append(time.perf_counter() - t)
        for s in stores.values():
            s.close()
    base = np.array(p50s[names[0]])
    for name in names:
        out["rows"].append({"layout": name, "build_s": round(build_s[name], 1), "recall_at_10": recall[name],
                            "single_p50_ms": round(statistics.median(p50s[name]) * 1e3, 4),
                            "single_speedup": round(float(np.median(base / np.array(p50s[name]))), 3),
                            "batch_ms": round(min(batch[name]) * 1e3, 1)})
        print(json.dumps(out["rows"][-1]), flush=True)
    lines = ["# HNSW vectors laid out by cluster, through the store", "",
             machine_line(out["machine"], out["date"]) +
             "`python bench/hnsw_layout.py`: int8/hnsw32 (efConstruction 200) over 100,000 GCIDE definitions with "
             "FP32 originals, `rescore=2`, ef 56, k=10, `include=()`. Build: one `add` of every row (the codes "
             "trained, the graph built) and the checkpoint. Recall@10: 1,000 held-out queries against exact search. "
             "Single: one FAISS thread, the "
             f"median of {ROUNDS} rounds' p50s over 200 queries, the two stores in turn; speed-up: the median of "
             "the rounds' ratios. Batch: all 1,000 queries, best of 5, in turn.", "",
             "| layout | build s | recall@10 | single p50 ms | single speed-up | batch ms |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['layout']} | {r['build_s']} | {r['recall_at_10']} | {r['single_p50_ms']} | "
              f"{r['single_speedup']} | {r['batch_ms']} |" for r in out["rows"]]
    write_report(RESULTS / "hnsw_layout", out, lines)


if __name__ == "__main__":
    main()
