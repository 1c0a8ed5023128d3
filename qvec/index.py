"""The FAISS side of a store, and the only module besides ``metrics`` that imports faiss.

Two indexes stand behind one interface (``add``, ``remove``, ``search`` with an ID filter,
``reconstruct``, ``fids``), so the store never branches on whether codes are trained:
``ExactBuffer`` holds the FP32 vectors that wait for training and searches them exactly;
``VectorIndex`` holds trained codes. Exact top-k over given rows (``exact_search``) and
the top k of each query's candidates by exact scores (``top_k``, which re-ranking from the
originals calls) live here too.

Every vector carries its store-wide integer id (``fid``). Fids are assigned by the store,
only ever increase, and are never reused.

Choices the FAISS API forces, in one place:
- Flat PQ/OPQ is a single-list IVF (``IVF1,PQm``, see ``config.Flat``): the same codes, but
  IVF search honours an ID selector and flat ``IndexPQ`` does not.
- HNSW cannot remove vectors, and fast-scan PQ lists are damaged by FAISS's removal (see
  ``Settings.removes_in_place``): removed ids become tombstones that the search excludes
  through its ID selector, until the store compacts (rebuilds) the index.
- Fast-scan IVF lists interleave the codes of 32 vectors per block: reading one vector's
  code goes through FAISS's code packer, and decoding is done here (``_decode_fast_scan``).
- RaBitQ and fast-scan PQ have no HNSW form that searches by inner product (``config.check_pair``).
- Binary codes (1 bit/dimension, thresholded at each dimension's training median) are
  searched by Hamming distance in ``IndexBinaryFlat``; FAISS's binary IVF/HNSW cannot filter.
- Reading vectors back never changes the index: IVF's direct map (fid → list position) is
  not switched on, since doing so under concurrent readers crashed the process; the wanted
  codes are found by scanning the lists' ids and decoded with ``sa_decode``.
- FAISS's k-means writes "WARNING clustering N points to K centroids" straight to the
  process's stderr, once per sub-quantizer (48 lines for PQ48), whatever its verbosity:
  training runs with fd 2 caught (``_faiss_stderr``), those lines go to the ``qvec.faiss``
  logger (``qvec --verbose`` shows them; qvec's own one-line warning says the same), and
  anything else written to stderr meanwhile is passed on.
- IVF fast-scan PQ lists are scanned query by query into a heap (FAISS's ``implem`` 10,
  ``FAST_SCAN_IMPLEM``), where FAISS itself picks 12 (queries grouped, a heap) or, for k > 20,
  13 (grouped, a reservoir): on 100K GCIDE vectors its choice took 3-11% longer for a batch
  and 10-26% longer for a single query at every nprobe and k measured, for the same results
  up to ties (bench/results/fast_scan_implem.md). It is a field of the index, not a search
  parameter: set once, when the index object is made or read.
- IVF lists of int8 codes scored by inner product (cosine, ip) are scanned as uniform
  codes (``FoldedScan``): FAISS decodes each component as ``vmin[d] + (c + 0.5) * step[d]``,
  loading two per-dimension scales for every eight codes, where ``q · x`` is the same as
  ``q · vmin + (q * step) · (c + 0.5)``. So the query is multiplied by the steps once, a second
  IVF index object reads the same lists with one scale for all dimensions (the query's own),
  and ``q · vmin`` is added back: the same scores up to float rounding (~4e-7) and the same
  hits, for batches 1.13-1.42× as fast as FAISS's own scan of int8/ivf1024 at nprobe 16-128
  in three runs (bench/results/folded_scan.md). A single query is scanned folded from 64 lists
  probed (``FOLD_FEW_NPROBE``): there it gained 6-27% in each run, below that as little as
  nothing (the coarse search and the query's preparation weigh more). L2 does not fold (the
  steps weight each dimension's squared difference).
- Flat scalar-quantized codes (fp16, bf16, int8, int4) searched by many queries at once are
  decoded a block at a time and scored by a matrix product (``_search_decoded``). FAISS
  scans them query by query, ~5× slower for a batch of 1,000 queries than its FP32 flat
  index, which runs as one BLAS matrix product. Decoding every code costs about as much
  as scanning for 16-32 queries, hence the threshold (measured on 100K 384-d vectors).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import faiss
import numpy as np

from .config import HNSW, IVF, SQ, RaBitQ, SearchParams, Settings
from .errors import CorruptStore, NotTrained
from .inputs import aligned_empty

__all__ = ["VectorIndex", "ExactBuffer", "FoldedScan", "TrainedCodes", "empty_index", "exact_search",
           "search_rescored", "top_k", "new_index", "one_faiss_thread", "FAISS_VERSION"]

# Fewer queries than this search on one FAISS thread: FAISS splits a batch by query, so
# more threads only add their start-up, and their spinning, which on a loaded machine
# took an HNSW query from 0.16 ms to 12 ms (FAISS's own advice: one thread for nq=1).
FEW_QUERIES = 4
DECODED_SEARCH_MIN_QUERIES = 64  # batches this large score decoded blocks by GEMM
FAST_SCAN_IMPLEM = 10  # IVF fast-scan: scan query by query into a heap (module docstring)
FOLD_FEW_NPROBE = 64  # fewer than FEW_QUERIES IVF int8 queries are scanned folded from this many lists
LAYOUT_MIN_ROWS = 4096  # an HNSW add of this many rows or more lays them out by k-means cluster
DECODE_BLOCK = 4096  # vectors decoded at a time: 6 MB of FP32 at 384 dimensions
TRAIN_SAMPLE = 200_000  # vectors training reads at most (a random sample of the rest)
CHUNK = 65_536  # rows fetched (read, decoded or embedded) at a time when an index is rebuilt
_NO_PARAMS = SearchParams()

_RANGE_STATS = {
    "minmax": faiss.ScalarQuantizer.RS_minmax,
    "meanstd": faiss.ScalarQuantizer.RS_meanstd,
    "quantiles": faiss.ScalarQuantizer.RS_quantiles,
    "optim": faiss.ScalarQuantizer.RS_optim,
}
# rangestat_arg per statistic: std multiples for meanstd, the clipped tail for quantiles.
_RANGE_ARGS = {"minmax": 0.0, "meanstd": 3.0, "quantiles": 0.001, "optim": 0.0}



def _empty(nq: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((nq, 0), np.float32), np.zeros((nq, 0), np.int64)


FAISS_VERSION = faiss.__version__


@contextmanager
def one_faiss_thread():
    """FAISS's OpenMP on one thread for the calling thread (a per-thread setting: others keep
    theirs). Its threads spin between calls and take the cores from BLAS or from the caller."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


