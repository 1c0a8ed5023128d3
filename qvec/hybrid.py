"""Keyword and hybrid search: BM25 over an FTS5 index of the stored texts, in the store's own
SQLite file, fused with vector search by reciprocal rank fusion.

The full-text index (``catalog.create_fts``) is an external-content FTS5 table over
``items.text``, kept in step by triggers, so every add, upsert, delete and compaction
updates it in the same transaction as the rows: it is as crash-safe as they are. New stores
get it when created; an older store gets it the first time a writer searches by keyword.

Scores: ``mode="keyword"`` scores are BM25 (higher is better; unbounded, comparable only
within one query). ``mode="hybrid"`` scores are RRF sums,
``w_vector / (rrf_k + rank_vector) + w_keyword / (rrf_k + rank_keyword)`` with ranks from 1
and a missing rank contributing 0: at most ``(w_vector + w_keyword) / (rrf_k + 1)``, which is
2/61 ≈ 0.033 with the defaults. Only the order of the two lists counts, so cosine and BM25
never have to be put on one scale.

Queries are reduced to their words (Unicode letters and digits, as FTS5's ``unicode61``
tokenizer splits them), each quoted, joined by OR: FTS5 operators and punctuation in a
query are text, never syntax. A query with no words matches nothing by keyword.
"""

from __future__ import annotations

import re

import numpy as np

from . import inputs
from .config import SearchParams
from .errors import InvalidInput, ReadOnlyStore
from .guard import holding, reads, writes
from .records import Hit, hits

__all__ = ["MODES", "RRF_K", "Hybrid", "match_expression", "fuse", "check_mode", "options", "checked"]

MODES = ("vector", "keyword", "hybrid")
RRF_K = 60
DEPTH = 50  # candidates each half of a hybrid search contributes, at least (k × 2 when more)
_WORD = re.compile(r"[^\W_]+")


def check_mode(mode) -> str:
    if mode not in MODES:
        raise InvalidInput(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    return mode


def options(params: dict) -> dict:
    """The keyword options out of search()'s keyword arguments; what is left are search parameters."""
    return {"text": params.pop("text", None), "weights": params.pop("weights", (1.0, 1.0)),
            "rrf_k": params.pop("rrf_k", RRF_K), "params": params}


def match_expression(text: str) -> str | None:
    """An FTS5 MATCH expression for the words of ``text`` (any of them), or None if it has none."""
    words = list(dict.fromkeys(w.casefold() for w in _WORD.findall(text)))
    return " OR ".join(f'"{w}"' for w in words) or None


def fuse(ranked: list[np.ndarray], weights: tuple[float, ...], rrf_k: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal rank fusion of ranked fid lists: (scores, fids) of the top k, best first;
    ties broken by the first list's order, then the next's."""
    score: dict[int, float] = {}
    for fids, w in zip(ranked, weights):
        for rank, f in enumerate(fids.tolist(), start=1):
            score[f] = score.get(f, 0.0) + w / (rrf_k + rank)
    best = sorted(score.items(), key=lambda kv: -kv[1])[:k]  # sorted() is stable: first-seen order breaks ties
    return np.array([s for _, s in best], np.float32), np.array([f for f, _ in best], np.int64)


class Hybrid:
    """The Store's keyword and hybrid search (kept here: the store module stays a facade)."""

    def _search_words(self, query, k: int, *, where, include, mode: str, text: str | None, weights, rrf_k: int,
                      params: dict) -> list[Hit]:
        text, k, include, w, rrf_k = checked(query, k, include, mode, text, weights, rrf_k)
        p, depth = SearchParams.parse(params), max(DEPTH, 2 * k)
        xq = None
        if mode == "hybrid" and self.settings is not None:  # embedded before any lock is taken
            xq = self._embed([query]) if isinstance(query, str) else inputs.as_matrix(
                np.asarray(query)[None, :], self.settings.dim, "query")
        self._ensure_fts()
        none = (np.zeros(0, np.float32), np.zeros(0, np.int64))
        with holding(self, "shared"):
            allowed = None if where is None else self.catalog.where_fids(where)
            match = match_expression(text)
            empty = allowed is not None and not len(allowed)
            kw_scores, kw_fids = none if empty or not match else self.catalog.keyword(
                match, depth if mode == "hybrid" else k, allowed)
            if mode == "keyword":
                return hits(kw_scores[None, :], kw_fids[None, :], include, self.catalog)[0]
            vec_fids = none[1]
            if xq is not None and not empty and self.journal.index is not None and self.journal.index.ntotal:
                _, idx = self._plan(inputs.normalised(xq, self.settings.metric), depth, allowed, p)
                vec_fids = idx[0][idx[0] >= 0]
            scores, fids = fuse([vec_fids, kw_fids], w, rrf_k, k)
            return hits(scores[None, :], fids[None, :], include, self.catalog)[0]

    @property
    @reads
    def has_fulltext(self) -> bool:
        """Whether the store has its full-text index (stores made before qvec had one do not)."""
        return self.catalog.has_fts()

    @writes
    def enable_fulltext(self) -> None:
        """Build the full-text index of the stored texts, once (a writer's keyword search does it too)."""
        if not self.catalog.has_fts():
            with self.catalog.transaction():
                self.catalog.create_fts()

    def _ensure_fts(self) -> None:
        if not self.has_fulltext:
            if self.read_only:
                raise ReadOnlyStore(f"{self.path} has no full-text index yet (made before qvec had one): run qvec "
                                    "search --mode keyword on it once, or enable_fulltext() on a writable open")
            self.enable_fulltext()


def checked(query, k, include, mode: str, text, weights, rrf_k):
    """A keyword or hybrid search's arguments, checked: (text, k, include, weights, rrf_k).
    The text is the query's own, or ``text=`` beside a vector query."""
    if isinstance(query, str):
        text = query if text is None else text
    if not isinstance(text, str):
        raise InvalidInput(f"mode={mode!r} needs the query's text: search with a string, or pass text= "
                           "beside a vector")
    inputs.query_texts([text])
    return text, inputs.check_k(k), inputs.check_include(include), _weights(weights), _rrf_k(rrf_k)


def _weights(weights) -> tuple[float, float]:
    try:
        w = tuple(float(x) for x in weights)
    except (TypeError, ValueError):
        w = ()
    if len(w) != 2 or not all(x >= 0 and np.isfinite(x) for x in w) or not sum(w):
        raise InvalidInput(f"weights must be two non-negative numbers (vector, keyword), not both 0, got {weights!r}")
    return w


def _rrf_k(rrf_k) -> int:
    if isinstance(rrf_k, bool) or not isinstance(rrf_k, int) or rrf_k < 0:
        raise InvalidInput(f"rrf_k must be a non-negative integer, got {rrf_k!r}")
    return rrf_k
