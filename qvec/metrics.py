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


def recall_at_k(I: np.ndarray, gt: np.ndarray, k: int, gt_scores: np.ndarray | None = None,
                tol: float = 1e-5) -> float:
    """Mean |top-k results ∩ top-k true neighbours| / k (the ANN-benchmarks definition).

    With ``gt_scores`` (the exact scores of ``gt``, best first, with columns beyond k), a
    neighbour whose score ties the k-th (within ``tol``) counts as a true neighbour too:
    among equal scores (duplicate documents) which k are "the" top k is arbitrary.
    """
    I = np.asarray(I)[:, :k]
    gt = np.asarray(gt)
    if gt_scores is None:
        true = [set(g[:k].tolist()) for g in gt]
    else:
        kth = np.asarray(gt_scores)[:, k - 1 : k]
        tied = np.abs(np.asarray(gt_scores) - kth) <= tol
        true = [set(g[:k].tolist()) | set(g[t].tolist()) for g, t in zip(gt, tied)]
    hits = sum(min(k, len(set(row[row >= 0].tolist()) & t)) for row, t in zip(I, true))
    return hits / (k * len(gt))


def _first_relevant(I: np.ndarray, relevant, k: int) -> list[int | None]:
    """Per query, the 0-based rank of its first relevant result in the top k (None: none).
    ``relevant`` holds one id per query, or a collection of ids per query."""
    out = []
    for row, rel in zip(np.asarray(I)[:, :k].tolist(), relevant):
        rel = set(rel) if isinstance(rel, (set, frozenset, list, tuple)) else {int(rel)}
        out.append(next((i for i, x in enumerate(row) if x in rel), None))
    return out


def mrr_at_k(I: np.ndarray, relevant, k: int) -> float:
    """Mean reciprocal rank of each query's first relevant result within the top k (0 if absent)."""
    return float(np.mean([0.0 if r is None else 1.0 / (r + 1) for r in _first_relevant(I, relevant, k)]))


def hit_at_k(I: np.ndarray, relevant, k: int) -> float:
    """Fraction of queries with a relevant result in the top k."""
    return float(np.mean([r is not None for r in _first_relevant(I, relevant, k)]))
