"""How cost grows with size: 10K, 100K and 1M vectors for int8/flat, int8/ivf and
pq/ivf + rescore (build time, RAM, queries/s, recall@10) on this machine.

    python bench/prepare.py gcide      # once
    python bench/growth.py             # writes bench/results/growth.{json,md}

10K and 100K are real GCIDE embeddings (bench/data/gcide/xb.npy). GCIDE has no 1M
definitions, so 1M is the 100K real embeddings plus 9 noisy copies of each (Gaussian noise,
sigma 0.02 per dimension, renormalised; each copy has cosine ~0.93 to its original): it is
labelled "100K real + 900K synthetic" wherever it appears. Queries are the 1,000 held-out
definitions (bench/data/gcide/xq.npy); recall is against exact FP32 search at each size.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from qvec.bench import Config, Dataset, machine, run_config

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
    (RESULTS / "growth.json").write_text(json.dumps(out, indent=1) + "\n")
    m = out["machine"]
    lines = [
        "# Growth: 10K → 100K → 1M vectors (384-d MiniLM embeddings of GCIDE definitions)", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB; faiss {m['faiss']}. Run {out['date']}. "
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
    (RESULTS / "growth.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
