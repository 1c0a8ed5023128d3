"""Durability: the writer's lock, loading a store's index (a verified file plus the vector
log replayed after it), and checkpoints (saving the index and emptying the log).

The protocol. Each write is one catalog transaction that records the rows *and* their
vectors in the vector log. A checkpoint writes the index to a new file (fsync'd, named
with the log position it covers), then, in one transaction, names it in the catalog with
its size, a SHA-256 bound to the store's id, its count and largest id, and drops the log up
to that position; only then are older files removed. Loading reads the named file, checks
size and digest before FAISS parses a byte (count and ids after), and replays the log.
A crash at any point therefore leaves every id fully present or fully absent, and the
index agreeing with the rows.

Compaction renumbers the rows 0..n-1 by the same protocol: new index and originals files
beside the old ones, one transaction that renumbers the catalog and names the new files,
then the old files go (a reader holds its snapshot's originals open).
"""

from __future__ import annotations

import builtins
import fcntl
import hashlib
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .catalog import Catalog
from .config import Settings
from .errors import CorruptStore, InvalidInput, NotTrained, QvecError, SettingsConflict, StoreLocked, StoreNotFound
from .idmap import trim_heap
from .index import CHUNK, ExactBuffer, TrainedCodes, VectorIndex, empty_index
from .originals import Originals

__all__ = ["WriterLock", "Journal", "IndexFileGone", "CHECKPOINT_ROWS"]

LOCK_FILE = "write.lock"
ORIGINALS_FILE = "originals.f32"
DB_FILE = "qvec.sqlite"
# Save the index once the log holds this many rows (or a quarter of the index): replaying
# the log on open stays short, and a save's cost is spread over many writes.
CHECKPOINT_ROWS = 10_000
# Compact once this share of the ids are dead (at least COMPACT_MIN): deleted or replaced
# rows, whose ids are never reused, as HNSW tombstones and as originals rows and bitmap bits.
COMPACT_SHARE = 0.2
COMPACT_MIN = 1_000


class IndexFileGone(CorruptStore):
    """The index file the catalog names is missing (for a reader: a writer replaced it)."""


