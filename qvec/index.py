"""The FAISS side of a store: build an index from ``Settings``, train, add, remove,
search with an ID filter, serialise, and measure the RAM it holds per vector.

Every vector in the index carries its store-wide integer id (``fid``). FAISS ids are
assigned by the store, only ever increase, and are never reused.

Choices the FAISS API forces, in one place:
- Flat PQ/OPQ is a single-list IVF (``IVF1,PQm``): the same codes, but IVF search honours
  an ID selector and flat ``IndexPQ`` does not.
- HNSW cannot remove vectors: removed ids become tombstones that the search excludes
  through its ID selector, until the store compacts (rebuilds) the index.
- Binary codes (1 bit/dimension, thresholded at each dimension's training median) are
  searched by Hamming distance in ``IndexBinaryFlat``; FAISS's binary IVF/HNSW cannot filter.
- Flat scalar-quantized codes (fp16, bf16, int8, int4) searched by many queries at once are
  decoded a block at a time and scored by a matrix product (``_search_decoded``). FAISS
  scans them query by query, ~5× slower for a batch of 1,000 queries than its FP32 flat
  index, which runs as one BLAS matrix product. Decoding every code costs about as much
  as scanning for 16-32 queries, hence the threshold (measured on 100K 384-d vectors).
"""

from __future__ import annotations

import faiss
import numpy as np

from .quantization import Settings

__all__ = ["VectorIndex"]

DECODED_SEARCH_MIN_QUERIES = 64  # batches this large score decoded blocks by GEMM
DECODE_BLOCK = 4096  # vectors decoded at a time: 6 MB of FP32 at 384 dimensions

_RANGE_STATS = {
    "minmax": faiss.ScalarQuantizer.RS_minmax,
    "meanstd": faiss.ScalarQuantizer.RS_meanstd,
    "quantiles": faiss.ScalarQuantizer.RS_quantiles,
    "optim": faiss.ScalarQuantizer.RS_optim,
}
# rangestat_arg per statistic: std multiples for meanstd, the clipped tail for quantiles.
_RANGE_ARGS = {"minmax": 0.0, "meanstd": 3.0, "quantiles": 0.001, "optim": 0.0}


def _factory(s: Settings) -> str:
    q, ix = s.quantization, s.index
    code = q.code_factory()
    pre = f"OPQ{q.m}," if q.kind == "opq" else ""
    if ix.kind == "flat":
        return f"{pre}IVF1,{code}" if q.kind in ("pq", "opq") else code
    if ix.kind == "ivf":
        return f"{pre}IVF{ix.param},{code}"
    return f"{pre}HNSW{ix.param}" + ("" if q.kind == "fp32" else f",{code}")


def _metric(s: Settings) -> int:
    return faiss.METRIC_L2 if s.metric == "l2" else faiss.METRIC_INNER_PRODUCT


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


