"""Sharded stores on Ray (#15): what embedding workers buy, and what fanning a search out
over shards costs against one store holding every vector.

    python bench/shards.py [--n 100000]    # writes bench/results/shards.{json,md}

1. Ingest: ``qvec.distributed.build`` of 1,000 pydoc paragraphs (texts, embedded by the
   build) with 1 and 2 embedding workers on a local Ray; docs/s end to end, Ray start-up
   excluded (one Ray for the whole script).
2. Fan-out: int8/flat stores of ``--n`` vectors as 1, 2, 4 and 8 shards (searched by local
   threads) and as one store given the same trained codes. The vectors are the 1,976 MiniLM
   embeddings of pydoc paragraphs, repeated with small Gaussian noise up to ``--n``: this
   measures latency only (no recall: the repeats make near-ties), as a ratio to the single
   store within the same run. Single queries (median of 200) and batches of 100 queries.
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
from qvec.embedder import SentenceTransformerEmbedder


def ingest(tmp: Path, texts: list[str]) -> list[dict]:
    src = tmp / "p.txt"
    src.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n")
    out = []
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


def fan_out(tmp: Path, base: np.ndarray, n: int, xq: np.ndarray) -> list[dict]:
    rng = np.random.default_rng(0)
    reps = -(-n // len(base))
    x = (np.tile(base, (reps, 1))[:n] + rng.normal(0, 0.01, (n, base.shape[1]))).astype(np.float32)
    np.save(tmp / "x.npy", x)
    rows = []
    codes = None
    for k in (1, 2, 4, 8):
        r = distributed.build(tmp / f"fan{k}", [str(tmp / "x.npy")], shards=k, quantization="int8",
                              progress=False)
        with qvec.open(tmp / f"fan{k}", read_only=True) as s:
            if codes is None:
                codes = s._shards.stores[0].trained_codes()
            rows.append({"store": f"{k} shard(s)", "shards": k, "build_s": round(r.seconds, 1),
                         **timed_queries(s, xq)})
        print(rows[-1], flush=True)
    with qvec.open(tmp / "one", quantization="int8") as one:
        one.train(codes=codes)
        for i in range(0, n, 20_000):
            one.add(vectors=x[i:i + 20_000], ids=[f"x.npy:{j}" for j in range(i, min(n, i + 20_000))])
        rows.insert(0, {"store": "single store", "shards": 0, **timed_queries(one, xq)})
    print(rows[0], flush=True)
    ref = rows[0]
    for r in rows:
        r["single_vs_store"] = round(ref["single_ms"] / r["single_ms"], 2)
        r["batch_vs_store"] = round(r["batch_qps"] / ref["batch_qps"], 2)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    a = ap.parse_args()
    texts = pydoc_paragraphs()
    emb = SentenceTransformerEmbedder()
    base = emb.embed(texts)
    rng = np.random.default_rng(1)
    xq = (base[rng.choice(len(base), 500)] + rng.normal(0, 0.02, (500, base.shape[1]))).astype(np.float32)
    distributed.connect("local")
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as d:
        tmp = Path(d)
        result = {"machine": machine(), "n": a.n, "ingest": ingest(tmp, texts[:1000]),
                  "fan_out": fan_out(tmp, base, a.n, xq)}
    (RESULTS / "shards.json").write_text(json.dumps(result, indent=1) + "\n")
    m = result["machine"]
    lines = [f"# Sharded stores on Ray ({m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB)", "",
             "Made by `python bench/shards.py`. Ingest: 1,000 pydoc paragraphs embedded by the build, 2 shards.", "",
             "| embedding workers | docs | s | docs/s |", "|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['docs']} | {r['seconds']} | {r['docs_per_s']} |" for r in result["ingest"]]
    lines += ["", f"Fan-out: int8/flat, {a.n:,} vectors (pydoc embeddings repeated with noise; latency only), "
              "k=10, include=(). Ratios are to the single store in the same run (>1 is faster).", "",
              "| store | single query ms | vs single store | batch q/s | vs single store |", "|---|---|---|---|---|"]
    lines += [f"| {r['store']} | {r['single_ms']} | {r['single_vs_store']} | {r['batch_qps']} | "
              f"{r['batch_vs_store']} |" for r in result["fan_out"]]
    (RESULTS / "shards.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
