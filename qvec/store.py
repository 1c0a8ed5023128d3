"""The store: a directory holding the catalog (SQLite: rows, metadata, state, the vector log),
the index file, and optionally the original vectors for rescoring.

``Store`` is the facade, and the only module that joins the index, the catalog and the
embedder: it opens and locks, plans queries (exact over a small filter's rows, the index,
or the index re-ranked from originals) and builds hits. Writes and durability are the
journal's, SQL the catalog's, FAISS the index module's, checking input ``inputs``'.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from . import hybrid, inputs, pipeline, shards
from . import tune as tune_mod
from .catalog import FORMAT_VERSION
from .config import Requested, SearchParams
from .embedder import DEFAULT_MODEL, Embedder, SentenceTransformerEmbedder, check_model_precision
from .errors import (
    CheckpointDeferred,
    DimensionMismatch,
    NotTrained,
    ReadOnlyStore,
    SettingsConflict,
    StorageError,
)
from .guard import holding, reads, storage_errors, writes
from .index import TrainedCodes, VectorIndex, exact_search, search_rescored
from .journal import Journal
from .records import Hit, Item, Stats, hits, metadata_of, one_query_hits
from .rwlock import ReadWriteLock

__all__ = ["open", "Store", "Hit", "Item", "Stats", "FORMAT_VERSION"]

# A filter matching at most this many rows is scored exactly over just those rows:
# faster than walking a graph or probing lists for a handful, and never misses one.
EXACT_FILTER_ROWS = 4096


def open(path: str | os.PathLike, *, quantization: str | None = None, index: str | None = None,
         metric: str | None = None, model: str | None = None, rescore: bool | str | None = None, dim: int | None = None,
         range_stat: str | None = None, model_precision: str | None = None, embedder: Embedder | None = None,
         create: bool = True, read_only: bool = False, lock_timeout: float | None = 0, ray: str | None = None):
    """Create the store at ``path``, or reopen it. Every argument is checked here.

    Defaults when creating: quantization="int8", index="flat", metric="cosine",
    model="all-MiniLM-L6-v2", rescore=False; dim comes from the first vectors added (or the
    model). ``rescore=True`` keeps the original vectors on disk (FP32) and re-ranks each
    search's ``k × oversample`` candidates by their exact scores; ``rescore="fp16"`` or
    ``"int8"`` keeps them at that precision instead (half or a quarter of the disk).
    When reopening, settings come from the store; one given that differs is a
    ``SettingsConflict``. ``embedder`` injects any ``qvec.embedder.Embedder``.

    One process at a time may open a store for writing: another ``open`` gets ``StoreLocked``
    at once, or after waiting up to ``lock_timeout`` seconds (``None``: as long as it takes).
    ``model_precision`` ("fp32" or "int8") is the precision the embedding model runs at; a new
    store records it, and texts added later must be embedded at it. Queries may use another.
    ``read_only=True`` opens a snapshot beside a writer, any number of times: every read
    (search, get, ids, len, vectors, stats) sees the store as committed when it opened (or
    last called ``refresh()``), and nothing after.

    A sharded store (``qvec build --shards N``) opens as a ``ShardedStore``, searched by threads
    or, with ``ray="auto"``/``"ray://host:10001"``/``"local"``, by Ray actors holding the shards.
    """
    path = inputs.check_path(path)
    inputs.check_embedder(embedder)  # before its name is read
    requested = Requested.parse(quantization=quantization, index=index, metric=metric, rescore=rescore, dim=dim,
                                model=embedder.name if embedder is not None and model is None else model,
                                range_stat=range_stat)
    inputs.check_lock_timeout(lock_timeout)
    if model_precision is not None:
        check_model_precision(model_precision)
    if shards.is_sharded(Path(path)) or ray is not None:
        return shards.open_sharded(Path(path), requested, open, embedder=embedder, read_only=read_only,
                                   lock_timeout=lock_timeout, model_precision=model_precision, ray=ray)
    return Store(Path(path), requested, embedder, create=create and not read_only, read_only=read_only,
                 lock_timeout=lock_timeout, model_precision=model_precision)


class Store(tune_mod.Tuning, hybrid.Hybrid):
    """A compressed vector store. Use ``qvec.open``; close it (or use ``with``)."""

    def __init__(self, path: Path, requested: Requested, embedder: Embedder | None, *, create: bool,
                 read_only: bool, lock_timeout: float | None, model_precision: str | None):
        self.path, self.read_only = path, read_only
        self._requested, self._embedder, self._session_precision = requested, embedder, model_precision
        self._rw = ReadWriteLock()  # searches in parallel; writes one at a time, alone
        self._closed = False
        with storage_errors(path):
            self.journal = Journal.open(path, create=create, read_only=read_only, lock_timeout=lock_timeout)
        self.catalog = self.journal.catalog
        diffs = requested.conflicts(self.settings) if self.settings else []
        if diffs:
            self.journal.close(save=False)
            raise SettingsConflict(f"{path} was created with other settings: {', '.join(diffs)}; "
                                   "reopen without them (`qvec tune STORE --recall R --apply` re-encodes a store's "
                                   "codes), or build a new store")

    @writes
    def refresh(self) -> bool:
        """Read-only stores: move the snapshot to what writers committed since. Returns
        whether anything changed. (A writer's own store is always current.)"""
        return self.read_only and self.journal.reload()

    # -- properties ---------------------------------------------------------------------------
    @property
    def settings(self):
        return self.journal.settings

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            name = self.settings.model if self.settings else self._requested.given.get("model", DEFAULT_MODEL)
            self._embedder = SentenceTransformerEmbedder(name or DEFAULT_MODEL, self.model_precision)
        return self._embedder

    @property
    def loaded_embedder(self) -> Embedder | None:
        """The embedder if this Store was given one or has used one; never loads a model."""
        return self._embedder

    @property
    def model_precision(self) -> str:
        """The precision this Store embeds texts at: as opened, else the store's own."""
        if self._embedder is not None:
            return self._embedder.precision
        return self._session_precision or (self.settings.model_precision if self.settings else "fp32")

    @property
    def is_trained(self) -> bool:
        return self.journal.index is not None and self.journal.index.is_trained

    @reads
    def __len__(self) -> int:
        return self.journal.live

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        s = self.settings
        if self._closed:
            return f"<qvec.Store {str(self.path)!r} closed>"
        return f"<qvec.Store {str(self.path)!r} {f'{s.codes}/{s.index}' if s else 'empty'} count={len(self)}>"

    # -- writes -------------------------------------------------------------------------------
    def add(self, texts=None, *, vectors=None, ids=None, metadata=None) -> list[str]:
        """Add texts (embedded with the store's model), vectors (n, dim), or texts with their own
        vectors (nothing embedded). Returns the ids; an existing id is a ``DuplicateId``."""
        return self._write(texts, vectors, ids, metadata, upsert=False)

    def upsert(self, texts=None, *, vectors=None, ids=None, metadata=None) -> list[str]:
        """Like ``add``, but rows whose id exists are replaced."""
        return self._write(texts, vectors, ids, metadata, upsert=True)

    def _write(self, texts, vectors, ids, metadata, own=None, *, upsert: bool) -> list[str]:
        return self._commit(self._prepare(texts, vectors, ids, metadata, own, upsert=upsert), upsert)

    def _prepare(self, texts, vectors, ids, metadata, own: list[bool] | None = None, *, upsert: bool):
        """Check one batch before any work is spent on it, then embed its texts outside the lock
        (searches go on): (texts, vectors, ids, metadata JSON, ``own``: per row, the caller's vector?)."""
        self._writable()
        with holding(self, "shared"):  # its id check reads SQLite: not in the middle of another thread's write
            s = self.settings
            texts, x, ids, metas = inputs.check_batch(texts, vectors, ids, metadata,
                                                      s.dim if s else self._requested.given.get("dim"))
            if x is None and s is not None:
                s.check_embedding_precision(self.model_precision, self.path)
            if not upsert:
                self.catalog.refuse_existing(ids)  # before embedding: a duplicate should not cost the model's time
        return texts, x if x is not None else self._embed(texts), ids, metas, own or [x is not None] * len(ids)

    def _writable(self) -> None:
        if self.read_only:
            raise ReadOnlyStore(f"{self.path} was opened with read_only=True: open it without to write")

    @writes
    def _commit(self, batch, upsert: bool) -> list[str]:
        texts, x, ids, metas, own = batch
        # checked again under the write lock: another thread may have added these ids since _prepare
        if not upsert:
            self.catalog.refuse_existing(ids)
        existing = self.catalog.fids_of(ids) if upsert else {}
        s = self.settings or self._requested.settings(x.shape[1], self.model_precision, DEFAULT_MODEL)
        if x.shape[1] != s.dim:
            raise DimensionMismatch(f"store holds {s.dim}-dim vectors, got {x.shape[1]}")
        replaced = np.fromiter(existing.values(), dtype=np.int64, count=len(existing))
        self.journal.write(s, texts, inputs.normalised(x, s.metric), ids, metas, replaced, own)
        try:
            self._maintain()
        except (StorageError, RuntimeError) as e:  # the batch is committed (in the log): saving the index can wait
            warnings.warn(f"the batch is stored, but training or saving the index failed ({e}); it is tried "
                          "again after the next write, or by checkpoint()", CheckpointDeferred, stacklevel=3)
        return ids

    @writes
    def delete(self, ids) -> int:
        """Delete rows by id; all or nothing: an unknown id is an ``IdNotFound``."""
        self._writable()
        fids = np.unique(np.array([f for _, f in self.catalog.lookup(ids, self.catalog.fids_of)], dtype=np.int64))
        if len(fids):
            self.journal.delete(fids)
            self._maintain()
        return len(fids)

    def ingest(self, rows: Iterable[tuple], *, batch_size: int = 256, upsert: bool = False,
               skip_existing: bool = False, on_batch: Callable[[int, int], None] | None = None) -> tuple[int, int]:
        """Add ``(id, text, metadata)`` rows (or ``(id, text, metadata, vector)``: the row's own
        embedding) from any iterable, reading, embedding and writing batches at once
        (``qvec.pipeline``); each batch is one transaction, as ``add`` commits.
        ``skip_existing`` skips stored ids (``upsert`` replaces them); ``on_batch(read, added)``
        follows each write. Returns (added, skipped)."""
        self._writable()
        return pipeline.ingest(rows, batch_size=batch_size, on_batch=on_batch,
                               existing=self.existing if skip_existing and not upsert else None,
                               prepare=lambda *batch: self._prepare(*batch, upsert=upsert),
                               write=lambda batch: self._commit(batch, upsert), embed=self._embed)

    # -- training and saving --------------------------------------------------------------------
    def _maintain(self) -> None:
        """Train once enough vectors wait; checkpoint when the log has grown; compact HNSW."""
        due = self.journal.due()
        if due == "train":
            self.train()
        elif due:
            self.checkpoint(compact=due == "compact")

    @writes
    def train(self, vectors=None, *, codes: TrainedCodes | None = None) -> None:
        """Train the codes (scales, codebooks, centroids) on ``vectors``, the waiting vectors, or
        take another store's ``trained_codes()``; then index what waits. See also ``retrain()``."""
        self._writable()
        if codes is not None:
            return self.journal.adopt(codes, self._requested)
        if self.settings is None and vectors is None:
            raise NotTrained("the store is empty: add vectors first, or pass vectors to train on")
        if self.is_trained:
            if vectors is not None and self.settings.needs_training:
                raise NotTrained(f"{self.path} is already trained: use retrain() to learn its codes again")
            return  # nothing to learn (fp32/fp16/bf16 flat or hnsw), or done already
        if vectors is not None:
            x = inputs.as_matrix(vectors, self.settings.dim if self.settings else self._requested.given.get("dim"))
            if self.settings is None:
                self.journal.fix_settings(self._requested.settings(x.shape[1], self.model_precision, DEFAULT_MODEL))
            x = inputs.normalised(x, self.settings.metric)
        self.journal.train(None if vectors is None else x)

    @reads
    def trained_codes(self) -> TrainedCodes:
        """What training learned, without the vectors: for another store's ``train(codes=)``."""
        if self.is_trained:
            return TrainedCodes.of(self.journal.index)
        raise NotTrained(f"{self.path} is not trained yet: add more vectors or call train()")

    @writes
    def retrain(self) -> None:
        """Learn the codes again from every stored vector and re-encode the store, atomically:
        the new index replaces the old in one commit, and a crash before it leaves the old
        codes. Vectors come from the originals (rescore=True), else from the stored texts embedded
        again (refused for rows with none, or with the caller's vector); untrained: what it holds."""
        self._writable()
        if self.settings is None or not self.settings.needs_training:
            return  # nothing stored, or nothing to learn
        live = self.catalog.all_fids()
        fresh = VectorIndex.trained_from(self.settings, live, self._full_vectors())
        self.journal.checkpoint(fresh, clear_tombstones=True)

    def _full_vectors(self) -> Callable[[np.ndarray], np.ndarray]:
        """Where the stored rows' full-precision vectors can be had again."""
        s = self.settings
        if s.rescore or not self.is_trained:  # the originals, or the exact vectors waiting for training
            return self.journal.stored_vectors
        why = self.catalog.not_from_texts()
        if why:
            raise NotTrained(f"{self.path} keeps no originals (rescore=False) and {why}: rebuild the store from your "
                             "vectors, with rescore=True to allow retraining")
        s.check_embedding_precision(self.model_precision, self.path)
        return lambda f: inputs.normalised(self._embed(self.catalog.texts(f)), s.metric)

    @writes
    def checkpoint(self, *, compact: bool = False) -> None:
        """Save the index to a new file and empty the log (done on close and as the log grows).
        ``compact`` also renumbers the rows densely: an HNSW graph without its deleted vectors,
        originals without the rows of deleted or replaced ids (done when a fifth are dead)."""
        self._writable()
        if compact and self.is_trained:
            self.journal.compact(self.journal.stored_vectors)
        else:
            self.journal.checkpoint()

    # -- reads --------------------------------------------------------------------------------
    @reads
    def get(self, ids):
        """The stored row(s): ``get("a")`` → Item, ``get(["a", "b"])`` → [Item, Item], one per id asked."""
        rows = self.catalog.lookup(ids, self.catalog.rows_by_id)
        items = [Item(i, text, metadata_of(meta)) for i, (_, text, meta) in rows]
        return items[0] if isinstance(ids, str) else items

    @reads
    def existing(self, ids: Iterable[str]) -> set[str]:
        """Which of ids are stored."""
        return set(self.catalog.fids_of(list(ids)))

    @reads
    def ids(self, where=None) -> list[str]:
        return self.catalog.ids() if where is None else self.catalog.ids_of(self.catalog.where_fids(where))

    @reads
    def vectors(self, ids) -> np.ndarray:
        """The stored vectors for ids, (n, dim) float32: the FP32 originals when the store
        keeps them (rescore=True) or while untrained, else decoded from the codes (lossy)."""
        fids = np.array([f for _, f in self.catalog.lookup(ids, self.catalog.fids_of)], dtype=np.int64)
        return self.journal.stored_vectors(fids)

    def search(self, query, k: int = 10, *, where=None, include=inputs.INCLUDE, mode="vector", **params) -> list[Hit]:
        """The k nearest rows to a text or a vector, best first; ``mode="keyword"`` or ``"hybrid"``
        (``text=``, ``weights=``, ``rrf_k=``): BM25 over the texts, alone or fused (``qvec.hybrid``)."""
        if hybrid.check_mode(mode) != "vector":
            return self._search_words(query, k, where=where, include=include, mode=mode, **hybrid.options(params))
        params.pop("text", None)  # a vector query's text is for the keyword half only
        if type(query) is np.ndarray and where is None and not include and \
                (found := self._search_one(query, k, params)) is not None:
            return found
        return self.search_batch(inputs.one_query(query), k, where=where, include=include, **params)[0]

    def _search_one(self, q: np.ndarray, k, params: dict) -> list[Hit] | None:
        """search() of one vector for ids only, the latency path: search_batch's checks and steps in
        fewer calls. None where the query needs search_batch's (another dtype or shape, NaN, ...)."""
        p, k = SearchParams.parse(params), inputs.check_k(k)
        with holding(self, "shared"):
            x = self.settings and inputs.one_vector(q, self.settings.dim, self.settings.metric)
            return None if x is None else one_query_hits(*self._plan(x, k, None, p), self.catalog.id_map().lookup)

    def search_batch(self, queries, k: int = 10, *, where=None, include=inputs.INCLUDE, **params):
        """search() for a list of strings or an (nq, dim) array: one list of Hits per query.
        params: nprobe (ivf), ef_search (hnsw), oversample (rescore: candidates = k × oversample)."""
        p, k, include = SearchParams.parse(params), inputs.check_k(k), inputs.check_include(include)
        if isinstance(queries, (list, tuple)) and queries and all(isinstance(q, str) for q in queries):
            queries = inputs.query_texts(queries)
            xq = self._embed(queries) if self.settings else np.zeros((len(queries), 1), np.float32)  # lock-free
        else:
            xq = inputs.as_matrix(queries, self.settings.dim if self.settings else None, "queries", copy=False)
        with holding(self, "shared"):
            allowed = None if where is None else self.catalog.where_fids(where)  # checks it on an empty store too
            if self.settings is None or (allowed is not None and not len(allowed)):
                return [[] for _ in range(len(xq))]
            D, I = self._plan(inputs.normalised(xq, self.settings.metric), k, allowed, p)
            return hits(D, I, include, self.catalog)

    def _plan(self, xq, k, allowed, p: SearchParams):
        """Exact over a small filter's rows; else the index, re-ranked from originals when kept."""
        s, index = self.settings, self.journal.index
        k = min(k, max(1, index.ntotal))  # k past the count asks for every row, and no room beyond
        if allowed is not None and len(allowed) <= EXACT_FILTER_ROWS:
            if s.rescore:
                return exact_search(xq, self.journal.originals.read(allowed), allowed, k, s.metric)
            if index.decodable and not index.is_ivf:
                return exact_search(xq, index.reconstruct(allowed), allowed, k, s.metric)
            if index.is_ivf:
                p = SearchParams(nprobe=index.nlist, oversample=p.oversample)  # every list, only allowed codes scored
        rerank = self.journal.originals.rerank if s.rescore and index.is_trained else None
        return search_rescored(index, xq, k, rerank=rerank, metric=s.metric, oversample=p.oversample or s.oversample,
                               allowed=allowed, params=p)

    def _embed(self, texts) -> np.ndarray:
        x = self.embedder.embed(list(texts))
        if self.settings is not None and x.shape[1] != self.settings.dim:
            raise DimensionMismatch(f"model {self.embedder.name!r} gives {x.shape[1]}-dim vectors, the store holds "
                                    f"{self.settings.dim}-dim: open it with its own model ({self.settings.model!r})")
        return x

    # -- accounting ---------------------------------------------------------------------------
    @reads
    def stats(self) -> Stats:
        """Counts, settings, memory per vector (measured from the index as last saved: O(1)),
        compression vs FP32, disk use by file and the trained scales/codebooks."""
        j = self.journal
        disk = {"index": j.index_file_bytes(), "originals": j.originals.nbytes() if j.settings else 0,
                "sqlite": self.catalog.file_bytes()}
        saved = (j.state.get("index_size", 0), j.state.get("index_ntotal", 0)) if j.state.get("index_file") else None
        return Stats.of(self.path, j.live, FORMAT_VERSION, j.settings, j.index, j.log_rows, disk,
                        self.model_precision, j.state.get("next_fid", 0), saved, self.catalog.id_map_bytes())

    def close(self) -> None:
        """Checkpoint the index and release the store. Closing twice does nothing."""
        with self._rw.exclusive():
            if not self._closed:
                self._closed = True
                with storage_errors(self.path):
                    self.journal.close()
