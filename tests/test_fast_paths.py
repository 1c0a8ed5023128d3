"""The fast paths (#13) answer exactly as the paths they stand in for: block-decoded GEMM
batches with a filter against FAISS's own filtered scan, one FAISS thread for a few queries."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

import qvec
from qvec import inputs
from qvec.config import HNSW, SearchParams
from qvec.errors import CorruptStore
from qvec.index import (
    DECODED_SEARCH_MIN_QUERIES,
    FAST_SCAN_IMPLEM,
    FEW_QUERIES,
    FOLD_FEW_NPROBE,
    LAYOUT_MIN_ROWS,
    FoldedScan,
    _unwrap,
)
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


@pytest.mark.parametrize("quantization,metric", [("fp32", "cosine"), ("int8", "l2")])
def test_a_large_hnsw_add_is_laid_out_by_cluster_and_still_read_by_fid(tmp_path, corpus, quantization, metric):
    """An HNSW add of LAYOUT_MIN_ROWS rows or more stores them cluster by cluster (neighbours
    next to each other, bench/results/hnsw_walk.md), so the index's fids no longer ascend: each
    fid still decodes to its own vector, small filters (scored from decoded codes) and searches
    answer as before, after a reopen, and after a compaction that builds the graph again."""
    rng = np.random.default_rng(11)
    copies = LAYOUT_MIN_ROWS // len(corpus[1]) + 1
    x = np.vstack([corpus[1] + rng.normal(0, 0.01, corpus[1].shape) for _ in range(copies)]).astype(np.float32)
    xn = inputs.normalised(x, metric)  # as the index holds them
    ids = [str(i) for i in range(len(x))]
    path = tmp_path / "s.qvec"
    tol = 1e-6 if quantization == "fp32" else 0.05

    def check(s, live):
        vi = s.journal.index
        held = faiss.vector_to_array(faiss.downcast_index(vi.index).id_map)
        assert (np.diff(held) < 0).any() and np.array_equal(np.sort(held), vi.fids())  # laid out, every fid once
        rows = xn[live[held]]  # the vectors in the order the index stores them: neighbours in runs
        near = np.einsum("ij,ij->i", rows[1:], rows[:-1]) / np.linalg.norm(rows[1:], axis=1) \
            / np.linalg.norm(rows[:-1], axis=1)
        shuffled = rows[rng.permutation(len(rows))]
        far = np.einsum("ij,ij->i", shuffled[1:], shuffled[:-1]) / np.linalg.norm(shuffled[1:], axis=1) \
            / np.linalg.norm(shuffled[:-1], axis=1)
        assert np.median(near) > np.median(far) + 0.1
        fids = rng.choice(len(live), 60, replace=False)
        assert np.allclose(vi.reconstruct(fids), xn[live[fids]], atol=tol)
        with pytest.raises(CorruptStore):
            vi.reconstruct(np.array([len(x) + 5]))
        small = {"i": {"$lt": 60}}  # few enough rows to be scored exactly, from their decoded codes
        for q in x[live[:3]]:
            got = [h.id for h in s.search(q, 5, where=small, include=())]
            want = [h.id for h in s.search_batch(q[None], 5, where=small, include=())[0]]
            assert got == want and all(int(i) < 60 for i in got)
        found = s.search_batch(x[live[::97]], 1, include=())
        assert np.mean([r[0].id == ids[i] for r, i in zip(found, live[::97])]) > 0.9  # each row finds itself

    with qvec.open(path, quantization=quantization, index="hnsw16", metric=metric) as s:
        s.add(vectors=x, ids=ids, metadata=[{"i": i} for i in range(len(x))])
        s.train()
        check(s, np.arange(len(x)))
    with qvec.open(path, read_only=True) as s:
        check(s, np.arange(len(x)))
    with qvec.open(path) as s:
        s.delete(ids[:40])
        s.checkpoint(compact=True)  # a graph drops deleted nodes only by being built again
        check(s, np.arange(40, len(x)))


def _answers(hits):
    return [(h.id, h.score) for h in hits]


@pytest.mark.filterwarnings("ignore:training")
@pytest.mark.parametrize("quantization,index,metric,rescore", [
    ("int8", "flat", "cosine", False), ("fp32", "hnsw16", "l2", False), ("pq4", "ivf8", "ip", True),
    ("int8", "hnsw16", "cosine", True)])
def test_a_single_vector_query_answers_exactly_as_its_batch_of_one(tmp_path, quantization, index, metric, rescore):
    """search() of one float32 vector for ids takes the latency path (qvec.inputs.one_vector,
    records.one_query_hits): the same hits and scores, to the bit, as search_batch's full path,
    whatever the input type and however many rows are deleted or asked for."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1200, 16)).astype(np.float32)
    with qvec.open(tmp_path / "s.qvec", quantization=quantization, index=index, metric=metric, rescore=rescore) as s:
        s.add(vectors=x, ids=[f"r{i}" for i in range(len(x))])
        s.train()
        s.delete([f"r{i}" for i in range(0, 300, 3)])  # tombstones (hnsw) or removed in place
        params = {"ef_search": 24} if index.startswith("hnsw") else {"nprobe": 4} if index.startswith("ivf") else {}
        for q in (x[0], x[5] * 3, rng.standard_normal(16).astype(np.float32)):
            for k in (1, 10, 2000):  # 2000: past the live rows
                want = _answers(s.search_batch(q[None, :], k, include=(), **params)[0])
                assert _answers(s.search(q, k, include=(), **params)) == want
                # inputs the latency path hands back to search_batch: the same answer
                assert _answers(s.search(q.astype(np.float64), k, include=(), **params)) == want
                assert _answers(s.search(q.tolist(), k, include=(), **params)) == want
                assert _answers(s.search(np.repeat(q, 2)[::2], k, include=(), **params)) == want
            assert [h.id for h in s.search(q, 10, include=("metadata",), **params)] == [i for i, _ in want[:10]]


