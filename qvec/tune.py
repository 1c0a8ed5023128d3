"""What a store's codes cost and keep (``qvec report``), and choosing them from a recall
target (``qvec tune``).

Both measure against exact search. Queries are a seeded sample of the store's own
vectors (or the user's, ``queries=``); a query that is a stored vector finds itself first
in either list, so that row is left out of both before comparing: each sampled row is
held out of its own answer. The exact reference is FP32 search over the originals when
the store keeps them; without them, over the vectors decoded from its codes (the best
reference the store has: recall then measures the search, not the rounding, and the
report says so).

``tune`` encodes a sample of up to ``BASE_ROWS`` stored rows with every candidate code the
store's index can hold (and, when originals are kept, each re-ranked from them at several
oversamples), measures recall@10 on held-out queries, and picks the cheapest in RAM whose
recall's lower 95% bound meets the target. ``apply`` then re-encodes the whole store beside
its current index, measures the new index on other held-out queries, and swaps it in with
one commit (``Journal.swap_codes``), keeping the old index file for ``rollback``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import inputs
from .config import DEFAULT_OVERSAMPLE, SQ, SearchParams, Settings, parse_codes
from .errors import InvalidInput, InvalidSpec, NotTrained, QvecError
from .guard import reads, writes
from .index import VectorIndex, search_rescored
from .metrics import exact_knn
from .originals import rescore, row_bytes

__all__ = ["Candidate", "TuneResult", "report", "tune", "apply", "rollback", "TargetNotMet"]

BASE_ROWS = 100_000  # rows a candidate is measured on: all of them up to this
QUERIES = 400  # held-out queries per measurement (recall@10's standard error ~0.005 at 0.95)
CHUNK = 65_536  # rows of exact search at a time
OVERSAMPLES = (1, 2, 4, 8)
MIN_ROWS = 50  # fewer, and recall@10 says little
TRAIN_ROWS = 25_000  # a candidate's training sample (PQ's k-means dominates tune's time)
Z95 = 1.96


class TargetNotMet(QvecError):
    """No configuration, or the re-encoded store, reached the recall asked for."""


# -- measuring ---------------------------------------------------------------------------------
@dataclass
class Queries:
    """Query vectors (normalised as the store searches) and, for rows of the store itself,
    the fid each one is (left out of its own answers; -1 for outside queries)."""

    x: np.ndarray
    own: np.ndarray
    source: str


def own_queries(fids: np.ndarray, vectors_of, n: int, seed: int, metric: str) -> Queries:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InvalidInput(f"n_queries must be a positive integer, got {n!r}")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(fids), min(n, len(fids)), replace=False))
    x = inputs.normalised(vectors_of(fids[pick]), metric)
    return Queries(x, fids[pick], f"{len(pick)} of the store's own vectors (seed {seed}), each held out of its answer")


def _drop_own(D: np.ndarray, I: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """The first k fids of each row of I other than the query's own row."""
    out = np.full((len(I), k), -1, np.int64)
    for i, (row, me) in enumerate(zip(I, own.tolist())):
        kept = row[(row != me) & (row >= 0)][:k]
        out[i, : len(kept)] = kept
    return out


def exact_top(xq: np.ndarray, fids: np.ndarray, vectors_of, k: int, metric: str) -> np.ndarray:
    """Exact top-k fids over the rows ``fids``, read CHUNK rows at a time (memory stays flat)."""
    lower_is_better = metric == "l2"
    best_D = np.zeros((len(xq), 0), np.float32)
    best_I = np.zeros((len(xq), 0), np.int64)
    for a in range(0, len(fids), CHUNK):
        part = fids[a : a + CHUNK]
        D, pos = exact_knn(vectors_of(part), xq, min(k, len(part)), metric)
        D, I = np.hstack([best_D, D]), np.hstack([best_I, np.where(pos >= 0, part[np.maximum(pos, 0)], -1)])
        order = np.argsort(D if lower_is_better else -D, axis=1, kind="stable")[:, :k]
        best_D, best_I = np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)
    return best_I


