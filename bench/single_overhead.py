"""What a single query costs through the store beyond the FAISS call it makes: an
int8/hnsw32 store of the 100K GCIDE definitions, each of 300 held-out queries searched
through ``store.search(q, 10, include=())`` and straight through the same FAISS index with
the same parameters, the two calls taken in turn per query (so that the machine's noise falls
on both alike; each goes first for half of the queries, since the second finds the graph in
cache), FAISS on one thread.

    python bench/prepare.py gcide && python bench/single_overhead.py   # ~2 min; bench/results/single_overhead.{json,md}
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

import qvec
from qvec.bench import machine, machine_line, one_faiss_thread, write_report

HERE = Path(__file__).parent
DATA = HERE / "data" / "gcide"
RESULTS = HERE / "results"


def main() -> None:
    xb, xq = np.load(DATA / "xb.npy"), np.load(DATA / "xq.npy")
    qn = xq / np.linalg.norm(xq, axis=1, keepdims=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=HERE / "data") as tmp:
        store = qvec.open(Path(tmp) / "h.qvec", quantization="int8", index="hnsw32")
        store.add(vectors=xb, ids=[str(i) for i in range(len(xb))])
        store.checkpoint()
        index = store.journal.index.index  # the FAISS object the store searches
        store.search(qn[0], 10, include=())  # the id map built, as a serving store has it
        with one_faiss_thread():
            for ef in (64, 80):
                params = faiss.SearchParametersHNSW(efSearch=ef)
                raw, through = [], []
                calls = [(raw, lambda q, p=params: index.search(q[None, :], 10, params=p)),
                         (through, lambda q, e=ef: store.search(q, 10, include=(), ef_search=e))]
                for n, q in enumerate(qn[:300]):
                    # the second call of a pair finds the query's part of the graph in cache: each
                    # goes first for half of the queries
                    for times, call in calls if n % 2 else calls[::-1]:
                        t = time.perf_counter()
                        call(q)
                        times.append(time.perf_counter() - t)
                r, s = statistics.median(raw) * 1e3, statistics.median(through) * 1e3
                rows.append({"ef_search": ef, "faiss_p50_ms": round(r, 4), "store_p50_ms": round(s, 4),
                             "overhead_ms": round(s - r, 4), "store_over_faiss": round(s / r, 3)})
                print(json.dumps(rows[-1]), flush=True)
        store.close()
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "queries": 300, "rows": rows}
    m = out["machine"]
    lines = ["# A single query through the store against the FAISS call it makes", "",
             machine_line(m, out["date"]) +
             "`python bench/single_overhead.py`: int8/hnsw32 over 100,000 GCIDE definitions, 300 held-out queries, "
             "k=10, `include=()`, FAISS on one thread, the two calls in turn per query, each first for half "
             "of them.", "",
             "| ef_search | FAISS p50 ms | store p50 ms | store − FAISS ms | store / FAISS |", "|---|---|---|---|---|"]
    lines += [f"| {r['ef_search']} | {r['faiss_p50_ms']} | {r['store_p50_ms']} | {r['overhead_ms']} | "
              f"{r['store_over_faiss']} |" for r in rows]
    write_report(RESULTS / "single_overhead", out, lines)


if __name__ == "__main__":
    main()
