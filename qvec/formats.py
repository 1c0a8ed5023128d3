"""Reading the vector files users already have: ``.npy``, the TEXMEX ``.fvecs``/``.ivecs``/
``.bvecs`` layouts (SIFT, GIST) and the ann-benchmarks HDF5 layout (glove-100-angular,
nytimes-256-angular, sift-128-euclidean: datasets ``train``, ``test``, ``neighbors``,
``distances`` and a ``distance`` attribute).

Nothing here unpickles: ``.npy`` is read with ``allow_pickle=False``. A file that does not
match its layout raises ``InvalidInput`` naming the file and what was wrong.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InvalidInput

__all__ = ["read_vectors", "read_ann_hdf5", "write_vecs", "AnnDataset", "VECTOR_SUFFIXES"]

VECTOR_SUFFIXES = (".npy", ".fvecs", ".bvecs", ".ivecs", ".hdf5", ".h5")
# ann-benchmarks names its metrics by distance; a store names them by similarity.
ANN_METRICS = {"angular": "cosine", "euclidean": "l2", "dot": "ip", "ip": "ip"}


def _read_texmex(path: Path, dtype, header_bytes: int = 4) -> np.ndarray:
    """Per row: an int32 dimension d, then d values of ``dtype``."""
    raw = np.fromfile(path, dtype=np.uint8)
    if len(raw) < header_bytes:
        raise ValueError("empty file")
    d = int(raw[:4].view(np.int32)[0])
    row = 4 + d * np.dtype(dtype).itemsize
    if d <= 0 or len(raw) % row:
        raise ValueError(f"size {len(raw)} is not a whole number of rows of dimension {d}")
    rows = raw.reshape(-1, row)
    if not (rows[:, :4].copy().view(np.int32).ravel() == d).all():
        raise ValueError("rows do not all start with the same dimension")
    return rows[:, 4:].copy().view(dtype)


def read_vectors(path: str | os.PathLike) -> np.ndarray:
    """A 2-D array from .npy, .fvecs (float32), .bvecs (uint8) or .ivecs (int32: neighbour ids)."""
    path = Path(path)
    suffix = path.suffix.lower()
    readers = {
        ".npy": lambda p: np.load(p, allow_pickle=False),  # never unpickle a user's file
        ".fvecs": lambda p: _read_texmex(p, np.float32),
        ".bvecs": lambda p: _read_texmex(p, np.uint8),
        ".ivecs": lambda p: _read_texmex(p, np.int32),
    }
    if suffix not in readers:
        raise InvalidInput(f"{path.name}: unknown vector file type {suffix!r}: expected .npy, .fvecs, .bvecs or .ivecs "
                           "(or an ann-benchmarks .hdf5)")
    try:
        x = readers[suffix](path)
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise InvalidInput(f"{path.name}: not a readable {suffix} file ({e})") from None
    if x.ndim != 2 or not len(x):
        raise InvalidInput(f"{path.name}: expected a non-empty 2-D array (rows × dimensions), got shape {x.shape}")
    return x


def write_vecs(path: str | os.PathLike, x: np.ndarray) -> None:
    """Write the TEXMEX layout its suffix names (.fvecs float32, .ivecs int32, .bvecs uint8)."""
    path = Path(path)
    dtype = {".fvecs": np.float32, ".ivecs": np.int32, ".bvecs": np.uint8}[path.suffix.lower()]
    x = np.asarray(x, dtype=dtype)
    head = np.full((len(x), 1), x.shape[1], dtype=np.int32).view(np.uint8)
    np.hstack([head, x.view(np.uint8).reshape(len(x), -1)]).tofile(path)


@dataclass
class AnnDataset:
    """An ann-benchmarks file: base vectors, queries, their true neighbours and the metric."""

    train: np.ndarray
    test: np.ndarray
    neighbors: np.ndarray | None
    metric: str


def read_ann_hdf5(path: str | os.PathLike) -> AnnDataset:
    """Read the ann-benchmarks HDF5 layout (``train``, ``test``, optional ``neighbors``)."""
    import h5py  # only the HDF5 path needs it

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("train", "test") if k not in f]
            if missing:
                raise InvalidInput(f"{path.name}: no {' or '.join(missing)} dataset: expected the ann-benchmarks "
                                   "layout (train, test, neighbors, distances)")
            distance = f.attrs.get("distance", "angular")
            distance = distance.decode() if isinstance(distance, bytes) else str(distance)
            if distance not in ANN_METRICS:
                raise InvalidInput(f"{path.name}: distance {distance!r} is not supported: "
                                   f"expected one of {', '.join(ANN_METRICS)}")
            return AnnDataset(
                train=np.asarray(f["train"], dtype=np.float32),
                test=np.asarray(f["test"], dtype=np.float32),
                neighbors=np.asarray(f["neighbors"], dtype=np.int64) if "neighbors" in f else None,
                metric=ANN_METRICS[distance],
            )
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file") from None
    except OSError as e:  # h5py's "file signature not found" and friends
        raise InvalidInput(f"{path.name}: not a readable HDF5 file ({e})") from None
