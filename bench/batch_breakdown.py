"""Where a batch's time goes through the store, beside the FAISS call it makes, and what the
queries' place in memory costs FAISS: the README's account of #13's batch ratios.

On the 100K GCIDE definitions (1,000 held-out queries, k=10):
- for int8/ivf1024 and pq96x4fs/ivf1024 rescored x4 (nprobe 64): the store's whole batch,
  FAISS's search of the same index, and the store's own pieces timed alone (preparing the
  queries, re-ranking the candidates from the fp32 originals, building the hits), each the
  best of 7, the store and FAISS taken in turn;
- FAISS's int8/ivf1024 search of the same queries copied to 0, 16, 32 and 48 bytes past a
  64-byte line, as a batch and one query at a time (p50 of 300, one thread);
- the IVF batches' first step alone, the coarse quantizer's search for each query's nprobe
  lists (a matrix product with the 1,024 centroids, then the top nprobe of each row kept in a
  heap), at nprobe 8-128, against FAISS's other way of keeping them (its reservoir, which
  FAISS uses from k = 100 on: ``faiss.cvar.distance_compute_min_k_reservoir``).

    python bench/prepare.py gcide && python bench/batch_breakdown.py   # ~1 min; bench/results/batch_breakdown.{json,md}
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
from qvec import inputs
from qvec.bench import best_of, best_of_pair, machine, machine_line, one_faiss_thread, write_report
from qvec.config import SearchParams
from qvec.records import hits

HERE = Path(__file__).parent
DATA = HERE / "data" / "gcide"
RESULTS = HERE / "results"


def at_offset(x: np.ndarray, offset: int) -> np.ndarray:
    """A copy of ``x`` starting ``offset`` bytes past a 64-byte boundary."""
    buf = np.empty(x.size + 32, np.float32)
    start = (-buf.ctypes.data % 64 + offset) // 4
    out = buf[start : start + x.size].reshape(x.shape)
    out[...] = x
    return out


def breakdown(store, xq: np.ndarray, params: dict) -> dict:
    vi, s = store.journal.index, store.settings
    xn = inputs.normalised(xq, s.metric)
    p = SearchParams.parse(params)
    kc = 10 * (p.oversample or s.oversample) if s.rescore else 10
    store.search_batch(xq[:100], 10, include=(), **params)  # the id map built, the originals mapped
    whole, faiss_s, _, _ = best_of_pair(lambda: store.search_batch(xq, 10, include=(), **params),
                                        lambda: vi.search_raw(xn, kc, nprobe=p.nprobe), 7)
    # FAISS with the scan qvec sets (fast-scan IVF: implem 10), so the store's own costs show apart
    # from what qvec's choice of scan saves
    _, same_scan, _, _ = best_of_pair(lambda: store.search_batch(xq, 10, include=(), **params),
                                      lambda: vi.search_raw(xn, kc, nprobe=p.nprobe, faiss_defaults=False), 7)
    row = {"store_ms": whole * 1e3, "faiss_ms": faiss_s * 1e3, "store_over_faiss": faiss_s / whole,
           "faiss_qvec_scan_ms": same_scan * 1e3,
           "prepare_ms": best_of(lambda: inputs.normalised(inputs.as_matrix(xq, s.dim), s.metric), 7)[0] * 1e3}
    _, I = vi.search(xn, kc, params=p)
    if s.rescore:
        rerank_s, (D, I) = best_of(lambda: store.journal.originals.rerank(xn, I, 10, s.metric), 7)
        row["rerank_ms"] = rerank_s * 1e3
    else:
        D, I = vi.search(xn, 10, params=p)
    row["hits_ms"] = best_of(lambda: hits(D, I, (), store.catalog), 7)[0] * 1e3
    return {k: round(v, 3) for k, v in row.items()}


def coarse_step(store, xq: np.ndarray) -> list[dict]:
    """The coarse quantizer's search alone, kept in a heap (FAISS's choice below k = 100) and
    in its reservoir, the two in turn; and whether they pick the same lists."""
    quantizer = faiss.extract_index_ivf(store.journal.index.index).quantizer
    xn = inputs.normalised(xq, store.settings.metric)
    matmul_s, _ = best_of(lambda: xn @ quantizer.reconstruct_n(0, quantizer.ntotal).T, 7)
    rows = []
    for nprobe in (8, 16, 32, 64, 128):
        heap_s, res_s, (_, I_heap), (_, I_res) = best_of_pair(lambda n=nprobe: quantizer.search(xn, n),
                                                              lambda n=nprobe: _in_reservoir(quantizer, xn, n), 7)
        rows.append({"nprobe": nprobe, "heap_ms": round(heap_s * 1e3, 2), "reservoir_ms": round(res_s * 1e3, 2),
                     "heap_over_reservoir": round(heap_s / res_s, 3), "same_lists": bool((I_heap == I_res).all()),
                     "matmul_alone_ms": round(matmul_s * 1e3, 2)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _in_reservoir(quantizer, xn: np.ndarray, nprobe: int):
    was = faiss.cvar.distance_compute_min_k_reservoir
    faiss.cvar.distance_compute_min_k_reservoir = 1
    try:
        return quantizer.search(xn, nprobe)
    finally:
        faiss.cvar.distance_compute_min_k_reservoir = was


def alignment(store, xq: np.ndarray) -> list[dict]:
    vi = store.journal.index
    xn = inputs.normalised(xq, store.settings.metric)
    rows = []
    for offset in (0, 16, 32, 48):
        batch = at_offset(xn, offset)
        singles = [at_offset(q[None, :], offset) for q in xn[:300]]
        batch_s, _ = best_of(lambda b=batch: vi.search_raw(b, 10), 7)
        lat = []
        with one_faiss_thread():
            for q in singles:
                t = time.perf_counter()
                vi.search_raw(q, 10)
                lat.append(time.perf_counter() - t)
        rows.append({"offset_bytes": offset, "batch_ms": round(batch_s * 1e3, 2),
                     "single_p50_ms": round(statistics.median(lat) * 1e3, 4)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    xb, xq = np.load(DATA / "xb.npy"), np.load(DATA / "xq.npy")
    ids = [str(i) for i in range(len(xb))]
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "queries": len(xq), "configs": {}}
    with tempfile.TemporaryDirectory(dir=HERE / "data") as tmp:
        for name, spec, params in [("int8/ivf1024", {"quantization": "int8", "index": "ivf1024"}, {}),
                                   ("pq96x4fs/ivf1024/rescore=4/nprobe=64",
                                    {"quantization": "pq96x4fs", "index": "ivf1024", "rescore": True},
                                    {"nprobe": 64, "oversample": 4})]:
            store = qvec.open(Path(tmp) / name.replace("/", "_"), **spec)
            store.add(vectors=xb, ids=ids)
            store.checkpoint()
            out["configs"][name] = breakdown(store, xq, params)
            print(name, json.dumps(out["configs"][name]), flush=True)
            if name == "int8/ivf1024":
                out["alignment"] = alignment(store, xq)
                out["coarse_step"] = coarse_step(store, xq)
            store.close()
    m = out["machine"]
    lines = ["# Where a batch's time goes, and what the queries' alignment costs FAISS", "",
             machine_line(m, out["date"]) +
             "`python bench/batch_breakdown.py`: 100,000 GCIDE definitions, 1,000 held-out queries, k=10. "
             "Times are the best of 7; the store's batch and FAISS's search of the same index taken in turn; "
             "FAISS with its own choice of scan, and with the scan qvec sets (IVF fast-scan: `implem` 10; the "
             "same for int8); the pieces timed alone (the store's batch runs them with caches FAISS has just "
             "filled).", "",
             "| config | store ms | FAISS ms | store / FAISS | FAISS ms, qvec's scan | preparing queries ms | "
             "re-rank ms | hits ms |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in out["configs"].items():
        lines.append(f"| `{name}` | {r['store_ms']} | {r['faiss_ms']} | {r['store_over_faiss']} | "
                     f"{r['faiss_qvec_scan_ms']} | {r['prepare_ms']} | {r.get('rerank_ms', '–')} | {r['hits_ms']} |")
    lines += ["", "FAISS's own search of int8/ivf1024 (no store), the same queries copied to each offset past a "
              "64-byte line:", "", "| offset bytes | batch of 1,000 ms | single query p50 ms |", "|---|---|---|"]
    lines += [f"| {r['offset_bytes']} | {r['batch_ms']} | {r['single_p50_ms']} |" for r in out["alignment"]]
    lines += ["", "The IVF batches' first step alone: the coarse quantizer's search (1,024 centroids) for each "
              "query's nprobe lists, the top nprobe kept in FAISS's heap (its choice below k = 100) and in its "
              f"reservoir, best of 7 each, the two in turn. The matrix product alone: "
              f"{out['coarse_step'][0]['matmul_alone_ms']} ms.", "",
              "| nprobe | heap ms | reservoir ms | heap / reservoir | same lists |", "|---|---|---|---|---|"]
    lines += [f"| {r['nprobe']} | {r['heap_ms']} | {r['reservoir_ms']} | {r['heap_over_reservoir']} | "
              f"{'yes' if r['same_lists'] else 'no'} |" for r in out["coarse_step"]]
    write_report(RESULTS / "batch_breakdown", out, lines)


if __name__ == "__main__":
    main()
