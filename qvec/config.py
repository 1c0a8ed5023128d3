"""A store's settings as small typed objects, parsed and validated once at the edge.

Spec strings become objects that own what follows from them: ``"int8"`` → ``SQ(bits=8)``,
``"pq48"`` → ``PQ(m=48)``, ``"ivf1024"`` → ``IVF(nlist=1024)``, ``"hnsw32"`` → ``HNSW(m=32)``.
Each knows its FAISS factory string, how many vectors it trains on and its search
defaults, so no other module re-derives them from strings. ``Settings`` ties one store's
choices together and is stored as JSON with the store (the spec strings, unchanged since
format 1). ``SearchParams`` is the same for the per-query knobs.
"""

from __future__ import annotations

import dataclasses
import numbers
import re
from dataclasses import dataclass
from typing import Any

from .errors import InvalidInput, InvalidSpec, SettingsConflict

__all__ = ["Codes", "FloatCodes", "SQ", "PQ", "RaBitQ", "Binary", "IndexConfig", "Flat", "IVF", "HNSW", "Settings",
           "SearchParams", "Requested", "parse_codes", "parse_index", "QUANTIZATIONS", "INDEXES", "METRICS",
           "RANGE_STATS", "DEFAULT_OVERSAMPLE", "ORIGINALS"]

QUANTIZATIONS = ("fp32", "fp16", "bf16", "int8", "int4", "pq{M}", "opq{M}", "pq{M}x4fs", "rabitq", "rabitq{bits}",
                 "binary")
INDEXES = ("flat", "ivf{nlist}", "hnsw{M}")
METRICS = ("cosine", "ip", "l2")
# Precisions the originals that rescoring reads may be kept at on disk (``rescore="fp16"``):
# low-precision codes in RAM, higher precision on disk (the originals= rows of bench/results/*/results.md).
ORIGINALS = ("fp32", "fp16", "int8")
# FAISS ScalarQuantizer range statistics for int8/int4. The defaults were measured by
# bench/range_stats.py on 100K MiniLM embeddings (bench/results/range_stats.md): with 8
# bits the full min..max range is best (recall@10 0.994 vs <= 0.991); with 4 bits the
# steps are coarse enough that clipping the 0.1% tails wins (0.940 vs 0.921 for min..max).
RANGE_STATS = ("minmax", "meanstd", "quantiles", "optim")
DEFAULT_OVERSAMPLE = 4
MAX_OVERSAMPLE = 1024
# FAISS's sizes, far above anything useful: beyond them it fails in C++ or allocates without end.
MAX_LISTS = 1 << 20
MAX_LINKS = 256
MAX_SEARCH_BREADTH = 1 << 16


# -- codes ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Codes:
    """How each vector is encoded."""

    train_size = 0  # vectors to collect before training automatically
    min_train_size = 1  # the fewest training can work with at all

    @property
    def kind(self) -> str:
        return str(self)

    @property
    def needs_training(self) -> bool:
        return self.train_size > 0

    def check_dim(self, dim: int) -> None:
        """InvalidSpec if these codes cannot encode ``dim``-dim vectors."""

    def code_bytes(self, dim: int) -> int:
        """Bytes of one ``dim``-dim vector's code (without its 8-byte id)."""
        raise NotImplementedError

    def factory(self) -> str:
        """The FAISS factory component for the codes."""
        raise NotImplementedError

    def pretransform(self, dim: int) -> str:
        """The FAISS factory component that transforms vectors before indexing ("" for none)."""
        return ""


@dataclass(frozen=True)
class FloatCodes(Codes):
    """Floats as they are (fp32) or rounded to 16 bits (fp16, bf16): nothing to learn."""

    name: str = "fp32"

    def __str__(self) -> str:
        return self.name

    def code_bytes(self, dim: int) -> int:
        return (4 if self.name == "fp32" else 2) * dim

    def factory(self) -> str:
        return {"fp32": "Flat", "fp16": "SQfp16", "bf16": "SQbf16"}[self.name]


@dataclass(frozen=True)
class SQ(Codes):
    """Integer codes per dimension (8 or 4 bits), scaled by per-dimension ranges learned
    with ``range_stat``'s statistic."""

    bits: int = 8
    train_size = 1_000

    def __str__(self) -> str:
        return f"int{self.bits}"

    def code_bytes(self, dim: int) -> int:
        return (self.bits * dim + 7) // 8

    @property
    def default_range_stat(self) -> str:
        return "minmax" if self.bits == 8 else "quantiles"

    def factory(self) -> str:
        return f"SQ{self.bits}"