def _faiss_metric(metric: str) -> int:
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def _unwrap(index):
    """The innermost index (below IDMap and pre-transforms)."""
    index = faiss.downcast_index(index)
    while isinstance(index, (faiss.IndexIDMap, faiss.IndexPreTransform)):
        index = faiss.downcast_index(index.index)
    return index


def _scalar_quantizer(index):
    inner = _unwrap(index)
    if isinstance(inner, faiss.IndexHNSW):
        inner = faiss.downcast_index(inner.storage)
    return getattr(inner, "sq", None)


def _bitmap(fids: np.ndarray) -> np.ndarray:
    """Bit i set for each fid i, in the little-endian bit order IDSelectorBitmap reads."""
    mask = np.zeros(int(fids.max()) + 1 if len(fids) else 0, dtype=bool)
    mask[fids] = True
    return np.packbits(mask, bitorder="little")


def _training_sample(n: int) -> np.ndarray:
    """TRAIN_SAMPLE of n row positions, ascending (seeded: the same rows every time)."""
    return np.sort(np.random.default_rng(0).choice(n, TRAIN_SAMPLE, replace=False))


def _list_codes(ivf, no: int, n: int, at: np.ndarray) -> np.ndarray:
    """The codes at positions ``at`` of IVF list ``no`` (of ``n`` entries), one row each.
    Fast-scan lists interleave 32 vectors' codes per block: those go through FAISS's packer."""
    nbytes = int(ivf.code_size)
    if not isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.BlockInvertedLists):
        return faiss.rev_swig_ptr(ivf.invlists.get_codes(no), n * nbytes).reshape(n, nbytes)[at]
    packer = ivf.get_CodePacker()
    blocks = ivf.invlists.get_codes(no)
    out = np.zeros((len(at), nbytes), np.uint8)
    for row, offset in enumerate(at.tolist()):
        packer.unpack_1_c(blocks, offset, faiss.swig_ptr(out[row]))
    return out


def _decode_fast_scan(outer, sa_codes: np.ndarray) -> np.ndarray:
    """``outer.sa_decode(sa_codes)`` for IVF fast-scan PQ, which FAISS 1.15 cannot run on an
    index it deserialised (a segfault): the PQ's centroids, plus the list's centroid when
    codes are residuals, then any pre-transform (OPQ) undone."""
    ivf = faiss.downcast_index(faiss.extract_index_ivf(outer))
    coarse = ivf.coarse_code_size()
    x = ivf.pq.decode(np.ascontiguousarray(sa_codes[:, coarse:]))
    if ivf.by_residual:
        lists = np.zeros((len(sa_codes), 8), np.uint8)
        lists[:, :coarse] = sa_codes[:, :coarse]
        x += ivf.quantizer.reconstruct_batch(lists.view(np.int64).ravel())
    if isinstance(outer, faiss.IndexPreTransform):
        for i in reversed(range(outer.chain.size())):
            x = faiss.downcast_VectorTransform(outer.chain.at(i)).reverse_transform(x)
    return x


def _query_bits(index) -> None:
    """RaBitQ quantizes queries to ``qb`` bits; FAISS's default of 4 loses recall@10 at 1 bit
    (0.656 vs 0.661 with 8 on fortunes) and 8 costs ~20% more scan time. It is a field of
    the index, not only a search parameter, because IndexIDMap drops subclass parameters."""
    inner = _unwrap(index)
    if hasattr(inner, "qb"):
        inner.qb = 8


def _scan_order(index, implem: int = FAST_SCAN_IMPLEM) -> int | None:
    """Set how an IVF fast-scan index scans its lists (FAISS's ``implem``; 0: FAISS's own
    choice); returns the setting it replaced, None for every other index."""
    inner = _unwrap(index)
    if not isinstance(inner, faiss.IndexIVFFastScan) or inner.nlist < 2:  # flat fast-scan: one list, no gain
        return None
    was, inner.implem = int(inner.implem), implem
    return was


