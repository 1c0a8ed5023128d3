"""The fid → id map a search answers from without SQLite: every stored id, UTF-8 encoded and
NUL-terminated, end to end in one byte buffer, found by fid through an offsets array.

A store's search turns FAISS's fids into the user's ids. Asking SQLite for them cost as much
as the scan itself on the fast paths (HNSW, IVF, fast-scan PQ, binary: #13). Held as Python
strings the map would cost ~60 bytes a row, more than the PQ codes it serves; here it costs
the id's bytes + 1, 8 bytes of offset and 1 byte of liveness per fid. A batch's ids come out
of it in one gather and one ``decode().split("\\0")`` (ids never hold NUL: ``inputs`` refuses it).

The map mirrors the ``items`` table as committed: the catalog applies a transaction's
inserts and deletes once it commits (a rolled-back one never touches it), drops the map
when rows are renumbered, and when a reader moves to a newer snapshot.
"""

from __future__ import annotations

import ctypes

import numpy as np

_LIBC = None
SMALL_LOOKUP = 16  # fids looked up one by one below this many (see _lookup_few)


def _grown(a: np.ndarray, need: int) -> np.ndarray:
    """``a`` with room for ``need`` items (doubling, so that appends cost O(1) each)."""
    if need <= len(a):
        return a
    out = np.zeros(max(need, 2 * len(a)), dtype=a.dtype)
    out[: len(a)] = a
    return out


class IdMap:
    """fid → id for the live rows. Fids are appended in increasing order (a store's fids only
    grow until compaction renumbers them, and then the map is built again)."""

    def __init__(self, fids: np.ndarray, ids: list[str]):
        """From rows sorted by fid."""
        self._bytes = np.zeros(64, dtype=np.uint8)  # the ids, each followed by a NUL
        self._offsets = np.zeros(16, dtype=np.int64)  # fid f's id starts at _offsets[f], ends before _offsets[f+1]
        self._alive = np.zeros(15, dtype=bool)
        self._size = 0  # fids below this are covered
        self._viewed()
        self.add(np.asarray(fids, dtype=np.int64), ids)

    def add(self, fids: np.ndarray, ids: list[str]) -> None:
        """Rows with fids past every fid held, in increasing order."""
        fids = np.asarray(fids, dtype=np.int64)
        if not len(fids):
            return
        if fids[0] < self._size or (len(fids) > 1 and not (np.diff(fids) > 0).all()):
            raise ValueError("fids must be appended in increasing order")
        encoded = "\0".join(ids).encode() + b"\0"
        lengths = np.zeros(int(fids[-1]) + 1 - self._size, dtype=np.int64)  # fids skipped in between hold nothing
        lengths[fids - self._size] = [len(i.encode()) + 1 for i in ids] if not encoded.isascii() else \
            [len(i) + 1 for i in ids]
        top, start = int(fids[-1]) + 1, int(self._offsets[self._size])
        self._offsets = _grown(self._offsets, top + 1)
        self._alive = _grown(self._alive, top)
        self._bytes = _grown(self._bytes, start + len(encoded))
        np.cumsum(lengths, out=self._offsets[self._size + 1 : top + 1])
        self._offsets[self._size + 1 : top + 1] += start
        self._bytes[start : start + len(encoded)] = np.frombuffer(encoded, dtype=np.uint8)
        self._alive[fids] = True
        self._size = top
        self._viewed()

    def _viewed(self) -> None:
        """Memoryviews of the buffers for ``_lookup_few``, made again whenever a buffer is replaced."""
        self._views = memoryview(self._offsets), memoryview(self._alive), memoryview(self._bytes)

    def remove(self, fids: np.ndarray) -> None:
        fids = np.asarray(fids, dtype=np.int64)
        self._alive[fids[(fids >= 0) & (fids < self._size)]] = False

    def lookup(self, fids: np.ndarray) -> tuple[list[str | None], int]:
        """The id of each of ``fids`` in order, None where no live row has it; and how many have one."""
        fids = np.asarray(fids, dtype=np.int64)
        if len(fids) <= SMALL_LOOKUP:
            return self._lookup_few(fids.tolist())
        ok = (fids >= 0) & (fids < self._size)
        ok[ok] = self._alive[fids[ok]]
        live = fids[ok]
        if not len(live):
            return [None] * len(fids), 0
        starts = self._offsets[live]
        lengths = self._offsets[live + 1] - starts
        ends = np.cumsum(lengths)
        at = np.arange(ends[-1]) + np.repeat(starts - (ends - lengths), lengths)  # every byte of every id
        found = self._bytes[at].tobytes().decode().split("\0")[:-1]
        if len(live) == len(fids):
            return found, len(live)
        out: list[str | None] = [None] * len(fids)
        for i, idx in zip(found, np.flatnonzero(ok).tolist()):
            out[idx] = i
        return out, len(live)

    def _lookup_few(self, fids: list[int]) -> tuple[list[str | None], int]:
        """``lookup`` for a single query's hits: one slice per id, where the gather's dozen
        array operations cost 3x as much. Through memoryviews, whose items are Python ints
        and bools (numpy's scalars cost twice as much to make)."""
        offsets, alive, data = self._views
        size = self._size
        out: list[str | None] = []
        for f in fids:
            out.append(str(data[offsets[f] : offsets[f + 1] - 1], "utf-8") if 0 <= f < size and alive[f] else None)
        return out, len(out) - out.count(None)

    def ids_of(self, fids: np.ndarray) -> dict[int, str]:
        """fid → id for those of ``fids`` that are live rows (-1 and deleted fids left out)."""
        fids = np.asarray(fids, dtype=np.int64)
        ids, _ = self.lookup(fids)
        return {f: i for f, i in zip(fids.tolist(), ids) if i is not None}

    def shrink(self) -> None:
        """Drop the room to grow that appends left (up to half of each buffer after a build)."""
        end = int(self._offsets[self._size])
        self._bytes, self._offsets = self._bytes[:end].copy(), self._offsets[: self._size + 1].copy()
        self._alive = self._alive[: self._size].copy()
        self._viewed()

    def nbytes(self) -> int:
        """RAM the map holds (its buffers, including room to grow)."""
        return self._bytes.nbytes + self._offsets.nbytes + self._alive.nbytes


def trim_heap() -> None:
    """Give the C heap's freed pages back to the system (glibc's ``malloc_trim``; elsewhere
    nothing). Building the map of 10M rows or reading a large index frees hundreds of MB of
    small blocks that glibc keeps mapped, and a server's resident memory would count them."""
    global _LIBC
    try:
        _LIBC = _LIBC or ctypes.CDLL(None)
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
