"""Checking what callers hand a store, before any work is spent on it: vectors, texts,
ids, metadata, ``k`` and ``include``. Each check raises one ``InvalidInput`` naming the fix."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DimensionMismatch, DuplicateId, InvalidInput

__all__ = ["check_batch", "as_matrix", "check_texts", "check_ids", "dump_metadatas", "check_k", "check_include",
           "check_lock_timeout", "check_embedder", "check_string", "id_list", "normalised", "INCLUDE"]

INCLUDE = ("text", "metadata")


def as_matrix(vectors: Any, dim: int | None, what: str = "vectors", *, copy: bool = True) -> np.ndarray:
    """A C-contiguous float32 (n, dim) array of finite real numbers. ``copy=False``: the
    caller's own array where it is one already (queries, which are only read)."""
    try:
        raw = np.asarray(vectors)
        if raw.dtype.kind == "c":
            raise InvalidInput(f"{what} are complex numbers: pass real vectors (the imaginary part would be dropped)")
        if raw.dtype == np.float32:  # the hot path: a query as models and FAISS give it
            x = raw.astype(np.float32, copy=copy)
        else:
            with np.errstate(over="ignore", invalid="ignore"):  # a value beyond float32 is refused below, by name
                x = raw.astype(np.float32)
    except (TypeError, ValueError) as e:
        if isinstance(e, InvalidInput):
            raise
        raise InvalidInput(f"{what} must be numbers, shape (n, dim): {e}") from None
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] == 0:
        raise InvalidInput(f"{what} must have shape (n, dim), got {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise DimensionMismatch(f"store holds {dim}-dim vectors, got {x.shape[1]}: embed with the store's model")
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise InvalidInput(f"{what} row {bad} contains NaN or inf (or a value beyond float32): clean or drop it")
    return np.ascontiguousarray(x)


def check_string(s: str, what: str) -> str:
    """A string SQLite can store as UTF-8: no lone surrogates (half of a UTF-16 pair)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidInput(f"{what} holds a lone surrogate {s[e.start]!r} at position {e.start}: not valid Unicode; "
                           "decode your input with errors='replace', or fix it") from None
    return s


# Queries are handed to FAISS at an address that is a multiple of this: its AVX2 kernels load
# 32 bytes at a time, and a query 16 or 48 bytes past a 64-byte line slowed an int8/ivf1024
# batch by 8-18% and a single IVF query by 5-10% (an HNSW query alike either way).
ALIGN = 64


def aligned_empty(shape: tuple[int, int]) -> np.ndarray:
    """An uninitialised C-contiguous float32 array starting on an ALIGN-byte boundary."""
    n = shape[0] * shape[1]
    buf = np.empty(n + ALIGN // 4, np.float32)
    skip = (-buf.ctypes.data % ALIGN) // 4
    return buf[skip : skip + n].reshape(shape)


def _aligned(x: np.ndarray) -> np.ndarray:
    """``x`` as a C-contiguous float32 array on an ALIGN-byte boundary (copied only if it is not)."""
    if x.dtype == np.float32 and x.flags.c_contiguous and not x.ctypes.data % ALIGN:
        return x
    out = aligned_empty(x.shape)
    out[...] = x
    return out


def normalised(x: np.ndarray, metric: str) -> np.ndarray:
    """Vectors as the index holds them (unit length for cosine), ALIGN-byte aligned."""
    if metric == "cosine":
        with np.errstate(over="ignore", under="ignore"):  # squares beyond float32 either way: handled below
            norms = _norms(x)
        # Finite values whose squares overflow (1e20) or all underflow (1e-30) gave a norm of inf,
        # hence a zero vector, or of 0, hence "a zero vector" refused: such rows are scaled to a
        # largest magnitude of 1 first, and only a row of zeros is left with a norm of 0.
        odd = ~((norms[:, 0] > 0) & (norms[:, 0] < np.inf))
        if odd.any():
            x = np.array(x, dtype=np.result_type(x.dtype, np.float32))
            peak = np.abs(x[odd]).max(axis=1, keepdims=True)
            x[odd] /= np.where(peak > 0, peak, 1)
            norms[odd] = _norms(x[odd])
        if (norms == 0).any():
            raise InvalidInput(f"row {int(np.flatnonzero(norms == 0)[0])} is a zero vector: "
                               "it has no cosine similarity")
        out = aligned_empty(x.shape)
        np.divide(x, norms, out=out)
        return out
    return _aligned(x)


def _norms(x: np.ndarray) -> np.ndarray:
    """Each row's length, (n, 1): by einsum, which sums each row's squares without the (n, dim)
    array of squares np.linalg.norm makes (with queries uncopied, preparing 1,000 took 0.21 ms
    against 0.29: bench/results/batch_overhead.md). The same sum for a row alone as within a
    batch, so ``one_vector`` gives search_batch's unit vector."""
    return np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]


