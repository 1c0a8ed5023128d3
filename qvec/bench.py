"""The recall-vs-memory benchmark behind ``qvec bench``: what each byte saved costs in
retrieval quality, measured on the user's own vectors or text.

For each configuration (quantization × index × rescore/oversample × search breadth) it
builds a real store through the public API and measures:

- RAM bytes per vector, from the serialized index (codes + ids + graph links; not from the
  spec), disk bytes per vector (index + SQLite + FP32 originals when rescoring) and the
  compression against FP32;
- recall@1/@10/@100 against exact FP32 search (or the neighbours an ann-benchmarks file
  ships), and MRR@10/hit@10 when queries carry labels;
- build time, batch queries/s, single-query p50/p99 latency on one thread (the best of
  three passes), and the very FAISS index the store holds searched directly, in the same
  run (``qvec_vs_faiss``).

``write_results`` writes results.json, results.md and recall_vs_memory.png (recall@10
against bytes per vector, log scale, with the Pareto frontier and the INT8 75% line).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from . import open as open_store
from .config import DEFAULT_OVERSAMPLE, ORIGINALS, parse_codes, parse_index
from .errors import InvalidSpec
from .index import FAISS_VERSION, one_faiss_thread
from .inputs import normalised
from .metrics import exact_knn, hit_at_k, mrr_at_k, recall_at_k

__all__ = ["Config", "Dataset", "default_sweep", "run", "run_config", "pareto", "write_results", "embed_cached",
           "machine", "machine_line", "write_report", "best_of", "best_of_pair", "two_in_turn", "result_rows",
           "raw_faiss", "raw_faiss_seconds", "single_query_ms"]

K_VALUES = (1, 10, 100)


@dataclass(frozen=True)
class Config:
    """One point of the sweep, written
    ``QUANT/INDEX[/rescore[=OVERSAMPLE]][/originals=fp16|int8][/nprobe=N][/ef=N]``, e.g.
    ``int8/flat``, ``pq48/ivf1024/rescore=4/nprobe=64``, ``pq48/flat/rescore=4/originals=int8``."""

    quantization: str
    index: str = "flat"
    rescore: bool = False
    oversample: int | None = None
    nprobe: int | None = None
    ef_search: int | None = None
    originals: str = "fp32"  # the precision rescoring's originals are kept at

    @classmethod
    def parse(cls, spec: str) -> Config:
        parts = [p.strip().lower() for p in str(spec).split("/") if p.strip()]
        if not parts:
            raise InvalidSpec(f"empty configuration {spec!r}: expected e.g. int8/flat or pq48/ivf1024/rescore=4")
        fields: dict = {"quantization": str(parse_codes(parts[0]))}
        if len(parts) > 1 and "=" not in parts[1] and parts[1] != "rescore":
            fields["index"] = str(parse_index(parts[1]))
            parts = parts[2:]
        else:
            parts = parts[1:]
        for p in parts:
            key, _, value = p.partition("=")
            if key == "rescore":
                fields["rescore"] = True
                if value:
                    fields["oversample"] = _positive(value, spec)
            elif key in ("nprobe", "ef", "ef_search"):
                fields["nprobe" if key == "nprobe" else "ef_search"] = _positive(value, spec)
            elif key == "originals" and value in ORIGINALS:
                fields["originals"] = value
            else:
                raise InvalidSpec(f"unknown option {p!r} in configuration {spec!r}: "
                                  f"expected rescore[=N], originals={'|'.join(ORIGINALS)}, nprobe=N or ef=N")
        if fields.get("originals", "fp32") != "fp32" and not fields.get("rescore"):
            raise InvalidSpec(f"originals= in configuration {spec!r} needs rescore: originals are kept to rescore")
        return cls(**fields)

    def __str__(self) -> str:
        s = f"{self.quantization}/{self.index}"
        if self.rescore:
            s += f"/rescore={self.oversample}" if self.oversample else "/rescore"
            if self.originals != "fp32":
                s += f"/originals={self.originals}"
        if self.nprobe:
            s += f"/nprobe={self.nprobe}"
        if self.ef_search:
            s += f"/ef={self.ef_search}"
        return s

    def search_params(self) -> dict:
        p = {"oversample": self.oversample, "nprobe": self.nprobe, "ef_search": self.ef_search}
        return {k: v for k, v in p.items() if v}


def _positive(value: str, spec: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise InvalidSpec(f"{value!r} in configuration {spec!r} is not a positive integer")
    return int(value)


def _divisor_near(d: int, target: float) -> int:
    """The divisor of d closest to target (PQ needs M | d)."""
    divisors = [m for m in range(1, d + 1) if d % m == 0]
    return min(divisors, key=lambda m: (abs(m - target), m))


def _nlist_for(n: int) -> int:
    """A power of two near 4·sqrt(n), with FAISS's 39 training points per list."""
    target = min(4 * n**0.5, n / 39)
    return max(1, 2 ** round(np.log2(max(target, 1))))


