"""The original vectors, kept on disk for rescoring: row ``fid`` of a flat file of
fixed-size rows. Rows are written before the SQLite commit that makes them visible, so a
committed row always has its original; rows past the last commit are overwritten by the
next add.

A row is kept at the store's originals precision (``rescore="fp32" | "fp16" | "int8"``):
FP32 as given (4 bytes a dimension); FP16 (2); or INT8 with the row's own scale, its
largest magnitude over 127, in a float32 before the codes (1 byte a dimension + 4). A
per-row scale follows each vector's own range, so no training is needed before the first
row is written, and rescoring's error stays far below the gap between neighbours
(the ``originals=`` rows of bench/results/{gcide,fortunes}/results.md). Rows are
padded to whole 32-bit words, which the checksum reads. The file keeps its historical
name, ``originals.f32``, at every precision.

Rescoring reads a few dozen scattered rows per query, through one memory map of the
file kept open. Before a scattered read the kernel is told which ranges are coming
(``MADV_WILLNEED``, one call per run of consecutive rows) so that a disk fetches them in
parallel: without it, each row missing from the page cache faulted in the kernel's
read-around window, one after another (``bench/rescore_cold.py`` measures both). Rows
are then gathered from the map in one vectorised pass, where ``pread`` took a second
call per run; fp32 rows being re-ranked are not gathered at all: FAISS scores each query's
candidates where they lie in the map (``rerank``). A batch whose candidates cover a good
part of the file skips the advice: the map's read-ahead fetches pages that are wanted anyway.

The advice only helps while rows are missing from the page cache, and a warm single query
spent half of its re-rank (40 of 80 us) on its 20-40 calls. So it is given while reads wait
for the disk: a new map starts advised, and the advice stops after ``ADVISE_HOLD`` reads in a
row that waited for nothing, a read of many rows counting as one per ``QUERY_ROWS`` (a batch
of 1,000 queries re-ranking 10 rows each paid ~10 ms of calls on its 10 ms of scoring, for as
many reads as 32 single queries); one read that waited starts it again. A read waited when it took
a major page fault (an unadvised row read from the disk: the thread's fault count tells) or
took longer than ``SLOW_READ_S`` plus ``ROW_READ_S`` a row (an advised read waits for the
reads the advice started, which count no fault). A read unadvised by mistake thus costs at
most one slow query before the advice is back.

Every row has a 32-bit checksum in a sidecar file (``originals.f32.sum``), written with
it and checked when it is read, so that a damaged row is a ``CorruptStore``, not a wrong
rescored hit: on every ``read``, and by ``rerank`` the first time this map reads the row
(it scores fp32 rows in place, and summing 40 candidates again per query cost more than
scoring them). The checksum is the sum of the row's 32-bit words, each times an odd weight,
modulo 2**32: any change confined to one word always changes it (an odd weight times a
nonzero difference below 2**32 is never a multiple of 2**32), and it costs two vectorised
passes over what was read (``bench/originals_checksum.py``). Rows written before the
sidecar existed (format-1 stores) read 0 there and are not checked.
"""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path

import numpy as np

from .errors import CorruptStore
from .idmap import trim_heap
from .index import top_k

try:
    import resource
except ImportError:  # not Unix
    resource = None

DENSE = 8  # a read of at least one row in DENSE of the file is not announced row by row
ADVISE_HOLD = 32  # reads advised after the last one that waited for the disk
QUERY_ROWS = 40  # a read of more rows counts as one per QUERY_ROWS (a query's k 10 × oversample 4)
# An advised read slower than SLOW_READ_S + ROW_READ_S per row waited for the disk: a warm 20-row
# re-rank takes ~10 us (up to ~5 us a row where its pages are touched and checksummed for the
# first time); one disk read takes ~0.1 ms on an SSD, 2-3 ms on this project's virtual disk.
SLOW_READ_S = 100e-6
ROW_READ_S = 5e-6

__all__ = ["Originals", "PRECISIONS", "rescore"]

PRECISIONS = ("fp32", "fp16", "int8")


def _clock() -> tuple[float, int]:
    """(now, the major page faults this thread has taken): what a read of the map waited for
    (no fault count where the platform has none: the time alone then tells)."""
    return time.perf_counter(), resource.getrusage(_RUSAGE).ru_majflt if resource is not None else 0


_RUSAGE = getattr(resource, "RUSAGE_THREAD", getattr(resource, "RUSAGE_SELF", 0))  # the thread's own count on Linux


def row_sums(x: np.ndarray) -> np.ndarray:
    """The checksum of each row: its 32-bit words times odd weights, summed modulo 2**32.
    ``x`` is float32 rows, or stored rows as bytes (a whole number of words each)."""
    words = np.ascontiguousarray(x).view(np.uint32)
    weights = np.arange(1, 2 * words.shape[1], 2, dtype=np.uint32)
    return np.einsum("ij,j->i", words, weights)  # wraps modulo 2**32; 4x faster than multiply-then-sum