def one_vector(q: Any, dim: int, metric: str) -> np.ndarray | None:
    """search()'s latency path: one 1-D float32 query of the store's length as the index takes
    it ((1, dim), unit length for cosine), the same numbers ``as_matrix`` and ``normalised`` give
    in five numpy calls instead of a dozen. None where it needs their full checks: another
    type, dtype or shape, or a value NaN, infinite, zero for cosine, or too large to square."""
    if type(q) is not np.ndarray or q.dtype != np.float32 or q.shape != (dim,) or not q.flags.c_contiguous:
        return None
    if not (-1e16 < q.min() and q.max() < 1e16):  # NaN, inf, or a value whose square could overflow (and warn)
        return None
    if metric != "cosine":
        return _aligned(q[None, :])
    norm = _norms(q[None, :])[0, 0]  # as normalised sums a row, so the same unit vector as search_batch's
    if not norm > 0:
        return None
    out = aligned_empty((1, dim))
    np.divide(q, norm, out=out[0])
    return out


def check_batch(texts: Any, vectors: Any, ids: Any, metadata: Any, dim: int | None):
    """One batch for add/upsert: (texts or None, vectors or None, ids, metadata JSON per row).
    Texts with vectors: the texts are stored and the given vectors used (nothing embedded)."""
    if texts is None and vectors is None:
        raise InvalidInput("nothing to add: pass texts, vectors=, or both")
    texts = None if texts is None else check_texts(texts)
    x = None if vectors is None else as_matrix(vectors, dim)
    if texts is not None and x is not None and len(texts) != len(x):
        raise InvalidInput(f"got {len(texts)} texts and {len(x)} vectors: pass one vector per text")
    n = len(texts) if texts is not None else len(x)
    if n == 0:
        raise InvalidInput("nothing to add: the batch is empty")
    return texts, x, check_ids(ids, n), dump_metadatas(metadata, n)


def check_texts(texts: Any) -> list[str]:
    if not isinstance(texts, str) and (isinstance(texts, (bytes, bytearray, dict)) or not isinstance(texts, Iterable)):
        raise InvalidInput(f"texts must be a string or a list of strings, got {type(texts).__name__}")
    texts = [texts] if isinstance(texts, str) else list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise InvalidInput(f"text {i} is {'empty' if isinstance(t, str) else type(t).__name__}: "
                               "pass non-empty strings")
        check_string(t, f"text {i}")
    return texts


def check_ids(ids: Any, n: int) -> list[str]:
    """One unique non-empty string per row; new random ids when None."""
    if ids is None:
        return [uuid.uuid4().hex for _ in range(n)]
    ids = [ids] if isinstance(ids, str) else id_list(ids)
    if len(ids) != n:
        raise InvalidInput(f"got {len(ids)} ids for {n} rows: pass one id per row")
    for i in ids:
        if not i:
            raise InvalidInput("ids must be non-empty strings, got ''")
        if "\0" in i:
            raise InvalidInput(f"id {i!r} contains a NUL character: SQLite's JSON functions end strings there, so "
                               "the row could never be fetched or deleted; remove it")
        check_string(i, f"id {i!r}")
    if len(set(ids)) != n:
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise DuplicateId(f"id {dup!r} appears twice in one batch: ids must be unique")
    return ids


def id_list(ids: Any) -> list[str]:
    """The ids of get/delete/vectors: a string, or any iterable of strings (not bytes)."""
    if isinstance(ids, str):
        return [ids]
    if isinstance(ids, (bytes, bytearray, dict)) or not isinstance(ids, Iterable):
        raise InvalidInput(f"ids must be a string or a list of strings, got {type(ids).__name__}")
    ids = list(ids)
    for i in ids:
        if not isinstance(i, str):
            raise InvalidInput(f"ids must be non-empty strings, got {i!r} ({type(i).__name__})")
    return ids


def dump_metadatas(metadata: Any, n: int) -> list[str | None]:
    """JSON text per row (None for no metadata)."""
    if metadata is None:
        return [None] * n
    metadata = [metadata] if isinstance(metadata, dict) else list(metadata)
    if len(metadata) != n:
        raise InvalidInput(f"got {len(metadata)} metadata dicts for {n} rows: pass one per row")
    return [_dump(m) for m in metadata]