@dataclass(frozen=True)
class PQ(Codes):
    """Product quantization: ``m`` sub-vectors, each one code of ``nbits`` bits; ``opq`` learns
    a rotation first. 4-bit codes (``pq96x4fs``) are FAISS's fast-scan form: the distance
    tables fit SIMD registers, training learns 16 centroids per sub-vector instead of 256."""

    m: int = 48
    opq: bool = False
    nbits: int = 8
    min_train_size = 256

    def __str__(self) -> str:
        return f"{'opq' if self.opq else 'pq'}{self.m}" + ("x4fs" if self.fast_scan else "")

    @property
    def fast_scan(self) -> bool:
        return self.nbits == 4

    @property
    def train_size(self) -> int:  # type: ignore[override]
        return 39 * (1 << self.nbits)  # FAISS asks for 39 points per centroid

    @property
    def kind(self) -> str:
        return ("opq" if self.opq else "pq") + ("x4fs" if self.fast_scan else "")

    def code_bytes(self, dim: int) -> int:
        return (self.m * self.nbits + 7) // 8

    def check_dim(self, dim: int) -> None:
        if self.m > dim:
            raise InvalidSpec(f"{self} splits vectors into {self.m} sub-vectors, more than their {dim} dimensions")
        if dim % self.m and not self.opq:
            divisors = [m for m in range(1, dim + 1) if dim % m == 0 and m <= (dim if self.fast_scan else 96)]
            raise InvalidSpec(f"{self} splits vectors into {self.m} sub-vectors, but {self.m} does not divide "
                              f"the dimension {dim}: use {self.kind.rstrip('x4fs')} with one of {divisors}, or "
                              f"opq{self.m}{'x4fs' if self.fast_scan else ''}, whose rotation keeps "
                              f"{self.rotated_dim(dim)} dimensions")

    def rotated_dim(self, dim: int) -> int:
        """The dimensions OPQ rotates to: all of them, or the most that ``m`` sub-vectors of
        equal size take (``opq92`` on 384 dims: 368, 92 sub-vectors of 4)."""
        return self.m * (dim // self.m)

    def pretransform(self, dim: int) -> str:
        if not self.opq:
            return ""
        d_out = self.rotated_dim(dim)
        return f"OPQ{self.m}," if d_out == dim else f"OPQ{self.m}_{d_out},"

    def factory(self) -> str:
        if self.fast_scan:
            return f"PQ{self.m}x4fs"
        # "np": no polysemous training, which the factory otherwise runs for minutes and
        # which only Hamming pre-filtering (unused here) benefits from.
        return f"PQ{self.m}np"


@dataclass(frozen=True)
class RaBitQ(Codes):
    """RaBitQ (FAISS's ``IndexRaBitQ``): each vector, less the data's centre (or its IVF
    list's centroid), is randomly rotated and kept as one sign bit per dimension plus
    ``bits - 1`` finer bits, with per-vector correction factors (norm, and the code's
    inner product with the vector) that make its score estimate unbiased. It learns only
    the centre, so it trains on few vectors and never drifts with the data's scale."""

    bits: int = 1
    train_size = 1_000

    def __post_init__(self):
        _check_range("rabitq bits", self.bits, 1, 8)

    def __str__(self) -> str:
        return "rabitq" if self.bits == 1 else f"rabitq{self.bits}"

    @property
    def kind(self) -> str:
        return "rabitq"

    def code_bytes(self, dim: int) -> int:
        # FAISS's per-vector factors: 8 bytes at 1 bit, 20 with the finer bits' own
        return (self.bits * dim + 7) // 8 + (8 if self.bits == 1 else 20)

    def factory(self) -> str:
        return "RaBitQ" if self.bits == 1 else f"RaBitQ{self.bits}"


@dataclass(frozen=True)
class Binary(Codes):
    """One bit per dimension, thresholded at each dimension's training median."""

    train_size = 1_000

    def __str__(self) -> str:
        return "binary"

    def check_dim(self, dim: int) -> None:
        if dim % 8:
            raise InvalidSpec(f"binary quantization needs a dimension divisible by 8, got {dim}")

    def code_bytes(self, dim: int) -> int:
        return dim // 8

    def factory(self) -> str:
        raise InvalidSpec("binary codes have no FAISS float factory: they live in IndexBinaryFlat")


_ALIASES = {
    **dict.fromkeys(("fp32", "float32", "f32", "flat"), FloatCodes("fp32")),
    **dict.fromkeys(("fp16", "float16", "f16", "half"), FloatCodes("fp16")),
    **dict.fromkeys(("bf16", "bfloat16"), FloatCodes("bf16")),
    **dict.fromkeys(("int8", "i8", "sq8", "uint8"), SQ(8)),
    **dict.fromkeys(("int4", "i4", "sq4"), SQ(4)),
    **dict.fromkeys(("binary", "bit", "b1", "hamming"), Binary()),
}


def parse_codes(spec: Any) -> Codes:
    """``"int8"`` → ``SQ(bits=8)``, ``"pq48"`` → ``PQ(m=48)``; a ``Codes`` passes through."""
    if isinstance(spec, Codes):
        return spec
    s = spec.strip().lower() if isinstance(spec, str) else None
    if s in _ALIASES:
        return _ALIASES[s]
    m = re.fullmatch(r"(o?pq)(\d{1,4})(x4fs)?", s or "")
    if m and int(m.group(2)) > 0:
        return PQ(int(m.group(2)), opq=m.group(1) == "opq", nbits=4 if m.group(3) else 8)
    m = re.fullmatch(r"rabitq(\d{0,2})", s or "")
    if m:
        return RaBitQ(int(m.group(1) or 1))
    raise InvalidSpec(f"unknown quantization {spec!r}: expected one of {', '.join(QUANTIZATIONS)}")


# -- indexes --------------------------------------------------------------------------------
@dataclass(frozen=True)
class IndexConfig:
    """How codes are searched."""

    train_size = 0
    min_train_size = 1
    removes_in_place = True  # else removed ids are tombstones until compaction

    @property
    def kind(self) -> str:
        return re.sub(r"\d+$", "", str(self))

    def factory(self, codes: Codes, dim: int) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Flat(IndexConfig):
    """Every code scanned: exact over the codes."""

    def __str__(self) -> str:
        return "flat"

    def factory(self, codes: Codes, dim: int) -> str:
        # Flat PQ/OPQ is a one-list IVF: the same codes, and IVF search honours an ID
        # selector where flat IndexPQ does not.
        pre = codes.pretransform(dim)
        return f"{pre}IVF1,{codes.factory()}" if isinstance(codes, PQ) else codes.factory()


@dataclass(frozen=True)
class IVF(IndexConfig):
    """Codes in ``nlist`` lists around k-means centroids; a search probes ``nprobe`` of them."""

    nlist: int = 1024

    def __post_init__(self):
        _check_range("nlist", self.nlist, 1, MAX_LISTS)

    def __str__(self) -> str:
        return f"ivf{self.nlist}"

    @property
    def train_size(self) -> int:  # type: ignore[override]
        return 39 * self.nlist

    @property
    def min_train_size(self) -> int:  # type: ignore[override]
        return self.nlist

    @property
    def default_nprobe(self) -> int:
        # FAISS's default of 1 list loses most neighbours; 1/32 of the lists (>= 8) keeps
        # recall@10 above 0.9 on MiniLM embeddings (bench/results/).
        return min(self.nlist, max(8, self.nlist // 32))

    def factory(self, codes: Codes, dim: int) -> str:
        pre = codes.pretransform(dim)
        return f"{pre}IVF{self.nlist},{codes.factory()}"


@dataclass(frozen=True)
class HNSW(IndexConfig):
    """A graph with ``m`` links per node, walked ``ef_search`` wide."""

    m: int = 32
    removes_in_place = False
    default_ef_search = 64
    # Candidates kept while linking each new node. FAISS's default of 40 leaves a graph that
    # tops out near recall@10 0.97 (rescored x4) at ef 64 on MiniLM embeddings; 200 reaches
    # 0.99 there at the same query speed, for a build ~4.5x slower (bench/results/speed/).
    # FAISS saves it in the index file, so stores built before keep theirs.
    ef_construction = 200

    def __post_init__(self):
        _check_range("HNSW links", self.m, 2, MAX_LINKS)

    def __str__(self) -> str:
        return f"hnsw{self.m}"

    def factory(self, codes: Codes, dim: int) -> str:
        pre = codes.pretransform(dim)
        return f"{pre}HNSW{self.m}" + ("" if str(codes) == "fp32" else f",{codes.factory()}")


def _check_range(what: str, n: Any, lo: int, hi: int, error=InvalidSpec) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not lo <= n <= hi:
        raise error(f"{what} must be an integer from {lo} to {hi:,}, got {n!r}")


def parse_index(spec: Any) -> IndexConfig:
    """``"flat"``, ``"ivf1024"`` → ``IVF(nlist=1024)``, ``"hnsw32"`` → ``HNSW(m=32)``."""
    if isinstance(spec, IndexConfig):
        return spec
    s = spec.strip().lower() if isinstance(spec, str) else ""
    if s == "flat":
        return Flat()
    m = re.fullmatch(r"(ivf|hnsw)(\d*)", s)
    if m:
        n = int(m.group(2)) if m.group(2) else (1024 if m.group(1) == "ivf" else 32)
        return IVF(n) if m.group(1) == "ivf" else HNSW(n)
    raise InvalidSpec(f"unknown index {spec!r}: expected one of {', '.join(INDEXES)}, e.g. ivf1024 or hnsw32")


# -- one store's settings ---------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """Everything that fixes how a store encodes and searches, stored with the store."""

    dim: int
    codes: Codes = SQ(8)
    index: IndexConfig = Flat()
    metric: str = "cosine"
    model: str | None = None
    model_precision: str = "fp32"  # of the model that embedded the texts (stores before it: fp32)
    rescore: bool = False
    range_stat: str = "minmax"
    originals: str = "fp32"  # the precision originals are kept at (rescore=True); stores before it: fp32
    oversample: int = DEFAULT_OVERSAMPLE  # candidates per hit re-ranked when a search names none (qvec tune sets it)

    def __post_init__(self):
        _check_range("dim", self.dim, 1, 1 << 16)
        check_choices(metric=self.metric, range_stat=self.range_stat, rescore=self.rescore)
        if not isinstance(self.rescore, bool) or self.originals not in ORIGINALS:
            raise InvalidSpec(f"rescore must be True, False or one of {', '.join(ORIGINALS)}, got "
                              f"rescore={self.rescore!r} originals={self.originals!r}")
        _check_range("oversample", self.oversample, 1, MAX_OVERSAMPLE)
        self.codes.check_dim(self.dim)
        check_pair(self.codes, self.index)

    @property
    def quantization(self) -> Codes:
        return self.codes

    @property
    def train_size(self) -> int:
        """Vectors to collect before training automatically."""
        return max(self.codes.train_size, self.index.train_size)

    @property
    def min_train_size(self) -> int:
        return max(self.codes.min_train_size, self.index.min_train_size)

    @property
    def needs_training(self) -> bool:
        return self.train_size > 0

    @property
    def removes_in_place(self) -> bool:
        """False: removed ids stay as tombstones until compaction. HNSW cannot remove nodes,
        and FAISS 1.15's ``remove_ids`` on fast-scan lists (32 codes interleaved per block)
        leaves the list damaged: the next vector added there scores as another's code."""
        return self.index.removes_in_place and not getattr(self.codes, "fast_scan", False)

    @property
    def binary(self) -> bool:
        return isinstance(self.codes, Binary)

    @property
    def lower_is_closer(self) -> bool:
        """Whether a vector search's scores are distances (l2; Hamming for unrescored binary)
        rather than similarities."""
        return self.metric == "l2" or (self.binary and not self.rescore)

    def check_embedding_precision(self, precision: str, path) -> None:
        """``SettingsConflict`` unless texts embedded at ``precision`` may join this store's."""
        if precision != self.model_precision:
            raise SettingsConflict(
                f"{path}'s texts were embedded at model_precision={self.model_precision!r}, this Store embeds at "
                f"{precision!r}: mixing them in one index loses recall; reopen with "
                f"model_precision={self.model_precision!r} to add texts (other precisions may search)")

    def factory(self) -> str:
        """The FAISS index_factory string (binary stores use IndexBinaryFlat instead)."""
        return self.index.factory(self.codes, self.dim)

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["quantization"] = str(d.pop("codes"))
        d["index"] = str(self.index)
        return d

    @classmethod
    def from_json(cls, d: dict) -> Settings:
        d = dict(d)
        d["codes"] = parse_codes(d.pop("quantization"))
        d["index"] = parse_index(d["index"])
        return cls(**d)


def check_pair(codes: Codes, index: IndexConfig) -> None:
    if isinstance(codes, Binary) and not isinstance(index, Flat):
        raise InvalidSpec(f"binary quantization supports index='flat' only, got {index}: FAISS's binary "
                          "IVF/HNSW indexes cannot apply filters; use binary with flat, or pq/int4 with ivf/hnsw")
    if isinstance(index, HNSW) and (isinstance(codes, RaBitQ) or getattr(codes, "fast_scan", False)):
        raise InvalidSpec(f"{codes} codes have no HNSW form in FAISS (fast-scan PQ has none; HNSW-RaBitQ is L2 only): "
                          f"use {codes} with flat or ivf, or int8/int4/pq{{M}} with hnsw")


def check_choices(*, metric: Any = "cosine", range_stat: Any = "minmax", rescore: Any = False) -> None:
    """The settings that do not depend on the dimension: checked at ``open()``."""
    if metric not in METRICS:
        raise InvalidSpec(f"unknown metric {metric!r}: expected one of {', '.join(METRICS)}")
    if range_stat not in RANGE_STATS:
        raise InvalidSpec(f"unknown range_stat {range_stat!r}: expected one of {', '.join(RANGE_STATS)}")
    if not isinstance(rescore, bool) and rescore not in ORIGINALS:
        raise InvalidSpec(f"rescore must be True, False or the precision of the originals kept on disk "
                          f"({', '.join(map(repr, ORIGINALS))}), got {rescore!r}")


@dataclass(frozen=True)
class Requested:
    """The settings a caller passed to ``qvec.open``, checked there: the spec strings (as the
    store records them) of those given. A new store takes them with defaults for the rest."""

    given: dict

    @classmethod
    def parse(cls, *, quantization=None, index=None, metric=None, model=None, rescore=None, dim=None,
              range_stat=None) -> Requested:
        check_choices(**{k: v for k, v in (("metric", metric), ("range_stat", range_stat), ("rescore", rescore))
                         if v is not None})
        # rescore="fp16" is rescore=True with originals at fp16; True alone takes the store's
        # precision (fp32 for a new store)
        originals = rescore if isinstance(rescore, str) else None
        given = {"quantization": None if quantization is None else str(parse_codes(quantization)),
                 "index": None if index is None else str(parse_index(index)), "metric": metric, "model": model,
                 "rescore": None if rescore is None else bool(rescore), "originals": originals, "dim": dim,
                 "range_stat": range_stat}
        req = cls({k: v for k, v in given.items() if v is not None})
        check_pair(parse_codes(req.given.get("quantization", "int8")), parse_index(req.given.get("index", "flat")))
        if dim is not None:
            req.settings(dim, "fp32")  # the dimension-dependent checks too
        return req

    def settings(self, dim: int, model_precision: str, default_model: str | None = None) -> Settings:
        r = self.given
        codes = parse_codes(r.get("quantization", "int8"))
        return Settings(dim=dim, codes=codes, index=parse_index(r.get("index", "flat")),
                        metric=r.get("metric", "cosine"), model=r.get("model", default_model),
                        model_precision=model_precision, rescore=r.get("rescore", False),
                        range_stat=r.get("range_stat") or getattr(codes, "default_range_stat", "minmax"),
                        originals=r.get("originals", "fp32"))

    def conflicts(self, stored: Settings) -> list[str]:
        """``key=value (store has ...)`` for each given setting the stored ones differ from."""
        have = stored.to_json()
        return [f"{k}={v!r} (store has {have[k]!r})" for k, v in self.given.items() if have.get(k) != v]


@dataclass(frozen=True)
class SearchParams:
    """Per-query knobs, validated once: IVF lists to probe, HNSW breadth, candidates per hit."""

    nprobe: int | None = None
    ef_search: int | None = None
    oversample: int | None = None  # None: the store's own (Settings.oversample)

    @classmethod
    def parse(cls, params: dict) -> SearchParams:
        """The checked parameters; those seen before come from a small cache (4 us a single query
        spent parsing them), keyed by each value's type too, so that True never passes for 1."""
        try:
            key = tuple((k, type(v), v) for k, v in params.items())
            known = _PARSED.get(key)
        except TypeError:  # an unhashable value: refused below
            key = known = None
        if known is not None:
            return known
        unknown = set(params) - {"nprobe", "ef_search", "oversample"}
        if unknown:
            raise InvalidInput(f"unknown search parameter(s) {sorted(unknown)}: expected nprobe, ef_search, "
                               "oversample")
        out = {k: v for k, v in params.items() if v is not None}
        for name, hi in (("nprobe", MAX_LISTS), ("ef_search", MAX_SEARCH_BREADTH), ("oversample", MAX_OVERSAMPLE)):
            if name in out:
                if isinstance(out[name], numbers.Integral) and not isinstance(out[name], bool):
                    out[name] = int(out[name])  # numpy's integers too, as k takes them (np.bool_ is not Integral)
                _check_range(name, out[name], 1, hi, InvalidInput)
        parsed = cls(**out)
        if key is not None and len(_PARSED) < 256:
            _PARSED[key] = parsed
        return parsed


_PARSED: dict[tuple, SearchParams] = {}  # see SearchParams.parse
