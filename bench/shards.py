"""Sharded stores on Ray (#15): what embedding workers buy, and what fanning a search out
over shards costs against one store holding every vector.

    python bench/shards.py [--n 100000]    # writes bench/results/shards.{json,md}

1. Ingest: ``qvec.distributed.build`` of the 1,976 pydoc paragraphs (texts, embedded by the
   build) into 2 shards with 1 and 2 embedding workers on a local Ray, beside one plain
   ``Store.add`` of the same texts; docs/s end to end (model loads included), Ray start-up
   excluded (one Ray for the whole script).
2. Fan-out: int8/flat stores of the 100,000 GCIDE definition embeddings (bench/data/gcide,
   ``python bench/prepare.py gcide``) as 1, 2, 4 and 8 shards (searched by local threads)
   and as one store given the same trained codes; 1,000 held-out definition queries. Single
   queries (median of 200) and batches of 100, as ratios to the single store in the same
   run; and how often a sharded store's top 10 is the single store's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from core import RESULTS

import qvec
from qvec import distributed
from qvec.bench import machine
from qvec.datasets import pydoc_paragraphs


def ingest(tmp: Path, texts: list[str]) -> list[dict]:
    src = tmp / "p.txt"
    src.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n")
    t = time.perf_counter()
    with qvec.open(tmp / "plain", quantization="int8") as s:  # the baseline: one process, no Ray
        s.add(texts)
    secs = time.perf_counter() - t
    out = [{"workers": "none (one Store.add, model load included)", "docs": len(texts), "seconds": round(secs, 1),
            "docs_per_s": round(len(texts) / secs, 1)}]
    print(out[-1], flush=True)
    for workers in (1, 2):
        r = distributed.build(tmp / f"ingest{workers}", [str(src)], shards=2, quantization="int8",
                              workers=workers, progress=False)
        out.append({"workers": workers, "docs": r.added, "seconds": round(r.seconds, 1),
                    "docs_per_s": round(r.docs_per_s, 1)})
        print(out[-1], flush=True)
    return out


def timed_queries(store, xq: np.ndarray) -> dict:
    for q in xq[:10]:
        store.search(q, k=10, include=())
    single = []
    for q in xq[:200]:
        t = time.perf_counter()
        store.search(q, k=10, include=())
        single.append(time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(0, 500, 100):
        store.search_batch(xq[i:i + 100], k=10, include=())
    return {"single_ms": round(1e3 * statistics.median(single), 3),
            "batch_qps": round(500 / (time.perf_counter() - t), 1)}


def top10(store, xq: np.ndarray) -> list[set[str]]:
    return [{h.id for h in hits} for hits in store.search_batch(xq, k=10, include=())]


def fan_out(tmp: Path, x: np.ndarray, xq: np.ndarray) -> list[dict]:
    np.save(tmp / "x.npy", x)
    n, rows, codes, answers = len(x), [], None, {}
    for k in (1, 2, 4, 8):
        r = distributed.build(tmp / f"fan{k}", [str(tmp / "x.npy")], shards=k, quantization="int8",
                              progress=False)
        with qvec.open(tmp / f"fan{k}", read_only=True) as s:
            if codes is None:
                codes = s._shards.stores[0].trained_codes()
            answers[k] = top10(s, xq)
            rows.append({"store": f"{k} shard(s)", "shards": k, "build_s": round(r.seconds, 1),
                         **timed_queries(s, xq)})
        print(rows[-1], flush=True)
    with qvec.open(tmp / "one", quantization="int8") as one:
        one.train(codes=codes)
        for i in range(0, n, 20_000):
            one.add(vectors=x[i:i + 20_000], ids=[f"x.npy:{j}" for j in range(i, min(n, i + 20_000))])
        single = top10(one, xq)
        rows.insert(0, {"store": "single store", "shards": 0, **timed_queries(one, xq)})
    print(rows[0], flush=True)
    for r in rows[1:]:
        r["same_top10"] = round(float(np.mean([a == b for a, b in zip(answers[r["shards"]], single)])), 4)
    ref = rows[0]
    for r in rows:
        r["single_vs_store"] = round(ref["single_ms"] / r["single_ms"], 2)
        r["batch_vs_store"] = round(r["batch_qps"] / ref["batch_qps"], 2)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--skip-ingest", action="store_true")
    ap.add_argument("--skip-fan-out", action="store_true")
    a = ap.parse_args()
    texts = pydoc_paragraphs()
    gcide = Path(__file__).parent / "data" / "gcide"
    x, xq = np.load(gcide / "xb.npy")[:a.n], np.load(gcide / "xq.npy")[:500]
    distributed.connect("local")
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as d:
        tmp = Path(d)
        result = {"machine": machine(), "n": a.n, "ingest": ingest(tmp, texts) if not a.skip_ingest else [],
                  "fan_out": fan_out(tmp, x, xq) if not a.skip_fan_out else []}
    old = json.loads((RESULTS / "shards.json").read_text()) if (RESULTS / "shards.json").exists() else {}
    for part in ("ingest", "fan_out"):  # a part skipped keeps its last measured figures
        if not result[part] and old.get(part):
            result[part], result[f"{part}_machine"] = old[part], old.get(f"{part}_machine", old["machine"])
    (RESULTS / "shards.json").write_text(json.dumps(result, indent=1) + "\n")
    m = result["machine"]
    lines = [f"# Sharded stores on Ray ({m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB)", "",
             "Made by `python bench/shards.py`. Ingest: the 1,976 pydoc paragraphs embedded by the build into "
             "2 shards, beside one plain Store.add of them.", "",
             "| embedding workers | docs | s | docs/s |", "|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['docs']} | {r['seconds']} | {r['docs_per_s']} |" for r in result["ingest"]]
    lines += ["", f"Fan-out: int8/flat, {a.n:,} GCIDE definition embeddings, 500 held-out definition queries, k=10, "
              "include=(). Ratios are to the single store (same codes) in the same run (>1 is faster); "
              "same top 10: the fraction of queries whose 10 ids equal the single store's.", "",
              "| store | build s | single query ms | vs single store | batch q/s | vs single store | same top 10 |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['store']} | {r.get('build_s', '')} | {r['single_ms']} | {r['single_vs_store']} | "
              f"{r['batch_qps']} | {r['batch_vs_store']} | {r.get('same_top10', '')} |" for r in result["fan_out"]]
    (RESULTS / "shards.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