MAX_METADATA_DEPTH = 32  # nesting levels of dicts and lists in one row's metadata
_INT64 = (-(2**63), 2**63 - 1)


def _dump(meta: Any) -> str:
    if not isinstance(meta, dict):
        raise InvalidInput(f"metadata must be a dict per vector, got {type(meta).__name__}")
    _check_value(meta, "metadata", 0)
    try:
        return json.dumps(meta, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"metadata must be JSON-serialisable: {e}") from None


def _check_value(value: Any, where: str, depth: int) -> None:
    """What JSON would turn silently into something else, or SQLite cannot hold: non-string
    keys (``{1: "x", "1": "y"}`` would keep one), integers beyond 64 bits, lone surrogates,
    nesting past MAX_METADATA_DEPTH."""
    if depth > MAX_METADATA_DEPTH:
        raise InvalidInput(f"{where} is nested more than {MAX_METADATA_DEPTH} levels deep: flatten it")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidInput(f"metadata keys must be strings, got {k!r} in {where}")
            check_string(k, f"a key of {where}")
            _check_value(v, f"{where}.{k}" if k.isidentifier() else f"{where}[{k!r}]", depth + 1)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_value(v, where, depth + 1)
    elif isinstance(value, str):
        check_string(value, where)
    elif isinstance(value, int) and not isinstance(value, bool) and not _INT64[0] <= value <= _INT64[1]:
        raise InvalidInput(f"{where} = {value} is outside the 64-bit integers SQLite holds: store it as a string")


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidInput(f"k must be a positive integer, got {k!r}")
    return int(k)


def check_path(path: Any) -> Path:
    """A store's path as a Path, refused here if the system could not name a file by it."""
    try:
        p = Path(path) if isinstance(path, (str, os.PathLike)) else None
    except TypeError:  # a PathLike that gives bytes
        p = None
    if p is None:
        raise InvalidInput(f"path must be a directory path (str or Path), got {type(path).__name__}")
    shown = repr(str(p)) if len(str(p)) <= 80 else repr(str(p)[:77]) + "..."
    if "\0" in str(p):  # os.mkdir's answer would be a ValueError
        raise InvalidInput(f"path {shown} holds a NUL character: no file can have that name")
    try:
        p.exists()
    except OSError as e:  # too long a name; a directory on the way that cannot be searched
        raise InvalidInput(f"path {shown} cannot hold a store ({e.strerror or e}): choose another path") from None
    return p


def check_lock_timeout(timeout: Any) -> None:
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not timeout >= 0):
        raise InvalidInput(f"lock_timeout must be seconds >= 0 or None, got {timeout!r}")


def check_embedder(embedder: Any) -> None:
    """An injected embedder has what ``qvec.embedder.Embedder`` names (looked up on the class or
    instance, so that a property such as ``dim`` does not load a model here)."""
    if embedder is None:
        return
    missing = [a for a in ("name", "dim", "precision", "truncated", "window", "embed")
               if not hasattr(type(embedder), a) and a not in getattr(embedder, "__dict__", {})]
    if missing:
        raise InvalidInput(f"embedder {type(embedder).__name__} lacks {', '.join(missing)}: give it what "
                           "qvec.embedder.Embedder names (name, dim, precision, truncated, window, embed)")


def check_include(include: Any) -> tuple[str, ...]:
    try:
        include = (include,) if isinstance(include, str) else tuple(include or ())
    except TypeError:
        include = (include,)  # one value that is not a name: refused below
    if not all(isinstance(i, str) for i in include) or set(include) - set(INCLUDE):
        raise InvalidInput(f"include takes 'text' and/or 'metadata', got {include!r}")
    return include


def query_texts(texts) -> list[str]:
    """Text queries, each with something to search for: an empty one (an unset variable, a blank
    line) would otherwise be embedded and answered with rows that look like real hits."""
    texts = list(texts)
    for i, text in enumerate(texts):
        if not text.strip():
            raise InvalidInput(f"{'the query' if len(texts) == 1 else f'query {i}'} is empty: give some text "
                               "to search for")
    return texts


def one_query(query):
    """search()'s one query as search_batch() takes it: [text], or a (1, d) array."""
    if isinstance(query, str):
        return [query]
    q = np.asarray(query)
    if q.ndim != 1:
        raise InvalidInput(f"search() takes one query (a string or a 1-D vector), got shape {q.shape}: "
                           "use search_batch() for several")
    return q[None, :]
