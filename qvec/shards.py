"""Sharded stores: N complete qvec stores in one directory that share every trained
parameter (scales, codebooks, rotations, IVF centroids), named by a manifest written last.

    STORE/
      shards.json        the manifest: the shard directories, their settings, the codes' digest
      codes.qvec-codes   the trained codes every shard was given (``TrainedCodes.to_bytes``)
      shard-0000/ ...    each a qvec store of its own (its own lock, log, index, originals)

An id lives in shard ``shard_of(id, n)`` (a hash of its UTF-8 bytes), so writes, reads and
deletes go to one shard without asking the others; searches go to every shard and merge
their top k. The shards share their codes, so a shard scores a vector as one store holding
every vector would, and the merged top k is that store's top k: exactly for flat and IVF
indexes (IVF shards probe the same lists, since their centroids are the same); with
rescoring each shard re-ranks k × oversample candidates of its own, so the merged
candidates include the single store's. HNSW graphs are per shard (links follow the vectors).

Shards are searched in parallel, by threads when local, by Ray actors holding them when
opened with ``ray=`` (``qvec.distributed``). Each shard commits atomically like any store; a
batch spanning shards commits shard by shard, so a crash in between leaves some shards'
part committed (re-running the write completes it: ``add`` refuses nothing it was not
given, ``upsert`` is idempotent). ``delete`` checks that every id exists before deleting any.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from . import inputs
from .config import Requested, SearchParams, Settings
from .errors import (
    BuildIncomplete,
    CorruptStore,
    DuplicateId,
    IdNotFound,
    InvalidInput,
    MissingExtra,
    QvecError,
    ReadOnlyStore,
    SettingsConflict,
    StoreClosed,
)
from .hybrid import DEPTH, check_mode, checked, fuse, options
from .index import TrainedCodes
from .records import Hit, Stats

__all__ = ["ShardedStore", "shard_of", "is_sharded", "open_sharded", "write_manifest", "read_manifest",
           "shard_dirs", "MANIFEST", "BUILD_STATE", "CODES_FILE"]

MANIFEST = "shards.json"
BUILD_STATE = "build.json"  # present while a sharded build has not finished
CODES_FILE = "codes.qvec-codes"
MANIFEST_FORMAT = 1


def shard_of(id_: str, n: int) -> int:
    """The shard (0..n-1) that holds ``id_``: the same in every process and on every machine
    (a keyed-free BLAKE2b of the id's UTF-8 bytes, not Python's salted ``hash``)."""
    digest = hashlib.blake2b(id_.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n


def shard_dirs(n: int) -> list[str]:
    return [f"shard-{i:04d}" for i in range(n)]


def is_sharded(path: Path) -> bool:
    """Whether ``path`` is a sharded store, finished (a manifest) or being built."""
    return (path / MANIFEST).exists() or (path / BUILD_STATE).exists()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(path: Path, settings: Settings, n: int, codes: TrainedCodes) -> None:
    """Name the shards, last and atomically: until this file exists the store is not one."""
    manifest = {"format": MANIFEST_FORMAT, "shards": shard_dirs(n), "settings": settings.to_json(),
                "codes_file": CODES_FILE, "codes_digest": codes.digest, "router": "blake2b-64 mod n"}
    _write_atomic(path / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())


def read_manifest(path: Path) -> dict:
    if not (path / MANIFEST).exists():
        raise BuildIncomplete(f"{path}: its sharded build has not finished (no {MANIFEST}): run the same "
                              "`qvec build ... --shards N --ray` again to resume it")
    try:
        m = json.loads((path / MANIFEST).read_text())
        shards, settings = m["shards"], Settings.from_json(m["settings"])
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptStore(f"{path / MANIFEST} is not a manifest qvec wrote ({e}): restore it from a backup") from None
    if m.get("format") != MANIFEST_FORMAT:
        raise CorruptStore(f"{path / MANIFEST} has format {m.get('format')!r}, this qvec reads {MANIFEST_FORMAT}")
    missing = [s for s in shards if not (path / s).is_dir()]
    if missing:
        raise CorruptStore(f"{path}: shard(s) {', '.join(missing[:3])} named by {MANIFEST} are missing: restore "
                           "them from a backup")
    return m | {"settings": settings}


def open_sharded(path: Path, requested: Requested, open_store, *, embedder=None, read_only: bool = False,
                 lock_timeout: float | None = 0, model_precision: str | None = None, ray=None) -> ShardedStore:
    if not is_sharded(path):
        raise InvalidInput(f"{path} is not a sharded store: ray= opens one that qvec build --shards N made")
    m = read_manifest(path)
    settings: Settings = m["settings"]
    diffs = requested.conflicts(settings)
    if diffs:
        raise SettingsConflict(f"{path} was created with other settings: {', '.join(diffs)}; reopen without them")
    dirs = [path / s for s in m["shards"]]
    if ray is not None:
        shards = RayShards(dirs, open_store, read_only=read_only, lock_timeout=lock_timeout, address=ray)
    else:
        shards = LocalShards(dirs, open_store, read_only=read_only, lock_timeout=lock_timeout)
    return ShardedStore(path, settings, shards, embedder=embedder, read_only=read_only,
                        model_precision=model_precision)


class LocalShards:
    """Shards opened in this process, called in parallel by a thread each (FAISS and SQLite
    release the GIL while they work)."""

    def __init__(self, dirs: Sequence[Path], open_store, *, read_only: bool, lock_timeout: float | None):
        self.stores: list = []
        try:
            for d in dirs:
                self.stores.append(open_store(d, create=False, read_only=read_only, lock_timeout=lock_timeout))
        except BaseException:
            self.close()
            raise
        self._pool = ThreadPoolExecutor(max_workers=len(self.stores), thread_name_prefix="qvec-shard")

    def each(self, calls: Sequence[tuple[int, str, tuple, dict]]) -> list:
        """``store[i].method(*args, **kwargs)`` for each call, in parallel; results in order.
        The first failure is raised once every call has ended."""
        if len(calls) == 1:
            i, method, args, kwargs = calls[0]
            return [getattr(self.stores[i], method)(*args, **kwargs)]
        futures = [self._pool.submit(getattr(self.stores[i], method), *args, **kwargs) for i, method, args, kwargs
                   in calls]
        return [f.result() for f in futures]

    def close(self) -> None:
        for s in self.stores:
            s.close()
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=True)


def _merged(per_shard: Sequence[list[Hit]], k: int, lower_is_closer: bool) -> list[Hit]:
    """The top k of the shards' hit lists by score; ties go to the lower shard (the merge is
    stable), so every call gives the same order."""
    pick = heapq.nsmallest if lower_is_closer else heapq.nlargest
    sign = 1 if lower_is_closer else -1
    return [h for _, _, h in pick(k, ((h.score, sign * s, h) for s, hits in enumerate(per_shard) for h in hits),
                                  key=lambda t: (t[0], t[1]))]


class ShardedStore:
    """A sharded store with the Store's API. Use ``qvec.open`` on a directory that
    ``qvec build --shards N --ray`` (or ``qvec.distributed.build``) made."""

    def __init__(self, path: Path, settings: Settings, shards, *, embedder=None, read_only: bool = False,
                 model_precision: str | None = None):
        self.path, self.settings, self.read_only = path, settings, read_only
        self._shards = shards
        self._n = len(shards.stores) if hasattr(shards, "stores") else shards.n
        self._embedder, self._session_precision = embedder, model_precision
        self._closed = False

    # -- plumbing --------------------------------------------------------------------------
    @property
    def n_shards(self) -> int:
        return self._n

    def _open(self) -> None:
        if self._closed:
            raise StoreClosed(f"{self.path} is closed: open it again with qvec.open()")

    def _each(self, method: str, per_shard: dict[int, tuple[tuple, dict]] | None = None, *args, **kwargs) -> list:
        """``method`` on the shards named in ``per_shard`` (each with its own arguments), or
        on every shard with ``args``/``kwargs``; results in shard order."""
        self._open()
        if per_shard is None:
            per_shard = {i: (args, kwargs) for i in range(self._n)}
        return self._shards.each([(i, method, a, kw) for i, (a, kw) in sorted(per_shard.items())])

    def _route(self, ids: list[str]) -> dict[int, list[int]]:
        """Positions of ``ids`` by the shard each lives in."""
        out: dict[int, list[int]] = {}
        for pos, i in enumerate(ids):
            out.setdefault(shard_of(i, self._n), []).append(pos)
        return out

    def _each_own(self, method: str, ids: list[str], routes: dict[int, list[int]] | None = None) -> list:
        """``method(its ids)`` on each shard holding some of ``ids``; results in shard order."""
        routes = self._route(ids) if routes is None else routes
        return self._each(method, {s: (([ids[p] for p in pos],), {}) for s, pos in routes.items()})

    def _writable(self) -> None:
        if self.read_only:
            raise ReadOnlyStore(f"{self.path} was opened with read_only=True: open it without to write")

    @property
    def embedder(self):
        if self._embedder is None:
            from .embedder import SentenceTransformerEmbedder
            self._embedder = SentenceTransformerEmbedder(self.settings.model, self.model_precision)
        return self._embedder

    @property
    def loaded_embedder(self):
        return self._embedder

    @property
    def model_precision(self) -> str:
        if self._embedder is not None:
            return self._embedder.precision
        return self._session_precision or self.settings.model_precision

    @property
    def is_trained(self) -> bool:
        return True

    def _embed(self, texts: list[str]) -> np.ndarray:
        x = self.embedder.embed(list(texts))
        if x.shape[1] != self.settings.dim:
            raise InvalidInput(f"model {self.embedder.name!r} gives {x.shape[1]}-dim vectors, the store holds "
                               f"{self.settings.dim}-dim: open it with its own model ({self.settings.model!r})")
        return x

    # -- writes ----------------------------------------------------------------------------
    def add(self, texts=None, *, vectors=None, ids=None, metadata=None) -> list[str]:
        """As ``Store.add``: each row goes to the shard its id hashes to."""
        return self._write(texts, vectors, ids, metadata, upsert=False)

    def upsert(self, texts=None, *, vectors=None, ids=None, metadata=None) -> list[str]:
        return self._write(texts, vectors, ids, metadata, upsert=True)

    def _write(self, texts, vectors, ids, metadata, own=None, *, upsert: bool) -> list[str]:
        """``own``: per row, whether its vector is the caller's (else embedded here); None: all
        the caller's when ``vectors`` is given. Each shard records it, as a single store does."""
        self._open()
        self._writable()
        # the whole batch is checked before any shard writes a row of it
        texts, x, ids, metas = inputs.check_batch(texts, vectors, ids, metadata, self.settings.dim)
        own = own if own is not None else [x is not None] * len(ids)
        routes = self._route(ids)
        if not upsert:
            stored = set().union(set(), *self._each_own("existing", ids, routes))
            if stored:
                some = ", ".join(repr(i) for i in sorted(stored)[:3])
                raise DuplicateId(f"{len(stored)} id(s) exist already ({some}): use upsert() to replace them")
        if x is None:
            self.settings.check_embedding_precision(self.model_precision, self.path)
            x = self._embed(texts)
        self._each("_write", {s: (([texts[p] for p in pos] if texts is not None else None,),
                                  {"vectors": x[pos], "ids": [ids[p] for p in pos],
                                   "metadata": [json.loads(metas[p]) if metas[p] else {} for p in pos],
                                   "own": [own[p] for p in pos], "upsert": upsert})
                              for s, pos in routes.items()})
        return ids

    def delete(self, ids) -> int:
        """Delete rows by id, all or nothing: every id is checked in its shard before any goes."""
        self._open()
        self._writable()
        ids = list(dict.fromkeys(inputs.id_list(ids)))
        routes = self._route(ids)
        found = set().union(set(), *self._each_own("existing", ids, routes))
        missing = [i for i in ids if i not in found]
        if missing:
            raise IdNotFound(f"{len(missing)} id(s) not in the store: {', '.join(map(repr, missing[:3]))}")
        return sum(self._each_own("delete", ids, routes))

    def ingest(self, rows, *, batch_size: int = 256, upsert: bool = False, skip_existing: bool = False,
               on_batch: Callable[[int, int], None] | None = None) -> tuple[int, int]:
        """As ``Store.ingest``, one batch at a time across the shards."""
        from .pipeline import batched, own_vectors

        added = skipped = 0
        queued: set[str] = set()
        for batch in batched(rows, batch_size):
            n_read = len(batch)
            if skip_existing and not upsert:
                have = self.existing([r[0] for r in batch])
                batch = [r for r in batch if r[0] not in have and r[0] not in queued and not queued.add(r[0])]
            if batch:
                texts = [r[1] for r in batch]
                vectors, own = own_vectors(batch, texts, self._embed)
                self._write(texts, vectors, [r[0] for r in batch], [r[2] or {} for r in batch], own, upsert=upsert)
            added, skipped = added + len(batch), skipped + n_read - len(batch)
            if on_batch:
                on_batch(n_read, len(batch))
        return added, skipped

    def checkpoint(self, *, compact: bool = False) -> None:
        self._writable()
        self._each("checkpoint", compact=compact)

    def refresh(self) -> bool:
        return any(self._each("refresh"))

    def train(self, vectors=None, **_) -> None:
        """Nothing to do: a sharded store is trained when it is built."""

    def retrain(self) -> None:
        raise InvalidInput(f"{self.path} is sharded: retraining shard by shard would give the shards different "
                           "codes; rebuild it with `qvec build --shards N --ray` instead")

    def report(self, *args, **kwargs):
        raise InvalidInput(f"{self.path} is sharded: `qvec report` measures single stores; run it on a shard "
                           f"({self.path / shard_dirs(1)[0]})")

    tune = report

    # -- reads -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return sum(self._each("__len__"))

    def existing(self, ids) -> set[str]:
        return set().union(set(), *self._each_own("existing", list(ids)))

    def ids(self, where=None) -> list[str]:
        return [i for part in self._each("ids", None, where) for i in part]

    def get(self, ids):
        """As ``Store.get``: one Item per id asked, in order."""
        many = inputs.id_list(ids)
        out = self._gather("get", many)
        return out[0] if isinstance(ids, str) else out

    def vectors(self, ids) -> np.ndarray:
        many = inputs.id_list(ids)
        rows = self._gather("vectors", many)
        return np.stack(rows) if rows else np.zeros((0, self.settings.dim), np.float32)

    def _gather(self, method: str, ids: list[str]) -> list:
        """``method`` of each shard on its ids, put back in the order asked."""
        routes = self._route(ids)
        out: list[Any] = [None] * len(ids)
        results = self._each_own(method, ids, routes)
        for (_, pos), got in zip(sorted(routes.items()), results):
            for p, item in zip(pos, got):
                out[p] = item
        return out

    def search(self, query, k: int = 10, *, where=None, include=inputs.INCLUDE, mode="vector", **params) -> list[Hit]:
        if check_mode(mode) == "vector":
            params.pop("text", None)  # a vector query's text is for the keyword half only, as in Store.search
            return self.search_batch(inputs.one_query(query), k, where=where, include=include, **params)[0]
        return self._search_words(query, k, where=where, include=include, mode=mode, **options(params))

    def _search_words(self, query, k, *, where, include, mode, text, weights, rrf_k, params) -> list[Hit]:
        """Keyword and hybrid search over the shards: each shard's BM25 top list, merged by score,
        and for hybrid each shard's vector top list, merged likewise, fused by rank here. BM25
        uses each shard's own term statistics, as Elasticsearch's default search does: rows are
        spread by a hash of their id, so each shard's statistics are a sample of the whole's."""
        text, k, include, w, rrf_k = checked(query, k, include, mode, text, weights, rrf_k)
        SearchParams.parse(params)
        if mode == "keyword":
            return _merged(self._each("search", None, text, k, where=where, include=include, mode="keyword"), k, False)
        depth = max(DEPTH, 2 * k)
        xq = self._embed([query]) if isinstance(query, str) else inputs.as_matrix(query, self.settings.dim, "query")
        words = _merged(self._each("search", None, text, depth, where=where, include=(), mode="keyword"), depth, False)
        near = _merged([hits[0] for hits in self._each("search_batch", None, xq, depth, where=where, include=(),
                                                      **params)], depth, self.settings.lower_is_closer)
        ids = list(dict.fromkeys([h.id for h in near] + [h.id for h in words]))
        pos = {i: n for n, i in enumerate(ids)}
        scores, order = fuse([np.array([pos[h.id] for h in hits], np.int64) for hits in (near, words)], w, rrf_k, k)
        best = [ids[i] for i in order.tolist()]
        items = self.get(best) if include else [None] * len(best)
        return [Hit(i, float(sc), it.text if "text" in include else None,
                    it.metadata if "metadata" in include else None) for i, sc, it in zip(best, scores.tolist(), items)]

    @property
    def has_fulltext(self) -> bool:
        return all(self._each("__getattribute__", None, "has_fulltext"))

    def enable_fulltext(self) -> None:
        self._writable()
        self._each("enable_fulltext")

    def search_batch(self, queries, k: int = 10, *, where=None, include=inputs.INCLUDE, **params):
        """Every shard's top k for each query (re-ranked in the shard when it rescores), merged."""
        self._open()
        SearchParams.parse(params)  # checked once here, not once per shard
        k, include = inputs.check_k(k), inputs.check_include(include)
        if isinstance(queries, (list, tuple)) and queries and all(isinstance(q, str) for q in queries):
            xq = self._embed(inputs.query_texts(queries))
        else:
            xq = inputs.as_matrix(queries, self.settings.dim, "queries")
        parts = self._each("search_batch", None, xq, k, where=where, include=include, **params)
        return [_merged(hits, k, self.settings.lower_is_closer) for hits in zip(*parts)]

    # -- accounting ------------------------------------------------------------------------
    def stats(self) -> Stats:
        """The shards' accounting added up: counts, disk and RAM summed; bytes per vector
        over all vectors; fixed bytes summed (every shard holds its copy of the codes)."""
        parts: list[Stats] = self._each("stats")
        count = sum(p.count for p in parts)
        bpv = [(p.bytes_per_vector, p.count) for p in parts if p.bytes_per_vector]
        mean_bpv = sum(b * c for b, c in bpv) / sum(c for _, c in bpv) if bpv else None
        disk: dict[str, int] = {}
        for p in parts:
            for key, v in p.disk_bytes.items():
                disk[key] = disk.get(key, 0) + v
        add = {f: sum(getattr(p, f) for p in parts) for f in
               ("pending_untrained", "tombstones", "dead_ids", "dead_original_bytes", "log_rows", "id_map_bytes")}
        return dataclasses.replace(
            parts[0], path=str(self.path), count=count, bytes_per_vector=mean_bpv,
            compression=4 * self.settings.dim / mean_bpv if mean_bpv else None,
            fixed_bytes=sum(p.fixed_bytes or 0 for p in parts), disk_bytes=disk, shards=self._n,
            trained=all(p.trained for p in parts), **add)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._shards.close()

    def __enter__(self) -> ShardedStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        s = self.settings
        state = "closed" if self._closed else f"count={len(self)}"
        return f"<qvec.ShardedStore {str(self.path)!r} {s.codes}/{s.index} shards={self._n} {state}>"


