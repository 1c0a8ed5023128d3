"""#13's paths that `qvec bench` does not time: filtered batches over flat SQ codes, single
queries on a loaded machine, and stats() on a large store. Each against its reference in
the same run (ratios, not absolute speeds: the machine is shared).

    python bench/fast_paths.py [bench/data/gcide] [--out bench/results/speed/fast_paths.md]

1. Filtered batches: an int8/flat store of the 100K GCIDE embeddings with a metadata field
   `part` (i % 4); 1,000 queries filtered to 1/4 and 3/4 of the rows, through the store
   (decoded blocks, one matrix product each) and through FAISS's own scan of the same index
   with an ID selector (what the store did before), recall of both against exact search.
2. Single queries with two busy processes beside them (the machine's 2 cores taken): the
   store (one FAISS thread for fewer than 4 queries) against the same FAISS index searched
   directly with FAISS's default threads, int8/hnsw32 and int8/flat.
3. stats() against serialising the index (what stats() did before).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import faiss
import numpy as np

import qvec
from qvec.bench import best_of, machine
from qvec.inputs import normalised
from qvec.metrics import exact_knn, recall_at_k


def _busy(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def p50_ms(fn, queries) -> float:
    lat = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        lat.append(time.perf_counter() - t)
    return round(1000 * statistics.median(lat), 3)


def build(path: Path, xb: np.ndarray, quantization: str, index: str, meta=None):
    s = qvec.open(path, quantization=quantization, index=index)
    s.add(vectors=xb, ids=[str(i) for i in range(len(xb))], metadata=meta)
    s.train()
    s.checkpoint()
    return s


def filtered(s, xb, xq) -> list[dict]:
    vi = s.journal.index
    out = []
    for name, where, parts in [("1/4 of rows", {"part": 0}, [0]), ("3/4 of rows", {"part": {"$ne": 3}}, [0, 1, 2])]:
        allowed = np.flatnonzero(np.isin(np.arange(len(xb)) % 4, parts)).astype(np.int64)
        store_s, res = best_of(lambda w=where: s.search_batch(xq, 10, where=w, include=()), 3)
        got = np.array([[int(h.id) for h in r] for r in res])

        def raw(allowed=allowed):
            bits = np.packbits(np.isin(np.arange(len(xb)), allowed), bitorder="little")
            sel = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))
            return vi.index.search(xq, 10, params=faiss.SearchParameters(sel=sel))

        faiss_s, (_, I) = best_of(raw, 3)
        _, gt = exact_knn(xb[allowed], xq, 10, "cosine")
        gt = allowed[gt]
        out.append({"filter": name, "store_qps": round(len(xq) / store_s), "faiss_qps": round(len(xq) / faiss_s),
                    "store_vs_faiss": round(faiss_s / store_s, 2), "store_recall_at_10": recall_at_k(got, gt, 10),
                    "faiss_recall_at_10": recall_at_k(I, gt, 10)})
    return out


def loaded_single_queries(stores: dict, xq) -> list[dict]:
    out = []
    for load in (0, 2):
        stop = multiprocessing.Event()
        busy = [multiprocessing.Process(target=_busy, args=(stop,)) for _ in range(load)]
        for p in busy:
            p.start()
        time.sleep(0.5)
        try:
            for name, s in stores.items():
                vi = s.journal.index
                params = vi.search_parameters(10)
                out.append({"config": name, "busy_processes": load,
                            "store_p50_ms": p50_ms(lambda q, s=s: s.search(q, 10, include=()), xq),
                            "faiss_default_threads_p50_ms": p50_ms(
                                lambda q, vi=vi, params=params: vi.index.search(q[None], 10, params=params), xq),
                            "faiss_threads": faiss.omp_get_max_threads()})
        finally:
            stop.set()
            for p in busy:
                p.join()
    return out


def stats_cost(s) -> dict:
    t_stats, st = best_of(s.stats, 3)
    t_ser, bpv = best_of(s.journal.index.bytes_per_vector, 3)
    return {"count": st.count, "stats_ms": round(1000 * t_stats, 2), "serialise_ms": round(1000 * t_ser, 2),
            "bytes_per_vector": st.bytes_per_vector, "serialised_bytes_per_vector": bpv}


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# #13 fast paths: {r['corpus']}", "",
             f"{r['count']:,} vectors × {r['dim']}, {r['queries']} queries. Machine: {m['cpu']}, {m['cores']} cores, "
             f"{m['ram_gb']} GB; faiss {m['faiss']}. Run {r['date']}. Script: bench/fast_paths.py.", "",
             "## Filtered batches over int8/flat (decoded blocks + GEMM vs FAISS's scan with an ID selector)", "",
             "| filter | store q/s | FAISS q/s | store/FAISS | store R@10 | FAISS R@10 |", "|---|---|---|---|---|---|"]
    for f in r["filtered"]:
        lines.append(f"| {f['filter']} | {f['store_qps']} | {f['faiss_qps']} | {f['store_vs_faiss']} | "
                     f"{f['store_recall_at_10']:.4f} | {f['faiss_recall_at_10']:.4f} |")
    lines += ["", "## Single queries, p50 ms, with busy processes beside them "
              "(store: one FAISS thread; FAISS: its default threads)", "",
              "| config | busy processes | store p50 ms | FAISS p50 ms |", "|---|---|---|---|"]
    for q in r["single"]:
        lines.append(f"| `{q['config']}` | {q['busy_processes']} | {q['store_p50_ms']} | "
                     f"{q['faiss_default_threads_p50_ms']} |")
    s = r["stats"]
    lines += ["", "## stats()", "",
              f"{s['count']:,} rows, int8/flat: stats() {s['stats_ms']} ms; serialising the index to measure it "
              f"(as before) {s['serialise_ms']} ms. Bytes per vector: {s['bytes_per_vector']} (serialised: "
              f"{s['serialised_bytes_per_vector']}).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", nargs="?", default="bench/data/gcide")
    ap.add_argument("--out", default="bench/results/speed/fast_paths.md")
    a = ap.parse_args()
    xb, xq = np.load(Path(a.data) / "xb.npy"), normalised(np.load(Path(a.data) / "xq.npy"), "cosine")
    warnings.simplefilter("ignore", UserWarning)
    tmp = Path(tempfile.mkdtemp(prefix="qvec-fast-"))
    flat = build(tmp / "flat", xb, "int8", "flat", [{"part": i % 4} for i in range(len(xb))])
    hnsw = build(tmp / "hnsw", xb, "int8", "hnsw32")
    r = {"corpus": str(a.data), "count": len(xb), "dim": xb.shape[1], "queries": len(xq), "machine": machine(),
         "date": time.strftime("%Y-%m-%d"),
         "filtered": filtered(flat, xb, xq),
         "single": loaded_single_queries({"int8/hnsw32": hnsw, "int8/flat": flat}, xq[:200]),
         "stats": stats_cost(flat)}
    flat.close()
    hnsw.close()
    shutil.rmtree(tmp, ignore_errors=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(r))
    out.with_suffix(".json").write_text(json.dumps(r, indent=1))
    print(markdown(r))


if __name__ == "__main__":
    main()
