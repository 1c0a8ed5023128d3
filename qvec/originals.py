"""The original FP32 vectors, kept on disk for rescoring and memory-mapped for reads:
row ``fid`` of a flat float32 file. Rows are written before the SQLite commit that makes
them visible, so a committed row always has its original; rows past the last commit are
overwritten by the next add."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["Originals"]


class Originals:
    def __init__(self, path: Path, dim: int):
        self.path = Path(path)
        self.dim = dim
        self.row_bytes = 4 * dim
        self._map: np.memmap | None = None

    def write(self, first_fid: int, x: np.ndarray) -> None:
        """Rows first_fid, first_fid+1, ... (an add's fids are consecutive), then fsync."""
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, np.ascontiguousarray(x, dtype=np.float32).tobytes(), first_fid * self.row_bytes)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._map = None

    def read(self, fids: np.ndarray) -> np.ndarray:
        fids = np.asarray(fids, dtype=np.int64)
        rows = os.path.getsize(self.path) // self.row_bytes if self.path.exists() else 0
        if len(fids) and int(fids.max()) >= rows:
            from .errors import CorruptStore

            raise CorruptStore(
                f"{self.path} holds {rows} vectors but vector {int(fids.max())} was asked for: "
                "the originals file is truncated; rebuild the store"
            )
        if self._map is None or len(self._map) < rows:
            self._map = np.memmap(self.path, dtype=np.float32, mode="r", shape=(rows, self.dim))
        return np.asarray(self._map[fids])

    def nbytes(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0