def search_codes(settings: Settings, index: VectorIndex, xq: np.ndarray, k: int,
                 read: Callable[[np.ndarray], np.ndarray] | None, oversample: int | None = None):
    """The store's unfiltered search path over ``index`` (re-ranked from ``read`` when the settings rescore)."""
    rerank = None if read is None or not settings.rescore else lambda q, I, kk, m: rescore(q, I, kk, read, m)
    return search_rescored(index, xq, k, rerank=rerank, metric=settings.metric,
                           oversample=oversample or settings.oversample, params=SearchParams())


@dataclass
class Recall:
    at: dict[int, float]  # k -> mean recall@k
    low10: float  # lower 95% bound of recall@10 over the queries

    @classmethod
    def of(cls, got: np.ndarray, want: np.ndarray, ks=(1, 10, 100)) -> Recall:
        at, per10 = {}, None
        for k in ks:
            if want.shape[1] < k:
                continue
            per = np.array([len(set(g[:k][g[:k] >= 0].tolist()) & set(w[:k].tolist())) / k for g, w in zip(got, want)])
            at[k] = float(per.mean())
            if k == 10:
                per10 = per
        if per10 is None:
            return cls(at, float("nan"))
        return cls(at, float(per10.mean() - Z95 * per10.std(ddof=1) / np.sqrt(len(per10))) if len(per10) > 1
                   else float(per10.mean()))


def measure(settings: Settings, index: VectorIndex, q: Queries, truth: np.ndarray, read, ks=(1, 10, 100),
            oversample: int | None = None) -> tuple[Recall, float]:
    """Recall@ks of the store's search over ``index`` against ``truth`` (exact, own rows left
    out), and milliseconds per query in one batch."""
    got, ms = {}, 0.0
    extra = int(bool((q.own >= 0).any()))  # room for a held-out row's own hit, which is dropped
    for k in (k for k in ks if k <= truth.shape[1]):  # each k searched as asked: k x oversample candidates
        t = time.perf_counter()
        D, I = search_codes(settings, index, q.x, k + extra, read, oversample)
        ms = ms or (time.perf_counter() - t) * 1e3 / max(1, len(q.x))
        got[k] = _drop_own(D, I, q.own, k)
    recalls = {k: Recall.of(g, truth[:, :k], (k,)) for k, g in got.items()}
    r = Recall({k: v.at[k] for k, v in recalls.items()}, recalls[10].low10 if 10 in recalls else float("nan"))
    return r, ms


def truth_for(q: Queries, fids: np.ndarray, vectors_of, k: int, metric: str) -> np.ndarray:
    return _drop_own(None, exact_top(q.x, fids, vectors_of, k + 1, metric), q.own, k)


# -- the report --------------------------------------------------------------------------------
def _code_bytes(index: VectorIndex) -> int:
    if index.binary:
        return int(index.index.code_size)
    return int(index.index.sa_code_size())


def clipping(index: VectorIndex, x: np.ndarray) -> float | None:
    """Share of values outside an int8/int4 code's trained per-dimension range (None: not SQ)."""
    scales = index.trained_parameters().get("scales")
    if scales is None or x is None or not len(x):
        return None
    lo, width = np.asarray(scales["vmin"], np.float32), np.asarray(scales["vdiff"], np.float32)
    return float(((x < lo) | (x > lo + width)).mean())