def default_sweep(dim: int, n: int, *, quick: bool = False) -> list[Config]:
    """Every family of codes from FP32 down to 1 bit, with and without rescoring (from FP32,
    FP16 and INT8 originals), plus the approximate indexes at the INT8 and PQ points a large
    store would use.

    quick: the best configuration measured at each budget step (about 776, 392, 200, 100
    and 56 B per 384-d vector, bench/results/code_families_*.md), with and without
    rescoring, and HNSW; neither OPQ nor IVF, whose training takes many minutes at 100K+
    (8-bit PQ on pairs of dimensions, the best at 200 B, takes 3-5)."""
    pq_big, pq_mid, pq_small = (_divisor_near(dim, dim / f) for f in (4, 8, 16))
    pq_pairs = _divisor_near(dim, dim / 2)  # 8-bit PQ on pairs of dimensions: int4's bytes
    pq_under_100 = _divisor_near(dim, dim / 6)
    nlist = _nlist_for(n)
    ivf = f"ivf{nlist}" if nlist > 1 else "flat"
    nprobe = max(1, nlist // 8)
    if quick:
        specs = ["fp32/flat", "fp16/flat", "int8/flat", f"pq{pq_pairs}/flat", "int4/flat/rescore=4",
                 f"pq{pq_under_100}/flat", f"pq{pq_under_100}/flat/rescore=4", f"pq{pq_mid}/flat",
                 f"pq{pq_mid}/flat/rescore=4", f"pq{pq_mid}/flat/rescore=4/originals=int8", "int8/hnsw32/ef=64"]
    else:
        specs = [
            "fp32/flat", "fp16/flat", "bf16/flat", "int8/flat", "int4/flat", "int4/flat/rescore=4",
            "int4/flat/rescore=4/originals=fp16", "int4/flat/rescore=4/originals=int8",
            f"pq{pq_pairs}/flat", "rabitq4/flat", "rabitq2/flat", "rabitq2/flat/rescore=4",
            f"pq{pq_big}/flat", f"pq{pq_under_100}/flat", f"pq{pq_under_100}/flat/rescore=4",
            f"pq{pq_mid}/flat", f"pq{pq_mid}/flat/rescore=4", f"pq{pq_mid}/flat/rescore=4/originals=fp16",
            f"pq{pq_mid}/flat/rescore=4/originals=int8", f"opq{pq_mid}/flat", f"opq{pq_mid}/flat/rescore=4",
            f"pq{2 * pq_mid}x4fs/flat", f"pq{2 * pq_mid}x4fs/flat/rescore=4", "rabitq/flat", "rabitq/flat/rescore=4",
            f"pq{pq_small}/flat/rescore=8", "binary/flat", "binary/flat/rescore=8",
            f"int8/{ivf}/nprobe={max(1, nprobe // 4)}", f"int8/{ivf}/nprobe={nprobe}", "int8/hnsw32/ef=64",
            f"pq{pq_mid}/{ivf}/rescore=4/nprobe={nprobe}", f"pq{2 * pq_mid}x4fs/{ivf}/rescore=4/nprobe={nprobe}",
            f"rabitq/{ivf}/rescore=4/nprobe={nprobe}",
        ]
    return list(dict.fromkeys(Config.parse(s) for s in specs))


@dataclass
class Dataset:
    """Base vectors and queries; ``gt`` are true neighbour row numbers if the data ships them
    (else exact FP32 search computes them); ``relevant`` is, per query, the set of row numbers
    a labelled query should find (None for unlabelled queries)."""

    name: str
    xb: np.ndarray
    xq: np.ndarray
    metric: str = "cosine"
    gt: np.ndarray | None = None
    gt_scores: np.ndarray | None = None
    relevant: list[frozenset[int] | None] | None = None
    description: str = ""

    def __post_init__(self):
        self.xb = np.ascontiguousarray(self.xb, dtype=np.float32)
        self.xq = np.ascontiguousarray(self.xq, dtype=np.float32)

    def ground_truth(self, k: int) -> np.ndarray:
        """True neighbours, with columns beyond k (for ties at the k-th); exact FP32 search
        computes them (and their scores) unless the data shipped enough of them."""
        if self.gt is None or self.gt.shape[1] < k:
            self.gt_scores, self.gt = exact_knn(self.xb, self.xq, min(max(K_VALUES) + 16, len(self.xb)),
                                                metric=self.metric)
        return self.gt

    def recall(self, I: np.ndarray, k: int) -> float:
        return recall_at_k(I, self.ground_truth(k), k, self.gt_scores)

    @property
    def labelled(self) -> list[int]:
        return [i for i, r in enumerate(self.relevant or []) if r]


def machine() -> dict:
    """What a result was measured on."""
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        cpu = platform.processor() or "?"
    try:
        ram = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        ram = None
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": ram, "os": platform.platform(),
            "python": platform.python_version(), "faiss": FAISS_VERSION, "numpy": np.__version__,
            "qvec": __version__}


