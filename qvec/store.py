"""The store: a directory holding a SQLite database (rows, metadata, settings, the log of
vectors since the last checkpoint), a FAISS index file, and optionally the original
vectors memory-mapped for rescoring.

Durability: each add/upsert/delete call is one SQLite transaction that records the rows
*and* the vectors (the write-ahead log). The index in RAM is saved to a new file, named
with its checksum in SQLite, at checkpoints (on close, after training, and when the log
grows); reopening loads the named file and replays the log after it. A crash at any
point therefore leaves every id either fully present or fully absent.
"""

from __future__ import annotations

import builtins  # this module defines its own open()
import fcntl
import functools
import hashlib
import json
import os
import queue
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import faiss
import numpy as np

from .embedder import DEFAULT_MODEL, Embedder, SentenceTransformerEmbedder, check_model_precision
from .errors import (
    CorruptStore,
    DimensionMismatch,
    DuplicateId,
    IdNotFound,
    IncompatibleStore,
    InvalidInput,
    NotTrained,
    ReadOnlyStore,
    SettingsConflict,
    StoreLocked,
    StoreNotFound,
)
from .index import VectorIndex
from .metadata import MetadataDB, dump_metadata
from .originals import Originals
from .quantization import DEFAULT_RANGE_STAT, IndexKind, Quantization, Settings

__all__ = ["open", "Store", "Hit", "Item", "FORMAT_VERSION"]

FORMAT_VERSION = 1
DB_FILE = "qvec.sqlite"
ORIGINALS_FILE = "originals.f32"
LOCK_FILE = "write.lock"
SEARCH_PARAMS = ("nprobe", "ef_search", "oversample")
DEFAULT_OVERSAMPLE = 4
# A filter matching at most this many rows is scored exactly over just those rows:
# faster than walking a graph or probing lists for a handful, and never misses one.
EXACT_FILTER_ROWS = 4096
TRAIN_SAMPLE = 200_000
# Save the index once the log holds this many rows (or a quarter of the index): replaying
# the log on open stays short, and a save's cost is spread over many writes.
CHECKPOINT_ROWS = 10_000
_UNSET: Any = None


class Hit(NamedTuple):
    """One search result. ``score`` is the similarity (cosine/ip: higher is closer) or the
    squared L2 distance (l2; Hamming distance for unrescored binary: lower is closer).
    A NamedTuple: immutable, and cheap enough to build 10,000 per batch."""

    id: str
    score: float
    text: str | None = None
    metadata: dict | None = None


@dataclass(frozen=True, slots=True)
class Item:
    """A stored row, as ``get`` returns it."""

    id: str
    text: str | None
    metadata: dict = field(default_factory=dict)


def open(
    path: str | os.PathLike,
    *,
    quantization: str | None = _UNSET,
    index: str | None = _UNSET,
    metric: str | None = _UNSET,
    model: str | None = _UNSET,
    rescore: bool | None = _UNSET,
    dim: int | None = _UNSET,
    range_stat: str | None = _UNSET,
    model_precision: str | None = None,
    embedder: Embedder | None = None,
    create: bool = True,
    read_only: bool = False,
    lock_timeout: float | None = 0,
) -> Store:
    """Create the store at ``path``, or reopen it.

    Defaults when creating: quantization="int8", index="flat", metric="cosine",
    model="all-MiniLM-L6-v2", rescore=False; dim comes from the first vectors added (or the
    model). When reopening, settings come from the store; one given that differs is a
    ``SettingsConflict``. ``embedder`` injects any object with ``name``, ``dim``, ``embed``.

    One process at a time may open a store for writing: another ``open`` gets ``StoreLocked``
    at once, or after waiting up to ``lock_timeout`` seconds (``None``: wait as long as it takes).
    ``model_precision`` ("fp32" or "int8") is the precision the embedding model runs at; a new
    store records it, and texts added later must be embedded at the same precision. Queries
    may use another (``stats()`` reports it), e.g. ``model_precision="int8"`` for fast queries.
    ``read_only=True`` opens a consistent snapshot beside a writer, any number of times:
    it sees every batch committed before it opened (or last called ``refresh()``) and none after.
    """
    requested = {
        "quantization": None if quantization is None else str(Quantization.parse(quantization)),
        "index": None if index is None else str(IndexKind.parse(index)),
        "metric": metric,
        "model": embedder.name if embedder is not None and model is None else model,
        "rescore": rescore,
        "dim": dim,
        "range_stat": range_stat,
    }
    requested = {k: v for k, v in requested.items() if v is not None}
    if lock_timeout is not None and (isinstance(lock_timeout, bool) or not lock_timeout >= 0):
        raise InvalidInput(f"lock_timeout must be seconds >= 0 or None, got {lock_timeout!r}")
    if model_precision is not None:
        check_model_precision(model_precision)
    return Store(Path(path), requested, embedder, create and not read_only, read_only, lock_timeout, model_precision)