# -- Ray: the connection, its errors, and shards held by actors ----------------------------------
def _ray():
    try:
        import ray
    except ImportError:
        raise MissingExtra('Ray is not installed: pip install "qvec[ray]"') from None
    return ray


def connect(address: str | None):
    """Ray, initialised: an existing connection as it is; ``None`` or "local" starts a Ray on
    this machine; anything else ("auto", "ray://host:10001") joins that cluster. Returns
    (ray, whether this call started it)."""
    ray = _ray()
    if ray.is_initialized():
        return ray, False
    kw = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    try:
        if address in (None, "local"):
            ray.init(address="local", **kw)
        else:
            ray.init(address=address, **kw)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise QvecError(f"cannot reach the Ray cluster at {address!r} ({str(e).splitlines()[0]}): start it with "
                        "`ray start --head`, or leave the address out to start one here") from None
    for name in ("ray", "ray.data"):  # its log lines are not this command's output: failures come back as QvecErrors
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return ray, True


def _unwrap(e: BaseException) -> QvecError:
    """A QvecError raised inside an actor or task, as itself; any other failure of Ray as one line."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, QvecError):
        return cause
    first = str(cause or e).strip().splitlines()
    return QvecError(f"a Ray worker failed ({type(cause or e).__name__}: {first[0] if first else ''}): the stores "
                     "keep what was committed; run the same command again")


# -- searching through actors ------------------------------------------------------------------------
class ShardActor:
    """A shard held open in a Ray actor; ``call`` runs one Store method on it."""

    def __init__(self, opener, path: str, read_only: bool, lock_timeout):
        self.store = opener(path, create=False, read_only=read_only, lock_timeout=lock_timeout)

    def call(self, method: str, *args, **kwargs):
        return getattr(self.store, method)(*args, **kwargs)

    def close(self) -> None:
        self.store.close()


class RayShards:
    """The shards of a store, each in a Ray actor: the calls of one fan-out run at once."""

    def __init__(self, dirs: Sequence[Path], opener, *, read_only: bool, lock_timeout, address: str):
        self.ray, self._started = connect(None if address in (True, "local") else address)
        actor = self.ray.remote(num_cpus=0, max_restarts=3, max_task_retries=3)(ShardActor)
        self.actors = [actor.remote(opener, str(d), read_only, lock_timeout) for d in dirs]
        self.n = len(self.actors)
        try:
            self.ray.get([a.call.remote("__len__") for a in self.actors])  # opened, or the error now
        except self.ray.exceptions.RayError as e:
            self.close()
            raise _unwrap(e) from None

    def each(self, calls):
        refs = [self.actors[i].call.remote(method, *args, **kwargs) for i, method, args, kwargs in calls]
        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayError as e:
            raise _unwrap(e) from None

    def close(self) -> None:
        try:
            self.ray.get([a.close.remote() for a in self.actors])
        except self.ray.exceptions.RayError:
            pass
        for a in self.actors:
            self.ray.kill(a)
        if self._started:
            self.ray.shutdown()