class FoldedScan:
    """An IVF int8 index's lists read as uniform codes, for inner-product queries folded
    with the per-dimension scales (module docstring): ``search`` returns what the index's own
    search returns, up to float rounding. It reads the index's lists and coarse quantizer in
    place (no copy), so adds and removes show at once; it holds the index, which must outlive it."""

    # 4-bit codes fold the same way (QT_4bit_uniform, 15 levels), but unpacking the nibbles is
    # their cost: a folded int4/ivf1024 batch took as long as FAISS's own, and single queries longer.
    _UNIFORM = {faiss.ScalarQuantizer.QT_8bit: (faiss.ScalarQuantizer.QT_8bit_uniform, 255)}

    @classmethod
    def of(cls, index) -> FoldedScan | None:
        """The folded scan of ``index``, or None where it does not apply (not IVF over per-dimension
        int8 codes, or not inner product)."""
        ivf = _unwrap(index)
        if not isinstance(ivf, faiss.IndexIVFScalarQuantizer) or ivf.metric_type != faiss.METRIC_INNER_PRODUCT \
                or not ivf.is_trained or int(ivf.sq.qtype) not in cls._UNIFORM:
            return None
        return cls(index, ivf)

    def __init__(self, index, ivf):
        self.owner = index  # the Python object that owns the lists and quantizer the view reads
        qtype, levels = self._UNIFORM[int(ivf.sq.qtype)]
        vmin, vdiff = faiss.vector_to_array(ivf.sq.trained).reshape(2, -1)
        self.ivf, self.vmin, self.step = ivf, vmin.copy(), (vdiff / levels).astype(np.float32)
        view = faiss.IndexIVFScalarQuantizer(ivf.quantizer, ivf.d, ivf.nlist, qtype, faiss.METRIC_INNER_PRODUCT,
                                             ivf.by_residual)
        faiss.copy_array_to_vector(np.array([0, levels], np.float32), view.sq.trained)  # decodes c + 0.5
        view.replace_invlists(ivf.invlists, False)  # the index's own lists, not owned
        view.is_trained = True
        view.parallel_mode = 3  # search_preassigned splits the batch over threads (mode 0 would not)
        self.view = view

    def search(self, xq: np.ndarray, k: int, fp) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, fids) of unit or raw float32 queries, with FAISS search parameters ``fp``
        (nprobe, an ID selector)."""
        n, nprobe = len(xq), int(fp.nprobe)
        Dq, Iq = self.ivf.quantizer.search(xq, nprobe)  # the lists to probe, as the index's own search finds them
        folded = aligned_empty(xq.shape)
        np.multiply(xq, self.step, out=folded)
        D, I = np.empty((n, k), np.float32), np.empty((n, k), np.int64)
        self.view.ntotal = self.ivf.ntotal
        self.view.search_preassigned_c(n, faiss.swig_ptr(folded), k, faiss.swig_ptr(Iq), faiss.swig_ptr(Dq),
                                       faiss.swig_ptr(D), faiss.swig_ptr(I), False, fp)
        D += np.einsum("ij,j->i", xq, self.vmin)[:, None]  # q · vmin, without BLAS (its threads spin beside FAISS's)
        return D, I


def _by_cluster(x: np.ndarray, metric: str) -> np.ndarray:
    """An order of the rows of ``x`` in which the rows of one k-means cluster (about 128 rows)
    follow each other. An HNSW graph walk goes from a node to its neighbours, which are near it
    in space; laid out so, their codes and links are near in memory too, and the walk waits less
    for them: on 100K GCIDE definitions a single int8/hnsw32 query's walk ran 1.12-1.15x as fast
    on FAISS alone (bench/results/hnsw_walk.md), 1.05x through the store with its re-rank and
    hits (hnsw_layout.md). The clustering takes about 2 s per 100K rows here, which the graph's
    own build, walking the same layout, more than won back (44 -> 40 s and 41 -> 39 s). The
    rows are copied once in the new order (the batch's size again, for the add)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], min(1024, len(x) // 128), niter=8, seed=1, spherical=metric != "l2",
                      max_points_per_centroid=32)
    km.cp.min_points_per_centroid = 1  # a sample of 32 per centroid is enough to group rows: no warning
    km.train(x)
    _, cluster = km.index.search(x, 1)
    return np.argsort(cluster[:, 0], kind="stable")


def _not_indexed(fids: np.ndarray, held: np.ndarray) -> CorruptStore:
    missing = np.setdiff1d(fids, held)
    return CorruptStore(f"{len(missing)} row(s) of the database are not in the index (id {int(missing[0])}): "
                        "the store is damaged; restore it from a backup")


# -- exact scoring ------------------------------------------------------------------------------
def exact_search(xq: np.ndarray, x: np.ndarray, fids: np.ndarray, k: int, metric: str):
    """Exact top-k (scores, fids) of the queries over the rows ``x`` (whose fids are given)."""
    if not len(fids):
        return _empty(len(xq))
    D, pos = faiss.knn(xq, np.ascontiguousarray(x, dtype=np.float32), min(k, len(fids)),
                       metric=_faiss_metric(metric))
    return D, np.where(pos >= 0, np.asarray(fids)[np.maximum(pos, 0)], -1)


