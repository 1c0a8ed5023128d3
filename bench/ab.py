"""A/B of two qvec source trees on the same data, to check that a change to the store's
code costs no speed: each side runs in its own process (``PYTHONPATH=SRC``), alternating
ABAB, and the best of each side is reported. Synthetic clustered 384-d vectors (speed
only; recall is measured by ``qvec bench`` on real data).

    git worktree add /tmp/before <commit>
    python bench/ab.py /tmp/before . --out bench/results/split_ab.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SIDE = r'''
import json, shutil, sys, tempfile, time
import numpy as np
import qvec

x, xq = np.load(sys.argv[1]), np.load(sys.argv[2])
out = {}
for q, ix, rescore, params in [("int8", "flat", False, {}), ("pq48", "flat", True, {}), ("int8", "hnsw32", False, {}),
                               ("int8", "ivf64", False, {"nprobe": 8}), ("binary", "flat", True, {"oversample": 8})]:
    d = tempfile.mkdtemp()
    s = qvec.open(d + "/s", quantization=q, index=ix, rescore=rescore)
    s.add(vectors=x, ids=[str(i) for i in range(len(x))], metadata=[{"g": i % 10} for i in range(len(x))])
    s.train()

    def best(fn, n):
        b = 1e9
        for _ in range(3):
            t = time.perf_counter()
            fn()
            b = min(b, time.perf_counter() - t)
        return b / n

    out[f"{q}/{ix}" + ("/rescore" if rescore else "")] = {
        "batch of 1,000, ids only (q/s)": round(1 / best(lambda: s.search_batch(xq, 10, include=(), **params), 1000)),
        "batch of 1,000, with rows (q/s)": round(1 / best(lambda: s.search_batch(xq, 10, **params), 1000)),
        "1 query (ms)": round(1000 * best(lambda: [s.search(v, 10, include=(), **params) for v in xq[:200]], 200), 3),
        "1 query, 10% filter (ms)": round(1000 * best(lambda: [s.search(v, 10, where={"g": 3}, **params)
                                                              for v in xq[:200]], 200), 3),
    }
    s.close()
    shutil.rmtree(d)
print(json.dumps(out))
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--n", type=int, default=30_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(args.after).resolve()))
    import numpy as np

    from qvec.bench import machine

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((200, 384)).astype(np.float32)
    data = Path(tempfile.mkdtemp())
    for name, n in (("x", args.n), ("q", 1000)):
        np.save(data / f"{name}.npy", centres[rng.integers(0, 200, n)] + 0.6 * rng.standard_normal((n, 384)))
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for _ in range(args.rounds):
        for side in ("before", "after"):
            env = dict(os.environ, PYTHONPATH=str(Path(getattr(args, side)).resolve()))
            r = subprocess.run([sys.executable, "-c", SIDE, str(data / "x.npy"), str(data / "q.npy")], env=env,
                               capture_output=True, text=True, check=True)
            runs[side].append(json.loads(r.stdout))
    shutil.rmtree(data, ignore_errors=True)
    speed = ("q/s",)
    def commit(src):
        r = subprocess.run(["git", "-C", src, "log", "-1", "--format=%h %s"], capture_output=True, text=True)
        return r.stdout.strip()[:70] or src

    lines = [f"# A/B: before = {commit(args.before)}; after = {commit(args.after)}", "",
             f"{args.n:,} clustered 384-d vectors, 1,000 queries, k=10; the best of {args.rounds} alternating "
             "runs per side (each the best of 3). Machine: " + json.dumps(machine()), "",
             "| configuration | measure | before | after | after/before |", "|---|---|---|---|---|"]
    for cfg in runs["before"][0]:
        for measure in runs["before"][0][cfg]:
            pick = max if measure.endswith(speed) else min
            b = pick(r[cfg][measure] for r in runs["before"])
            a = pick(r[cfg][measure] for r in runs["after"])
            lines.append(f"| `{cfg}` | {measure} | {b:,} | {a:,} | {a / b:.2f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