def _pwrite_all(path: Path, data: memoryview, offset: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while len(data):  # one call writes at most ~2 GB on Linux
            n = os.pwrite(fd, data, offset)
            data, offset = data[n:], offset + n
        os.fsync(fd)
    finally:
        os.close(fd)


def row_bytes(dim: int, precision: str = "fp32") -> int:
    """Bytes one stored row takes at ``precision``, padded to whole 32-bit words."""
    raw = {"fp32": 4 * dim, "fp16": 2 * dim, "int8": 4 + dim}[precision]
    return -(-raw // 4) * 4


def encode_rows(x: np.ndarray, precision: str) -> np.ndarray:
    """float32 rows as stored rows: (n, row_bytes) uint8, or the float32 rows themselves."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if precision == "fp32":
        return x
    n, dim = x.shape
    out = np.zeros((n, row_bytes(dim, precision)), np.uint8)
    if precision == "fp16":
        out[:, : 2 * dim] = x.astype(np.float16).view(np.uint8)
        return out
    scale = np.abs(x).max(axis=1) / 127
    scale[scale == 0] = 1  # a zero row: any scale decodes it to zeros
    out[:, :4] = scale.astype(np.float32)[:, None].view(np.uint8)
    out[:, 4 : 4 + dim] = np.rint(x / scale[:, None]).astype(np.int8).view(np.uint8)
    return out


def decode_rows(raw: np.ndarray, dim: int, precision: str) -> np.ndarray:
    """Stored rows (n, row_bytes) uint8 back to (n, dim) float32."""
    if precision == "fp16":
        return raw[:, : 2 * dim].copy().view(np.float16).astype(np.float32)
    scale = raw[:, :4].copy().view(np.float32)
    return raw[:, 4 : 4 + dim].view(np.int8).astype(np.float32) * scale


RESCORE_BLOCK_BYTES = 64 << 20  # candidate vectors gathered at once while re-ranking
TRIM_AFTER_QUERIES = 64  # a re-ranked batch this large gives its freed heap back (0.3 ms after 1,000 queries)


def _misses_last(I: np.ndarray) -> np.ndarray:
    """Candidate fids with each row's -1s at its end, as FAISS returns them; FAISS's by-index
    top-k stops a row at its first -1."""
    valid = I >= 0
    if not (valid[:, 1:] & ~valid[:, :-1]).any():  # no candidate after a -1
        return I
    return np.take_along_axis(I, np.argsort(~valid, axis=1, kind="stable"), 1)


def rescore(xq: np.ndarray, I: np.ndarray, k: int, read, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank candidate fids ``I`` (-1: none) by exact scores against ``read(fids)``'s
    vectors, keeping k per query. Each distinct candidate is read once, and FAISS scores
    every query against its own candidates where they lie (no (nq, kc, dim) copy of them).
    Queries go a block at a time, so that the vectors read at once stay near
    ``RESCORE_BLOCK_BYTES`` however big the batch."""
    nq, kc = I.shape
    step = max(1, RESCORE_BLOCK_BYTES // max(1, kc * xq.shape[1] * 4))
    kk = min(k, kc)
    D_out = np.full((nq, kk), np.inf if metric == "l2" else -np.inf, np.float32)
    I_out = np.full((nq, kk), -1, np.int64)
    I = _misses_last(I)
    for a in range(0, nq, step):
        Ib = I[a : a + step]
        valid = Ib >= 0
        flat, at = np.unique(Ib[valid], return_inverse=True)
        if not len(flat):
            continue
        pos = np.full(Ib.shape, -1, np.int64)  # each candidate's row in what was read
        pos[valid] = at.reshape(-1)
        D, P = top_k(xq[a : a + step], np.ascontiguousarray(read(flat), dtype=np.float32), pos, k, metric)
        D_out[a : a + step], I_out[a : a + step] = D, np.where(P >= 0, flat[np.maximum(P, 0)], -1)
    if nq >= TRIM_AFTER_QUERIES:  # the blocks read were freed in pieces glibc keeps (~60 MB per 1,000 queries)
        trim_heap()
    return D_out, I_out


class Originals:
    def __init__(self, path: Path, dim: int, *, precision: str = "fp32", verify: bool = True):
        self.path = Path(path)
        self.sums = self.path.with_name(self.path.name + ".sum")
        self.dim = dim
        self.precision = precision
        self.row_bytes = row_bytes(dim, precision)
        self.verify = verify  # False only to measure what checking costs
        self._sum_map: np.ndarray | None = None  # the sidecar, mapped once and again only as it grows
        # the rows mapped once, and again only as the file grows or is replaced (a new map every
        # read faults every page in): (the rows' view, per row whether its checksum was checked
        # (rerank), (device, inode) of the file), replaced as one so that searches sharing the
        # map never see a view longer than its bits
        self._map_state: tuple[np.ndarray, np.ndarray, tuple[int, int]] | None = None
        self._mm: mmap.mmap | None = None  # the map behind the view
        self._fds: tuple[int, int] | None = None  # (rows, sums) held open by pin()
        self._advise_left = ADVISE_HOLD  # reads still to advise (module docstring); a new map starts cold

    def pin(self) -> None:
        """Hold both files open, so that this object reads them even after a writer's id
        compaction replaced and removed them (a reader's snapshot still names them)."""
        if self._fds is None:
            data = os.open(self.path, os.O_RDONLY)
            try:
                sums = os.open(self.sums, os.O_RDONLY)
            except FileNotFoundError:  # written before checksums existed: nothing to check
                sums = -1
            self._fds = (data, sums)

    def close(self) -> None:
        if self._fds is not None:
            for fd in self._fds:
                if fd >= 0:
                    os.close(fd)
            self._fds, self._sum_map = None, None
        self._map_state = self._mm = None  # the map closes with its last view

    def write(self, first_fid: int, x: np.ndarray) -> None:
        """Rows first_fid, first_fid+1, ... (an add's fids are consecutive) and their
        checksums, each fsync'd."""
        x = encode_rows(x, self.precision)
        _pwrite_all(self.path, memoryview(x).cast("B"), first_fid * self.row_bytes)
        _pwrite_all(self.sums, memoryview(row_sums(x)).cast("B"), first_fid * 4)

    def read(self, fids: np.ndarray) -> np.ndarray:
        """Rows fids (any order, repeats allowed) as an (n, dim) float32 array."""
        fids = np.asarray(fids, dtype=np.int64).reshape(-1)
        rows, inverse = np.unique(fids, return_inverse=True)
        if not len(rows):
            return np.zeros((0, self.dim), np.float32)
        view = self._view(int(rows[0]), int(rows[-1]))
        if self._advising(len(rows), len(view)):
            self._advise(rows)
        start = _clock()
        out = view[rows]  # a quarter faster than np.take(..., out=) here
        self._waited(start, len(rows))
        if self.verify:
            self._check(rows, out)
        if self.precision != "fp32":
            out = decode_rows(out, self.dim, self.precision)
        if len(rows) == len(fids) and np.array_equal(rows, fids):
            return out  # asked in order without repeats: no copy
        return out[inverse.reshape(-1)]

    def rerank(self, xq: np.ndarray, I: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """``rescore()`` from these rows: candidate fids ``I`` (-1: none) re-ranked by exact scores,
        k per query. FP32 rows are scored where they lie in the map, with no copy: FAISS reads
        each query's candidates from the page cache and keeps its top k. Each row's checksum is
        checked the first time it is read through the map (the map's checked bits), where
        ``read`` copied every candidate and summed it again for each query."""
        if self.precision != "fp32" or not I.size:
            return rescore(xq, I, k, self.read, metric)
        lo = int(I.min())
        if lo >= 0:  # every candidate a row (the common case): no -1 to move last, no mask to apply
            asked, hi = I.reshape(-1), int(I.max())
        else:
            I = _misses_last(I)
            asked = I[I >= 0]
            if not len(asked):
                return rescore(xq, I, k, self.read, metric)
            lo, hi = int(asked.min()), int(asked.max())
        view, verified = self._mapping(lo, hi)
        if self._advising(len(asked), len(view)):  # as read() does: a cold disk fetches them at once
            self._advise(np.unique(asked))
        start = _clock()  # the first touch of each row, for the advice: the check, else the scoring
        if self.verify:
            unchecked = asked[~verified[asked]]
            if len(unchecked):
                rows = np.unique(unchecked)
                self._check(rows, view[rows])
                verified[rows] = True
        out = top_k(xq, view, I, k, metric)
        self._waited(start, len(asked))
        return out

    def _check(self, rows: np.ndarray, out: np.ndarray) -> None:
        """CorruptStore unless each row read matches its recorded checksum (0: none recorded)."""
        sums = self._sum_map
        if sums is None or len(sums) <= rows[-1]:
            sums = self._sum_map = self._map_sums()
        recorded = np.zeros(len(rows), np.uint32)
        known = rows < len(sums)
        recorded[known] = sums[rows[known]]
        bad = np.flatnonzero((recorded != 0) & (row_sums(out) != recorded))
        if len(bad):
            raise CorruptStore(f"{self.path} row {int(rows[bad[0]])} fails its checksum ({len(bad)} of {len(rows)} "
                               "rows read): the file was modified or damaged; restore it from a backup")

    def _map_sums(self) -> np.ndarray:
        """The checksums as they are now: the pinned file, else the one at the path."""
        fd = self._fds[1] if self._fds is not None else None
        if fd == -1:
            return np.zeros(0, np.uint32)
        if fd is None:
            if not self.sums.exists():
                return np.zeros(0, np.uint32)
            fd = os.open(self.sums, os.O_RDONLY)
        try:
            n = os.fstat(fd).st_size // 4
            return np.frombuffer(mmap.mmap(fd, n * 4, access=mmap.ACCESS_READ), np.uint32) if n else \
                np.zeros(0, np.uint32)
        finally:
            if self._fds is None:
                os.close(fd)  # the map keeps the file

    def _view(self, lo: int, hi: int) -> np.ndarray:
        """The rows as stored, (rows, row_bytes) uint8 or (rows, dim) float32, through the map
        kept open (made again when the file grew, or was replaced by a compaction); a
        CorruptStore unless rows lo..hi are in the file."""
        return self._mapping(lo, hi)[0]

    def _mapping(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """``_view`` and the map's checked bits, as one: searches share the map, and a search
        that maps the grown file again must not hand another the new view with the old bits."""
        pinned = self._fds is not None
        try:  # the size checked on every read: a map read past a truncated file's end is a SIGBUS
            st = os.fstat(self._fds[0]) if pinned else os.stat(self.path)
        except FileNotFoundError:
            st = None
        stored = self._holding(st, lo, hi)
        state, file = self._map_state, (st.st_dev, st.st_ino)
        if state is not None and len(state[0]) >= stored and file == state[2]:
            return state[0], state[1]
        fd = self._fds[0] if pinned else os.open(self.path, os.O_RDONLY)
        try:
            st = os.fstat(fd)  # the file opened, which a writer may have replaced since the stat
            stored, file = self._holding(st, lo, hi), (st.st_dev, st.st_ino)
            dtype = np.float32 if self.precision == "fp32" else np.uint8
            mm = mmap.mmap(fd, stored * self.row_bytes, access=mmap.ACCESS_READ)
            view = np.frombuffer(mm, dtype).reshape(stored, -1)
        finally:
            if not pinned:
                os.close(fd)  # the map keeps the file
        verified = np.zeros(stored, bool)  # a grown file's rows checked already stay checked
        if state is not None and file == state[2]:
            verified[: min(len(state[1]), stored)] = state[1][:stored]
        self._mm, self._map_state = mm, (view, verified, file)
        self._advise_left = ADVISE_HOLD  # a new map's pages start cold
        return view, verified

    def _holding(self, st: os.stat_result | None, lo: int, hi: int) -> int:
        """The rows a file of this stat holds (0 for none); a CorruptStore unless rows lo..hi are among them."""
        stored = st.st_size // self.row_bytes if st else 0
        if hi >= stored or lo < 0:
            raise CorruptStore(
                f"{self.path} holds {stored} vectors but vector {hi} was asked for: "
                "the originals file is truncated; rebuild the store"
            )
        return stored

    def _advising(self, rows: int, stored: int) -> bool:
        """Whether a read of ``rows`` of the ``stored`` is announced: while reads wait for the disk
        (module docstring), and only where scattered: a read of one row in DENSE or more is not, the
        map's read-ahead fetches pages that are wanted anyway."""
        return self._advise_left > 0 and rows * DENSE < stored and hasattr(mmap, "MADV_WILLNEED")

    def _waited(self, start: tuple[float, int], rows: int) -> None:
        """Learn from a read of ``rows`` begun at ``start`` (``_clock()``) whether reads wait for the disk."""
        now, faults = _clock()
        if faults > start[1] or now - start[0] > SLOW_READ_S + ROW_READ_S * rows:
            self._advise_left = ADVISE_HOLD
        elif self._advise_left:
            self._advise_left = max(0, self._advise_left - max(1, rows // QUERY_ROWS))

    def _advise(self, rows: np.ndarray) -> None:
        """Announce scattered rows (sorted, unique) to the kernel, one ``MADV_WILLNEED`` per run
        of consecutive rows, so that those missing from the page cache are fetched in parallel
        (pages already cached cost a call each)."""
        rb, page = self.row_bytes, mmap.PAGESIZE
        starts = np.flatnonzero(np.diff(rows, prepend=-2) != 1)  # runs of consecutive rows
        ends = np.append(starts[1:], len(rows))
        first = rows[starts] * rb
        lo = first - first % page
        for a, n in zip(lo.tolist(), (first + (ends - starts) * rb - lo).tolist()):
            self._mm.madvise(mmap.MADV_WILLNEED, a, n)

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in (self.path, self.sums) if p.exists())