def top_k(xq: np.ndarray, rows: np.ndarray, I: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Each query's k best of its candidates ``I`` (indexes into the float32 ``rows``; -1s last),
    by exact scores, in one FAISS call that scores them where they lie and keeps a heap."""
    nq, kc = I.shape
    kk = min(k, kc)
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    I = np.ascontiguousarray(I, dtype=np.int64)
    D_out, I_out = np.empty((nq, kk), np.float32), np.empty((nq, kk), np.int64)
    knn = faiss.knn_L2sqr_by_idx if metric == "l2" else faiss.knn_inner_products_by_idx
    knn(faiss.swig_ptr(xq), faiss.swig_ptr(rows), faiss.swig_ptr(I), xq.shape[1], nq, len(rows), kc, kk,
        faiss.swig_ptr(D_out), faiss.swig_ptr(I_out), kc)
    D_out[I_out < 0] = np.inf if metric == "l2" else -np.inf  # FAISS leaves ±FLT_MAX where a query had fewer
    return D_out, I_out


def search_rescored(index, xq: np.ndarray, k: int, *, rerank, metric: str, oversample: int,
                    allowed: np.ndarray | None = None, params: SearchParams | None = None):
    """``index``'s top k; with ``rerank`` (``Originals.rerank``), its top ``k × oversample``
    re-ranked by exact scores to k."""
    if rerank is None:
        return index.search(xq, k, allowed=allowed, params=params)
    _, I = index.search(xq, k * oversample, allowed=allowed, params=params)
    return rerank(xq, I, k, metric)


# -- the untrained side ----------------------------------------------------------------------------
class ExactBuffer:
    """Vectors waiting for training, searched exactly (FP32): the index a store has before
    its codes are trained."""

    is_trained = False
    removes_in_place = True
    decodable = True
    is_ivf = False

    def __init__(self, settings: Settings):
        self.settings = settings
        self.tombstones: set[int] = set()
        self._rows: dict[int, np.ndarray] = {}

    @property
    def ntotal(self) -> int:
        return len(self._rows)

    def add(self, x: np.ndarray, fids: np.ndarray) -> None:
        self._rows.update(zip(np.asarray(fids).tolist(), np.asarray(x, dtype=np.float32)))

    def remove(self, fids) -> None:
        for f in np.asarray(list(fids), dtype=np.int64).tolist():
            self._rows.pop(f, None)

    def fids(self) -> np.ndarray:
        return np.fromiter(self._rows, dtype=np.int64, count=len(self._rows))

    def vectors(self) -> np.ndarray:
        return np.stack(list(self._rows.values())) if self._rows else np.zeros((0, self.settings.dim), np.float32)

    def reconstruct(self, fids: np.ndarray) -> np.ndarray:
        if any(int(f) not in self._rows for f in fids):
            raise _not_indexed(fids, self.fids())
        return self._stack(fids)

    def _stack(self, fids: np.ndarray) -> np.ndarray:
        return np.stack([self._rows[int(f)] for f in fids]) if len(fids) else np.zeros((0, self.settings.dim))

    def search(self, xq, k, *, allowed=None, params: SearchParams | None = None):
        fids = self.fids()
        if allowed is not None:
            fids = np.intersect1d(fids, allowed)
        return exact_search(xq, self._stack(fids), fids, k, self.settings.metric)  # fids are its own: no check


# -- the trained side -------------------------------------------------------------------------------
def empty_index(settings: Settings) -> ExactBuffer | VectorIndex:
    """What a store with no vectors yet starts from: an exact buffer until its codes are
    trained, or straight away the index for codes that learn nothing (fp32/fp16/bf16 flat, HNSW)."""
    if settings.needs_training:
        return ExactBuffer(settings)
    return VectorIndex(settings, new_index(settings))


def new_index(settings: Settings):
    """An empty, untrained FAISS index for ``settings``."""
    s = settings
    if s.binary:
        return faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(s.dim))
    index = faiss.index_factory(s.dim, s.factory(), _faiss_metric(s.metric))
    if isinstance(s.index, HNSW):
        _unwrap(index).hnsw.efConstruction = s.index.ef_construction
    sq = _scalar_quantizer(index)
    if sq is not None and isinstance(s.codes, SQ):
        sq.rangestat = _RANGE_STATS[s.range_stat]
        sq.rangestat_arg = _RANGE_ARGS[s.range_stat]
    if isinstance(_unwrap(index), faiss.IndexIVF):
        return index  # IVF stores ids itself: no IDMap, no 8 bytes/vector twice
    return faiss.IndexIDMap(index)


_FAISS_LINES = ("WARNING clustering", "Sampling a subset", "Clustering ", "  Iteration")
log = logging.getLogger("qvec.faiss")


@contextmanager
def _faiss_stderr():
    """Run a FAISS call with file descriptor 2 caught: its k-means lines are logged at INFO
    on ``qvec.faiss``, every other line written meanwhile (another thread's, Python's) is
    written to stderr after it."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no fd 2 to catch: nothing to quiet
        yield
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught.read().decode("utf-8", "replace").splitlines(keepends=True):
                if line.startswith(_FAISS_LINES):
                    log.info("%s", line.rstrip())
                else:
                    os.write(2, line.encode())


class VectorIndex:
    """A trained FAISS index with integer ids, its search parameters and tombstones."""

    is_trained = True

    def __init__(self, settings: Settings, index, threshold: np.ndarray | None = None):
        self.settings = settings
        self.binary = settings.binary
        self.threshold = threshold  # binary only: per-dimension medians
        self.tombstones: set[int] = set()
        self.index = index
        if not self.binary:
            _query_bits(index)
            _scan_order(index)
        self._empty_bytes: int | None = None
        self.is_ivf = not self.binary and isinstance(_unwrap(self.index), faiss.IndexIVF)
        # FAISS 1.15 decodes RaBitQ codes from their sign bits alone (the finer bits ignored)
        # and unscaled: cosine ~0.76 to the vector on 32-d data, whatever the bits. Vectors
        # come from the originals, and small filters go through the index, not decoded codes.
        self.decodable = not self.binary and not isinstance(settings.codes, RaBitQ)
        self._gemm = (not self.binary and settings.index.kind == "flat"
                      and isinstance(_unwrap(self.index), faiss.IndexScalarQuantizer))
        self._parameters: dict[tuple, faiss.SearchParameters] = {}  # see _unfiltered_parameters
        self._folded = None if self.binary else FoldedScan.of(index)
        self._graph = not self.binary and isinstance(_unwrap(index), faiss.IndexHNSW)
        self._id_order: tuple[int, np.ndarray | None] | None = None  # see _positions

    @classmethod
    def trained(cls, settings: Settings, x: np.ndarray) -> VectorIndex:
        """A new index whose codes (scales, codebooks, centroids, thresholds) are learned from
        x: ``NotTrained`` below the fewest vectors training works with, a warning below the
        count it asks for, a random sample of ``TRAIN_SAMPLE`` above it."""
        s = settings
        if len(x) < s.min_train_size:
            raise NotTrained(f"{s.codes}/{s.index} needs at least {s.min_train_size} vectors to train, got {len(x)}: "
                             "add more, or pass vectors= to train()")
        if len(x) < s.train_size:
            warnings.warn(f"training {s.codes}/{s.index} on {len(x)} vectors; {s.train_size} or more give better "
                          "codes", stacklevel=5)
        if len(x) > TRAIN_SAMPLE:
            x = x[_training_sample(len(x))]
        index = new_index(settings)
        if settings.binary:
            return cls(settings, index, np.median(x, axis=0).astype(np.float32))
        with _faiss_stderr():
            index.train(np.ascontiguousarray(x, dtype=np.float32))
        return cls(settings, index)

    @classmethod
    def trained_from(cls, settings: Settings, fids: np.ndarray, vectors_of: Callable[[np.ndarray], np.ndarray],
                     chunk: int = CHUNK) -> VectorIndex:
        """A new index trained on, and holding, the rows ``fids``, whose vectors ``vectors_of``
        gives (from disk, or embedded again): each fetched once when they all fit the training
        sample, else a sample for training and then ``chunk`` rows at a time."""
        if len(fids) <= TRAIN_SAMPLE:
            x = vectors_of(fids)
            index = cls.trained(settings, x)
            index.add(x, fids)
            return index
        index = cls.trained(settings, vectors_of(fids[_training_sample(len(fids))]))
        for a in range(0, len(fids), chunk):
            index.add(vectors_of(fids[a : a + chunk]), fids[a : a + chunk])
        return index

    def renumbered(self, live: np.ndarray) -> VectorIndex:
        """A copy whose fids ``live`` (ascending, every fid it holds) become 0..n-1: the same
        codes, only the ids in FAISS's arrays rewritten (lossless; not for tombstones)."""
        # FAISS's clone_binary_index cannot clone an IndexBinaryIDMap: a binary copy goes through bytes
        clone = faiss.deserialize_index_binary(faiss.serialize_index_binary(self.index)) if self.binary else \
            faiss.clone_index(self.index)
        fresh = VectorIndex(self.settings, clone, self.threshold)
        for ids in fresh._id_views():
            ids[:] = np.searchsorted(live, ids)
        return fresh

    def emptied(self) -> VectorIndex:
        """The same trained codes, holding no vectors: compaction refills it with the live rows."""
        if self.binary:
            return VectorIndex(self.settings, new_index(self.settings), self.threshold)
        clone = faiss.clone_index(self.index)
        clone.reset()
        return VectorIndex(self.settings, clone)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def removes_in_place(self) -> bool:
        return self.settings.removes_in_place

    def _codes(self, x: np.ndarray) -> np.ndarray:
        return np.packbits(x > self.threshold, axis=1) if self.binary else x

    # -- updates ----------------------------------------------------------------------
    def add(self, x: np.ndarray, fids: np.ndarray) -> None:
        if len(fids):
            if self._empty_bytes is None and not self.ntotal:  # measured while it is cheap: see fixed_bytes()
                self._empty_bytes = len(self.serialize())
            if self._graph and len(fids) >= LAYOUT_MIN_ROWS:
                order = _by_cluster(x, self.settings.metric)
                x, fids = x[order], np.asarray(fids)[order]
            self._id_order = None
            self.index.add_with_ids(self._codes(x), np.ascontiguousarray(fids, dtype=np.int64))

    def remove(self, fids) -> None:
        fids = np.asarray(list(fids), dtype=np.int64)
        if not len(fids):
            return
        self._id_order = None
        if self.removes_in_place:
            self.index.remove_ids(fids)
        else:
            self.tombstones.update(fids.tolist())

    # -- search -----------------------------------------------------------------------
    def search(self, xq: np.ndarray, k: int, *, allowed: np.ndarray | None = None,
               params: SearchParams | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, fids) per query; ``allowed`` restricts the search to those fids
        inside FAISS (an ID selector), so k hits come back whenever k allowed ids exist."""
        params = params or _NO_PARAMS
        if self._gemm and not self.tombstones and len(xq) >= DECODED_SEARCH_MIN_QUERIES:
            return self._search_decoded(xq, k, allowed)
        sel, keep = self._selector(allowed)
        if sel is None:
            fp = self._unfiltered_parameters(k, params)
        else:
            fp = self.search_parameters(k, nprobe=params.nprobe, ef_search=params.ef_search)
            fp.sel = sel
        if self._folded is not None and xq.shape[1] == self.index.d and \
                (len(xq) >= FEW_QUERIES or fp.nprobe >= FOLD_FEW_NPROBE):
            with one_faiss_thread() if len(xq) < FEW_QUERIES else nullcontext():
                out = self._folded.search(np.ascontiguousarray(xq, dtype=np.float32), k, fp)
            del keep
            return out
        if len(xq) == 1 and not self.binary and xq.shape[1] == self.index.d:
            # one query straight to FAISS's C++ search: its Python wrapper's checks and copies took
            # 4 us of a 0.15 ms HNSW query (xq is the store's own: float32, C-contiguous, aligned)
            xq = np.ascontiguousarray(xq, dtype=np.float32)
            D, I = np.empty((1, k), np.float32), np.empty((1, k), np.int64)
            with one_faiss_thread():
                self.index.search_c(1, faiss.swig_ptr(xq), k, faiss.swig_ptr(D), faiss.swig_ptr(I), fp)
            return D, I
        with one_faiss_thread() if len(xq) < FEW_QUERIES else nullcontext():
            D, I = self.index.search(self._codes(xq), k, params=fp)
        del keep
        return D.astype(np.float32, copy=False), I

    def search_raw(self, xq: np.ndarray, k: int, *, nprobe: int | None = None, ef_search: int | None = None,
                   faiss_defaults: bool = True):
        """FAISS's own search of this index, as a user of FAISS would call it (no filter, no
        qvec fast path, and with ``faiss_defaults`` FAISS's own fast-scan implementation): the
        benchmark's baseline. ``xq`` as the store prepares queries. Not for use beside other
        searches of this index: it changes the index's implementation for the call."""
        was = _scan_order(self.index, 0) if faiss_defaults and not self.binary else None
        try:
            return self.index.search(self._codes(xq), k, params=self.search_parameters(k, nprobe=nprobe,
                                                                                       ef_search=ef_search))
        finally:
            if was is not None:
                _scan_order(self.index, was)

    def search_parameters(self, k: int, *, nprobe: int | None = None, ef_search: int | None = None):
        """FAISS search parameters with qvec's defaults (``config.IVF.default_nprobe``, HNSW's efSearch, at least k)."""
        ix = self.settings.index
        if self.is_ivf:  # ivf, and flat PQ/OPQ (one list)
            default = ix.default_nprobe if isinstance(ix, IVF) else 1
            return faiss.SearchParametersIVF(nprobe=min(nprobe or default, self.nlist))
        if isinstance(ix, HNSW):
            return faiss.SearchParametersHNSW(efSearch=max(ef_search or ix.default_ef_search, k))
        return faiss.SearchParameters()

    def _unfiltered_parameters(self, k: int, params: SearchParams):
        """search_parameters() without a selector, made once per (k, nprobe, ef_search) and kept:
        a single HNSW query spent 3 us of its 0.15 ms making them. FAISS only reads them."""
        key = (k, params.nprobe, params.ef_search)
        fp = self._parameters.get(key)
        if fp is None:
            if len(self._parameters) >= 64:
                self._parameters.clear()
            fp = self._parameters[key] = self.search_parameters(k, nprobe=params.nprobe, ef_search=params.ef_search)
        return fp

    def _search_decoded(self, xq: np.ndarray, k: int, allowed: np.ndarray | None = None):
        """What FAISS's flat scalar-quantizer search returns (the same decoded vectors, the
        same scores up to float rounding), computed block by block: decode the codes to
        FP32, score the whole batch by one BLAS matrix product, push the block's scores
        into FAISS's per-query heaps (every query shares the block's fids: stride 0).
        ``allowed`` (sorted fids): only their codes are gathered, decoded and scored."""
        outer = faiss.downcast_index(self.index)  # IndexIDMap over IndexScalarQuantizer
        inner = faiss.downcast_index(outer.index)
        n, size = int(inner.ntotal), int(inner.code_size)
        ip = self.settings.metric != "l2"
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        heap = faiss.ResultHeap(len(xq), k, keep_max=ip)
        if n:  # views of FAISS's own arrays, no copies
            codes = faiss.rev_swig_ptr(inner.codes.data(), n * size).reshape(n, size)
            fids = faiss.rev_swig_ptr(outer.id_map.data(), n)
            rows = None
            if allowed is not None:  # the rows holding allowed fids, through a mask over fids
                mask = np.zeros(max(int(fids.max()), int(allowed.max()) if len(allowed) else 0) + 1, dtype=bool)
                mask[allowed] = True
                rows = np.flatnonzero(mask[fids])
            total = n if rows is None else len(rows)
            # FAISS's OpenMP threads spin between calls and take the cores from the BLAS
            # threads of the product (2-3× slower here): decode and heap on this thread.
            with one_faiss_thread():
                for a in range(0, total, DECODE_BLOCK):
                    at = slice(a, a + DECODE_BLOCK) if rows is None else rows[a : a + DECODE_BLOCK]
                    block_codes, block = codes[at], np.ascontiguousarray(fids[at])
                    x = inner.sa_decode(block_codes)
                    scores = xq @ x.T
                    if not ip:  # |q - x|² less |q|², which is added back at the end
                        scores = np.einsum("ij,ij->i", x, x)[None, :] - 2 * scores
                    heap.heaps.addn_with_ids(len(block), faiss.swig_ptr(scores), faiss.swig_ptr(block), 0)
        heap.finalize()
        if not ip:
            heap.D += np.where(heap.I >= 0, np.einsum("ij,ij->i", xq, xq)[:, None], 0)
        return heap.D, heap.I

    @property
    def nlist(self) -> int:
        return int(_unwrap(self.index).nlist) if self.is_ivf else 0

    def _selector(self, allowed: np.ndarray | None):
        """An ID selector from a bitmap over fids: one bit per fid, O(1) per test
        (FAISS bounds-checks ids against the bitmap's byte length).
        Returns (selector, buffers the selector points into, to keep alive)."""
        if allowed is None and not self.tombstones:
            return None, None
        dead = np.fromiter(self.tombstones, dtype=np.int64, count=len(self.tombstones))
        if allowed is None:
            if not len(dead):
                return None, None
            bits = _bitmap(dead)
            dead_sel = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))
            return faiss.IDSelectorNot(dead_sel), (bits, dead_sel)
        allowed = np.asarray(allowed, dtype=np.int64)
        if len(dead):
            allowed = np.setdiff1d(allowed, dead)
        bits = _bitmap(allowed)
        # IDSelectorBitmap's n is the bitmap's length in bytes, not in bits.
        return faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)), bits

    # -- reading vectors back -------------------------------------------------------------
    def reconstruct(self, fids: np.ndarray) -> np.ndarray:
        """Decoded vectors (what the codes hold) for fids, in order. Reads only: safe
        beside any number of searching or reconstructing threads. Not for binary codes."""
        fids = np.asarray(fids, dtype=np.int64)
        if not self.decodable:
            raise NotImplementedError(f"{self.settings.codes} codes cannot be decoded to vectors")
        if not len(fids):
            return np.zeros((0, self.settings.dim), np.float32)
        outer = faiss.downcast_index(self.index)
        if isinstance(outer, faiss.IndexIDMap):
            return outer.index.reconstruct_batch(self._positions(outer, fids))
        ivf = faiss.extract_index_ivf(outer)
        lists = ivf.invlists
        listno = np.zeros(8, np.uint8)
        want = np.unique(fids)
        found_fids, found_codes = [], []
        for no in range(ivf.nlist):
            n = lists.list_size(no)
            if not n:
                continue
            ids = faiss.rev_swig_ptr(lists.get_ids(no), n)
            at = np.flatnonzero(np.isin(ids, want, assume_unique=True))
            if len(at):
                codes = _list_codes(ivf, no, n, at)
                listno[:] = np.frombuffer(np.int64(no).tobytes(), np.uint8)  # sa codes start with the list
                prefix = np.tile(listno[: ivf.coarse_code_size()], (len(at), 1))
                found_fids.append(ids[at].copy())
                found_codes.append(np.hstack([prefix, codes]))
        got = np.concatenate(found_fids) if found_fids else np.zeros(0, np.int64)
        order = np.argsort(got)
        pos = order[np.searchsorted(got[order], fids)] if len(got) else None
        if pos is None or not np.array_equal(got[pos], fids):
            raise _not_indexed(fids, got)
        codes = np.ascontiguousarray(np.vstack(found_codes))
        fast_scan = isinstance(faiss.downcast_InvertedLists(lists), faiss.BlockInvertedLists)
        return (_decode_fast_scan(outer, codes) if fast_scan else outer.sa_decode(codes))[pos]

    def _positions(self, outer, fids: np.ndarray) -> np.ndarray:
        """Where an IDMap holds ``fids``; a CorruptStore for any it does not. Its fids ascend in
        the order they were added, except where an HNSW add laid a batch out by cluster: then the
        order that sorts them is kept until the next add or remove (8 bytes per vector)."""
        n = int(outer.ntotal)
        ids = faiss.rev_swig_ptr(outer.id_map.data(), n) if n else np.zeros(0, np.int64)
        known = self._id_order
        if known is None or known[0] != n:
            ascending = bool(np.all(ids[1:] > ids[:-1]))
            known = self._id_order = (n, None if ascending else np.argsort(ids, kind="stable"))
        order = known[1]
        held = ids if order is None else ids[order]
        at = np.minimum(np.searchsorted(held, fids), max(n - 1, 0))
        if not n or not np.array_equal(held[at], fids):
            raise _not_indexed(fids, held)
        return at if order is None else order[at]

    def _id_views(self) -> list[np.ndarray]:
        """Views (no copies) of FAISS's own arrays of the fids this index holds."""
        outer = self.index if self.binary else faiss.downcast_index(self.index)
        if isinstance(outer, (faiss.IndexIDMap, faiss.IndexBinaryIDMap)):
            return [faiss.rev_swig_ptr(outer.id_map.data(), outer.ntotal)] if outer.ntotal else []
        lists = faiss.extract_index_ivf(outer).invlists
        return [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i))
                for i in range(lists.nlist) if lists.list_size(i)]

    def fids(self) -> np.ndarray:
        """Every fid the index holds, tombstones included, sorted."""
        views = self._id_views()
        return np.sort(np.concatenate(views)) if views else np.zeros(0, np.int64)

    def max_fid(self) -> int:
        """The largest fid held (-1 when empty), without copying the ids."""
        return max((int(v.max()) for v in self._id_views()), default=-1)

    # -- persistence ------------------------------------------------------------------
    def serialize(self) -> bytes:
        if self.binary:
            return faiss.serialize_index_binary(self.index).tobytes()
        return faiss.serialize_index(self.index).tobytes()

    @property
    def known_fixed_bytes(self) -> int | None:
        """``fixed_bytes()`` if it is known without cloning the index, else None."""
        return self._empty_bytes

    @classmethod
    def deserialize(cls, settings: Settings, data: bytes, threshold: np.ndarray | None,
                    fixed_bytes: int | None = None) -> VectorIndex:
        """Raises ValueError when FAISS cannot read ``data`` or it does not match ``settings``;
        ``fixed_bytes``: the index's ``fixed_bytes()`` as its checkpoint recorded it."""
        buf = np.frombuffer(data, dtype=np.uint8)
        try:
            index = faiss.deserialize_index_binary(buf) if settings.binary else faiss.deserialize_index(buf)
        except RuntimeError as e:
            raise ValueError(str(e).splitlines()[0]) from None
        if index.d != settings.dim:
            raise ValueError(f"it holds {index.d}-dim vectors, the store {settings.dim}")
        out = cls(settings, index, threshold)
        out._empty_bytes = fixed_bytes
        return out

    # -- accounting -------------------------------------------------------------------
    def bytes_per_vector(self, saved: tuple[int, int] | None = None) -> float:
        """RAM held per vector (codes, ids, graph links, list overhead), measured as the
        serialised index minus the same index emptied, over the vectors it holds. ``saved``:
        the (bytes, vectors) of this index's last saved file, which measure it without
        serialising it again (O(1), where serialising costs a copy of the whole index)."""
        size, n = saved if saved and saved[1] else (None, self.ntotal)
        if n == 0:
            return 0.0
        return ((size if size is not None else len(self.serialize())) - self.fixed_bytes()) / n

    def fixed_bytes(self) -> int:
        """Bytes that do not grow with the count: scales, codebooks, centroids, headers. Measured
        as the index serialised empty, before its first add (and saved with every checkpoint as
        ``index_fixed_bytes``); only an index read from an older store clones itself once to
        learn it, which at 10M vectors copied 569 MB inside ``stats()``."""
        if self._empty_bytes is None:
            self._empty_bytes = len(self.emptied().serialize())
        return self._empty_bytes

    def trained_parameters(self) -> dict:
        """The stored scales/codebooks, for stats(): shapes always, values where small."""
        out: dict = {}
        s = self.settings
        if self.binary:
            return {"binary_thresholds": [len(self.threshold)]} if self.threshold is not None else {}
        sq = _scalar_quantizer(self.index)
        if sq is not None and isinstance(s.codes, SQ):
            t = faiss.vector_to_array(sq.trained).reshape(2, -1)
            out["scales"] = {"range_stat": s.range_stat, "vmin": t[0].tolist(), "vdiff": t[1].tolist()}
        inner = _unwrap(self.index)
        if isinstance(inner, faiss.IndexIVF):
            out["ivf_centroids"] = [int(inner.nlist), s.dim]
            pq = getattr(faiss.downcast_index(inner), "pq", None)
            if pq is not None:
                out["pq_codebooks"] = [int(pq.M), int(pq.ksub), int(pq.dsub)]
        elif isinstance(inner, faiss.IndexHNSW):
            storage = faiss.downcast_index(inner.storage)
            if hasattr(storage, "pq"):
                out["pq_codebooks"] = [int(storage.pq.M), int(storage.pq.ksub), int(storage.pq.dsub)]
        rabitq = getattr(inner, "rabitq", None)
        if rabitq is not None:
            out["rabitq"] = {"bits": int(rabitq.nb_bits), "query_bits": int(inner.qb),
                             "centre": [s.dim] if isinstance(inner, faiss.IndexRaBitQ) else "per IVF list"}
        if s.codes.kind.startswith("opq"):
            out["opq_rotation"] = [s.codes.rotated_dim(s.dim), s.dim]
        return out