def _as_matrix(vectors: Any, dim: int | None, what: str = "vectors") -> np.ndarray:
    try:
        x = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"{what} must be numbers, shape (n, dim): {e}") from None
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] == 0:
        raise InvalidInput(f"{what} must have shape (n, dim), got {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise DimensionMismatch(f"store holds {dim}-dim vectors, got {x.shape[1]}: embed with the store's model")
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise InvalidInput(f"{what} row {bad} contains NaN or inf: clean or drop it")
    return np.ascontiguousarray(x)


class _IndexFileGone(CorruptStore):
    """The index file SQLite names is missing (for a reader: a writer replaced it)."""


def _metadata(text: str | None) -> dict:
    return json.loads(text) if text else {}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _ReadWriteLock:
    """Threads of one process: any number of readers, or one writer. A waiting writer holds
    back new readers (no starvation); both sides are re-entrant in their own thread."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer: int | None = None
        self._depth = 0
        self._waiting = 0
        self._mine = threading.local()

    @contextmanager
    def shared(self):
        me = threading.get_ident()
        held = getattr(self._mine, "reads", 0)
        with self._cond:
            if self._writer != me and not held:
                self._cond.wait_for(lambda: self._writer is None and not self._waiting)
            self._readers += 1
        self._mine.reads = held + 1
        try:
            yield
        finally:
            self._mine.reads = held
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self):
        me = threading.get_ident()
        with self._cond:
            if self._writer != me:
                self._waiting += 1
                self._cond.wait_for(lambda: self._writer is None and self._readers == 0)
                self._waiting -= 1
                self._writer = me
            self._depth += 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if not self._depth:
                    self._writer = None
                self._cond.notify_all()


def _holding(mode: str):
    """A method decorator: the call runs holding the Store's lock in ``mode``."""

    def decorator(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            with getattr(self._rw, mode)():
                return method(self, *args, **kwargs)

        return wrapper

    return decorator


_reads, _writes = _holding("shared"), _holding("exclusive")


class Store:
    """A compressed vector store. Use ``qvec.open``; close it (or use ``with``)."""

    def __init__(self, path: Path, requested: dict, embedder: Embedder | None, create: bool, read_only: bool,
                 lock_timeout: float | None = 0, model_precision: str | None = None):
        self.path = path
        self.read_only = read_only
        self._rw = _ReadWriteLock()  # searches in parallel; writes one at a time, alone
        if path.exists() and not path.is_dir():
            raise StoreNotFound(f"{path} is a file, not a qvec store: pass a directory path")
        db_path = path / DB_FILE
        if not db_path.exists():
            if not create:
                raise StoreNotFound(f"no qvec store at {path}: create it with qvec.open(path) or `qvec build`")
            if path.exists() and any(path.iterdir()):
                raise StoreNotFound(f"{path} is a non-empty directory but not a qvec store: choose a new path")
            path.mkdir(parents=True, exist_ok=True)
        self._lock = None if read_only else self._acquire_lock(lock_timeout)
        self.db = MetadataDB(db_path)
        try:
            self._requested, self._embedder, self._session_precision = requested, embedder, model_precision
            self._load_snapshot() if read_only else self._load()
        except BaseException:
            self.db.close()
            self._release_lock()
            raise

    # -- opening ------------------------------------------------------------------------
    def _acquire_lock(self, timeout: float | None):
        f = builtins.open(self.path / LOCK_FILE, "a+")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return f
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    f.close()
                    waited = f" (waited {timeout:g}s)" if timeout else ""
                    raise StoreLocked(f"{self.path} is open for writing elsewhere{waited}: close it there, "
                                      "open with read_only=True, or pass lock_timeout= to wait") from None
                time.sleep(0.05)

    def _release_lock(self):
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _load_snapshot(self, attempts: int = 5) -> None:
        """Load settings, index file and log in one read transaction: a consistent state
        even while a writer commits. A writer's checkpoint may remove the index file this
        snapshot names before it is read; then try again with the newer snapshot."""
        for attempt in range(attempts):
            self.db.conn.execute("BEGIN")
            try:
                self._load()
                self._version = self.db.data_version()
                return
            except _IndexFileGone:
                if attempt == attempts - 1:
                    raise
            finally:
                self.db.conn.execute("COMMIT")

    @_writes
    def refresh(self) -> bool:
        """Read-only stores: load what writers committed since opening. Returns whether
        anything changed. (A writer's own store is always current.)"""
        if not self.read_only or self.db.data_version() == self._version:
            return False
        self._load_snapshot()
        return True

    def _load(self) -> None:
        db = self.db
        requested = self._requested
        try:
            if self.read_only and not db.has_schema():
                raise StoreNotFound(f"no qvec store at {self.path}: create it with qvec.open(path)")
            fresh = not db.has_schema()
            if fresh:
                with db.transaction():
                    db.create_schema()
                    db.put_settings({"format_version": FORMAT_VERSION, "next_fid": 0})
            meta = db.get_settings()
        except Exception as e:  # sqlite3.DatabaseError: not a database, malformed ...
            raise CorruptStore(f"{self.path / DB_FILE} is not a readable qvec database ({e})") from None
        version = meta.get("format_version")
        if not isinstance(version, int):
            raise CorruptStore(f"{self.path / DB_FILE} has no format version: not a qvec store")
        if version > FORMAT_VERSION:
            raise IncompatibleStore(
                f"store format {version} is newer than this qvec reads ({FORMAT_VERSION}): upgrade qvec"
            )
        self._meta = meta
        self.settings: Settings | None = None
        self._index: VectorIndex | None = None
        self._pending: dict[int, np.ndarray] = {}
        self._log_rows = 0
        if "settings" in meta:
            self.settings = Settings.from_json(meta["settings"])
            self._check_conflicts(requested)
            self._load_index()
        else:
            self._validate_requested()

    def _check_conflicts(self, requested: dict) -> None:
        stored = self.settings.to_json()
        diffs = [f"{k}={v!r} (store has {stored[k]!r})" for k, v in requested.items() if stored.get(k) != v]
        if diffs:
            raise SettingsConflict(
                f"{self.path} was created with other settings: {', '.join(diffs)}; "
                "reopen without them, or build a new store"
            )

    def _validate_requested(self) -> None:
        if "dim" in self._requested:
            self._new_settings(self._requested["dim"])  # raises InvalidSpec early, stores nothing

    def _new_settings(self, dim: int) -> Settings:
        r = self._requested
        q = Quantization.parse(r.get("quantization", "int8"))
        return Settings(
            dim=int(dim),
            quantization=q,
            index=IndexKind.parse(r.get("index", "flat")),
            metric=r.get("metric", "cosine"),
            model=r.get("model", DEFAULT_MODEL),
            model_precision=self.model_precision,
            rescore=bool(r.get("rescore", False)),
            range_stat=r.get("range_stat") or DEFAULT_RANGE_STAT.get(q.kind, "minmax"),
        )

    def _ensure_settings(self, dim: int) -> None:
        if self.settings is None:
            self.settings = self._new_settings(dim)
            with self.db.transaction():
                self.db.put_settings({"settings": self.settings.to_json()})
            self._index = VectorIndex(self.settings)
        elif dim != self.settings.dim:
            raise DimensionMismatch(f"store holds {self.settings.dim}-dim vectors, got {dim}")

    def _load_index(self) -> None:
        s, meta = self.settings, self._meta
        threshold = meta.get("binary_threshold")
        threshold = None if threshold is None else np.asarray(threshold, dtype=np.float32)
        name = meta.get("index_file")
        if name:
            file = self.path / name
            try:
                data = file.read_bytes()
            except FileNotFoundError:
                raise _IndexFileGone(f"index file {file} is missing: restore it from a backup") from None
            if len(data) != meta["index_size"] or _sha256(data) != meta["index_sha256"]:
                raise CorruptStore(
                    f"index file {file} fails its checksum ({len(data)} bytes, expected {meta['index_size']}): "
                    "it was truncated or modified; restore it from a backup"
                )
            try:
                self._index = VectorIndex.deserialize(s, data, threshold)
            except RuntimeError as e:
                raise CorruptStore(f"index file {file} cannot be read by FAISS: {str(e).splitlines()[0]}") from None
        else:
            self._index = VectorIndex(s, threshold=threshold)
        self._index.tombstones = self.db.tombstones()
        for stray in [] if self.read_only else self.path.glob("index-*.faiss*"):
            if stray.name != name:  # written by a checkpoint that never committed
                stray.unlink()
        self._replay(meta.get("checkpoint_seq", 0))

    def _replay(self, after: int) -> None:
        """Apply the logged adds and deletes made since the saved index was written."""
        fids, vecs = [], []

        def flush():
            if fids:
                self._apply_add(np.asarray(fids, dtype=np.int64), np.stack(vecs))
                fids.clear()
                vecs.clear()

        for _, op, fid, blob in self.db.log_entries(after):
            self._log_rows += 1
            if op == "add":
                fids.append(fid)
                vecs.append(np.frombuffer(blob, dtype=np.float32))
            else:
                flush()
                self._apply_delete([fid])
        flush()

    # -- properties -----------------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            name = self.settings.model if self.settings else self._requested.get("model", DEFAULT_MODEL)
            self._embedder = SentenceTransformerEmbedder(name or DEFAULT_MODEL, self.model_precision)
        return self._embedder

    @property
    def model_precision(self) -> str:
        """The precision this Store embeds texts at: as opened, else the store's own."""
        if self._embedder is not None:
            return getattr(self._embedder, "precision", "fp32")
        if self._session_precision:
            return self._session_precision
        return self.settings.model_precision if self.settings else "fp32"

    @property
    def is_trained(self) -> bool:
        return self._index is not None and self._index.is_trained

    @_reads
    def __len__(self) -> int:
        return self.db.count()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        s = self.settings
        spec = f"{s.quantization}/{s.index}/{s.metric}" if s else "empty"
        return f"<qvec.Store {str(self.path)!r} {spec} count={len(self)}>"

    # -- input handling ---------------------------------------------------------------------
    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        x = self.embedder.embed(list(texts))
        if self.settings is not None and x.shape[1] != self.settings.dim:
            raise DimensionMismatch(
                f"model {self.embedder.name!r} gives {x.shape[1]}-dim vectors, the store holds "
                f"{self.settings.dim}-dim: open it with its own model ({self.settings.model!r})"
            )
        return x

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        if self.settings.metric == "cosine":
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            if (norms == 0).any():
                raise InvalidInput(
                    f"row {int(np.flatnonzero(norms == 0)[0])} is a zero vector: it has no cosine similarity"
                )
            x = x / norms
        return np.ascontiguousarray(x, dtype=np.float32)

    def _queries(self, queries: Any) -> np.ndarray:
        if isinstance(queries, str):
            queries = [queries]
        if isinstance(queries, (list, tuple)) and queries and all(isinstance(q, str) for q in queries):
            return self._embed(queries) if self.settings else np.zeros((len(queries), 1), np.float32)
        x = _as_matrix(queries, self.settings.dim if self.settings else None, "queries")
        return x

    # -- writes -------------------------------------------------------------------------------
    def add(self, texts=None, *, vectors=None, ids=None, metadata=None) -> list[str]:
        """Add texts (embedded with the store's model) or vectors (n, dim). Returns the ids.
        An id that exists already is a ``DuplicateId``: use ``upsert`` to replace."""
        return self._write(texts, vectors, ids, metadata, upsert=False)

    def upsert(self, texts=None, *, vectors=None, ids=None, metadata=None) -> list[str]:
        """Like ``add``, but rows whose id exists are replaced."""
        return self._write(texts, vectors, ids, metadata, upsert=True)

    def _writable(self) -> None:
        if self.read_only:
            raise ReadOnlyStore(f"{self.path} was opened with read_only=True: open it without to write")

    def _write(self, texts, vectors, ids, metadata, *, upsert: bool) -> list[str]:
        with self._rw.shared():  # its id check reads SQLite: not in the middle of another thread's write
            texts, x, ids, metas = self._validate(texts, vectors, ids, metadata, upsert)
        if texts is not None:
            x = self._embed(texts)  # outside the lock: searches go on while the model runs
        with self._rw.exclusive():
            return self._apply_write(texts, x, ids, metas, upsert)

    def _validate(self, texts, vectors, ids, metadata, upsert: bool):
        """Check one batch before any work is spent on it: (texts, vectors, ids, metadata JSON)."""
        self._writable()
        if (texts is None) == (vectors is None):
            raise InvalidInput("pass either texts or vectors=, not both or neither")
        x = None
        if texts is not None:
            texts = [texts] if isinstance(texts, str) else list(texts)
            for i, t in enumerate(texts):
                if not isinstance(t, str) or not t.strip():
                    raise InvalidInput(f"text {i} is {'empty' if isinstance(t, str) else type(t).__name__}: "
                                       "pass non-empty strings")
            n = len(texts)
        else:
            x = _as_matrix(vectors, self.settings.dim if self.settings else None)
            n = len(x)
        if n == 0:
            raise InvalidInput("nothing to add: the batch is empty")
        ids = self._check_ids(ids, n)
        if metadata is None:
            metas = [None] * n
        else:
            metadata = [metadata] if isinstance(metadata, dict) else list(metadata)
            if len(metadata) != n:
                raise InvalidInput(f"got {len(metadata)} metadata dicts for {n} rows: pass one per row")
            metas = [dump_metadata(m) for m in metadata]
        if not upsert:
            self._refuse_existing(ids)  # before embedding: a duplicate should not cost the model's time
        if texts is not None and self.settings is not None and self.model_precision != self.settings.model_precision:
            raise SettingsConflict(
                f"{self.path}'s texts were embedded at model_precision={self.settings.model_precision!r}, this Store "
                f"embeds at {self.model_precision!r}: mixing them in one index loses recall; reopen with "
                f"model_precision={self.settings.model_precision!r} to add texts (other precisions may search)"
            )
        return texts, x, ids, metas

    def ingest(self, rows: Iterable[tuple[str, str, dict | None]], *, batch_size: int = 256, upsert: bool = False,
               skip_existing: bool = False, on_batch: Callable[[int, int], None] | None = None) -> tuple[int, int]:
        """Add ``(id, text, metadata)`` rows from any iterable (a file being read, a generator),
        pipelined: reading the next batch, embedding this one and writing the one before
        overlap, in three threads. Each batch is one transaction, as ``add`` would commit it,
        so a failure keeps the batches before it. ``skip_existing`` skips ids already stored
        (``upsert`` replaces them; otherwise they are a ``DuplicateId``). ``on_batch(read,
        added)`` is called after each batch is written. Returns (added, skipped)."""
        self._writable()
        stop = threading.Event()
        read_q: queue.Queue = queue.Queue(maxsize=2)
        write_q: queue.Queue = queue.Queue(maxsize=2)
        failed: list[BaseException] = []
        added = skipped = 0

        def put(q, item):  # give up when another stage failed
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def get(q):  # None at the end, or when another stage failed
            while not stop.is_set():
                try:
                    return q.get(timeout=0.1)
                except queue.Empty:
                    continue
            return None

        def reader():
            try:
                batch: list = []
                for row in rows:
                    batch.append(row)
                    if len(batch) == batch_size:
                        if not put(read_q, batch):
                            return
                        batch = []
                if batch:
                    put(read_q, batch)
            except BaseException as e:  # noqa: BLE001 -- handed to the caller's thread
                failed.append(e)
            finally:
                put(read_q, None)

        def writer():
            nonlocal added
            try:
                while (item := write_q.get()) is not None:
                    n_read, texts, x, ids, metas = item
                    if texts:
                        with self._rw.exclusive():
                            self._apply_write(texts, x, ids, metas, upsert)
                        added += len(ids)
                    if on_batch:
                        on_batch(n_read, len(ids))
            except BaseException as e:  # noqa: BLE001
                failed.append(e)
                stop.set()

        threads = [threading.Thread(target=reader, daemon=True), threading.Thread(target=writer, daemon=True)]
        for t in threads:
            t.start()
        queued: set[str] = set()  # ids read but maybe not yet written: a repeat is skipped, not re-added
        try:
            while (batch := get(read_q)) is not None:
                ids = [r[0] for r in batch]
                keep = list(range(len(batch)))
                with self._rw.shared():  # not in the middle of the writer's transaction
                    if skip_existing and not upsert:
                        stored = set(self.db.fids_of(ids))
                        keep = []
                        for i, rid in enumerate(ids):
                            if rid not in stored and rid not in queued:
                                keep.append(i)
                                queued.add(rid)
                        skipped += len(batch) - len(keep)
                    if keep:
                        texts, _, ids, metas = self._validate([batch[i][1] for i in keep], None,
                                                              [ids[i] for i in keep],
                                                              [batch[i][2] or {} for i in keep], upsert)
                item = (len(batch), [], None, [], [])
                if keep:
                    item = (len(batch), texts, self._embed(texts), ids, metas)
                if not put(write_q, item):
                    break
        finally:
            put(write_q, None)  # the writer commits what is queued, even when this thread failed
            threads[1].join()
            stop.set()  # releases a reader blocked on a full queue
            threads[0].join()
        if failed:
            raise failed[0]
        return added, skipped

    def _refuse_existing(self, ids) -> dict:
        existing = self.db.fids_of(ids)
        if existing:
            some = ", ".join(repr(i) for i in list(existing)[:3])
            raise DuplicateId(f"{len(existing)} id(s) exist already ({some}): use upsert() to replace them")
        return existing

    def _apply_write(self, texts, x, ids, metas, upsert: bool) -> list[str]:
        n = len(ids)
        # checked again under the write lock: another thread may have added these ids since _validate
        existing = self.db.fids_of(ids) if upsert else self._refuse_existing(ids)
        self._ensure_settings(x.shape[1])
        x = self._prepare(x)

        first = self._meta["next_fid"]  # the one writer keeps it current (below)
        fids = np.arange(first, first + n, dtype=np.int64)
        old = np.fromiter(existing.values(), dtype=np.int64, count=len(existing))
        if self.settings.rescore:
            self._originals.write(first, x)
        with self.db.transaction():
            if len(old):
                self.db.delete(old)
                self.db.log("del", old)
                if self.is_trained and not self._index.removes_in_place:
                    self.db.add_tombstones(old)
            self.db.insert(fids, ids, texts if texts is not None else [None] * n, metas)
            self.db.log("add", fids, x)
            self.db.put_settings({"next_fid": first + n})
        self._meta["next_fid"] = first + n
        self._log_rows += len(old) + n
        if len(old):
            self._apply_delete(old)
        self._apply_add(fids, x)
        self._maintain()
        return ids

    def _check_ids(self, ids, n: int) -> list[str]:
        if ids is None:
            return [uuid.uuid4().hex for _ in range(n)]
        ids = [ids] if isinstance(ids, str) else list(ids)
        if len(ids) != n:
            raise InvalidInput(f"got {len(ids)} ids for {n} rows: pass one id per row")
        for i in ids:
            if not isinstance(i, str) or not i:
                raise InvalidInput(f"ids must be non-empty strings, got {i!r}")
        if len(set(ids)) != n:
            seen, dup = set(), None
            for i in ids:
                if i in seen:
                    dup = i
                    break
                seen.add(i)
            raise DuplicateId(f"id {dup!r} appears twice in one batch: ids must be unique")
        return ids

    @_writes
    def delete(self, ids) -> int:
        """Delete rows by id; all or nothing: an unknown id is an ``IdNotFound``."""
        self._writable()
        found = self._lookup(ids, self.db.fids_of)
        fids = np.fromiter(set(found.values()), dtype=np.int64)
        with self.db.transaction():
            self.db.delete(fids)
            self.db.log("del", fids)
            if self.is_trained and not self._index.removes_in_place:
                self.db.add_tombstones(fids)
        self._log_rows += len(fids)
        self._apply_delete(fids)
        self._maintain()
        return len(fids)

    def _apply_add(self, fids: np.ndarray, x: np.ndarray) -> None:
        if self.is_trained:
            self._index.add(x, fids)
        else:
            self._pending.update(zip(fids.tolist(), x))

    def _apply_delete(self, fids) -> None:
        if self.is_trained:
            self._index.remove(fids)
        else:
            for f in fids:
                self._pending.pop(int(f), None)

    def _maintain(self) -> None:
        """Train once enough vectors wait; checkpoint when the log has grown; compact HNSW."""
        s = self.settings
        if s is None:
            return
        if not self.is_trained and len(self._pending) >= s.train_size:
            self.train()
            return
        if not self.is_trained:
            return
        idx = self._index
        if len(idx.tombstones) > max(1_000, idx.ntotal // 5):
            self.checkpoint(compact=True)
        elif self._log_rows >= max(CHECKPOINT_ROWS, idx.ntotal // 4):
            self.checkpoint()

    @_writes
    def train(self, vectors=None) -> None:
        """Train the codes (scales, codebooks, centroids) on ``vectors`` or on the vectors
        waiting in the store, then index every waiting vector."""
        self._writable()
        if self.settings is None and vectors is None:
            raise NotTrained("the store is empty: add vectors first, or pass vectors to train on")
        if self.is_trained:
            if vectors is not None and self.settings.needs_training:
                raise NotTrained("the store is trained already: build a new store to retrain")
            return  # nothing to learn (fp32/fp16/bf16 flat or hnsw), or done already
        if vectors is not None:
            x = _as_matrix(vectors, self.settings.dim if self.settings else None)
            self._ensure_settings(x.shape[1])
            x = self._prepare(x)
        else:
            x = np.stack(list(self._pending.values())) if self._pending else np.zeros((0, self.settings.dim))
        need = self.settings.min_train_size
        if len(x) < need:
            raise NotTrained(
                f"{self.settings.quantization}/{self.settings.index} needs at least {need} vectors to train, "
                f"got {len(x)}: add more, or pass vectors= to train()"
            )
        if len(x) < self.settings.train_size:
            warnings.warn(
                f"training {self.settings.quantization}/{self.settings.index} on {len(x)} vectors; "
                f"{self.settings.train_size} or more give better codes",
                stacklevel=2,
            )
        if len(x) > TRAIN_SAMPLE:
            x = x[np.random.default_rng(0).choice(len(x), TRAIN_SAMPLE, replace=False)]
        self._index.train(x)
        if self._pending:
            fids = np.fromiter(self._pending.keys(), dtype=np.int64)
            self._index.add(np.stack(list(self._pending.values())), fids)
            self._pending.clear()
        self.checkpoint()

    @_writes
    def checkpoint(self, *, compact: bool = False) -> None:
        """Save the index to a new file and empty the log (done on close and as the log grows).
        ``compact`` also rebuilds an HNSW graph without its deleted vectors."""
        self._writable()
        if not self.is_trained:
            return  # untrained vectors live in the log until training
        if compact and self._index.tombstones:
            self._compact()
        seq = self.db.last_seq()
        data = self._index.serialize()
        name = f"index-{seq:012d}-{uuid.uuid4().hex[:8]}.faiss"
        tmp = self.path / (name + ".tmp")
        with builtins.open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / name)
        dir_fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        values = {"index_file": name, "index_size": len(data), "index_sha256": _sha256(data), "checkpoint_seq": seq}
        if self._index.threshold is not None:
            values["binary_threshold"] = self._index.threshold.tolist()
        with self.db.transaction():
            self.db.put_settings(values)
            self.db.truncate_log(seq)
            if compact:
                self.db.clear_tombstones()
        self._log_rows = 0
        for old in self.path.glob("index-*.faiss"):
            if old.name != name:
                old.unlink()
        self.db.reclaim()

    def _compact(self) -> None:
        live = self.db.all_fids()
        idx = self._index
        x = self._originals.read(live) if self.settings.rescore else idx.reconstruct(live)
        clone = faiss.clone_index(idx.index)
        clone.reset()
        fresh = VectorIndex(self.settings, clone, idx.threshold)
        fresh.add(x, live)
        self._index = fresh

    @functools.cached_property
    def _originals(self) -> Originals:
        # First used once the store has settings, which fix the dimension for good.
        return Originals(self.path / ORIGINALS_FILE, self.settings.dim)

    # -- reads --------------------------------------------------------------------------------
    @_reads
    def get(self, ids):
        """The stored row(s): ``get("a")`` → Item, ``get(["a", "b"])`` → [Item, Item]."""
        single = isinstance(ids, str)
        rows = self._lookup(ids, self.db.rows_by_id)
        items = [Item(i, text, _metadata(meta)) for i, (_, text, meta) in rows.items()]
        return items[0] if single else items

    @staticmethod
    def _lookup(ids, fetch) -> dict:
        """``fetch(ids)`` for a str or a list of ids, in the order given; IdNotFound if any is missing."""
        ids = [ids] if isinstance(ids, str) else list(ids)
        found = fetch(ids)
        missing = [i for i in ids if i not in found]
        if missing:
            raise IdNotFound(f"{len(missing)} id(s) not in the store: {', '.join(map(repr, missing[:3]))}")
        return {i: found[i] for i in ids}

    @_reads
    def ids(self) -> list[str]:
        return self.db.ids()

    @_reads
    def vectors(self, ids) -> np.ndarray:
        """The stored vectors for ids, (n, dim) float32: the FP32 originals when the store
        keeps them (rescore=True) or while untrained, else decoded from the codes (lossy)."""
        fids = np.fromiter(self._lookup(ids, self.db.fids_of).values(), dtype=np.int64)
        if self.settings.rescore:
            return self._originals.read(fids)
        if not self.is_trained:
            return np.stack([self._pending[int(f)] for f in fids])
        if self._index.binary:
            raise InvalidInput("binary codes cannot be decoded to vectors: keep originals with rescore=True")
        return self._index.reconstruct(fids).astype(np.float32)

    def search(self, query, k: int = 10, *, where=None, include=("text", "metadata"), **params) -> list[Hit]:
        """The k nearest rows to a text or a vector, best first."""
        if isinstance(query, str):
            return self.search_batch([query], k, where=where, include=include, **params)[0]
        x = np.asarray(query)
        if x.ndim != 1:
            raise InvalidInput(f"search() takes one query (a string or a 1-D vector), got shape {x.shape}: "
                               "use search_batch() for several")
        return self.search_batch(x[None, :], k, where=where, include=include, **params)[0]

    @_reads
    def search_batch(self, queries, k: int = 10, *, where=None, include=("text", "metadata"), **params):
        """search() for a list of strings or an (nq, dim) array: one list of Hits per query.
        params: nprobe (ivf), ef_search (hnsw), oversample (rescore: candidates = k × oversample)."""
        unknown = set(params) - set(SEARCH_PARAMS)
        if unknown:
            raise InvalidInput(f"unknown search parameter(s) {sorted(unknown)}: expected {', '.join(SEARCH_PARAMS)}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidInput(f"k must be a positive integer, got {k!r}")
        include = tuple(include or ())
        if set(include) - {"text", "metadata"}:
            raise InvalidInput(f"include takes 'text' and/or 'metadata', got {include!r}")
        oversample = params.get("oversample") or DEFAULT_OVERSAMPLE
        if not isinstance(oversample, int) or oversample < 1:
            raise InvalidInput(f"oversample must be an integer >= 1, got {oversample!r}")
        xq = self._queries(queries)
        allowed = None
        if where is not None:
            allowed = self.db.where_fids(where)  # validates the filter even on an empty store
        if self.settings is None:
            return [[] for _ in range(len(xq))]
        xq = self._prepare(xq)
        if allowed is not None and not len(allowed):
            return [[] for _ in range(len(xq))]
        D, I = self._candidates(xq, int(k), allowed, oversample, params)
        return self._hits(D, I, include)

    def _candidates(self, xq, k, allowed, oversample, params):
        s, idx = self.settings, self._index
        if not self.is_trained:
            fids = np.fromiter(self._pending.keys(), dtype=np.int64)
            if allowed is not None:
                fids = np.intersect1d(fids, allowed)
            x = np.stack([self._pending[f] for f in fids.tolist()]) if len(fids) else None
            return self._exact(xq, k, fids, x)
        if allowed is not None and len(allowed) <= EXACT_FILTER_ROWS and not idx.binary:
            if s.rescore:
                return self._exact(xq, k, allowed, self._originals.read(allowed))
            if not idx.is_ivf:
                return self._exact(xq, k, allowed, idx.reconstruct(allowed))
            params = dict(params, nprobe=idx.nlist)  # every list, only the allowed codes scored
        kc = k * oversample if s.rescore else k
        D, I = idx.search(xq, kc, allowed=allowed, nprobe=params.get("nprobe"), ef_search=params.get("ef_search"))
        if s.rescore:
            D, I = self._rescore(xq, I, k)
        return D, I

    def _exact(self, xq, k, fids, x):
        """Exact top-k of xq over the rows x (whose fids are given), via faiss.knn."""
        if x is None or not len(fids):
            return np.zeros((len(xq), 0), np.float32), np.zeros((len(xq), 0), np.int64)
        metric = faiss.METRIC_L2 if self.settings.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        kk = min(k, len(fids))
        D, pos = faiss.knn(xq, np.ascontiguousarray(x, dtype=np.float32), kk, metric=metric)
        return D, np.where(pos >= 0, fids[np.maximum(pos, 0)], -1)

    def _rescore(self, xq, I, k):
        """Re-rank candidate fids by exact scores against the original vectors."""
        valid = I >= 0
        flat = np.unique(I[valid])
        if not len(flat):  # no query found a candidate (e.g. every row filtered out)
            return np.zeros((len(xq), 0), np.float32), np.zeros((len(xq), 0), np.int64)
        orig = self._originals.read(flat)
        cand = orig[np.searchsorted(flat, np.where(valid, I, flat[0]))]
        if self.settings.metric == "l2":
            scores = ((cand - xq[:, None, :]) ** 2).sum(-1)
            scores[~valid] = np.inf
            order = np.argsort(scores, axis=1, kind="stable")[:, :k]
        else:
            scores = np.einsum("qcd,qd->qc", cand, xq)
            scores[~valid] = -np.inf
            order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        D = np.take_along_axis(scores, order, 1).astype(np.float32)
        return D, np.take_along_axis(np.where(valid, I, -1), order, 1)

    def _hits(self, D, I, include) -> list[list[Hit]]:
        fids = np.unique(I[I >= 0])
        if not include:  # the fast path: ids only
            id_of = self.db.ids_of(fids)
            return [
                [Hit(id_of[f], s) for s, f in zip(drow, irow) if f in id_of]  # -1 and tombstones drop out
                for drow, irow in zip(D.tolist(), I.tolist())
            ]
        rows = self.db.rows(fids, ", ".join(("id",) + include))
        want_text, want_meta = "text" in include, "metadata" in include
        out = []
        for drow, irow in zip(D.tolist(), I.tolist()):
            hits = []
            for score, fid in zip(drow, irow):
                r = rows.get(fid)
                if r is None:  # -1 padding, or a tombstone FAISS still returned
                    continue
                hits.append(Hit(
                    r[0],
                    float(score),
                    r[1] if want_text else None,
                    _metadata(r[-1]) if want_meta else None,
                ))
            out.append(hits)
        return out

    # -- accounting ---------------------------------------------------------------------------
    @_reads
    def stats(self) -> dict:
        """Counts, settings, memory per vector (measured from the index), compression vs FP32,
        disk use by file and the trained scales/codebooks."""
        s, idx = self.settings, self._index
        out: dict[str, Any] = {"path": str(self.path), "count": len(self), "format_version": FORMAT_VERSION}
        if s is None:
            return out | {"dim": None, "trained": False}
        out |= {
            "dim": s.dim,
            "quantization": str(s.quantization),
            "index": str(s.index),
            "metric": s.metric,
            "model": s.model,
            "model_precision": s.model_precision,
            "query_model_precision": self.model_precision,
            "model_precision_mismatch": self.model_precision != s.model_precision,
            "rescore": s.rescore,
            "range_stat": s.range_stat if s.quantization.kind in ("int8", "int4") else None,
            "trained": self.is_trained,
            "pending_untrained": len(self._pending),
            "tombstones": len(idx.tombstones),
            "log_rows": self._log_rows,
            "fp32_bytes_per_vector": 4 * s.dim,
        }
        if self.is_trained and idx.ntotal:
            bpv = idx.bytes_per_vector()
            out |= {"bytes_per_vector": bpv, "compression": 4 * s.dim / bpv, "fixed_bytes": idx.fixed_bytes()}
        else:
            out |= {"bytes_per_vector": None, "compression": None, "fixed_bytes": None}
        index_file = self._meta_value("index_file")
        disk = {
            "index": (self.path / index_file).stat().st_size if index_file and (self.path / index_file).exists() else 0,
            "originals": self._originals.nbytes(),
            "sqlite": self.db.file_bytes(),
        }
        disk["total"] = sum(disk.values())
        out["disk_bytes"] = disk
        out["trained_parameters"] = idx.trained_parameters() if self.is_trained else {}
        return out

    def _meta_value(self, key):
        return self.db.get_settings().get(key)

    @_writes
    def close(self) -> None:
        """Checkpoint the index and release the store."""
        if self.read_only:
            self.db.close()
            return
        if self._lock is None:
            return
        try:
            if self._log_rows and self.is_trained:
                self.checkpoint()
        finally:
            self.db.close()
            self._release_lock()

