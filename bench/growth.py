"""How cost grows with size: 10K, 100K and 1M vectors for int8/flat, int8/ivf and
pq/ivf + rescore (build time, RAM, queries/s, recall@10) on this machine, and 1M and 10M
built streaming (``--streaming``) as a PQ-class store that fits 10M vectors in 1 GB of RAM.

    python bench/prepare.py gcide      # once
    python bench/growth.py             # writes bench/results/growth.{json,md}
    python bench/growth.py --streaming 1000000 10000000   # bench/results/growth_streaming.{json,md}, ~1 h

10K and 100K are real GCIDE embeddings (bench/data/gcide/xb.npy). GCIDE has no 1M
definitions, so 1M is the 100K real embeddings plus 9 noisy copies of each (Gaussian noise,
sigma 0.02 per dimension, renormalised; each copy has cosine ~0.93 to its original): it is
labelled "100K real + 900K synthetic" wherever it appears. Queries are the 1,000 held-out
definitions (bench/data/gcide/xq.npy); recall is against exact FP32 search at each size.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from qvec.bench import Config, Dataset, machine, machine_line, run_config, write_report

HERE = Path(__file__).parent
DATA = HERE / "data" / "gcide"
RESULTS = HERE / "results"
NOISE = 0.02


def scaled(xb: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """The first n real vectors, or all of them plus noisy copies up to n."""
    if n <= len(xb):
        return xb[:n]
    rng = np.random.default_rng(seed)
    parts = [xb]
    while sum(len(p) for p in parts) < n:
        copy = xb + rng.normal(scale=NOISE, size=xb.shape).astype(np.float32)
        parts.append(copy / np.linalg.norm(copy, axis=1, keepdims=True))
    return np.concatenate(parts)[:n]


def configs_for(n: int) -> list[Config]:
    nlist = {10_000: 256, 100_000: 1024, 1_000_000: 4096}[n]
    nprobe = nlist // 8  # the same share of lists at every size
    return [Config.parse(s) for s in ("int8/flat", f"int8/ivf{nlist}/nprobe={nprobe}",
                                      f"pq48/ivf{nlist}/rescore=4/nprobe={nprobe}")]


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        return serve(*sys.argv[2:])
    if sys.argv[1:2] == ["--streaming"]:
        return streaming([int(a) for a in sys.argv[2:]] or [1_000_000, 10_000_000])
    sizes = [int(a) for a in sys.argv[1:]] or [10_000, 100_000, 1_000_000]
    xb_real, xq = np.load(DATA / "xb.npy"), np.load(DATA / "xq.npy")
    records = []
    for n in sizes:
        ds = Dataset(name=f"gcide-{n}", xb=scaled(xb_real, n), xq=xq)
        real = min(n, len(xb_real))
        data = "real GCIDE" if n == real else f"{real // 1000}K real + {(n - real) // 1000}K synthetic"
        t = time.perf_counter()
        ds.ground_truth(100)
        gt_s = time.perf_counter() - t
        for cfg in configs_for(n):
            r = run_config(ds, cfg, repeat=1 if n >= 1_000_000 else 3)
            r |= {"data": data, "exact_gt_s": round(gt_s, 1)}
            print(json.dumps(r), flush=True)
            records.append(r)
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "queries": len(xq), "noise_sigma": NOISE,
           "records": records}
    RESULTS.mkdir(exist_ok=True)
    m = out["machine"]
    lines = [
        "# Growth: 10K → 100K → 1M vectors (384-d MiniLM embeddings of GCIDE definitions)", "",
        machine_line(m, out["date"]) +
        f"{len(xq):,} held-out queries; recall@10 against exact FP32 search at each size. "
        "1M = the 100K real embeddings + 9 noisy copies of each (σ=0.02, renormalised): synthetic, labelled.", "",
        "| vectors | data | config | build s | RAM B/vec | index RAM MB | disk MB | recall@10 | batch q/s "
        "| p50 ms (1 thread) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(f"| {r['count']:,} | {r['data']} | `{r['config']}` | {r['build_s']} | {r['bytes_per_vector']} "
                     f"| {r['ram_index_bytes'] / 1e6:.1f} | {r['disk_bytes'] / 1e6:.1f} | {r['recall_at_10']} "
                     f"| {r['qps']:,.0f} | {r['p50_ms']} |")
    write_report(RESULTS / "growth", out, lines)


# -- built streaming: never all FP32 vectors in RAM ------------------------------------------------
# 10M 384-d FP32 vectors are 15.4 GB: the store is built 100K vectors at a time, each chunk made
# again from its seed when it is needed (chunk 0 is the real 100K, chunk c > 0 its noisy copy c),
# and the exact ground truth is merged chunk by chunk. The store is then served by a fresh
# process, whose anonymous memory (RssAnon: the index, the id map, Python; not the page cache
# of the originals it reads) is the RAM a server of these vectors needs.
STREAM_CHUNK = 100_000
STREAM_SPEC = {"quantization": "pq96x4fs", "index": "ivf4096", "rescore": "fp16"}
STREAM_SEARCHES = [{"nprobe": 32, "oversample": 8}, {"nprobe": 64, "oversample": 8}, {"nprobe": 128, "oversample": 8},
                   {"nprobe": 64, "oversample": 16}]
GT_K = 116  # recall@10 and @100 with room for ties


def chunk(xb: np.ndarray, c: int) -> np.ndarray:
    """Chunk c of the synthetic sequence: c = 0 is the real vectors, c > 0 a noisy copy (seeded by c)."""
    if c == 0:
        return xb
    copy = xb + np.random.default_rng(c).normal(scale=NOISE, size=xb.shape).astype(np.float32)
    return copy / np.linalg.norm(copy, axis=1, keepdims=True)


def rss_anon_mb() -> float:
    """This process's anonymous resident memory (not file pages it maps), in MB."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))
    return round(kb / 1024, 1)


