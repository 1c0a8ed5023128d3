"""IVF int8 lists scanned by FAISS's own search against qvec's folded scan of the same index
(``qvec.index.FoldedScan``: the per-dimension scales multiplied into the query, the lists read
as uniform codes, ``q · vmin`` added back).

int8/ivf1024 over the 100K GCIDE definitions (cosine), 1,000 held-out queries, k=10, at
nprobe 16-128: a batch of all of them (best of 7, the two taken in turn) and single queries on
one FAISS thread (p50 of 200, the two in turn per query), with the share of ids both return and
the largest score difference.

    python bench/prepare.py gcide && python bench/folded_scan.py   # ~2 min; bench/results/folded_scan.{json,md}
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

HERE = Path(__file__).parent
DATA = HERE / "data" / "gcide"
RESULTS = HERE / "results"
K = 10


def measure(index, folded, xn: np.ndarray, nprobe: int) -> dict:
    params = faiss.SearchParametersIVF(nprobe=nprobe)
    calls = {"faiss": lambda x: index.search(x, K, params=params), "folded": lambda x: folded.search(x, K, params)}
    t = two_in_turn(calls["faiss"], calls["folded"], xn)
    D0, I0 = calls["faiss"](xn)
    D1, I1 = calls["folded"](xn)
    (b0, b1), (s0, s1) = t["batch_ms"], t["single_p50_ms"]
    return {"nprobe": nprobe, "batch_ms_faiss": round(b0, 2), "batch_ms_folded": round(b1, 2),
            "batch_speedup": round(b0 / b1, 3), "single_p50_ms_faiss": round(s0, 4),
            "single_p50_ms_folded": round(s1, 4), "single_speedup": round(s0 / s1, 3),
            "same_ids": round(float((I0 == I1).mean()), 5), "max_score_diff": float(np.abs(D0 - D1).max())}


def main() -> None:
    xb, xq = np.load(DATA / "xb.npy"), np.load(DATA / "xq.npy")
    xn = inputs.normalised(xq, "cosine")
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "rows": []}
    with tempfile.TemporaryDirectory(dir=HERE / "data") as tmp:
        store = qvec.open(Path(tmp) / "s.qvec", quantization="int8", index="ivf1024")
        store.add(vectors=xb, ids=[str(i) for i in range(len(xb))])
        store.checkpoint()
        vi = store.journal.index
        for nprobe in (16, 32, 64, 128):
            row = {"config": "int8/ivf1024"} | measure(vi.index, vi._folded, xn, nprobe)
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
        store.close()
    lines = ["# IVF int8: FAISS's own scan against the folded scan qvec uses", "",
             machine_line(out["machine"], out["date"]) +
             "`python bench/folded_scan.py`: int8/ivf1024 over 100,000 GCIDE definitions (cosine), 1,000 held-out "
             "queries, k=10. Batch: all queries at once, best of 7, the two in turn. Single: one query at a time on "
             "one FAISS thread, p50 of 200, the two in turn per query. Same ids: the share of the 10,000 result "
             "slots holding the same id; max score diff: the largest difference between the two scans' scores.", "",
             "| config | nprobe | batch ms, FAISS | batch ms, folded | speed-up | single p50 ms, FAISS | "
             "single p50 ms, folded | speed-up | same ids | max score diff |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| `{r['config']}` | {r['nprobe']} | {r['batch_ms_faiss']} | {r['batch_ms_folded']} | "
              f"{r['batch_speedup']} | {r['single_p50_ms_faiss']} | {r['single_p50_ms_folded']} | "
              f"{r['single_speedup']} | {r['same_ids']} | {r['max_score_diff']:.1e} |" for r in out["rows"]]
    write_report(RESULTS / "folded_scan", out, lines)


if __name__ == "__main__":
    main()
