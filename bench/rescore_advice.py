"""What the read-ahead advice costs a re-ranked single query, and what stopping it on a warm
file costs when the file turns cold again.

An int8/hnsw32 store of the 100K GCIDE definitions with FP32 originals, searched one query
at a time (``rescore=2``, ef 64, k=10: the README's fast 0.99-recall configuration), FAISS
on one thread:
- warm, the advice given on every read (``ADVISE_HOLD`` set beyond reach: qvec before this
  change) against the advice as qvec now gives it (stopped after 32 reads that waited for
  nothing), the two in turn, query by query;
- cold after warm: with the advice stopped, the originals leave memory as memory pressure
  would take them (``MADV_PAGEOUT`` on the live map, then ``POSIX_FADV_DONTNEED``; DONTNEED
  alone keeps every page a live map has mapped, and the kernel's fault-around maps most of
  them) and other queries run, whose candidates are read from the disk. The first such read
  goes unadvised, row by row; it switches the advice on for the reads after it;
- a warm batch: the re-rank of 1,000 queries' k 10 × oversample 1 candidates (10,000 rows,
  scattered enough to be advised), the advice on every read against the advice as qvec now
  counts a read of many rows (one read per ``QUERY_ROWS`` rows), from a map that starts advised.

    python bench/prepare.py gcide && python bench/rescore_advice.py   # ~2 min; bench/results/rescore_advice.{json,md}
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import qvec
import qvec.originals as originals_module
from qvec.bench import machine, machine_line, one_faiss_thread, write_report

HERE = Path(__file__).parent
DATA = HERE / "data" / "gcide"
RESULTS = HERE / "results"
PARAMS = {"ef_search": 64, "oversample": 2}
BATCH_READS = 12
MADV_PAGEOUT = 21  # Linux >= 5.4; Python's mmap module does not name it


def summary(lat: list[float]) -> dict:
    ms = np.array(lat) * 1e3
    return {"queries": len(ms), "p50_ms": round(float(np.median(ms)), 4),
            "p99_ms": round(float(np.percentile(ms, 99)), 4), "max_ms": round(float(ms.max()), 3)}


def warm_batch(store, qn: np.ndarray) -> dict:
    """The re-rank of one batch's candidates, BATCH_READS times per policy in turn, on a warm file."""
    originals, index = store.journal.originals, store.journal.index
    xq = qn.astype(np.float32)
    _, I = index.search(xq, 10, params=qvec.config.SearchParams(ef_search=PARAMS["ef_search"]))
    originals.rerank(xq, I, 10, "cosine")  # the rows' pages touched, their checksums checked
    originals._advise_left = originals_module.ADVISE_HOLD  # as a new map starts
    always, adaptive, left = [], [], []
    for n in range(BATCH_READS):
        for times, forced in ((always, True), (adaptive, False))[:: 1 if n % 2 else -1]:
            saved = originals._advise_left
            if forced:
                originals._advise_left = 10**9
            t = time.perf_counter()
            originals.rerank(xq, I, 10, "cosine")
            times.append(time.perf_counter() - t)
            if forced:
                originals._advise_left = saved
            else:
                left.append(originals._advise_left)
    ms = lambda v: [round(t * 1e3, 2) for t in v]  # noqa: E731
    return {"rows": int(I.size), "reads": BATCH_READS, "always_ms": ms(always), "now_ms": ms(adaptive),
            "always_p50_ms": round(statistics.median(always) * 1e3, 3),
            "now_p50_ms": round(statistics.median(adaptive) * 1e3, 3), "advice_left_after_each": left}