def serve(path: str, queries: str, gt: str, out: str) -> None:
    """In a fresh process: open the store, search it, and record RAM, recall and latency."""
    import qvec
    from qvec.bench import single_query_ms
    from qvec.metrics import recall_at_k

    xq, gt_I = np.load(queries), np.load(gt)
    gt_D = np.load(gt.replace(".npy", "_scores.npy"))
    before = rss_anon_mb()
    t = time.perf_counter()
    store = qvec.open(path, read_only=True)
    store.search_batch(xq[:10], 10, include=())
    open_s = time.perf_counter() - t
    rows = []
    for params in STREAM_SEARCHES:
        t = time.perf_counter()
        res = store.search_batch(xq, 10, include=(), **params)
        batch_s = time.perf_counter() - t
        I = np.array([[int(h.id) for h in r] + [-1] * (10 - len(r)) for r in res])
        lat = single_query_ms(lambda q, p=params: store.search(q, 10, include=(), **p), xq[:200])
        rows.append({"params": params, "recall_at_10": round(recall_at_k(I, gt_I, 10, gt_D), 4),
                     "qps": round(len(xq) / batch_s, 1)} | lat)
    st = store.stats().to_dict()
    Path(out).write_text(json.dumps({"rss_anon_mb_before_open": before, "rss_anon_mb": rss_anon_mb(),
                                     "open_s": round(open_s, 2), "searches": rows,
                                     "bytes_per_vector": round(st["bytes_per_vector"], 2),
                                     "id_map_bytes": st.get("id_map_bytes"), "disk": st["disk_bytes"]}))