def machine_line(m: dict, date: str) -> str:
    """How a result file names the machine (``machine()``) and the day it ran on."""
    return f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB; faiss {m['faiss']}. Run {date}. "


def write_report(stem: Path, record: dict, lines: list[str]) -> None:
    """A benchmark script's results: the record as ``stem``.json, the lines as ``stem``.md, and printed."""
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def best_of(fn: Callable, repeat: int = 3):
    """(fastest seconds of ``repeat`` calls, the last result): timings on a shared machine."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def best_of_pair(a: Callable, b: Callable, repeat: int = 5):
    """(fastest seconds of ``a``, of ``b``, a's last result, b's last result), the two run
    in turn: on a shared machine a slow spell then slows both, and their ratio holds. Each
    goes first in every other round (the second found its caches as the first left them:
    the same FAISS call timed both ways ran 0.97-1.0x as fast first), and each round's
    results are released before the next is timed (freeing 10,000 Hits took 0.4 ms that no
    search spends)."""
    best = [float("inf"), float("inf")]
    out: list = [None, None]
    calls = (a, b)
    for r in range(repeat):
        for i in (0, 1) if r % 2 == 0 else (1, 0):
            out[i] = None
            t = time.perf_counter()
            out[i] = calls[i]()
            best[i] = min(best[i], time.perf_counter() - t)
    return best[0], best[1], out[0], out[1]


def two_in_turn(a: Callable, b: Callable, xq: np.ndarray, *, repeat: int = 7, singles: int = 200) -> dict:
    """Two ways of searching the same queries, as #13's scan choices are compared: ``batch_ms``,
    the best of ``repeat`` batches of all of ``xq``, the two in turn; ``single_p50_ms``, one query
    at a time on one FAISS thread, the two in turn per query, each first for half of them (the
    second finds the query's lists in cache). Each an (a, b) pair."""
    batch_a, batch_b, _, _ = best_of_pair(lambda: a(xq), lambda: b(xq), repeat)
    single: tuple[list[float], list[float]] = ([], [])
    with one_faiss_thread():
        for n, q in enumerate(xq[:singles]):
            q1 = q[None, :]
            for i in (0, 1) if n % 2 else (1, 0):
                t = time.perf_counter()
                (a, b)[i](q1)
                single[i].append(time.perf_counter() - t)
    return {"batch_ms": (batch_a * 1e3, batch_b * 1e3),
            "single_p50_ms": (statistics.median(single[0]) * 1e3, statistics.median(single[1]) * 1e3)}


def single_query_ms(fn: Callable, queries, *, before: Callable[[], None] | None = None, passes: int = 3) -> dict:
    """p50/p99 milliseconds of ``fn(q)`` for each query, with FAISS on one thread, as one
    application thread sees it: of ``passes`` passes over the queries, the one with the lowest
    p50 (a busy spell of this shared machine slowed a whole pass by up to 25%, and configurations
    measured a minute apart met different spells). ``before()``, if given, runs untimed ahead of
    each call."""
    best = None
    with one_faiss_thread():
        for _ in range(passes):
            lat = []
            for q in queries:
                if before is not None:
                    before()
                t = time.perf_counter()
                fn(q)
                lat.append(time.perf_counter() - t)
            p50 = statistics.median(lat)
            if best is None or p50 < best[0]:
                best = (p50, float(np.percentile(lat, 99)))
    return {"p50_ms": round(1000 * best[0], 3), "p99_ms": round(1000 * best[1], 3)}


def result_rows(results, k: int) -> np.ndarray:
    """Hits (ids are row numbers) → an (nq, k) array padded with -1."""
    return np.array([[int(h.id) for h in r[:k]] + [-1] * (k - len(r[:k])) for r in results], dtype=np.int64)


def raw_faiss_seconds(store, xq: np.ndarray, k: int, *, nprobe: int | None = None, ef_search: int | None = None,
                      repeat: int = 3) -> float:
    """Search the FAISS index object the store holds, directly, with the same queries
    (prepared as the store prepares them) and the same search parameters."""
    seconds, _ = best_of(raw_faiss(store, xq, k, nprobe=nprobe, ef_search=ef_search), repeat)
    return seconds


def raw_faiss(store, xq: np.ndarray, k: int, *, nprobe: int | None = None, ef_search: int | None = None):
    """A call of the FAISS index the store holds, searched directly (see raw_faiss_seconds)."""
    vi = store.journal.index
    xq = normalised(xq, store.settings.metric)
    return lambda: vi.search_raw(xq, k, nprobe=nprobe, ef_search=ef_search)


def run_config(ds: Dataset, cfg: Config, *, repeat: int = 3, n_latency: int = 200, workdir: str | None = None,
               kept: list | None = None) -> dict:
    """Build a store for ``cfg`` from ``ds.xb`` and measure it (see the module docstring).
    With ``kept``, the store's directory stays, and (its path, its search parameters) is
    appended to it: the caller times it again beside the others and removes it."""
    n, dim = ds.xb.shape
    k_max = min(max(K_VALUES), n)
    tmp = Path(tempfile.mkdtemp(prefix="qvec-bench-", dir=workdir))
    if kept is not None:
        kept.append((tmp, cfg.search_params()))
    try:
        t0 = time.perf_counter()
        store = open_store(tmp / "s.qvec", quantization=cfg.quantization, index=cfg.index, metric=ds.metric,
                           rescore=cfg.rescore and cfg.originals)
        ids = [str(i) for i in range(n)]
        for lo in range(0, n, 100_000):  # bounded batches: one SQLite transaction each
            store.add(vectors=ds.xb[lo : lo + 100_000], ids=ids[lo : lo + 100_000])
        store.train()
        store.checkpoint()
        build_s = time.perf_counter() - t0
        st = store.stats().to_dict()
        params = cfg.search_params()

        kc = 10 * (cfg.oversample or DEFAULT_OVERSAMPLE) if cfg.rescore else 10
        store.search_batch(ds.xq[:100], 10, include=(), **params)  # warm: the id map, the originals' map
        batch_s, faiss_s, res10, _ = best_of_pair(
            lambda: store.search_batch(ds.xq, 10, include=(), **params),
            raw_faiss(store, ds.xq, kc, nprobe=cfg.nprobe, ef_search=cfg.ef_search), max(repeat, 9))
        I10 = result_rows(res10, 10)
        I100 = result_rows(store.search_batch(ds.xq, k_max, include=(), **params), k_max)

        latency = single_query_ms(lambda q: store.search(q, 10, include=(), **params), ds.xq[:n_latency])
        store.close()
        disk = st["disk_bytes"]
    finally:
        if kept is None:
            shutil.rmtree(tmp, ignore_errors=True)

    bpv = st["bytes_per_vector"]
    rec = {
        "config": str(cfg),
        "quantization": cfg.quantization,
        "index": cfg.index,
        "rescore": cfg.rescore,
        "oversample": (cfg.oversample or DEFAULT_OVERSAMPLE) if cfg.rescore else None,
        "originals": cfg.originals if cfg.rescore else None,
        "nprobe": cfg.nprobe,
        "ef_search": cfg.ef_search,
        "count": n,
        "bytes_per_vector": round(bpv, 2),
        "fp32_fraction": round(bpv / (4 * dim), 4),
        "saved": round(1 - bpv / (4 * dim), 4),
        "compression": round(4 * dim / bpv, 2),
        "ram_index_bytes": round(bpv * n + st["fixed_bytes"]),
        "disk_bytes": disk["total"],
        "disk_bytes_per_vector": round(disk["total"] / n, 1),
        "disk_originals_bytes": disk["originals"],
    }
    for k in K_VALUES:
        if k <= k_max:
            I = I10 if k <= 10 else I100
            rec[f"recall_at_{k}"] = round(ds.recall(I, k), 4)
    lab = ds.labelled
    if lab:
        rel = [ds.relevant[i] for i in lab]
        rec["mrr_at_10"] = round(mrr_at_k(I10[lab], rel, 10), 4)
        rec["hit_at_10"] = round(hit_at_k(I10[lab], rel, 10), 4)
    rec |= {
        "build_s": round(build_s, 2),
        "qps": round(len(ds.xq) / batch_s, 1),
        "faiss_qps": round(len(ds.xq) / faiss_s, 1),
        "qvec_vs_faiss": round(faiss_s / batch_s, 3),
    } | latency
    return rec


def exact_task_quality(ds: Dataset) -> dict:
    """MRR@10/hit@10 of exact FP32 search: the ceiling the configurations are compared with."""
    lab = ds.labelled
    if not lab:
        return {}
    gt, rel = ds.ground_truth(10)[lab, :10], [ds.relevant[i] for i in lab]
    return {"mrr_at_10": round(mrr_at_k(gt, rel, 10), 4), "hit_at_10": round(hit_at_k(gt, rel, 10), 4)}


def run(ds: Dataset, configs: Sequence[Config], *, progress: Callable[[dict], None] | None = None, rounds: int = 0,
        **kw) -> list[dict]:
    """run_config for each configuration; records are marked ``pareto`` at the end. With
    ``rounds``, every store is kept until all are built and their batches are then timed in
    turn (``in_turn``), so that they can be compared with each other."""
    ds.ground_truth(min(max(K_VALUES), len(ds.xb)))  # once, before any timing
    records: list[dict] = []
    kept: list | None = [] if rounds else None
    try:
        for cfg in configs:
            rec = run_config(ds, cfg, kept=kept, **kw)
            records.append(rec)
            if progress:
                progress(rec)
        if kept:
            for rec, qps in zip(records, in_turn(ds.xq, kept, rounds)):
                rec["qps_in_turn"] = qps
    finally:
        for tmp, _ in kept or ():
            shutil.rmtree(tmp, ignore_errors=True)
    return pareto(records)


def in_turn(xq: np.ndarray, stores: list, rounds: int) -> list[float]:
    """Queries/s of each store's batch (its best round), the stores taken in turn in every
    round, each round starting one store later: a slow spell of the machine falls on all of
    them alike, where run_config measures each minutes apart from the next. ``stores``:
    (store directory, search parameters)."""
    opened: list = []
    try:
        for tmp, params in stores:
            opened.append((open_store(tmp / "s.qvec", read_only=True), params))
        for s, params in opened:  # warm: the id map, the originals' map
            s.search_batch(xq[:100], 10, include=(), **params)
        best = [float("inf")] * len(opened)
        for r in range(rounds):
            for i in [(r + j) % len(opened) for j in range(len(opened))]:
                s, params = opened[i]
                t = time.perf_counter()
                s.search_batch(xq, 10, include=(), **params)
                best[i] = min(best[i], time.perf_counter() - t)
    finally:
        for s, _ in opened:
            s.close()
    return [round(len(xq) / b, 1) for b in best]


def _dominated(r: dict, others: list[dict], x: str, y: str) -> bool:
    return any(o[x] <= r[x] and o[y] >= r[y] and (o[x] < r[x] or o[y] > r[y]) for o in others if o is not r)


def pareto(records: list[dict], x: str = "bytes_per_vector", y: str = "recall_at_10") -> list[dict]:
    """Mark each record ``pareto`` when no other record is as small and at least as accurate
    and better in one of the two, and ``pareto_codes_only`` likewise among the records that
    do not rescore (whose RAM is all they need: no FP32 originals on disk)."""
    codes_only = [r for r in records if not r["rescore"]]
    for r in records:
        r["pareto"] = not _dominated(r, records, x, y)
        r["pareto_codes_only"] = not r["rescore"] and not _dominated(r, codes_only, x, y)
    return records


# -- outputs -------------------------------------------------------------------------------
MD_COLUMNS = [
    ("config", "config"), ("bytes_per_vector", "RAM B/vec"), ("saved", "saved vs FP32"),
    ("disk_bytes_per_vector", "disk B/vec"), ("recall_at_1", "R@1"), ("recall_at_10", "R@10"),
    ("recall_at_100", "R@100"), ("mrr_at_10", "MRR@10"), ("hit_at_10", "hit@10"), ("build_s", "build s"),
    ("qps", "q/s"), ("faiss_qps", "FAISS q/s"), ("qvec_vs_faiss", "qvec/FAISS"), ("qps_in_turn", "q/s in turn"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
]


def _cell(key: str, r: dict) -> str:
    v = r.get(key)
    if v is None:
        return "–"
    if key == "saved":
        return f"{100 * v:.1f}%"
    if key == "config":
        marks = (" ★" if r.get("pareto") else "") + (" ☆" if r.get("pareto_codes_only") and not r.get("pareto") else "")
        marks += " ⟵ 75% line" if r["quantization"] == "int8" else ""
        return f"`{v}`{marks}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def markdown(result: dict) -> str:
    ds, records = result["dataset"], result["records"]
    cols = [(k, h) for k, h in MD_COLUMNS if any(r.get(k) is not None for r in records)]
    lines = [
        f"# Recall vs memory: {ds['name']}",
        "",
        f"{ds['n_docs']:,} vectors of dimension {ds['dim']} ({ds['metric']}), {ds['n_queries']:,} queries"
        + (f", {ds['n_labelled']:,} of them labelled" if ds.get("n_labelled") else "")
        + ". " + ds.get("description", ""),
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, {result['machine']['ram_gb']} GB; "
        f"faiss {result['machine']['faiss']}, qvec {result['machine']['qvec']}. Run {result['date']}.",
        "",
        "RAM B/vec is measured from the serialized index (codes + 8-byte id + graph links); disk B/vec is the "
        "whole store directory (index, SQLite, and the FP32 originals that rescoring reads). Recall is against "
        "exact FP32 search" + (" (the neighbours shipped with the data)" if ds.get("gt_from_file") else "")
        + "; q/s is one batch of all queries (best of 9, taken in turn with FAISS's), FAISS q/s the same index "
        "searched directly (with rescoring, for "
        "the k × oversample candidates, not re-ranked: the ratio includes the re-ranking; for flat fp16, bf16, "
        "int8 and int4 codes qvec scores batches of 64+ queries by decoding blocks of codes and one matrix "
        "product, where FAISS scans query by query, hence ratios above 1; IVF int8 batches scored by inner "
        "product are scanned with the scales folded into the queries, and IVF fast-scan PQ query by query into "
        "a heap, where FAISS's side keeps its own scan); p50/p99 are single "
        "queries on one thread, from the best of 3 passes over up to 200 queries. ★ = on the Pareto frontier "
        "of RAM vs recall@10; ☆ = on it among the "
        "configurations without rescoring (nothing on disk beyond the codes); the INT8 rows mark the 75% line."
        + (f" q/s in turn: once every configuration was built, each one's batch timed once a round, all of them "
           f"in turn, for {result['rounds']} rounds (the best round): the column to compare configurations by, "
           "as the machine's slow spells fall on all of them alike; q/s is measured beside FAISS right after each "
           "build, minutes apart from the next." if result.get("rounds") else ""),
        "",
    ]
    if result.get("exact_task_quality"):
        q = result["exact_task_quality"]
        lines += [f"Exact FP32 search on the labelled queries: MRR@10 {q['mrr_at_10']}, hit@10 {q['hit_at_10']}.", ""]
    lines += ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(k, r) for k, _ in cols) + " |" for r in records]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """recall@10 against RAM bytes per vector (log scale), the Pareto frontiers with and
    without rescoring, and the INT8 (75% saved) and FP32 lines."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    records, ds = result["records"], result["dataset"]
    fp32 = 4 * ds["dim"]
    fig, ax = plt.subplots(figsize=(10, 6), dpi=120)
    rescored = "codes + rescore from originals on disk (FP32, FP16 or INT8)"
    for rescore, marker, color, label in ((False, "o", "tab:blue", "codes only (RAM)"),
                                          (True, "^", "tab:orange", rescored)):
        pts = [r for r in records if r["rescore"] == rescore]
        if pts:
            ax.scatter([r["bytes_per_vector"] for r in pts], [r["recall_at_10"] for r in pts], marker=marker, s=42,
                       color=color, label=label, zorder=3)
    for key, color, style, label in (("pareto", "tab:red", "-", "Pareto frontier"),
                                     ("pareto_codes_only", "tab:blue", "--", "Pareto frontier, no rescoring")):
        front = sorted((r for r in records if r.get(key)), key=lambda r: r["bytes_per_vector"])
        if len(front) > 1:
            ax.step([r["bytes_per_vector"] for r in front], [r["recall_at_10"] for r in front], where="post",
                    color=color, ls=style, lw=1.1, label=label, zorder=2)
    placed: list[tuple[float, float]] = []
    for r in sorted(records, key=lambda r: (r["bytes_per_vector"], -r["recall_at_10"])):
        x, y = np.log10(r["bytes_per_vector"]), r["recall_at_10"]
        near = sum(abs(x - px) < 0.12 and abs(y - py) < 0.02 for px, py in placed)  # stack colliding labels
        placed.append((x, y))
        ax.annotate(r["config"], (r["bytes_per_vector"], r["recall_at_10"]), fontsize=7,
                    xytext=(5, -9 - 9 * near), textcoords="offset points")
    for x, text, style in ((fp32 / 4, "INT8: 75% less than FP32", "--"), (fp32, "FP32", ":")):
        ax.axvline(x, color="grey", ls=style, lw=1)
        ax.annotate(text, (x, 1), xycoords=("data", "axes fraction"), xytext=(-3, -4), textcoords="offset points",
                    rotation=90, va="top", ha="right", fontsize=8, color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("RAM bytes per vector (measured from the index, log scale)")
    ax.set_ylabel("recall@10 against exact FP32 search")
    ax.set_title(f"{ds['name']}: {ds['n_docs']:,} vectors × {ds['dim']} dims, {ds['n_queries']:,} queries",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_results(out_dir: str | os.PathLike, ds: Dataset, records: list[dict], *, gt_from_file: bool = False,
                  extra: dict | None = None) -> dict:
    """DIR/results.json, DIR/results.md and DIR/recall_vs_memory.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "dataset": {"name": ds.name, "description": ds.description, "n_docs": len(ds.xb), "dim": ds.xb.shape[1],
                    "metric": ds.metric, "n_queries": len(ds.xq), "n_labelled": len(ds.labelled),
                    "gt_from_file": gt_from_file},
        "exact_task_quality": exact_task_quality(ds),
        **(extra or {}),
        "records": records,
    }
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "results.md").write_text(markdown(result))
    plot(result, out / "recall_vs_memory.png")
    return result


# -- text corpora --------------------------------------------------------------------------
def embed_cached(texts: Sequence[str], embedder, cache_dir: str | os.PathLike | None,
                 *, show_progress: bool = False) -> np.ndarray:
    """Embed ``texts``, or load them from ``cache_dir`` if this model embedded these exact
    texts before: the file name is a hash of the model name, its precision and the texts."""
    precision = embedder.precision
    tag = embedder.name if precision == "fp32" else f"{embedder.name}-{precision}"
    h = hashlib.sha256(tag.encode())
    for t in texts:
        h.update(b"\0" + t.encode("utf-8", "surrogatepass"))
    path = None
    if cache_dir is not None:
        model = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(tag).name)
        path = Path(cache_dir) / f"{model}-{len(texts)}-{h.hexdigest()[:16]}.npy"
        if path.exists():
            x = np.load(path, allow_pickle=False)
            if x.shape[0] == len(texts):
                return x
    x = embedder.embed(texts, show_progress=show_progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, x)
        os.replace(tmp, path)  # a killed run leaves no half-written cache
    return x

