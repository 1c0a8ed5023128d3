"""Rescoring when the FP32 originals are not in memory: what a query costs when every
candidate it re-ranks is read from disk.

    python bench/rescore_cold.py     # writes bench/results/rescore_cold.{json,md}

The recall-vs-memory tables (bench/recall_memory.sh) measure rescoring with the originals
in the page cache. A store whose originals exceed RAM reads `k × oversample` scattered
rows per query from disk. This script drops the originals file from the page cache
(posix_fadvise DONTNEED) before every query and measures single-query latency on one
thread, beside the same queries with the file cached, over the 100K GCIDE embeddings
(bench/prepare.py gcide).

Part 1 reads the same scattered rows two ways: a numpy memory map (what qvec did before:
every page fault pulls in the kernel's read-around window, one fault after another) and
qvec's Originals.read (the ranges announced with MADV_WILLNEED, one call per run of
consecutive rows, then gathered from its kept map). Part 2 runs real stores end to end.
The kernel keeps the pages a live map has touched whatever DONTNEED says, so a cold read
closes qvec's map first (as memory pressure would evict those pages).
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path

import faiss
import numpy as np
from core import DATA, RESULTS

import qvec
from qvec.bench import machine, result_rows, single_query_ms
from qvec.metrics import exact_knn, recall_at_k
from qvec.originals import Originals

N_QUERIES = 200
CONFIGS = [  # (quantization, oversample); flat index, k = 10
    ("int4", 4),
    ("pq48", 4),
    ("pq24", 8),
    ("binary", 8),
]


def drop_from_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def latency(fn, items, cold_path: Path | None, originals: Originals | None = None) -> dict:
    """p50/p99 ms of fn over items; with cold_path, that file leaves the page cache before
    each call (after ``originals`` closes its map of it)."""
    fn(items[0])  # imports, allocations

    def before():
        if originals is not None:
            originals.close()
        drop_from_cache(cold_path)
    return single_query_ms(fn, items, before=None if cold_path is None else before)


def read_mapped(path: Path, shape: tuple, fids: np.ndarray) -> np.ndarray:
    """What qvec did before: fancy indexing into a memory map of the file. A fresh map per
    read: the kernel never drops pages that a live map has touched, so one long-lived map
    would stay warm whatever DONTNEED says (under real memory pressure they are evicted)."""
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=shape)
    try:
        return np.asarray(mm[fids])
    finally:
        del mm


def readers(xb: np.ndarray, workdir: Path) -> list[dict]:
    path = workdir / "originals.f32"
    orig = Originals(path, xb.shape[1])
    orig.write(0, xb)
    rng = np.random.default_rng(0)
    records = []
    for rows in (40, 80):
        sets = [np.unique(rng.integers(0, len(xb), rows)) for _ in range(N_QUERIES)]
        for name, read in (("numpy memmap (before)", functools.partial(read_mapped, path, xb.shape)),
                           ("Originals.read", orig.read)):
            assert np.array_equal(read(sets[0]), xb[sets[0]])
            for cold in (False, True):
                r = {"reader": name, "rows": rows, "cache": "cold" if cold else "warm"}
                r |= latency(read, sets, path if cold else None, orig if read == orig.read else None)
                print(json.dumps(r), flush=True)
                records.append(r)
    return records


def stores(xb: np.ndarray, xq: np.ndarray, workdir: Path) -> list[dict]:
    _, gt = exact_knn(xb, xq, 10)
    ids = [str(i) for i in range(len(xb))]
    records = []
    faiss.omp_set_num_threads(1)  # single queries on one thread, as an application sends them
    try:
        for quantization, oversample in CONFIGS:
            with qvec.open(workdir / quantization, quantization=quantization, rescore=True) as s:
                s.add(vectors=xb, ids=ids)
                s.train()
                s.checkpoint()
                originals = s.path / "originals.f32"
                search = functools.partial(s.search, k=10, include=(), oversample=oversample)
                got = result_rows([search(q) for q in xq], 10)
                r = {"config": f"{quantization}/flat/rescore={oversample}", "rows_read_per_query": 10 * oversample,
                     "recall_at_10": round(recall_at_k(got, gt, 10), 4),
                     "originals_mb": round(originals.stat().st_size / 2**20, 1)}
                for cold in (False, True):
                    lat = latency(search, list(xq), originals if cold else None, s.journal.originals)
                    r |= {f"{k}_{'cold' if cold else 'warm'}": v for k, v in lat.items()}
                print(json.dumps(r), flush=True)
                records.append(r)
        with qvec.open(workdir / "int8", quantization="int8") as s:  # the reference: no disk read at all
            s.add(vectors=xb, ids=ids)
            s.train()
            lat = latency(lambda q: s.search(q, 10, include=()), list(xq), None)
            got = result_rows([s.search(q, 10, include=()) for q in xq], 10)
            r = {"config": "int8/flat (no originals)", "rows_read_per_query": 0,
                 "recall_at_10": round(recall_at_k(got, gt, 10), 4), "originals_mb": 0}
            r |= {f"{k}_warm": v for k, v in lat.items()}
            print(json.dumps(r), flush=True)
            records.append(r)
    finally:
        faiss.omp_set_num_threads(os.cpu_count())
    return records


def cell(v) -> str:
    return "–" if v is None else f"{v:,}" if isinstance(v, int) else str(v)


def main():
    xb, xq = np.load(DATA / "xb.npy"), np.load(DATA / "xq.npy")[:N_QUERIES]
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:  # on the same disk as the data, not a tmpfs
        read_records = readers(xb, Path(tmp))
        store_records = stores(xb, xq, Path(tmp))
    out = {"machine": machine(), "n_docs": len(xb), "n_queries": len(xq), "readers": read_records,
           "stores": store_records}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rescore_cold.json").write_text(json.dumps(out, indent=1))
    m = out["machine"]
    lines = [f"# Rescoring with the originals on disk, not in memory ({len(xb):,} GCIDE vectors, 384-d)", "",
             f"Machine: {m}", "",
             "\"cold\": the originals file is dropped from the page cache (posix_fadvise DONTNEED) before every "
             "query, so each query reads its candidates from the disk (here a virtual disk, /dev/vda; "
             "whatever its host caches is beyond our reach, so a physical disk may be slower). "
             f"\"warm\": the file is cached. Single queries, one thread, {len(xq)} queries, k = 10.", "",
             "## Reading scattered rows", "",
             "| reader | rows | cache | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    lines += [f"| {r['reader']} | {r['rows']} | {r['cache']} | {r['p50_ms']} | {r['p99_ms']} |" for r in read_records]
    cols = ["config", "rows_read_per_query", "recall_at_10", "originals_mb", "p50_ms_warm", "p99_ms_warm",
            "p50_ms_cold", "p99_ms_cold"]
    lines += ["", "## Stores end to end (search with rescoring)", "",
              "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in store_records]
    (RESULTS / "rescore_cold.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
