"""What a store hands back: search hits, stored rows and its accounting."""

from __future__ import annotations

import dataclasses
import gc
import itertools
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .errors import CorruptStore
from .originals import row_bytes

__all__ = ["Hit", "Item", "Stats", "hits", "id_hits", "metadata_of", "one_query_hits"]


class Hit(NamedTuple):
    """One search result. ``score`` is the similarity (cosine/ip: higher is closer) or the
    squared L2 distance (l2; Hamming distance for unrescored binary: lower is closer).
    A NamedTuple: immutable, and cheap enough to build 10,000 per batch."""

    id: str
    score: float
    text: str | None = None
    metadata: dict | None = None


_new_hit = tuple.__new__  # Hit(id, score) without NamedTuple's Python-level __new__


def id_hits(D: np.ndarray, I: np.ndarray, lookup) -> list[list[Hit]]:
    """Hits with ids only, built at C speed where it can be: every hit's id decoded in one
    gather, the Hits made by one map() and cut into rows. ``lookup``: ``IdMap.lookup``."""
    k = I.shape[1]
    if k == 0:
        return [[] for _ in range(len(I))]
    ids, live = lookup(I.ravel())  # None for -1, deleted and tombstoned fids
    scores = D.ravel().tolist()
    with _without_gc():
        if live == I.size:  # every hit is a live row
            none = itertools.repeat(None)
            flat = list(map(_new_hit, itertools.repeat(Hit), zip(ids, scores, none, none)))
            return [flat[a : a + k] for a in range(0, len(flat), k)]
        return [[_new_hit(Hit, (ids[a], scores[a], None, None)) for a in range(r * k, r * k + k)
                 if ids[a] is not None] for r in range(len(I))]


def one_query_hits(D: np.ndarray, I: np.ndarray, lookup) -> list[Hit]:
    """id_hits of a single query: search()'s latency path."""
    ids, _ = lookup(I[0])
    return [_new_hit(Hit, (i, s, None, None)) for i, s in zip(ids, D[0].tolist()) if i is not None]


def hits(D: np.ndarray, I: np.ndarray, include: tuple[str, ...], catalog) -> list[list[Hit]]:
    """Each query's Hits from FAISS's (scores, fids), -1 and deleted fids left out: ids only from
    the catalog's id map in RAM (``include=()``), else with text and metadata from one query."""
    if not include:
        return id_hits(D, I, catalog.id_map().lookup)
    rows = catalog.rows(np.unique(I[I >= 0]))
    text, meta = "text" in include, "metadata" in include
    return [[Hit(r[0], s, r[1] if text else None, metadata_of(r[2]) if meta else None)
             for s, f in zip(drow, irow) if (r := rows.get(f)) is not None]
            for drow, irow in zip(D.tolist(), I.tolist())]


@contextmanager
def _without_gc():
    """The cyclic garbage collector paused while a batch's hits are made: 10,000 new tuples
    set it off a dozen times, for 40% of the time the hits take, and hits hold no cycles to
    find. (Global to the process: another thread's collections wait, and run after.)"""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@dataclass(frozen=True, slots=True)
class Item:
    """A stored row, as ``get`` returns it."""

    id: str
    text: str | None
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Stats:
    """A store's counts, settings and accounting, as ``Store.stats()`` measures them.
    Settings fields are None while the store is empty (its dimension not yet known)."""

    path: str
    count: int
    format_version: int
    dim: int | None = None
    quantization: str | None = None
    index: str | None = None
    metric: str | None = None
    model: str | None = None
    model_precision: str | None = None  # the texts were embedded at
    query_model_precision: str | None = None  # this Store embeds queries at
    model_precision_mismatch: bool = False
    rescore: bool | None = None
    originals: str | None = None  # the precision rescoring's originals are kept at on disk
    range_stat: str | None = None  # int8/int4 only
    trained: bool = False
    pending_untrained: int = 0  # vectors searched exactly until the codes are trained
    tombstones: int = 0
    # ids spent on deleted or replaced rows: FAISS ids are never reused, so their originals
    # rows (rescore=True) and filter-bitmap bits stay until the store compacts its ids
    dead_ids: int = 0
    dead_original_bytes: int = 0
    log_rows: int = 0
    fp32_bytes_per_vector: int | None = None
    bytes_per_vector: float | None = None  # RAM, measured from the index (codes, ids, links)
    compression: float | None = None
    fixed_bytes: int | None = None  # scales, codebooks, centroids
    id_map_bytes: int = 0  # RAM of the fid -> id map searches answer from (0 until the first search)
    disk_bytes: dict[str, int] = field(default_factory=dict)
    trained_parameters: dict[str, Any] = field(default_factory=dict)
    shards: int = 1  # a sharded store: its shards' accounting added up (``qvec.shards``)

    @classmethod
    def of(cls, path, count: int, format_version: int, settings, index, log_rows: int, disk: dict[str, int],
           query_model_precision: str, next_fid: int = 0, saved: tuple[int, int] | None = None,
           id_map_bytes: int = 0) -> Stats:
        """The accounting of a store with these ``Settings`` and this index (trained or not);
        ``saved``: the (bytes, vectors) of its last saved index file."""
        base: dict[str, Any] = {"path": str(path), "count": count, "format_version": format_version,
                                "id_map_bytes": id_map_bytes}
        s = settings
        if s is None:
            return cls(**base)
        if index.is_trained and index.ntotal:
            bpv = index.bytes_per_vector(saved)
            base |= {"bytes_per_vector": bpv, "compression": 4 * s.dim / bpv, "fixed_bytes": index.fixed_bytes()}
        return cls(**base, dim=s.dim, quantization=str(s.codes), index=str(s.index), metric=s.metric, model=s.model,
                   model_precision=s.model_precision, query_model_precision=query_model_precision,
                   model_precision_mismatch=query_model_precision != s.model_precision, rescore=s.rescore,
                   originals=s.originals if s.rescore else None,
                   range_stat=s.range_stat if s.codes.kind in ("int8", "int4") else None,
                   trained=index.is_trained, pending_untrained=0 if index.is_trained else index.ntotal,
                   tombstones=len(index.tombstones), log_rows=log_rows, fp32_bytes_per_vector=4 * s.dim,
                   dead_ids=next_fid - count,
                   dead_original_bytes=(next_fid - count) * row_bytes(s.dim, s.originals) if s.rescore else 0,
                   disk_bytes=disk | {"total": sum(disk.values())},
                   trained_parameters=index.trained_parameters() if index.is_trained else {})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (``qvec info --json``)."""
        return dataclasses.asdict(self)


def metadata_of(text: str | None) -> dict:
    """A row's metadata from the JSON the catalog holds."""
    try:
        return json.loads(text) if text else {}
    except ValueError:  # stored by json.dumps: only damage makes it unreadable
        raise CorruptStore(f"a row's metadata is not the JSON qvec wrote ({text[:40]!r}...): the database is "
                           "damaged; restore it from a backup") from None