def report(store, queries: np.ndarray | None = None, n_queries: int = QUERIES, seed: int = 11) -> dict:
    """The store measured as it is: bytes per vector by part, recall@1/10/100 of its search
    against exact search, calibration health, and a verdict."""
    s, j = store.settings, store.journal
    if s is None or not j.index.is_trained or j.live == 0:
        raise NotTrained(f"{store.path} has no trained codes to report on yet: add vectors (and train) first")
    index, stats = j.index, store.stats()
    live = store.catalog.all_fids()
    if s.rescore:
        reference, vectors_of, read = "exact FP32 search over the originals", j.originals.read, j.originals.read
    elif index.decodable:
        reference = ("exact search over the vectors decoded from the codes (the store keeps no originals): "
                     "recall measures the search, not the rounding")
        vectors_of, read = index.reconstruct, None
    else:
        reference, vectors_of, read = None, None, None
    q = None
    if queries is not None:
        xq = inputs.normalised(np.atleast_2d(queries), s.metric)
        q = Queries(xq, np.full(len(xq), -1, np.int64), f"{len(xq)} queries given")
    elif vectors_of is not None:
        q = own_queries(live, vectors_of, n_queries, seed, s.metric)
    recall = None
    if reference is not None and q is not None and len(live) > 10:
        truth = truth_for(q, live, vectors_of, min(100, len(live) - 1), s.metric)
        r, ms = measure(s, index, q, truth, read)
        recall = {"recall_at_1": r.at.get(1), "recall_at_10": r.at.get(10), "recall_at_100": r.at.get(100),
                  "recall_at_10_low95": r.low10, "ms_per_query_batch": round(ms, 4)}
    bpv = stats.bytes_per_vector or 0.0
    codes = _code_bytes(index)
    ids = 8  # FAISS keeps an int64 per vector, in its id map or in the lists
    parts = {"codes": codes, "ids": ids, "links_or_lists": round(max(0.0, bpv - codes - ids), 2),
             "fixed_per_vector": round((stats.fixed_bytes or 0) / max(1, stats.count), 3)}
    disk = dict(stats.disk_bytes)
    prev = j.state.get("previous_codes") or {}
    dead = {"deleted_originals": stats.dead_original_bytes, "sqlite_free_pages": store.catalog.free_bytes(),
            "previous_codes": prev.get("index_size", 0)}
    calibration = None
    if isinstance(s.codes, SQ) and s.rescore:
        n = min(2000, len(live) // 2)
        old, new = clipping(index, vectors_of(live[:n])), clipping(index, vectors_of(live[-n:]))
        calibration = {"clipped_oldest": old, "clipped_newest": new, "rows_each": n,
                       "retrain_would_help": bool(new is not None and new > max(2 * (old or 0), 0.001))}
    out = {"path": str(store.path), "count": stats.count, "quantization": str(s.codes), "index": str(s.index),
           "rescore": s.rescore, "oversample": s.oversample if s.rescore else None,
           "bytes_per_vector": round(bpv, 2), "bytes": parts, "fixed_bytes": stats.fixed_bytes,
           "fp32_bytes_per_vector": 4 * s.dim, "disk_bytes": disk, "dead_bytes": dead,
           "reference": reference, "queries": q.source if q is not None else None, **(recall or {}),
           "calibration": calibration, "previous_codes": prev.get("config", {}).get("quantization")}
    out["verdict"] = verdict(out)
    return out


def verdict(r: dict) -> str:
    saved = 1 - r["bytes_per_vector"] / r["fp32_bytes_per_vector"]
    b = r["bytes"]
    say = [f"{r['count']:,} vectors as {r['quantization']}/{r['index']}"
           + (f", re-ranked x{r['oversample']} from originals on disk" if r["rescore"] else "")
           + f": {r['bytes_per_vector']:.0f} B per vector in RAM (codes {b['codes']}, ids {b['ids']}"
           + (f", links/lists {b['links_or_lists']:.0f}" if b["links_or_lists"] >= 1 else "")
           + f"), {saved:.1%} less than FP32."]
    if r.get("recall_at_10") is not None:
        say.append(f"Its search finds {r['recall_at_10']:.1%} of the exact top 10 (recall@10, at least "
                   f"{r['recall_at_10_low95']:.1%} at 95% confidence; {r['queries']}; against {r['reference']}).")
        if r["recall_at_10"] < 0.9:
            more = "" if r["rescore"] else ", and keeping originals (rescore) helps most"
            say.append(f"That loses neighbours a user will notice: `qvec tune STORE --recall 0.95 --apply` finds codes "
                       f"that keep more{more}.")
        elif r["recall_at_10"] >= 0.99 and r["bytes_per_vector"] > 0.15 * r["fp32_bytes_per_vector"]:
            say.append("There is room to save memory: `qvec tune STORE --recall 0.95` measures cheaper codes.")
    elif r["reference"] is None:
        say.append("Recall cannot be measured: the store keeps no originals and its codes cannot be decoded.")
    else:
        say.append("Recall is not measured on so few vectors.")
    c = r.get("calibration")
    if c and c["clipped_newest"] is not None:
        if c["retrain_would_help"]:
            say.append(f"The newest rows fall outside the trained int ranges more often ({c['clipped_newest']:.2%} of "
                       f"values clipped vs {c['clipped_oldest']:.2%} in the oldest): `qvec retrain` would fit them.")
        else:
            say.append(f"Calibration holds: {c['clipped_newest']:.2%} of the newest rows' values clip, "
                       f"{c['clipped_oldest']:.2%} of the oldest.")
    dead = sum(r["dead_bytes"].values())
    if dead > 0.2 * max(1, r["disk_bytes"].get("total", 0)):
        say.append(f"{dead / 2**20:.1f} MB of the disk is dead space (deleted rows, free pages, previous codes).")
    return " ".join(say)


# -- tuning ------------------------------------------------------------------------------------
@dataclass
class Candidate:
    quantization: str
    oversample: int | None  # None: no re-ranking (the store keeps no originals)
    ram_bytes: float = 0.0  # per vector: codes, ids, links, and the fixed part spread over the store
    disk_bytes: float = 0.0  # per vector: the index file plus originals (SQLite not counted: the same for all)
    recall_at_10: float = 0.0
    recall_low95: float = 0.0
    ms_per_query: float = 0.0
    train_s: float = 0.0
    pareto: bool = False
    meets: bool = False

    @property
    def label(self) -> str:
        return self.quantization + (f" x{self.oversample}" if self.oversample else "")


@dataclass
class TuneResult:
    target: float
    max_bytes: float | None
    rows_measured: int
    n_queries: int
    queries: str
    reference: str
    candidates: list[Candidate]
    chosen: Candidate | None
    seconds: float
    notes: list[str] = field(default_factory=list)
    applied: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["candidates"] = [dataclasses.asdict(c) | {"config": c.label} for c in self.candidates]
        d["chosen"] = None if self.chosen is None else dataclasses.asdict(self.chosen) | {"config": self.chosen.label}
        return d


def candidate_codes(settings: Settings) -> list[str]:
    """Every code family the store's index can hold at this dimension (OPQ left out: its
    training takes minutes)."""
    d = settings.dim
    specs = ["fp16", "int8", "int4"]
    for m in sorted({d // 4, d // 6, d // 8, d // 16}, reverse=True):  # pq{d/2}: int4's bytes, less recall
        if m >= 1 and d % m == 0:
            specs.append(f"pq{m}")
    specs += [f"pq{d // 4}x4fs", "rabitq", "rabitq4", "binary"]
    out = []
    for spec in specs:
        try:
            dataclasses.replace(settings, codes=parse_codes(spec))
        except (InvalidSpec, InvalidInput):
            continue
        out.append(spec)
    return out


def tune(store, recall: float, *, max_bytes: float | None = None, queries: np.ndarray | None = None,
         base_rows: int = BASE_ROWS, n_queries: int = QUERIES, codes: list[str] | None = None,
         progress: Callable[[str, int, int], None] | None = None) -> TuneResult:
    """Measure candidate codes on (a sample of) the store and choose the cheapest meeting
    ``recall`` (recall@10's lower 95% bound), or the best under ``max_bytes``."""
    if isinstance(recall, bool) or not isinstance(recall, (int, float)) or not 0 < recall <= 1:
        raise InvalidInput(f"recall must be between 0 and 1, got {recall!r}")
    s, j = store.settings, store.journal
    if s is None or j.live < MIN_ROWS:
        raise NotTrained(f"{store.path} holds {j.live} vectors; tuning measures recall@10 on at least {MIN_ROWS}: "
                         "add vectors first")
    t0 = time.perf_counter()
    live = store.catalog.all_fids()
    notes = []
    if s.rescore:
        vectors_of, reference = j.originals.read, "exact FP32 search over the originals"
    else:
        vectors_of = store._full_vectors()
        reference = ("exact search over the stored texts embedded again (the store keeps no originals)"
                     if j.index.is_trained else "exact search over the stored vectors")
        if len(live) > 20_000 and j.index.is_trained:
            notes.append("no originals: the sample is embedded again from the texts, which takes a while")
    rng = np.random.default_rng(7)
    base = live if len(live) <= base_rows else np.sort(rng.choice(live, base_rows, replace=False))
    if len(base) < len(live):
        notes.append(f"measured on {len(base):,} of {len(live):,} rows: recall on the whole store is usually a little "
                     "lower (more near neighbours compete)")
    x = inputs.normalised(vectors_of(base), s.metric)
    fids = np.arange(len(base), dtype=np.int64)  # the candidates hold the sample's positions as ids

    def read(p):
        return x[p]

    if queries is not None:
        xq = inputs.normalised(np.atleast_2d(queries), s.metric)
        q = Queries(xq, np.full(len(xq), -1, np.int64), f"{len(xq)} queries given")
    else:
        q = own_queries(fids, read, n_queries, 3, s.metric)
    truth = truth_for(q, fids, read, 10, s.metric)

    specs = codes or candidate_codes(s)
    rows: list[Candidate] = []
    for n, spec in enumerate(specs):
        if progress:
            progress(spec, n, len(specs))
        cs = dataclasses.replace(s, codes=parse_codes(spec))
        t = time.perf_counter()
        try:  # codebooks learn from at most TRAIN_ROWS: apply trains on more, and checks what it got
            sample = x if len(x) <= TRAIN_ROWS else x[rng.choice(len(x), TRAIN_ROWS, replace=False)]
            idx = VectorIndex.trained(cs, sample)
        except NotTrained:
            continue
        idx.add(x, fids)
        train_s = time.perf_counter() - t
        per_vec = (len(idx.serialize()) - idx.fixed_bytes()) / len(base) + idx.fixed_bytes() / max(1, len(live))
        for o in (OVERSAMPLES if s.rescore else (None,)):
            r, ms = measure(cs, idx, q, truth, read if o else None, ks=(10,), oversample=o)
            disk = per_vec + (row_bytes(s.dim, s.originals) if s.rescore else 0)
            rows.append(Candidate(spec, o, round(per_vec, 2), round(disk, 2), round(r.at[10], 4), round(r.low10, 4),
                                  round(ms, 4), round(train_s, 2)))
    if progress:
        progress("done", len(specs), len(specs))
    for c in rows:
        c.pareto = not any(o.ram_bytes <= c.ram_bytes and o.recall_at_10 >= c.recall_at_10 and
                           (o.ram_bytes < c.ram_bytes or o.recall_at_10 > c.recall_at_10) for o in rows if o is not c)
        c.meets = c.recall_low95 >= recall and (max_bytes is None or c.ram_bytes <= max_bytes)
    meeting = [c for c in rows if c.meets]
    if meeting:
        chosen = min(meeting, key=lambda c: (c.ram_bytes, -c.recall_at_10, c.ms_per_query))
    else:
        under = [c for c in rows if max_bytes is None or c.ram_bytes <= max_bytes]
        chosen = max(under, key=lambda c: (c.recall_at_10, -c.ram_bytes)) if under else None
        notes.append("no configuration met the target" + (f" within {max_bytes:g} B" if max_bytes else "")
                     + (f": the best one is {chosen.label} ({chosen.recall_at_10:.3f})" if chosen else ""))
    return TuneResult(recall, max_bytes, len(base), len(q.x), q.source, reference, rows, chosen,
                      round(time.perf_counter() - t0, 1), notes)


def settings_for(settings: Settings, c: Candidate) -> Settings:
    return dataclasses.replace(settings, codes=parse_codes(c.quantization),
                               oversample=c.oversample or DEFAULT_OVERSAMPLE)


def apply(store, c: Candidate, recall: float, *, n_queries: int = QUERIES,
          progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Re-encode the whole store with ``c``'s codes beside the current index, measure it on
    held-out queries it was not chosen with, and swap it in with one commit (the old index
    file kept for ``rollback``). ``TargetNotMet``, with nothing changed, when it falls short."""
    s, j = store.settings, store.journal
    new = settings_for(s, c)
    live = store.catalog.all_fids()
    vectors_of = store._full_vectors()
    if progress:
        progress("encode", 0, 2)
    fresh = VectorIndex.trained_from(new, live, vectors_of)
    if progress:
        progress("check", 1, 2)
    reference = vectors_of if s.rescore else None
    measured = None
    if reference is not None:
        q = own_queries(live, reference, n_queries, 5, s.metric)
        truth = truth_for(q, live, reference, 10, s.metric)
        r, _ = measure(new, fresh, q, truth, j.originals.read, ks=(10,))
        measured = {"recall_at_10": round(r.at[10], 4), "recall_at_10_low95": round(r.low10, 4),
                    "queries": q.source}
        if r.at[10] < recall:
            raise TargetNotMet(f"{c.label} re-encoded the whole store at recall@10 {r.at[10]:.3f} on held-out queries, "
                               f"below the {recall} asked for: the store keeps its {s.codes} codes; try a higher "
                               "target or --max-bytes")
    j.swap_codes(fresh, new)
    if progress:
        progress("done", 2, 2)
    return {"quantization": str(new.codes), "oversample": new.oversample if new.rescore else None,
            "previous": str(s.codes), "shadow_check": measured}


def rollback(store) -> dict:
    """Put back the codes the last ``apply`` replaced, brought up to date with the rows
    written since (added from the originals or texts, deleted ones removed)."""
    j = store.journal
    prev = j.state.get("previous_codes")
    if not prev:
        raise QvecError(f"{store.path} has no previous codes to restore: rollback undoes the last `qvec tune --apply`")
    old_settings = Settings.from_json(prev["config"])
    old = j.read_previous_index(old_settings, prev)
    live = store.catalog.all_fids()
    held = old.fids()
    old.remove(np.setdiff1d(held, live))
    missing = np.setdiff1d(live, held)
    if len(missing):
        old.add(store._full_vectors()(missing), missing)
    current = str(store.settings.codes)
    j.swap_codes(old, old_settings)
    return {"quantization": str(old_settings.codes), "previous": current, "rows_added": int(len(missing))}


class Tuning:
    """The Store's methods for this module (kept here: the store module stays a facade)."""

    @reads
    def report(self, queries=None, *, n_queries: int = QUERIES) -> dict:
        """This store measured against exact search (``qvec report``; see ``tune.report``)."""
        return report(self, self._query_matrix(queries), n_queries=n_queries)

    @reads
    def tune(self, recall: float = 0.95, *, max_bytes=None, queries=None, **kw) -> TuneResult:
        """The cheapest codes meeting ``recall``, measured, not applied (``qvec tune``; see ``tune.tune``)."""
        return tune(self, recall, max_bytes=max_bytes, queries=self._query_matrix(queries), **kw)

    @writes
    def apply_tuning(self, candidate: Candidate, recall: float, *, progress=None) -> dict:
        """Re-encode every row with ``candidate``, check ``recall`` on held-out rows, swap in one commit."""
        self._writable()
        return apply(self, candidate, recall, progress=progress)

    @writes
    def rollback_tuning(self) -> dict:
        """Restore the codes the last ``apply_tuning`` replaced (rows written since included)."""
        self._writable()
        return rollback(self)

    def _query_matrix(self, queries):
        if queries is None or (isinstance(queries, (list, tuple)) and queries and isinstance(queries[0], str)):
            return queries and self._embed(queries)
        return inputs.as_matrix(queries, self.settings.dim if self.settings else None, "queries")
