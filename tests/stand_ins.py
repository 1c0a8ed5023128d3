"""Stand-ins the tests share."""

from __future__ import annotations

import zlib

import numpy as np


class FixedEmbedder:
    """A stand-in model: each text's vector is seeded by its CRC32, so stores of texts are
    tested without torch, and the same text always embeds to the same vector."""

    precision, truncated, window = "fp32", 0, None

    def __init__(self, dim: int = 16):
        self.name, self.dim = "fixed", dim

    def embed(self, texts, *, show_progress=False):
        return np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(self.dim) for t in texts]
                        ).astype(np.float32)