def streaming(sizes: list[int]) -> None:
    import faiss

    import qvec

    xb_real, xq = np.load(DATA / "xb.npy"), np.load(DATA / "xq.npy")
    records = []
    work = Path(tempfile.mkdtemp(prefix="qvec-growth-", dir=HERE / "data"))
    try:  # the work directory (queries, ground truth, the store being built) goes, whatever happens
        for n in sizes:
            chunks = range(-(-n // STREAM_CHUNK))
            t = time.perf_counter()
            D = np.full((len(xq), GT_K), -np.inf, np.float32)
            I = np.full((len(xq), GT_K), -1, np.int64)
            sample = []
            for c in chunks:  # exact top-k merged chunk by chunk, and a training sample taken on the way
                x = chunk(xb_real, c)[: n - c * STREAM_CHUNK]
                Dc, Ic = faiss.knn(xq, x, GT_K, metric=faiss.METRIC_INNER_PRODUCT)
                D, I = np.hstack([D, Dc]), np.hstack([I, Ic + c * STREAM_CHUNK])
                top = np.argsort(-D, axis=1, kind="stable")[:, :GT_K]
                D, I = np.take_along_axis(D, top, 1), np.take_along_axis(I, top, 1)
                sample.append(x[np.random.default_rng(c).choice(len(x), min(len(x), 200_000 // len(chunks) + 1),
                                                                replace=False)])
            gt_s = time.perf_counter() - t
            np.save(work / "xq.npy", xq)
            np.save(work / "gt.npy", I)
            np.save(work / "gt_scores.npy", D)

            path = work / f"s{n}.qvec"
            t = time.perf_counter()
            with qvec.open(path, **STREAM_SPEC) as store:
                store.train(vectors=np.concatenate(sample)[:200_000])
                train_s = time.perf_counter() - t
                for c in chunks:
                    x = chunk(xb_real, c)[: n - c * STREAM_CHUNK]
                    store.add(vectors=x, ids=[str(i) for i in range(c * STREAM_CHUNK, c * STREAM_CHUNK + len(x))])
                    print(f"{n}: {c * STREAM_CHUNK + len(x):,} added, {time.perf_counter() - t:.0f}s", flush=True)
                peak_build = rss_anon_mb()
            build_s = time.perf_counter() - t
            served = work / "served.json"
            subprocess.run([sys.executable, __file__, "--serve", str(path), str(work / "xq.npy"), str(work / "gt.npy"),
                            str(served)], check=True)
            r = json.loads(served.read_text()) | {
                "count": n, "config": "/".join(f"{k}={v}" for k, v in STREAM_SPEC.items()),
                "data": "100K real + " + f"{(n - len(xb_real)) // 1000:,}K synthetic", "build_s": round(build_s, 1),
                "train_s": round(train_s, 1), "exact_gt_s": round(gt_s, 1), "build_rss_anon_mb": peak_build}
            print(json.dumps(r), flush=True)
            records.append(r)
            shutil.rmtree(path)
            write_streaming(records, len(xq))  # after each size: a later one that fails keeps the earlier
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_streaming(records: list[dict], n_queries: int) -> None:
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "queries": n_queries, "noise_sigma": NOISE,
           "chunk": STREAM_CHUNK, "records": records}
    m = out["machine"]
    lines = [
        "# Growth built streaming: 1M and 10M vectors in a PQ-class store", "",
        machine_line(m, out["date"]) +
        f"`python bench/growth.py --streaming`. Vectors: the 100K real GCIDE embeddings and noisy copies of them "
        f"(σ={NOISE}, renormalised), made {STREAM_CHUNK:,} at a time and added as they are made (never all in RAM). "
        f"{n_queries:,} held-out GCIDE definitions as queries; recall@10 against exact FP32 search over all n vectors "
        "(ties at the 10th counted). RAM is the serving process's RssAnon (index, id map, Python; not the page "
        "cache of the FP16 originals the re-rank reads).", "",
        "| vectors | config | build s (train s) | RAM B/vec (index) | serving RssAnon MB | disk MB | search "
        "| recall@10 | batch q/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        for s in r["searches"]:
            p = ", ".join(f"{k} {v}" for k, v in s["params"].items())
            lines.append(f"| {r['count']:,} | `{r['config']}` | {r['build_s']} ({r['train_s']}) | "
                         f"{r['bytes_per_vector']} | {r['rss_anon_mb']} | {r['disk']['total'] / 1e6:,.0f} | {p} | "
                         f"{s['recall_at_10']} | {s['qps']:,.0f} | {s['p50_ms']} | {s['p99_ms']} |")
    write_report(RESULTS / "growth_streaming", out, lines)


if __name__ == "__main__":
    main()