@dataclass(frozen=True)
class TrainedCodes:
    """What training learned (scales, codebooks, rotations, centroids, binary thresholds), with
    the settings it was learned for and no vectors: what the shards of one store share, so
    that their scores compare and merged results equal one store's."""

    settings: Settings
    index: bytes  # the serialised FAISS index, emptied
    threshold: tuple[float, ...] | None = None

    @classmethod
    def of(cls, index: VectorIndex) -> TrainedCodes:
        t = None if index.threshold is None else tuple(np.asarray(index.threshold, np.float64).tolist())
        return cls(index.settings, index.emptied().serialize(), t)

    def to_bytes(self) -> bytes:
        head = json.dumps({"settings": self.settings.to_json(), "threshold": self.threshold}).encode()
        return len(head).to_bytes(8, "little") + head + self.index

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> TrainedCodes:
        try:
            n = int.from_bytes(data[:8], "little")
            head = json.loads(data[8 : 8 + n])
            t = head["threshold"]
            return cls(Settings.from_json(head["settings"]), bytes(data[8 + n :]), None if t is None else tuple(t))
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptStore(f"{where} is not a trained-codes file qvec wrote ({e}): rebuild the store") from None

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()[:16]

    def fresh(self) -> VectorIndex:
        """A new, empty index with these trained parameters."""
        threshold = None if self.threshold is None else np.asarray(self.threshold, np.float32)
        return VectorIndex.deserialize(self.settings, self.index, threshold)
