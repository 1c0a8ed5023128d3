"""#14's evidence: `qvec tune --recall 0.95 --apply` on 100K GCIDE definitions with FP32
originals, then an independent check: recall@10 of the tuned store on the 1,000 held-out
definitions (queries tune never saw, not rows of the store) against exact FP32 search,
beside what `qvec report` states.

    python bench/prepare.py gcide && python bench/tune_gcide.py   # writes bench/results/tune_gcide.{json,md}
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
from core import DATA, RESULTS

import qvec
from qvec.bench import machine, result_rows
from qvec.metrics import exact_knn, recall_at_k

TARGET = 0.95


def main():
    xb, xq = np.load(DATA / "xb.npy"), np.load(DATA / "xq.npy")
    _, gt = exact_knn(xb, xq, 10)
    out: dict = {"machine": machine(), "n_docs": len(xb), "n_queries": len(xq), "target": TARGET}
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        path = Path(tmp) / "gcide.qvec"
        with qvec.open(path, quantization="int8", rescore=True) as s:
            s.add(vectors=xb, ids=[str(i) for i in range(len(xb))])
            s.train()
            before = s.report()
            t = time.perf_counter()
            result = s.tune(TARGET)
            out["tune_s"] = round(time.perf_counter() - t, 1)
            t = time.perf_counter()
            out["applied"] = s.apply_tuning(result.chosen, TARGET)
            out["apply_s"] = round(time.perf_counter() - t, 1)
        with qvec.open(path, read_only=True) as s:
            got = result_rows(s.search_batch(xq, 10, include=()), 10)
            out["independent_recall_at_10"] = round(recall_at_k(got, gt, 10), 4)
            after = s.report()
            out["stats_bytes_per_vector"] = s.stats().bytes_per_vector
    out["tune"] = result.to_dict()
    out["report_before"], out["report_after"] = before, after
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tune_gcide.json").write_text(json.dumps(out, indent=1))
    c = result.chosen
    m = out["machine"]
    gap = abs(after["recall_at_10"] - out["independent_recall_at_10"])
    lines = [f"# qvec tune --recall {TARGET} --apply on {len(xb):,} GCIDE definitions (int8, FP32 originals)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB; faiss {m['faiss']}. Script: "
             "bench/tune_gcide.py.", "",
             f"- tune measured {len(result.candidates)} configurations in {out['tune_s']} s on "
             f"{result.rows_measured:,} rows ({result.queries}); apply took {out['apply_s']} s.",
             f"- chosen: **{c.label}**, {c.ram_bytes:.1f} B/vector in RAM (int8: {before['bytes_per_vector']:.0f}), "
             f"recall@10 {c.recall_at_10:.4f} in tune (lower 95% bound {c.recall_low95:.4f}); "
             f"the apply's shadow check on other held-out rows: {out['applied']['shadow_check']['recall_at_10']:.4f}.",
             f"- the tuned store's RAM per vector (stats): {out['stats_bytes_per_vector']:.1f} B.",
             f"- **independent**: recall@10 on {len(xq):,} held-out definitions (never in the store, never seen by "
             f"tune) against exact FP32 search: **{out['independent_recall_at_10']:.4f}**; `qvec report` states "
             f"{after['recall_at_10']:.4f} (difference {gap:.4f}).", "",
             "| config | RAM B/vec | disk B/vec | recall@10 | low 95% | ms/query (batch) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {x.label}{' ◀' if x is c else ''} | {x.ram_bytes} | {x.disk_bytes} | {x.recall_at_10} | "
              f"{x.recall_low95} | {x.ms_per_query} |" for x in sorted(result.candidates, key=lambda x: x.ram_bytes)]
    lines += ["", "Verdict after: " + after["verdict"]]
    (RESULTS / "tune_gcide.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
