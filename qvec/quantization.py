"""Spec strings ("int8", "pq48", "ivf1024", "hnsw32") parsed once into typed settings.

A store's settings travel together in one ``Settings`` object, validated at the
boundary (``qvec.open``) and stored as JSON in the store's database.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from .errors import InvalidSpec

__all__ = ["Quantization", "IndexKind", "Settings", "QUANTIZATIONS", "METRICS", "RANGE_STATS"]

QUANTIZATIONS = ("fp32", "fp16", "bf16", "int8", "int4", "pq{M}", "opq{M}", "binary")
INDEXES = ("flat", "ivf{nlist}", "hnsw{M}")
METRICS = ("cosine", "ip", "l2")
# FAISS ScalarQuantizer range statistics for int8/int4. The defaults were measured by
# bench/range_stats.py on 100K MiniLM embeddings (bench/results/range_stats.md): with 8
# bits the full min..max range is best (recall@10 0.994 vs <= 0.991); with 4 bits the
# steps are coarse enough that clipping the 0.1% tails wins (0.940 vs 0.921 for min..max).
RANGE_STATS = ("minmax", "meanstd", "quantiles", "optim")
DEFAULT_RANGE_STAT = {"int8": "minmax", "int4": "quantiles"}

_SQ = {"fp16": "SQfp16", "bf16": "SQbf16", "int8": "SQ8", "int4": "SQ4"}


@dataclass(frozen=True)
class Quantization:
    """How each vector is encoded: ``kind`` is fp32/fp16/bf16/int8/int4/pq/opq/binary;
    ``m`` is the number of PQ sub-vectors (pq/opq only)."""

    kind: str
    m: int = 0

    @classmethod
    def parse(cls, spec: str) -> Quantization:
        s = str(spec).strip().lower()
        if s in ("fp32", "float32", "f32", "flat"):
            return cls("fp32")
        if s in ("fp16", "float16", "f16", "half"):
            return cls("fp16")
        if s in ("bf16", "bfloat16"):
            return cls("bf16")
        if s in ("int8", "i8", "sq8", "uint8"):
            return cls("int8")
        if s in ("int4", "i4", "sq4"):
            return cls("int4")
        if s in ("binary", "bit", "b1", "hamming"):
            return cls("binary")
        m = re.fullmatch(r"(o?pq)(\d+)", s)
        if m and int(m.group(2)) > 0:
            return cls(m.group(1), int(m.group(2)))
        raise InvalidSpec(f"unknown quantization {spec!r}: expected one of {', '.join(QUANTIZATIONS)}")

    def __str__(self) -> str:
        return f"{self.kind}{self.m}" if self.m else self.kind

    @property
    def needs_training(self) -> bool:
        return self.kind in ("int8", "int4", "pq", "opq", "binary")

    def check_dim(self, dim: int) -> None:
        if self.kind in ("pq", "opq") and dim % self.m:
            divisors = [m for m in range(1, dim + 1) if dim % m == 0 and m <= 96]
            raise InvalidSpec(
                f"{self} splits vectors into {self.m} sub-vectors, but {self.m} does not divide "
                f"the dimension {dim}: use pq with one of {divisors}"
            )
        if self.kind == "binary" and dim % 8:
            raise InvalidSpec(f"binary quantization needs a dimension divisible by 8, got {dim}")

    def code_factory(self) -> str:
        """The FAISS factory suffix for the codes (not used for binary)."""
        if self.kind == "fp32":
            return "Flat"
        if self.kind in _SQ:
            return _SQ[self.kind]
        # "np": no polysemous training, which the factory otherwise runs for minutes
        # and which only Hamming pre-filtering (unused here) benefits from.
        return f"PQ{self.m}np"


@dataclass(frozen=True)
class IndexKind:
    """How codes are searched: ``flat`` scans all, ``ivf`` probes ``param`` lists, ``hnsw``
    walks a graph with ``param`` links per node."""

    kind: str
    param: int = 0

    @classmethod
    def parse(cls, spec: str) -> IndexKind:
        s = str(spec).strip().lower()
        if s == "flat":
            return cls("flat")
        m = re.fullmatch(r"(ivf|hnsw)(\d*)", s)
        if m:
            n = int(m.group(2) or (1024 if m.group(1) == "ivf" else 32))
            if n >= 1:
                return cls(m.group(1), n)
        raise InvalidSpec(f"unknown index {spec!r}: expected one of {', '.join(INDEXES)}, e.g. ivf1024 or hnsw32")

    def __str__(self) -> str:
        return f"{self.kind}{self.param}" if self.param else self.kind


@dataclass(frozen=True)
class Settings:
    """Everything that fixes how a store encodes and searches, stored with the store."""

    dim: int
    quantization: Quantization = Quantization("int8")
    index: IndexKind = IndexKind("flat")
    metric: str = "cosine"
    model: str | None = None
    model_precision: str = "fp32"  # of the model that embedded the texts (stores before it: fp32)
    rescore: bool = False
    range_stat: str = "minmax"

    def __post_init__(self):
        if not isinstance(self.dim, int) or self.dim <= 0:
            raise InvalidSpec(f"dim must be a positive integer, got {self.dim!r}")
        if self.metric not in METRICS:
            raise InvalidSpec(f"unknown metric {self.metric!r}: expected one of {', '.join(METRICS)}")
        if self.range_stat not in RANGE_STATS:
            raise InvalidSpec(f"unknown range_stat {self.range_stat!r}: expected one of {', '.join(RANGE_STATS)}")
        self.quantization.check_dim(self.dim)
        if self.quantization.kind == "binary" and self.index.kind != "flat":
            raise InvalidSpec(
                f"binary quantization supports index='flat' only, got {self.index}: FAISS's binary "
                "IVF/HNSW indexes cannot apply filters; use binary with flat, or pq/int4 with ivf/hnsw"
            )

    @property
    def train_size(self) -> int:
        """Vectors to collect before training automatically."""
        n = 0
        if self.quantization.kind in ("int8", "int4", "binary"):
            n = 1_000
        elif self.quantization.kind in ("pq", "opq"):
            n = 39 * 256  # FAISS asks for 39 points per centroid
        if self.index.kind == "ivf":
            n = max(n, 39 * self.index.param)
        return n

    @property
    def min_train_size(self) -> int:
        """The fewest vectors training can work with at all."""
        n = 1
        if self.quantization.kind in ("pq", "opq"):
            n = 256
        if self.index.kind == "ivf":
            n = max(n, self.index.param)
        return n

    @property
    def needs_training(self) -> bool:
        return self.quantization.needs_training or self.index.kind == "ivf"

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["quantization"] = str(self.quantization)
        d["index"] = str(self.index)
        return d

    @classmethod
    def from_json(cls, d: dict) -> Settings:
        d = dict(d)
        d["quantization"] = Quantization.parse(d["quantization"])
        d["index"] = IndexKind.parse(d["index"])
        return cls(**d)
