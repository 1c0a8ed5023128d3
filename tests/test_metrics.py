"""The retrieval metrics on small cases whose answers are known by hand."""

import numpy as np
import pytest

from qvec.metrics import exact_knn, hit_at_k, mrr_at_k, recall_at_k


def test_recall_is_exactly_one_when_the_sets_match_in_any_order():
    gt = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 2, 1], [8, 5, 7, 6]])
    assert recall_at_k(found, gt, 4) == 1.0


def test_recall_is_exactly_one_half_when_half_the_neighbours_are_found():
    gt = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[1, 2, 90, 91], [92, 93, 7, 8]])
    assert recall_at_k(found, gt, 4) == 0.5


def test_recall_counts_padding_as_missing_and_only_the_top_k():
    gt = np.array([[1, 2]])
    assert recall_at_k(np.array([[1, -1]]), gt, 2) == 0.5
    # the third result is beyond k=2: finding neighbour 2 there does not count
    assert recall_at_k(np.array([[1, 9, 2]]), np.array([[1, 2, 3]]), 2) == 0.5


def test_mrr_and_hit_with_one_or_several_relevant_ids():
    found = np.array([[7, 3, 5], [1, 2, 3], [4, 4, 4]])
    assert mrr_at_k(found, np.array([3, 1, 9]), 3) == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert hit_at_k(found, np.array([3, 1, 9]), 3) == pytest.approx(2 / 3)
    # several relevant ids: the first one found sets the rank
    assert mrr_at_k(found, [{5, 3}, {2}, {4, 9}], 3) == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
    # beyond k does not count
    assert hit_at_k(found, np.array([5, 3, 9]), 2) == 0.0


def test_exact_knn_matches_numpy_for_cosine_and_l2():
    rng = np.random.default_rng(0)
    xb, xq = rng.normal(size=(200, 16)).astype(np.float32), rng.normal(size=(5, 16)).astype(np.float32)
    _, I = exact_knn(xb, xq, 5)
    nb = xb / np.linalg.norm(xb, axis=1, keepdims=True)
    np.testing.assert_array_equal(I, np.argsort(-(xq @ nb.T), axis=1)[:, :5])
    _, I = exact_knn(xb, xq, 5, metric="l2")
    d = ((xq[:, None, :] - xb[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(I, np.argsort(d, axis=1)[:, :5])


def test_ties_at_the_kth_neighbour_count_when_scores_are_given():
    # ids 2 and 3 are duplicates (same score): either one is a correct 2nd neighbour
    gt, scores = np.array([[1, 2, 3, 4]]), np.array([[0.9, 0.8, 0.8, 0.1]])
    assert recall_at_k(np.array([[1, 3]]), gt, 2) == 0.5
    assert recall_at_k(np.array([[1, 3]]), gt, 2, gt_scores=scores) == 1.0
    assert recall_at_k(np.array([[3, 2]]), gt, 2, gt_scores=scores) == 1.0
    assert recall_at_k(np.array([[1, 4]]), gt, 2, gt_scores=scores) == 0.5
