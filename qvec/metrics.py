"""Retrieval-quality metrics over numpy arrays, shared by tests and benchmarks.

Names follow FAISS contrib: ``gt`` ground-truth neighbour ids (nq, >=k), ``I`` result
ids (nq, >=k); -1 pads missing results.
"""

from __future__ import annotations

import faiss
import numpy as np

__all__ = ["exact_knn", "recall_at_k", "mrr_at_k", "hit_at_k"]


def exact_knn(xb: np.ndarray, xq: np.ndarray, k: int, metric: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """Exact FP32 (scores, row ids) by brute force: the ground truth for recall."""
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    if metric == "cosine":
        xb = xb / np.linalg.norm(xb, axis=1, keepdims=True)
        xq = xq / np.linalg.norm(xq, axis=1, keepdims=True)
    m = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    return faiss.knn(xq, xb, k, metric=m)


def recall_at_k(I: np.ndarray, gt: np.ndarray, k: int) -> float:
    """Mean |top-k results ∩ top-k true neighbours| / k (the ANN-benchmarks definition)."""
    I, gt = np.asarray(I)[:, :k], np.asarray(gt)[:, :k]
    hits = sum(len(np.intersect1d(a[a >= 0], b)) for a, b in zip(I, gt))
    return hits / (k * len(gt))


def mrr_at_k(I: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Mean reciprocal rank of each query's one relevant id within the top k (0 if absent)."""
    I = np.asarray(I)[:, :k]
    ranks = [np.flatnonzero(row == r) for row, r in zip(I, relevant)]
    return float(np.mean([1.0 / (r[0] + 1) if len(r) else 0.0 for r in ranks]))


def hit_at_k(I: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Fraction of queries whose relevant id is in the top k."""
    I = np.asarray(I)[:, :k]
    return float(np.mean([(row == r).any() for row, r in zip(I, relevant)]))