class WriterLock:
    """One writing process per store: an exclusive ``flock`` on ``write.lock``."""

    def __init__(self, path: Path, timeout: float | None):
        self._file = builtins.open(path / LOCK_FILE, "a+")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    self._file.close()
                    waited = f" (waited {timeout:g}s)" if timeout else ""
                    raise StoreLocked(f"{path} is open for writing elsewhere{waited}: close it there, "
                                      "open with read_only=True, or pass lock_timeout= to wait") from None
                time.sleep(0.05)

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def _digest(state: dict, data: bytes) -> str:
    """The index file's SHA-256, bound to its store: prefixed with the store's id (format-1
    stores, which have none, checked the plain SHA-256)."""
    h = hashlib.sha256(state.get("store_id", "").encode() if "index_digest" in state else b"")
    h.update(data)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """One store's write path and its index in memory: the settings, the index (an exact
    buffer until trained), the catalog's state, and the originals file. Every change goes
    through here, so the protocol above holds by construction."""

    def __init__(self, path: Path, catalog: Catalog, lock: WriterLock | None = None):
        self.path = path
        self.catalog = catalog
        self.lock = lock  # None for a reader, which holds a snapshot instead
        self.settings: Settings | None = None
        self.index: ExactBuffer | VectorIndex | None = None
        self.state: dict = {}
        self.log_rows = 0  # log entries the saved index does not cover
        self.live = 0  # rows stored (kept here: count(*) reads the whole table)
        self._originals: Originals | None = None
        self._originals_key: tuple[str, int] | None = None  # (file name, dim) it was opened for

    @classmethod
    def open(cls, path: Path, *, create: bool, read_only: bool, lock_timeout: float | None) -> Journal:
        """Lock (a writer) or snapshot (a reader) the store at ``path``, creating or upgrading
        its catalog as needed, and load it."""
        if path.exists() and not path.is_dir():
            raise StoreNotFound(f"{path} is a file, not a qvec store: pass a directory path")
        if not (path / DB_FILE).exists():
            if not create:
                raise StoreNotFound(f"no qvec store at {path}: create it with qvec.open(path) or `qvec build`")
            if path.exists() and any(path.iterdir()):
                raise StoreNotFound(f"{path} is a non-empty directory but not a qvec store: choose a new path")
            path.mkdir(parents=True, exist_ok=True)
        db = path / DB_FILE
        others = any(path.glob("index-*.faiss")) or any(path.glob("originals*.f32"))
        if db.exists() and db.stat().st_size == 0 and others:
            raise CorruptStore(f"{db} is empty, but {path} holds an index: the database was truncated; restore it "
                               "from a backup")
        lock = None if read_only else WriterLock(path, lock_timeout)
        journal = None
        try:
            journal = cls(path, Catalog(path / DB_FILE), lock)
            journal.catalog.open_format(create=create, lock=(lambda: WriterLock(path, 0).release) if read_only
                                        else None)
            journal.load()
            return journal
        except BaseException:
            if journal is not None:
                journal.close(save=False)
            elif lock is not None:
                lock.release()
            raise

    def close(self, *, save: bool = True) -> None:
        """Save what the log holds (a writer), and let go of the catalog and the lock."""
        try:
            if save and self.lock is not None and self.log_rows:
                self.checkpoint()
        finally:
            if self._originals is not None:
                self._originals.close()
            self.catalog.release_snapshot()
            self.catalog.close()
            if self.lock is not None:
                self.lock.release()
                self.lock = None

    @property
    def originals(self) -> Originals:
        """The originals file the state names (its name changes when ids are compacted)."""
        # a tuple compared, not a path joined: the join took 8 us of a re-ranked single query's 330
        key = (self.state.get("originals_file", ORIGINALS_FILE), self.settings.dim)
        if self._originals is None or self._originals_key != key:
            if self._originals is not None:
                self._originals.close()
            self._originals = Originals(self.path / key[0], key[1], precision=self.settings.originals)
            self._originals_key = key
        return self._originals

    def stored_vectors(self, fids: np.ndarray) -> np.ndarray:
        """The vectors of fids as stored: the FP32 originals when kept (rescore=True), the exact
        vectors while untrained, else decoded from the codes (lossy; binary and RaBitQ codes cannot be)."""
        if self.settings.rescore:
            return self.originals.read(fids)
        if not self.index.decodable:
            raise InvalidInput(f"{self.settings.codes} codes cannot be decoded to vectors: keep originals with "
                               "rescore=True")
        return self.index.reconstruct(fids).astype(np.float32, copy=False)

    def index_file_bytes(self) -> int:
        name = self.state.get("index_file")
        return (self.path / name).stat().st_size if name and (self.path / name).exists() else 0

    # -- loading ----------------------------------------------------------------------------
    def load(self, attempts: int = 5) -> None:
        """Settings, index and log as one state of the catalog, the log replayed. A reader
        holds that state as its snapshot; a writer's checkpoint may remove the index file a
        snapshot names before it is read: then the reader takes the newer snapshot."""
        for attempt in range(attempts):
            if self.lock is None:
                self.catalog.hold_snapshot()
            try:
                return self._load_state()
            except IndexFileGone:
                self.catalog.release_snapshot()
                if attempt == attempts - 1 or self.lock is not None:
                    raise
            except QvecError:
                raise
            except (KeyError, TypeError, ValueError) as e:  # a state value missing, or not what was written
                raise CorruptStore(f"{self.path}: the store's state is damaged ({type(e).__name__}: {e}); "
                                   "restore it from a backup") from None

    def reload(self) -> bool:
        """A reader: move the snapshot to what writers committed since; whether anything changed."""
        self.catalog.release_snapshot()
        if not self.catalog.changed_since_snapshot():
            self.catalog.hold_snapshot()
            return False
        self.load()
        return True

    def _load_state(self) -> None:
        state = self.catalog.state()
        self.state, self.index, self.log_rows = state, None, 0
        try:
            self.settings = Settings.from_json(state["config"]) if "config" in state else None
        except (QvecError, TypeError, KeyError, ValueError, AttributeError) as e:
            raise CorruptStore(f"{self.path}: the stored settings are not valid ({e}): the database was edited or "
                               "damaged; restore it from a backup") from None
        if self.settings is None:
            return
        name = state.get("index_file")
        index = self._read_index_file(self.settings, state) if name else empty_index(self.settings)
        index.tombstones = self.catalog.tombstones()
        originals = state.get("originals_file", ORIGINALS_FILE)
        if self.lock is not None:
            keep = (name, originals, originals + ".sum", (state.get("previous_codes") or {}).get("index_file"))
            for stray in [*self.path.glob("index-*.faiss*"), *self.path.glob("originals*.f32*")]:
                if stray.name not in keep:  # from a save that never committed
                    stray.unlink()
        elif self.settings.rescore and (self.path / originals).exists():
            try:  # a reader keeps the originals of its snapshot open: a compaction may remove them
                self.originals.pin()
            except FileNotFoundError:
                raise IndexFileGone(f"{self.path / originals} was replaced while opening") from None
        self.log_rows = self._replay(index, state.get("checkpoint_seq", 0))
        self.live = self.catalog.count()
        top = self.catalog.max_fid()
        if not isinstance(state.get("next_fid"), int) or top >= state["next_fid"]:
            raise CorruptStore(f"{self.path}: the id counter ({state.get('next_fid')!r}) is not past the stored rows "
                               f"(up to {top}): the database was edited or damaged; restore it from a backup")
        self.index = index

    def _read_index_file(self, settings: Settings, state: dict) -> VectorIndex:
        """The saved index, checked before FAISS parses a byte (size and a digest bound to this
        store), and after (the count and the fid range the checkpoint recorded)."""
        file = self.path / state["index_file"]
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            raise IndexFileGone(f"index file {file} is missing: restore it from a backup") from None
        if len(data) != state["index_size"] or _digest(state, data) != state.get("index_digest",
                                                                                state.get("index_sha256")):
            raise CorruptStore(f"index file {file} fails its checksum ({len(data)} bytes, expected "
                               f"{state['index_size']}): it was truncated or modified, or belongs to another "
                               "store; restore it from a backup")
        threshold = state.get("binary_threshold")
        threshold = None if threshold is None else np.asarray(threshold, dtype=np.float32)
        try:
            index = VectorIndex.deserialize(settings, data, threshold, state.get("index_fixed_bytes"))
        except ValueError as e:
            raise CorruptStore(f"index file {file} cannot be read: {e}; restore it from a backup") from None
        del data
        trim_heap()  # the file's bytes, and FAISS's copy of them, were freed in blocks glibc would keep
        if index.ntotal != state.get("index_ntotal", index.ntotal) or index.max_fid() > state.get(
                "index_max_fid", state["next_fid"] - 1):
            raise CorruptStore(f"index file {file} holds {index.ntotal} vectors up to id {index.max_fid()}, the "
                               f"store saved {state.get('index_ntotal')} up to {state.get('index_max_fid')}: it "
                               "belongs to another store; restore this store's file from a backup")
        return index

    def _replay(self, index, after: int) -> int:
        """Apply the logged adds and deletes made since the saved index was written."""
        fids: list[int] = []
        vecs: list[np.ndarray] = []
        n = 0

        def flush():
            if fids:
                index.add(np.stack(vecs), np.asarray(fids, dtype=np.int64))
                fids.clear()
                vecs.clear()

        dim = index.settings.dim
        for seq, op, fid, blob in self.catalog.log_entries(after):
            n += 1
            if op == "add" and isinstance(blob, bytes) and len(blob) == 4 * dim:
                fids.append(fid)
                vecs.append(np.frombuffer(blob, dtype=np.float32))
            elif op == "del":
                flush()
                index.remove([fid])
            else:  # never guess: an unknown entry replayed as something else would change data
                raise CorruptStore(f"{self.path}: vector log entry {seq} ({op!r}, {len(blob or b'')} bytes) is not "
                                   "an add or a delete of this store's vectors: restore the store from a backup")
        flush()
        return n

    # -- writing ----------------------------------------------------------------------------
    def write(self, settings: Settings, texts: list | None, x: np.ndarray, ids: list[str], metas: list,
              replaced: np.ndarray, own: list[bool]) -> np.ndarray:
        """One batch, atomically: originals first (rows past the last commit are overwritten by
        the next add), then one transaction for rows, log and state, then the index in RAM.
        The first batch of a new store fixes its ``settings`` in the same transaction. ``own``:
        per row, whether the caller gave its vector."""
        first_batch = self.settings is None
        n, first = len(ids), self.state["next_fid"]
        fids = np.arange(first, first + n, dtype=np.int64)
        if settings.rescore:
            originals = self.originals if self.settings else \
                Originals(self.path / ORIGINALS_FILE, settings.dim, precision=settings.originals)
            originals.write(first, x)
        index = empty_index(settings) if first_batch else self.index
        with self.catalog.transaction():
            if first_batch:
                self.catalog.put_state({"config": settings.to_json()})
            self._log_delete(index, replaced)
            self.catalog.insert(fids, ids, texts if texts is not None else [None] * n, metas, own)
            self.catalog.log("add", fids, x)
            self.catalog.put_state({"next_fid": first + n})
        self.settings, self.index = settings, index
        self.state["next_fid"] = first + n
        self.log_rows += len(replaced) + n
        self.live += n - len(replaced)
        index.remove(replaced)
        index.add(x, fids)
        return fids

    def delete(self, fids: np.ndarray) -> None:
        with self.catalog.transaction():
            self._log_delete(self.index, fids)
        self.log_rows += len(fids)
        self.live -= len(fids)
        self.index.remove(fids)

    def _log_delete(self, index, fids: np.ndarray) -> None:
        if len(fids):
            self.catalog.delete(fids)
            self.catalog.log("del", fids)
            if not index.removes_in_place:
                self.catalog.add_tombstones(fids)

    def adopt(self, codes: TrainedCodes, requested=None) -> None:
        """Train with another store's learned codes (``Store.train(codes=...)``); a new store
        takes their settings unless it was opened asking for others (``requested``)."""
        if self.settings is None:
            diffs = requested.conflicts(codes.settings) if requested is not None else []
            if diffs:
                raise SettingsConflict(f"{self.path} was opened with other settings than the trained codes': "
                                       f"{', '.join(diffs)}; open it without them, or use codes trained for them")
            self.fix_settings(codes.settings)
            if not codes.settings.needs_training:
                return  # fp32/fp16/bf16 flat, or HNSW over them: nothing was learned to share
        elif self.settings != codes.settings:
            raise SettingsConflict(f"{self.path} holds {self.settings.codes}/{self.settings.index} "
                                   f"{self.settings.dim}-dim codes, the trained codes are for {codes.settings.codes}/"
                                   f"{codes.settings.index} {codes.settings.dim}-dim: use codes trained for it")
        if self.index is not None and self.index.is_trained:
            raise NotTrained(f"{self.path} is already trained: use retrain() to learn its codes again")
        try:
            fresh = codes.fresh()
        except ValueError as e:
            raise InvalidInput(f"the trained codes cannot be read ({e})") from None
        self.train(trained=fresh)

    def fix_settings(self, settings: Settings) -> None:
        """Record a new store's settings before any row (``train(vectors)`` on an empty store)."""
        with self.catalog.transaction():
            self.catalog.put_state({"config": settings.to_json()})
        self.settings, self.index = settings, empty_index(settings)

    # -- policy -------------------------------------------------------------------------------
    def due(self) -> str | None:
        """"train", "compact", "checkpoint" or None: what the index needs after a write."""
        index = self.index
        if not index.is_trained:
            return "train" if index.ntotal >= self.settings.train_size else None
        dead = max(len(index.tombstones), self.state["next_fid"] - self.live)
        if dead > max(COMPACT_MIN, self.state["next_fid"] * COMPACT_SHARE):
            return "compact"
        if self.log_rows >= max(CHECKPOINT_ROWS, index.ntotal // 4):
            return "checkpoint"
        return None

    # -- saving -------------------------------------------------------------------------------
    def train(self, x: np.ndarray | None = None, trained: VectorIndex | None = None) -> None:
        """Learn the codes from ``x`` (default: the vectors waiting in the exact buffer), or take
        ``trained`` (an empty index trained elsewhere), move every waiting vector into them, and save."""
        waiting = self.index
        if trained is None:
            trained = VectorIndex.trained(self.settings, waiting.vectors() if x is None else x)
        trained.add(waiting.vectors(), waiting.fids())
        self.checkpoint(trained)

    def compact(self, vectors_of: Callable[[np.ndarray], np.ndarray]) -> None:
        """Renumber the live rows 0..n-1 and save: an index without tombstones or gaps, and
        (rescore=True) an originals file without the rows of deleted or replaced ids. The new
        files are written beside the old; one transaction renumbers the catalog and names
        them; only then are the old files removed (a reader keeps its own open)."""
        live = self.catalog.all_fids()
        new = np.arange(len(live), dtype=np.int64)
        rebuild = bool(self.index.tombstones)  # a graph drops deleted nodes only by being rebuilt
        fresh = self.index.emptied() if rebuild else self.index.renumbered(live)
        originals = None
        if self.settings.rescore:
            originals = Originals(self.path / f"originals-{uuid.uuid4().hex[:8]}.f32", self.settings.dim,
                                  precision=self.settings.originals)
        try:
            for a in range(0, len(live) if rebuild or originals else 0, CHUNK):
                x = vectors_of(live[a : a + CHUNK])
                if rebuild:
                    fresh.add(x, new[a : a + CHUNK])
                if originals is not None:
                    originals.write(a, x)
            extra = {"next_fid": len(live)} | ({"originals_file": originals.path.name} if originals else {})
            self.checkpoint(fresh, clear_tombstones=True, renumber=live, state=extra)
        except BaseException:
            if originals is not None and self.state.get("originals_file") != originals.path.name:
                for f in (originals.path, originals.sums):
                    f.unlink(missing_ok=True)
            raise

    def checkpoint(self, index: VectorIndex | None = None, *, clear_tombstones: bool = False,
                   renumber: np.ndarray | None = None, state: dict | None = None) -> None:
        """Save ``index`` (a newly trained or rebuilt one, or the current) as the store's index
        and empty the log it covers, atomically: until the commit, the store loads as before
        (the old file and the whole log), and the caller's index is not installed."""
        index = index if index is not None else self.index
        if index is None or not index.is_trained:
            return  # untrained vectors live in the log until training
        seq = self.catalog.last_seq()
        data = index.serialize()
        name = f"index-{seq:012d}-{uuid.uuid4().hex[:8]}.faiss"
        tmp = self.path / (name + ".tmp")
        try:
            with builtins.open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path / name)
            _fsync_dir(self.path)
        except BaseException:  # a full disk: no half-written file stays behind
            for leftover in (tmp, self.path / name):
                leftover.unlink(missing_ok=True)
            raise
        values = {"index_file": name, "index_size": len(data), "checkpoint_seq": seq, "index_ntotal": index.ntotal,
                  "index_max_fid": index.max_fid(), "index_digest": None, "index_fixed_bytes": index.known_fixed_bytes}
        values["index_digest"] = _digest(self.state | values, data)
        if index.threshold is not None:
            values["binary_threshold"] = index.threshold.tolist()
        values |= state or {}
        if renumber is not None and self.state.get("previous_codes"):
            values["previous_codes"] = None  # its fids are renumbered away: it cannot come back
        with self.catalog.transaction():
            if renumber is not None:
                self.catalog.renumber(renumber)
            self.catalog.put_state(values)
            self.catalog.delete_state(["index_sha256"])  # format 1's unbound checksum
            self.catalog.truncate_log(seq)
            if clear_tombstones:
                self.catalog.clear_tombstones()
        self.index, self.log_rows = index, 0
        self.state.update(values)
        keep = {name, self.state.get("originals_file", ORIGINALS_FILE),
                (self.state.get("previous_codes") or {}).get("index_file")}
        for old in [*self.path.glob("index-*.faiss"), *self.path.glob("originals*.f32*")]:
            if old.name not in keep and old.name.removesuffix(".sum") not in keep:
                old.unlink()
        self.catalog.reclaim()

    # -- changing the codes (qvec tune --apply / --rollback) ------------------------------------
    _SAVED = ("index_file", "index_size", "index_ntotal", "index_max_fid", "index_digest", "binary_threshold",
              "index_fixed_bytes")

    def swap_codes(self, index: VectorIndex, settings: Settings) -> None:
        """Make ``index`` (new codes for every live row, built beside the current ones) the
        store's index and ``settings`` its settings in one commit. The current index is
        saved first and kept, named in the state as ``previous_codes``, until the next swap
        or id compaction; a crash before the commit leaves the store as it was."""
        self.checkpoint()  # the current codes as they are now, log included: what a rollback restores
        previous = {k: self.state.get(k) for k in self._SAVED} | {"config": self.settings.to_json()} \
            if self.state.get("index_file") else None  # untrained before: no codes to go back to
        self.checkpoint(index, clear_tombstones=True, state={"config": settings.to_json(), "previous_codes": previous,
                                                             "binary_threshold": None if index.threshold is None
                                                             else index.threshold.tolist()})
        self.settings = settings
        self.index = index

    def read_previous_index(self, settings: Settings, previous: dict) -> VectorIndex:
        """The index ``swap_codes`` replaced, checked like the current one."""
        return self._read_index_file(settings, self.state | previous)

