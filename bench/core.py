"""The core benchmark (issue 2): recall, RAM per vector and speed of qvec on 100K real
sentence embeddings, beside exact FP32 search and the same FAISS index called directly.

    python bench/prepare.py gcide          # once: embed 101K GCIDE definitions (~25 min)
    python bench/core.py                   # writes bench/results/core.{json,md}

Uses only the public API (qvec.open, add, train, search_batch, stats), plus FAISS for the
"raw FAISS" column, which searches the very index object the store holds.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import qvec
from qvec.bench import best_of, machine, raw_faiss_seconds, result_rows, single_query_ms
from qvec.metrics import exact_knn, recall_at_k

HERE = Path(__file__).parent
DATA = HERE / "data" / "gcide"
RESULTS = HERE / "results"


def run_config(xb, xq, gt, meta, quantization, index, rescore=False, **params):
    path = Path(tempfile.mkdtemp()) / "s"
    ids = [str(i) for i in range(len(xb))]
    t = time.perf_counter()
    store = qvec.open(path, quantization=quantization, index=index, rescore=rescore)
    store.add(vectors=xb, ids=ids, metadata=meta)
    store.train()
    store.checkpoint()
    build_s = time.perf_counter() - t
    st = store.stats().to_dict()

    qps_s, res = best_of(lambda: store.search_batch(xq, 10, include=(), **params))
    rec = recall_at_k(result_rows(res, 10), gt, 10)
    faiss_s = raw_faiss_seconds(store, xq, 10 * (params.get("oversample", 4) if rescore else 1),
                                nprobe=params.get("nprobe"), ef_search=params.get("ef_search"))
    latency = single_query_ms(lambda q: store.search(q, 10, include=(), **params), xq[:200])
    # filtered: a 10% filter vs unfiltered, single queries as an application sends them
    def one_by_one(where):
        t = time.perf_counter()
        out = [store.search(q, 10, where=where, include=(), **params) for q in xq[:200]]
        return time.perf_counter() - t, out

    unf_s, _ = min((one_by_one(None) for _ in range(2)), key=lambda r: r[0])
    filt_s, fres = min((one_by_one({"bucket": 3}) for _ in range(2)), key=lambda r: r[0])
    filt_ok = all(len(r) == 10 and all(int(h.id) % 10 == 3 for h in r) for r in fres)
    store.close()
    shutil.rmtree(path.parent, ignore_errors=True)
    return {
        "quantization": quantization,
        "index": index,
        "rescore": rescore,
        "params": params,
        "count": len(xb),
        "bytes_per_vector": round(st["bytes_per_vector"], 2),
        "fp32_fraction": round(st["bytes_per_vector"] / (4 * xb.shape[1]), 4),
        "compression": round(st["compression"], 2),
        "disk_bytes": st["disk_bytes"],
        "recall_at_10": round(rec, 4),
        "build_s": round(build_s, 2),
        "qps": round(len(xq) / qps_s, 1),
        "faiss_qps": round(len(xq) / faiss_s, 1),
        "qvec_vs_faiss": round(faiss_s / qps_s, 3),
        **latency,
        "single_query_ms_unfiltered": round(1000 * unf_s / 200, 3),
        "single_query_ms_filter_10pct": round(1000 * filt_s / 200, 3),
        "filter_10pct_returns_k_matches": filt_ok,
    }


def main():
    xb = np.load(DATA / "xb.npy")
    xq = np.load(DATA / "xq.npy")
    if len(sys.argv) > 1:
        xb = xb[: int(sys.argv[1])]
    meta = [{"bucket": i % 10} for i in range(len(xb))]
    _, gt = exact_knn(xb, xq, 10)
    configs = [
        ("fp32", "flat", False, {}),
        ("fp16", "flat", False, {}),
        ("int8", "flat", False, {}),
        ("int4", "flat", False, {}),
        ("int4", "flat", True, {"oversample": 4}),
        ("pq48", "flat", False, {}),
        ("pq48", "flat", True, {"oversample": 4}),
        ("binary", "flat", True, {"oversample": 4}),
        ("int8", "ivf1024", False, {"nprobe": 32}),
        ("int8", "ivf1024", False, {"nprobe": 128}),
        ("int8", "hnsw32", False, {"ef_search": 64}),
    ]
    records = []
    for q, ix, rs, params in configs:
        r = run_config(xb, xq, gt, meta, q, ix, rs, **params)
        print(json.dumps(r), flush=True)
        records.append(r)
    out = {"machine": machine(), "corpus": "GCIDE definitions (bench/prepare.py gcide), all-MiniLM-L6-v2, cosine",
           "n_docs": len(xb), "n_queries": len(xq), "records": records}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "core.json").write_text(json.dumps(out, indent=1))
    cols = ["quantization", "index", "rescore", "params", "bytes_per_vector", "fp32_fraction", "recall_at_10", "qps",
            "faiss_qps", "qvec_vs_faiss", "p50_ms", "p99_ms", "single_query_ms_unfiltered",
            "single_query_ms_filter_10pct", "build_s"]
    lines = [f"# qvec core benchmark: {len(xb):,} GCIDE definitions, {len(xq):,} held-out queries", "",
             f"Machine: {out['machine']}", "",
             "recall@10 is against exact FP32 search; bytes_per_vector is measured from the index "
             "(codes + 8-byte id + graph links); qps is search_batch(include=()) of all queries; "
             "faiss_qps the same index searched directly; filter_10pct is a where= matching 10% of rows.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in records:
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    (RESULTS / "core.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
