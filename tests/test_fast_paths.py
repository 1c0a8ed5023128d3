"""The fast paths (#13) answer exactly as the paths they stand in for: block-decoded GEMM
batches with a filter against FAISS's own filtered scan, one FAISS thread for a few queries."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

import qvec
from qvec.config import HNSW
from qvec.index import DECODED_SEARCH_MIN_QUERIES, FEW_QUERIES, _unwrap
from qvec.store import EXACT_FILTER_ROWS


@pytest.mark.parametrize("quantization,metric", [("int8", "cosine"), ("fp16", "l2"), ("int4", "ip")])
def test_a_filtered_batch_over_decoded_blocks_is_faiss_filtered_scan(tmp_path, quantization, metric):
    rng = np.random.default_rng(5)
    n = 2 * EXACT_FILTER_ROWS + 500  # the filter below keeps more rows than are scored exactly
    x = rng.standard_normal((n, 24)).astype(np.float32)
    xq = rng.standard_normal((DECODED_SEARCH_MIN_QUERIES + 6, 24)).astype(np.float32)
    with qvec.open(tmp_path / "s.qvec", quantization=quantization, metric=metric) as s:
        s.add(vectors=x, ids=[f"r{i}" for i in range(n)], metadata=[{"odd": i % 2, "i": i} for i in range(n)])
        s.delete([f"r{i}" for i in range(1, 400, 4)])  # removed in place: rows shift under the fids
        where = {"$or": [{"odd": 1}, {"i": {"$lt": 300}}]}
        assert len(s.catalog.where_fids(where)) > EXACT_FILTER_ROWS
        batch = s.search_batch(xq, 10, where=where, include=("metadata",))  # decoded blocks, then GEMM
        one_by_one = [s.search(q, 10, where=where, include=()) for q in xq]  # FAISS's scan with an ID selector
    for got, want in zip(batch, one_by_one):
        assert [h.id for h in got] == [h.id for h in want]
        assert [h.score for h in got] == pytest.approx([h.score for h in want], rel=1e-4, abs=1e-4)
        assert all(h.metadata["odd"] == 1 or h.metadata["i"] < 300 for h in got)
        assert all(h.id not in {f"r{i}" for i in range(1, 400, 4)} for h in got)


def test_a_few_queries_search_on_one_faiss_thread_and_leave_the_setting_alone(tmp_path):
    x = np.random.default_rng(6).standard_normal((3000, 16)).astype(np.float32)
    threads = faiss.omp_get_max_threads()
    with qvec.open(tmp_path / "s.qvec", quantization="fp32", index="hnsw16") as s:
        s.add(vectors=x, ids=[str(i) for i in range(len(x))])
        few = s.search_batch(x[: FEW_QUERIES - 1], 5, include=())
        many = s.search_batch(x[: 4 * FEW_QUERIES], 5, include=())
    assert [[h.id for h in r] for r in few] == [[h.id for h in r] for r in many[: FEW_QUERIES - 1]]
    assert [r[0].id for r in few] == [str(i) for i in range(FEW_QUERIES - 1)]
    assert faiss.omp_get_max_threads() == threads


@pytest.mark.parametrize("quantization", ["fp32", "int8"])
def test_hnsw_graphs_are_linked_with_qvecs_ef_construction_and_keep_it(tmp_path, quantization):
    """FAISS's default efConstruction (40) caps recall well below 0.99 on real embeddings;
    the store builds with HNSW.ef_construction, and the saved index keeps it."""
    x = np.random.default_rng(7).standard_normal((600, 16)).astype(np.float32)
    path = tmp_path / "s.qvec"
    with qvec.open(path, quantization=quantization, index="hnsw16") as s:
        s.add(vectors=x, ids=[str(i) for i in range(len(x))])
        s.train()
        assert _unwrap(s.journal.index.index).hnsw.efConstruction == HNSW.ef_construction != 40
    with qvec.open(path, read_only=True) as s:
        s.search(x[0], 5)
        assert _unwrap(s.journal.index.index).hnsw.efConstruction == HNSW.ef_construction
