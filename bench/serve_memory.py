"""Where a serving process's RAM goes, stage by stage: a pq96x4fs/ivf4096 store with FP16
originals (the growth run's configuration) built from N vectors (default 1M: the 100K real
GCIDE embeddings and noisy copies, as bench/growth.py makes them), then opened by a fresh
process that records its RssAnon after each stage: imports, open (index read), first search
(fid -> id map built), three re-ranked batches of 1,000 queries, 200 single queries, stats().

    python bench/prepare.py gcide && python bench/serve_memory.py [N]   # ~3 min at 1M; results/serve_memory.{json,md}
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from growth import DATA, STREAM_CHUNK, STREAM_SPEC, chunk, rss_anon_mb  # noqa: E402


def build(path: Path, n: int) -> None:
    import qvec

    xb = np.load(DATA / "xb.npy")
    chunks = range(-(-n // STREAM_CHUNK))
    with qvec.open(path, **STREAM_SPEC) as s:
        s.train(vectors=np.concatenate([chunk(xb, c)[: 200_000 // len(chunks) + 1] for c in chunks]))
        for c in chunks:
            x = chunk(xb, c)[: n - c * STREAM_CHUNK]
            s.add(vectors=x, ids=[str(i) for i in range(c * STREAM_CHUNK, c * STREAM_CHUNK + len(x))])


def serve(path: str, out: str) -> None:
    import qvec

    xq = np.load(DATA / "xq.npy")
    stages = [("imports", rss_anon_mb())]
    store = qvec.open(path, read_only=True)
    stages.append(("open (index read)", rss_anon_mb()))
    store.search(xq[0], 10, include=())
    stages.append(("first search (id map built)", rss_anon_mb()))
    for p in ({"nprobe": 32, "oversample": 8}, {"nprobe": 128, "oversample": 8}, {"nprobe": 64, "oversample": 16}):
        store.search_batch(xq, 10, include=(), **p)
        stages.append((f"batch of {len(xq):,}, nprobe {p['nprobe']}, x{p['oversample']}", rss_anon_mb()))
    for q in xq[:200]:
        store.search(q, 10, include=(), nprobe=64, oversample=8)
    stages.append(("200 single queries", rss_anon_mb()))
    st = store.stats()
    stages.append(("stats()", rss_anon_mb()))
    Path(out).write_text(json.dumps({"stages": stages, "index_bytes": round(st.bytes_per_vector * st.count),
                                     "id_map_bytes": st.id_map_bytes, "count": st.count}))


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        return serve(*sys.argv[2:])
    from qvec.bench import machine, machine_line, write_report

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory(dir=HERE / "data") as tmp:
        path, out = Path(tmp) / "s.qvec", Path(tmp) / "served.json"
        build(path, n)
        subprocess.run([sys.executable, __file__, "--serve", str(path), str(out)], check=True)
        r = json.loads(out.read_text())
    m = machine()
    rec = {"machine": m, "date": time.strftime("%Y-%m-%d"), "config": STREAM_SPEC} | r
    lines = ["# A serving process's RAM, stage by stage", "",
             machine_line(m, rec["date"]) +
             f"`python bench/serve_memory.py {n}`: {r['count']:,} vectors (100K real GCIDE + noisy copies) in "
             f"`{'/'.join(f'{k}={v}' for k, v in STREAM_SPEC.items())}`, opened read-only by a fresh process. "
             f"Index {r['index_bytes'] / 1e6:,.1f} MB, id map {r['id_map_bytes'] / 1e6:,.1f} MB.", "",
             "| after | RssAnon MB | change MB |", "|---|---|---|"]
    prev = None
    for name, mb in r["stages"]:
        lines.append(f"| {name} | {mb:,.1f} | {'' if prev is None else f'{mb - prev:+,.1f}'} |")
        prev = mb
    write_report(RESULTS / "serve_memory", rec, lines)


if __name__ == "__main__":
    main()