def test_the_latency_path_refuses_what_search_batch_refuses(tmp_path):
    x = np.random.default_rng(9).standard_normal((50, 8)).astype(np.float32)
    path = tmp_path / "s.qvec"
    with qvec.open(path) as s:
        assert s.search(x[0], 5, include=()) == []  # nothing stored yet
        s.add(vectors=x, ids=[str(i) for i in range(len(x))])
        for q, error, match in [(np.full(8, np.nan, np.float32), qvec.InvalidInput, "row 0 contains NaN"),
                                (np.zeros(8, np.float32), qvec.InvalidInput, "zero vector"),
                                (np.ones(9, np.float32), qvec.DimensionMismatch, "8-dim vectors, got 9"),
                                (np.array([np.inf] + [0] * 7, np.float32), qvec.InvalidInput, "NaN or inf")]:
            with pytest.raises(error, match=match):
                s.search(q, 5, include=())
        with pytest.raises(qvec.InvalidInput, match="k must be a positive integer"):
            s.search(x[0], 0, include=())
        with pytest.raises(qvec.InvalidInput, match="unknown search parameter"):
            s.search(x[0], 5, include=(), nprob=3)
    with pytest.raises(qvec.StoreClosed):
        s.search(x[0], 5, include=())


def test_a_vector_too_large_or_small_to_square_in_float32_keeps_its_direction(tmp_path):
    """1e20 is a float32, its square is not: the norm overflowed to inf, and the vector was
    divided into zeros, stored and searched as such, without a word. 1e-30's square
    underflows to 0: the vector was refused as "a zero vector"."""
    x = np.random.default_rng(10).standard_normal((40, 8)).astype(np.float32)
    with qvec.open(tmp_path / "s.qvec", quantization="fp32") as s:
        s.add(vectors=np.vstack([x, x[3] * 1e20, x[4] * 1e-30]), ids=[str(i) for i in range(40)] + ["big", "tiny"])
        assert np.allclose(s.vectors(["big"])[0], x[3] / np.linalg.norm(x[3]), atol=1e-6)
        assert np.allclose(s.vectors(["tiny"])[0], x[4] / np.linalg.norm(x[4]), atol=1e-6)
        for q, want in ((x[3] * 1e21, {"3", "big"}), (x[4] * 1e-31, {"4", "tiny"})):
            for hits in (s.search(q, 2, include=()), s.search_batch(q[None, :], 2)[0]):
                assert {h.id for h in hits} == want and hits[0].score == pytest.approx(1, abs=1e-5)
        with pytest.raises(qvec.InvalidInput, match="row 0 is a zero vector"):
            s.search(np.zeros(8, np.float32), 2, include=())


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_queries_reach_faiss_on_a_64_byte_boundary(metric):
    """FAISS's AVX2 loads ran 8-18% slower over an IVF list when the query sat 16 or 48 bytes
    past a cache line: queries are copied to an aligned buffer, whatever numpy handed over."""
    from qvec.inputs import ALIGN, normalised, one_vector

    x = np.random.default_rng(11).standard_normal((40, 384)).astype(np.float32)
    for offset in range(0, ALIGN, 4):  # every float32 alignment an array of the caller's can have
        buf = np.empty(x.size + ALIGN, np.float32)
        start = (-buf.ctypes.data % ALIGN + offset) // 4
        view = buf[start : start + x.size].reshape(x.shape)
        view[...] = x
        batch, one = normalised(view, metric), one_vector(view[3], 384, metric)
        assert batch.ctypes.data % ALIGN == 0 and one.ctypes.data % ALIGN == 0
        assert batch.flags.c_contiguous and batch.dtype == np.float32
        assert np.array_equal(one[0], batch[3])