def main() -> None:
    xb, xq = np.load(DATA / "xb.npy"), np.load(DATA / "xq.npy")
    qn = xq / np.linalg.norm(xq, axis=1, keepdims=True)
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "params": PARAMS, "rows": []}
    with tempfile.TemporaryDirectory(dir=HERE / "data") as tmp:  # on the data's disk, not a tmpfs
        store = qvec.open(Path(tmp) / "h.qvec", quantization="int8", index="hnsw32", rescore=True)
        store.add(vectors=xb, ids=[str(i) for i in range(len(xb))])
        store.checkpoint()
        originals = store.journal.originals
        search = lambda q: store.search(q, 10, include=(), **PARAMS)  # noqa: E731
        hold = originals_module.ADVISE_HOLD
        with one_faiss_thread():
            for q in qn[:50]:  # the graph, the id map and the originals' map warmed
                search(q)
            always, adaptive, advised = [], [], 0
            for n, q in enumerate(qn[:400]):
                # each goes first for half of the queries: the second finds the graph in cache
                for times, forced in ((always, True), (adaptive, False))[:: 1 if n % 2 else -1]:
                    saved = originals._advise_left  # the adaptive policy's state, kept from the forced calls
                    if forced:
                        originals._advise_left = 10**9
                    else:
                        advised += saved > 0
                    t = time.perf_counter()
                    search(q)
                    times.append(time.perf_counter() - t)
                    if forced:
                        originals._advise_left = saved
            out["warm_queries_advised"] = advised
            out["rows"] += [{"case": "warm, advice on every read (before)"} | summary(always),
                            {"case": "warm, advice stopped (now)"} | summary(adaptive)]
            originals._advise_left = 0  # as a warm store has it (advice stopped), whatever the last reads took
            originals._mm.madvise(MADV_PAGEOUT)
            fd = os.open(originals.path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            cold, first_advised = [], None
            for q in qn[400:600]:
                t = time.perf_counter()
                search(q)
                cold.append(time.perf_counter() - t)
                if first_advised is None and originals._advise_left == hold:
                    first_advised = len(cold)
            out["rows"].append({"case": "cold after warm (now)"} | summary(cold))
            out["first_cold_query_ms"] = round(cold[0] * 1e3, 3)
            out["advice_on_after_queries"] = first_advised
            out["warm_p50_saved_ms"] = round(statistics.median(always) * 1e3 - statistics.median(adaptive) * 1e3, 4)
            out["batch"] = warm_batch(store, qn)
        store.close()
    for r in out["rows"]:
        print(json.dumps(r), flush=True)
    m = out["machine"]
    lines = ["# Read-ahead advice for re-ranked single queries, given only while reads wait for the disk", "",
             machine_line(m, out["date"]) +
             "`python bench/rescore_advice.py`: int8/hnsw32 over 100,000 GCIDE definitions with FP32 originals, "
             "`rescore=2`, ef 64, k=10, `include=()`, one query at a time on one FAISS thread. Warm: 400 held-out "
             "queries, the two policies in turn per query. Cold after warm: with the advice stopped, the originals "
             "paged out of the live map (MADV_PAGEOUT) and dropped from the page cache, then 200 other queries.", "",
             "| case | queries | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['queries']} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} |" for r in out["rows"]]
    lines += ["", f"Warm, the advice was given to {out['warm_queries_advised']} of the 400 queries (the first "
              f"reads of a new map, and {originals_module.ADVISE_HOLD} after any read slower than the bound); "
              f"stopping it saved {out['warm_p50_saved_ms']} ms of the p50. Cold after warm: the first query took "
              f"{out['first_cold_query_ms']} ms unadvised, and the advice was on again after "
              f"{out['advice_on_after_queries']} quer{'y' if out['advice_on_after_queries'] == 1 else 'ies'}."]
    b = out["batch"]
    lines += ["", f"Warm batch: the re-rank of 1,000 queries' {b['rows']:,} candidates (k 10 × oversample 1), "
              f"{b['reads']} times per policy in turn, the map starting advised: advice on every read p50 "
              f"{b['always_p50_ms']} ms ({', '.join(map(str, b['always_ms']))}); counted by rows (now) p50 "
              f"{b['now_p50_ms']} ms ({', '.join(map(str, b['now_ms']))}), advice left after each read: "
              f"{b['advice_left_after_each']}."]
    write_report(RESULTS / "rescore_advice", out, lines)


if __name__ == "__main__":
    main()