class VectorIndex:
    """A FAISS index with integer ids, its search parameters and tombstones."""

    def __init__(self, settings: Settings, index=None, threshold: np.ndarray | None = None):
        self.settings = settings
        self.binary = settings.quantization.kind == "binary"
        self.threshold = threshold  # binary only: per-dimension medians
        self.tombstones: set[int] = set()
        self.index = index if index is not None else self._new()
        self._empty_bytes: int | None = None
        self.is_ivf = not self.binary and isinstance(_unwrap(self.index), faiss.IndexIVF)
        self._decodable = (not self.binary and settings.index.kind == "flat"
                           and isinstance(_unwrap(self.index), faiss.IndexScalarQuantizer))

    # -- construction ---------------------------------------------------------------
    def _new(self):
        s = self.settings
        if self.binary:
            return faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(s.dim))
        index = faiss.index_factory(s.dim, _factory(s), _metric(s))
        sq = _scalar_quantizer(index)
        if sq is not None and s.quantization.kind in ("int8", "int4"):
            sq.rangestat = _RANGE_STATS[s.range_stat]
            sq.rangestat_arg = _RANGE_ARGS[s.range_stat]
        if isinstance(_unwrap(index), faiss.IndexIVF):
            return index  # IVF stores ids itself: no IDMap, no 8 bytes/vector twice
        return faiss.IndexIDMap(index)

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained) and (not self.binary or self.threshold is not None)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def train(self, x: np.ndarray) -> None:
        if self.binary:
            self.threshold = np.median(x, axis=0).astype(np.float32)
        else:
            self.index.train(x)
        self._empty_bytes = None

    def _codes(self, x: np.ndarray) -> np.ndarray:
        return np.packbits(x > self.threshold, axis=1) if self.binary else x

    # -- updates ----------------------------------------------------------------------
    def add(self, x: np.ndarray, fids: np.ndarray) -> None:
        if len(fids):
            self.index.add_with_ids(self._codes(x), np.ascontiguousarray(fids, dtype=np.int64))

    @property
    def removes_in_place(self) -> bool:
        return self.settings.index.kind != "hnsw"

    def remove(self, fids) -> None:
        fids = np.asarray(list(fids), dtype=np.int64)
        if not len(fids):
            return
        if self.removes_in_place:
            self.index.remove_ids(fids)
        else:
            self.tombstones.update(int(f) for f in fids)

    @property
    def live(self) -> int:
        return self.ntotal - len(self.tombstones)

    # -- search -----------------------------------------------------------------------
    def search(
        self,
        xq: np.ndarray,
        k: int,
        *,
        allowed: np.ndarray | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, fids) per query; ``allowed`` restricts the search to those fids
        inside FAISS (an ID selector), so k hits come back whenever k allowed ids exist."""
        if self._decodable and allowed is None and not self.tombstones and len(xq) >= DECODED_SEARCH_MIN_QUERIES:
            return self._search_decoded(xq, k)
        sel, keep = self._selector(allowed)
        params = self.search_parameters(k, nprobe=nprobe, ef_search=ef_search)
        if sel is not None:
            params.sel = sel
        D, I = self.index.search(self._codes(xq), k, params=params)
        del keep
        return D.astype(np.float32, copy=False), I

    def search_parameters(self, k: int, *, nprobe: int | None = None, ef_search: int | None = None):
        """FAISS search parameters with qvec's defaults: ``default_nprobe`` lists, efSearch 64 (at least k)."""
        if self.is_ivf:  # ivf, and flat PQ/OPQ (one list)
            return faiss.SearchParametersIVF(nprobe=min(nprobe or self.default_nprobe, self.nlist))
        if self.settings.index.kind == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=max(ef_search or 64, k))
        return faiss.SearchParameters()

    def _search_decoded(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """What FAISS's flat scalar-quantizer search returns (the same decoded vectors, the
        same scores up to float rounding), computed block by block: decode the codes to
        FP32, score the whole batch by one BLAS matrix product, push the block's scores
        into FAISS's per-query heaps (every query shares the block's fids: stride 0)."""
        outer = faiss.downcast_index(self.index)  # IndexIDMap over IndexScalarQuantizer
        inner = faiss.downcast_index(outer.index)
        n, size = int(inner.ntotal), int(inner.code_size)
        ip = self.settings.metric != "l2"
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        heap = faiss.ResultHeap(len(xq), k, keep_max=ip)
        if n:  # views of FAISS's own arrays, no copies
            codes = faiss.rev_swig_ptr(inner.codes.data(), n * size).reshape(n, size)
            fids = faiss.rev_swig_ptr(outer.id_map.data(), n)
            # FAISS's OpenMP threads spin between calls and take the cores from the BLAS
            # threads of the product (2-3× slower here): decode and heap on this thread.
            threads = faiss.omp_get_max_threads()  # this thread's setting: others keep theirs
            faiss.omp_set_num_threads(1)
            try:
                for a in range(0, n, DECODE_BLOCK):
                    x = inner.sa_decode(codes[a : a + DECODE_BLOCK])
                    scores = xq @ x.T
                    if not ip:  # |q - x|² less |q|², which is added back at the end
                        scores = np.einsum("ij,ij->i", x, x)[None, :] - 2 * scores
                    block = np.ascontiguousarray(fids[a : a + DECODE_BLOCK])
                    heap.heaps.addn_with_ids(len(block), faiss.swig_ptr(scores), faiss.swig_ptr(block), 0)
            finally:
                faiss.omp_set_num_threads(threads)
        heap.finalize()
        if not ip:
            heap.D += np.where(heap.I >= 0, np.einsum("ij,ij->i", xq, xq)[:, None], 0)
        return heap.D, heap.I

    @property
    def nlist(self) -> int:
        return int(_unwrap(self.index).nlist) if self.is_ivf else 0

    @property
    def default_nprobe(self) -> int:
        # FAISS's default of 1 list loses most neighbours; 1/32 of the lists (>= 8) keeps
        # recall@10 above 0.9 on MiniLM embeddings (bench/results/).
        n = self.nlist
        return min(n, max(8, n // 32))

    def _selector(self, allowed: np.ndarray | None):
        """An ID selector from a bitmap over fids: one bit per fid, O(1) per test
        (FAISS bounds-checks ids against the bitmap's byte length).
        Returns (selector, buffers the selector points into, to keep alive)."""
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

    # -- decoding ---------------------------------------------------------------------
    def reconstruct(self, fids: np.ndarray) -> np.ndarray:
        """Decoded vectors (what the codes hold) for fids; not for binary codes."""
        fids = np.asarray(fids, dtype=np.int64)
        outer = faiss.downcast_index(self.index)
        if self.binary:
            raise NotImplementedError("binary codes cannot be decoded to vectors")
        if isinstance(outer, faiss.IndexIDMap):
            id_map = faiss.vector_to_array(outer.id_map)  # fids in insertion order: ascending
            return outer.index.reconstruct_batch(np.searchsorted(id_map, fids))
        ivf = faiss.extract_index_ivf(outer)
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # fid -> list position, for this call only
        try:
            return np.vstack([outer.reconstruct(int(f)) for f in fids] or [np.zeros((0, self.settings.dim))])
        finally:
            ivf.set_direct_map_type(faiss.DirectMap.NoMap)

    def all_fids(self) -> np.ndarray:
        """Every fid the index holds, tombstones included (flat and HNSW float indexes)."""
        return faiss.vector_to_array(faiss.downcast_index(self.index).id_map)

    # -- persistence ------------------------------------------------------------------
    def serialize(self) -> bytes:
        if self.binary:
            return faiss.serialize_index_binary(self.index).tobytes()
        return faiss.serialize_index(self.index).tobytes()

    @classmethod
    def deserialize(cls, settings: Settings, data: bytes, threshold: np.ndarray | None) -> VectorIndex:
        buf = np.frombuffer(data, dtype=np.uint8)
        if settings.quantization.kind == "binary":
            index = faiss.deserialize_index_binary(buf)
        else:
            index = faiss.deserialize_index(buf)
        return cls(settings, index, threshold)

    # -- accounting -------------------------------------------------------------------
    def bytes_per_vector(self) -> float:
        """RAM held per vector (codes, ids, graph links, list overhead), measured as the
        serialised index minus the same index emptied, over the vectors it holds."""
        if self.ntotal == 0:
            return 0.0
        return (len(self.serialize()) - self.fixed_bytes()) / self.ntotal

    def fixed_bytes(self) -> int:
        """Bytes that do not grow with the count: scales, codebooks, centroids, headers."""
        if self._empty_bytes is None:
            if self.binary:  # nothing trained inside: the thresholds live in SQLite
                self._empty_bytes = len(faiss.serialize_index_binary(self._new()))
            else:
                clone = faiss.clone_index(self.index)
                clone.reset()
                self._empty_bytes = len(faiss.serialize_index(clone))
        return self._empty_bytes

    def trained_parameters(self) -> dict:
        """The stored scales/codebooks, for stats(): shapes always, values where small."""
        out: dict = {}
        if self.binary:
            return {"binary_thresholds": [len(self.threshold)]} if self.threshold is not None else {}
        sq = _scalar_quantizer(self.index)
        if sq is not None and self.settings.quantization.kind in ("int8", "int4") and self.is_trained:
            t = faiss.vector_to_array(sq.trained).reshape(2, -1)
            out["scales"] = {"range_stat": self.settings.range_stat, "vmin": t[0].tolist(), "vdiff": t[1].tolist()}
        inner = _unwrap(self.index)
        if isinstance(inner, faiss.IndexIVF):
            out["ivf_centroids"] = [int(inner.nlist), self.settings.dim]
            pq = getattr(faiss.downcast_index(inner), "pq", None)
            if pq is not None:
                out["pq_codebooks"] = [int(pq.M), int(pq.ksub), int(pq.dsub)]
        elif isinstance(inner, faiss.IndexHNSW):
            storage = faiss.downcast_index(inner.storage)
            if hasattr(storage, "pq"):
                out["pq_codebooks"] = [int(storage.pq.M), int(storage.pq.ksub), int(storage.pq.dsub)]
        if self.settings.quantization.kind == "opq":
            out["opq_rotation"] = [self.settings.dim, self.settings.dim]
        return out