@pytest.mark.filterwarnings("ignore:training")
@pytest.mark.parametrize("quantization,index,metric,rescore", [
    ("fp32", "hnsw16", "l2", False), ("int8", "ivf4", "ip", True), ("int8", "flat", "cosine", False)])
def test_a_batch_searches_the_callers_float32_queries_uncopied_and_leaves_them_as_they_were(
        tmp_path, corpus, quantization, index, metric, rescore):
    """search_batch reads a float32 C-contiguous query array where it lies (``as_matrix(copy=False)``):
    FAISS, the folded IVF scan, the decoded blocks and the re-rank only read it. The caller's array
    comes back bit for bit, and the hits are those of the same queries handed over as float64."""
    _, xb, _, xq = corpus
    xq = np.vstack([xq, xq[::-1]])  # past DECODED_SEARCH_MIN_QUERIES: int8/flat decodes blocks
    buf = np.empty(xq.size + 16, np.float32)  # on a 64-byte boundary: l2 and ip pass it to FAISS as it is
    start = (-buf.ctypes.data % inputs.ALIGN) // 4
    queries = buf[start : start + xq.size].reshape(xq.shape)
    queries[...] = xq * 3  # not unit length: cosine must normalise a copy
    before = queries.copy()
    with qvec.open(tmp_path / "s.qvec", quantization=quantization, index=index, metric=metric, rescore=rescore) as s:
        s.add(vectors=xb, ids=[str(i) for i in range(len(xb))])
        s.train()
        got = s.search_batch(queries, 10, include=())
        want = s.search_batch(queries.astype(np.float64), 10, include=())
    assert np.array_equal(queries, before)
    assert [[h.id for h in r] for r in got] == [[h.id for h in r] for r in want]
    assert [[h.score for h in r] for r in got] == [[h.score for h in r] for r in want]


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_ivf_fast_scan_scans_query_by_query_and_finds_what_faiss_own_choice_finds(tmp_path, metric):
    """qvec scans IVF fast-scan lists query by query into a heap (FAST_SCAN_IMPLEM), not FAISS's
    own grouped scan (a reservoir for k > 20): the same k best quantized scores, query by query,
    for a batch and for one query, and the choice holds for a store read back from disk. (Ids may
    differ only between equal scores, which the 4-bit codes make common.)"""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    xq = rng.standard_normal((40, 32)).astype(np.float32)
    path = tmp_path / "s.qvec"
    with qvec.open(path, quantization="pq16x4fs", index="ivf16", metric=metric) as s:
        s.add(vectors=x, ids=[str(i) for i in range(len(x))])
        s.train()
    with qvec.open(path, read_only=True) as s:
        vi = s.journal.index
        assert _unwrap(vi.index).implem == FAST_SCAN_IMPLEM
        xn = inputs.normalised(xq, metric)
        for k in (10, 30):  # FAISS picks a heap for k <= 20, a reservoir above
            batch = s.search_batch(xq, k, include=(), nprobe=4)
            D, I = vi.search_raw(xn, k, nprobe=4)  # FAISS's own implementation
            assert _unwrap(vi.index).implem == FAST_SCAN_IMPLEM  # put back after the baseline's call
            for got, want_d, want_i in zip(batch, D, I):
                assert np.allclose([h.score for h in got], want_d, rtol=1e-5, atol=1e-5)
                same = {h.id for h in got} & {str(i) for i in want_i}
                tied = np.isclose(want_d, want_d[-1], rtol=1e-5, atol=1e-5).sum()  # the last score's ties
                assert len(same) >= k - tied
            one = s.search(xq[0], k, include=(), nprobe=4)
            assert [h.score for h in one] == pytest.approx([h.score for h in batch[0]], rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("metric", ["cosine", "ip"])
def test_folded_ivf_int8_scan_answers_as_faiss_own_scan(tmp_path, corpus, metric):
    """IVF int8 lists scanned as uniform codes with the scales folded into the query (FoldedScan,
    for batches) give FAISS's own search's hits and scores (to float rounding): batches large and
    small, with a filter, after deletes and adds, for a store read back from disk; a single query
    (FAISS's own scan) agrees with its batch."""
    rng = np.random.default_rng(9)  # the real embeddings and two noisy copies: 1,920 rows
    x = np.vstack([corpus[1]] + [corpus[1] + rng.normal(0, 0.01, corpus[1].shape) for _ in range(2)]).astype(np.float32)
    xq = corpus[3][:40]
    path = tmp_path / "s.qvec"
    with qvec.open(path, quantization="int8", index="ivf16", metric=metric) as s:
        s.add(vectors=x[:1200], ids=[str(i) for i in range(1200)], metadata=[{"odd": i % 2} for i in range(1200)])
        s.train()
        s.delete([str(i) for i in range(0, 300, 3)])
        s.add(vectors=x[1200:], ids=[str(i) for i in range(1200, len(x))],
              metadata=[{"odd": i % 2} for i in range(1200, len(x))])
    with qvec.open(path, read_only=True) as s:
        vi = s.journal.index
        assert isinstance(vi._folded, FoldedScan)
        xn = inputs.normalised(xq, metric)
        allowed = s.catalog.where_fids({"odd": 1})
        for queries, kw in ((xn, {}), (xn[:FEW_QUERIES], {}), (xn, {"allowed": allowed}),
                            (xn[:FEW_QUERIES], {"allowed": allowed})):
            for nprobe in (1, 5, 16):
                p = SearchParams(nprobe=nprobe)
                D, I = vi.search(queries, 10, params=p, **kw)
                folded, vi._folded = vi._folded, None  # FAISS's own scan of the same index
                try:
                    D0, I0 = vi.search(queries, 10, params=p, **kw)
                finally:
                    vi._folded = folded
                assert np.allclose(D, D0, rtol=1e-5, atol=1e-5)
                assert (I == I0).mean() > 0.99 and np.array_equal(np.sort(I, 1) >= 0, np.sort(I0, 1) >= 0)
                if "allowed" in kw:
                    assert np.isin(I[I >= 0], allowed).all()
        hits = s.search_batch(xq, 5, include=(), nprobe=16)
        assert [h.id for h in s.search(xq[3], 5, include=(), nprobe=16)] == [h.id for h in hits[3]]
        assert not {h.id for r in hits for h in r} & {str(i) for i in range(0, 300, 3)}


def test_a_few_ivf_int8_queries_fold_from_many_lists_probed(tmp_path, corpus):
    """Below FEW_QUERIES, a search folds only where it probes FOLD_FEW_NPROBE lists or more
    (bench/results/folded_scan.md), and then answers as FAISS's own scan does, on one thread."""
    x, xq = corpus[1], corpus[3][:6]
    with qvec.open(tmp_path / "s.qvec", quantization="int8", index=f"ivf{FOLD_FEW_NPROBE * 2}") as s:
        s.add(vectors=x, ids=[str(i) for i in range(len(x))])
        s.train()
        vi, xn = s.journal.index, inputs.normalised(xq, "cosine")
        folded, scans = vi._folded, []

        class Counted:  # the same scan, counted
            def search(self, *args):
                scans.append(faiss.omp_get_max_threads())
                return folded.search(*args)

        for nprobe, folds in ((FOLD_FEW_NPROBE - 1, False), (FOLD_FEW_NPROBE, True), (FOLD_FEW_NPROBE * 2, True)):
            p = SearchParams(nprobe=nprobe)
            for queries in (xn[:1], xn[: FEW_QUERIES - 1]):
                scans.clear()
                vi._folded = Counted()
                D, I = vi.search(queries, 10, params=p)
                vi._folded = None  # FAISS's own scan of the same index
                D0, I0 = vi.search(queries, 10, params=p)
                vi._folded = folded
                assert scans == ([1] if folds else [])
                assert np.allclose(D, D0, rtol=1e-5, atol=1e-5) and (I == I0).mean() > 0.99
        assert [h.id for h in s.search(xq[2], 10, include=(), nprobe=FOLD_FEW_NPROBE)] == \
               [h.id for h in s.search_batch(xq, 10, include=(), nprobe=FOLD_FEW_NPROBE)[2]]


@pytest.mark.parametrize("quantization,metric", [("int8", "l2"), ("int4", "cosine"), ("fp16", "cosine")])
def test_what_does_not_fold_is_scanned_by_faiss_itself(tmp_path, quantization, metric):
    x = np.random.default_rng(10).standard_normal((1200, 16)).astype(np.float32)
    with qvec.open(tmp_path / "s.qvec", quantization=quantization, index="ivf8", metric=metric) as s:
        s.add(vectors=x, ids=[str(i) for i in range(len(x))])
        s.train()
        assert s.journal.index._folded is None
