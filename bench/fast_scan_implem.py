"""How FAISS scans IVF fast-scan PQ lists: its own choice (``implem`` 0, which picks 12, or 13
for k > 20) against the query-by-query heap scan qvec sets (``implem`` 10,
``qvec.index.FAST_SCAN_IMPLEM``), on the same index.

pq96x4fs/ivf1024 and pq48x4fs/ivf1024 over the 100K GCIDE definitions, 1,000 held-out
queries: a batch of all of them (best of 7, the two taken in turn) and single queries on one
FAISS thread (p50 of 200, the two in turn per query), at the nprobe and k the store uses
(k × oversample candidates for rescoring). Also the share of the k results both return (the
rest differ only between equal quantized scores).

    python bench/prepare.py gcide && python bench/fast_scan_implem.py   # ~3 min; bench/results/fast_scan_implem.*
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

import qvec
from qvec import inputs
from qvec.bench import machine, machine_line, two_in_turn, write_report
from qvec.index import FAST_SCAN_IMPLEM, _unwrap

HERE = Path(__file__).parent
DATA = HERE / "data" / "gcide"
RESULTS = HERE / "results"
CASES = [(32, 10), (64, 10), (64, 40), (128, 100)]  # (nprobe, k)


def measure(index, xn: np.ndarray, nprobe: int, k: int) -> dict:
    inner = _unwrap(index)
    params = faiss.SearchParametersIVF(nprobe=nprobe)

    def run(implem: int, x: np.ndarray):
        inner.implem = implem
        return index.search(x, k, params=params)

    t = two_in_turn(lambda x: run(0, x), lambda x: run(FAST_SCAN_IMPLEM, x), xn)
    _, I0 = run(0, xn)
    _, I10 = run(FAST_SCAN_IMPLEM, xn)
    shared = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(I0.tolist(), I10.tolist())]))
    (b0, b10), (s0, s10) = t["batch_ms"], t["single_p50_ms"]
    return {"nprobe": nprobe, "k": k, "batch_ms_faiss_choice": round(b0, 2), "batch_ms_qvec": round(b10, 2),
            "batch_speedup": round(b0 / b10, 3), "single_p50_ms_faiss_choice": round(s0, 4),
            "single_p50_ms_qvec": round(s10, 4), "single_speedup": round(s0 / s10, 3),
            "same_results": round(shared, 4)}


def main() -> None:
    xb, xq = np.load(DATA / "xb.npy"), np.load(DATA / "xq.npy")
    xn = inputs.normalised(xq, "cosine")
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "rows": []}
    with tempfile.TemporaryDirectory(dir=HERE / "data") as tmp:
        for quantization in ("pq96x4fs", "pq48x4fs"):
            store = qvec.open(Path(tmp) / quantization, quantization=quantization, index="ivf1024")
            store.add(vectors=xb, ids=[str(i) for i in range(len(xb))])
            store.checkpoint()
            index = store.journal.index.index
            for nprobe, k in CASES:
                row = {"config": f"{quantization}/ivf1024"} | measure(index, xn, nprobe, k)
                out["rows"].append(row)
                print(json.dumps(row), flush=True)
            _unwrap(index).implem = FAST_SCAN_IMPLEM
            store.close()
    lines = ["# IVF fast-scan: FAISS's own scan against the query-by-query heap scan qvec sets", "",
             machine_line(out["machine"], out["date"]) +
             "`python bench/fast_scan_implem.py`: 100,000 GCIDE definitions, 1,000 held-out queries. Batch: all "
             "queries at once, best of 7, the two implementations in turn. Single: one query at a time on one "
             "FAISS thread, p50 of 200, the two in turn per query. FAISS's choice is `implem` 0 (12, or 13 for "
             f"k > 20); qvec's is {FAST_SCAN_IMPLEM}. Same results: the share of each query's k ids both return "
             "(the others differ only between equal quantized scores).", "",
             "| config | nprobe | k | batch ms, FAISS's choice | batch ms, qvec | speed-up | single p50 ms, FAISS's "
             "choice | single p50 ms, qvec | speed-up | same results |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| `{r['config']}` | {r['nprobe']} | {r['k']} | {r['batch_ms_faiss_choice']} | {r['batch_ms_qvec']} | "
              f"{r['batch_speedup']} | {r['single_p50_ms_faiss_choice']} | {r['single_p50_ms_qvec']} | "
              f"{r['single_speedup']} | {r['same_results']} |" for r in out["rows"]]
    write_report(RESULTS / "fast_scan_implem", out, lines)


if __name__ == "__main__":
    main()
