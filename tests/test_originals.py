"""The originals file: rows come back exactly, in the order asked, whatever the runs and
repeats, and reads and writes that the OS cuts short are finished, not lost."""

import os
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qvec.originals as originals_module
from qvec.errors import CorruptStore
from qvec.originals import DENSE, Originals

X = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)


@pytest.fixture
def originals(tmp_path):
    o = Originals(tmp_path / "originals.f32", 8)
    o.write(0, X[:100])
    o.write(100, X[100:])  # adds append consecutive rows
    return o


@settings(max_examples=200, deadline=None)
@given(fids=st.lists(st.integers(0, len(X) - 1), max_size=60) | st.builds(lambda a, n: list(range(a, a + n)),
                                                                       st.integers(0, 200), st.integers(0, 100)))
def test_read_returns_the_rows_asked_for_in_order(tmp_path_factory, fids):
    o = Originals(tmp_path_factory.mktemp("o") / "originals.f32", 8)
    o.write(0, X)
    for dense in (0, 10**9):  # never / always through the memory map (when rows are scattered)
        originals_module.DENSE = dense
        try:
            got = o.read(np.array(fids, dtype=np.int64))
        finally:
            originals_module.DENSE = DENSE
        assert got.shape == (len(fids), 8) and got.dtype == np.float32
        assert np.array_equal(got, X[fids])


def test_reading_past_the_end_is_a_corrupt_store(originals):
    with pytest.raises(CorruptStore, match="holds 300 vectors but vector 300 was asked for"):
        originals.read([5, 300])


def test_short_reads_and_writes_are_completed(tmp_path, monkeypatch):
    real_pwrite, real_preadv = os.pwrite, os.preadv
    monkeypatch.setattr(os, "pwrite", lambda fd, data, off: real_pwrite(fd, bytes(data[:100]), off))
    monkeypatch.setattr(os, "preadv", lambda fd, bufs, off: real_preadv(fd, [bufs[0][:50]], off))
    o = Originals(tmp_path / "originals.f32", 8)
    o.write(0, X)
    assert os.path.getsize(o.path) == X.nbytes
    assert np.array_equal(o.read(np.arange(len(X))), X)
    assert np.array_equal(o.read([299, 3, 4, 3]), X[[299, 3, 4, 3]])


@pytest.mark.parametrize("precision, tolerance", [("fp16", 1e-3), ("int8", 1 / 127)])
def test_lower_precision_rows_come_back_within_their_rounding(tmp_path, precision, tolerance):
    x = np.vstack([X, np.zeros((1, 8), np.float32)])  # a zero row has no range to scale by
    o = Originals(tmp_path / "originals.f32", 8, precision=precision)
    o.write(0, x)
    assert os.path.getsize(o.path) == len(x) * {"fp16": 16, "int8": 12}[precision]
    got = o.read(np.array([300, 299, 3, 4, 3]))
    want = x[[300, 299, 3, 4, 3]]
    assert got.dtype == np.float32 and got.shape == want.shape
    # fp16: relative rounding; int8: half a step of the row's own scale (its largest magnitude / 127)
    bound = tolerance * (np.abs(want) if precision == "fp16" else np.abs(want).max(1, keepdims=True))
    assert np.all(np.abs(got - want) <= bound + 1e-7) and not got[0].any()


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_a_flipped_byte_in_a_lower_precision_row_is_caught(tmp_path, precision):
    o = Originals(tmp_path / "originals.f32", 8, precision=precision)
    o.write(0, X)
    with open(o.path, "r+b") as f:
        f.seek(5 * o.row_bytes + 2)
        byte = f.read(1)
        f.seek(5 * o.row_bytes + 2)
        f.write(bytes([byte[0] ^ 0x10]))
    assert np.allclose(o.read([4, 6]), X[[4, 6]], atol=0.05)
    with pytest.raises(CorruptStore, match="row 5 fails its checksum"):
        o.read([4, 5])


def _reference_top(xq, x, I, k, metric):
    """Each query's k best candidates by numpy, ties to the candidate listed first."""
    out = []
    for q, row in zip(xq, I):
        cand = [int(f) for f in row if f >= 0]
        scores = [float(((q - x[f]) ** 2).sum()) if metric == "l2" else float(q @ x[f]) for f in cand]
        order = sorted(range(len(cand)), key=lambda j: scores[j] if metric == "l2" else -scores[j])[:k]
        out.append(([cand[j] for j in order], [scores[j] for j in order]))
    return out


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_rerank_keeps_each_querys_best_candidates_by_exact_score(originals, tmp_path, precision, metric):
    """fp32 rows are scored in place in the map, the others gathered and decoded: both give
    the candidates' exact top k, -1s (even between candidates) and repeats allowed."""
    o = originals if precision == "fp32" else Originals(tmp_path / "o16", 8, precision=precision)
    if precision != "fp32":
        o.write(0, X)
    stored = X if precision == "fp32" else X.astype(np.float16).astype(np.float32)
    rng = np.random.default_rng(1)
    xq = rng.normal(size=(7, 8)).astype(np.float32)
    I = rng.integers(0, len(X), size=(7, 12))
    I[1, 9:] = -1  # fewer candidates than k + 3
    I[2, 4] = -1  # a gap FAISS never leaves, handled all the same
    I[3] = -1  # none at all
    I[4, :6] = I[4, 6:]  # each candidate twice
    for k in (5, 20):
        D, got = o.rerank(xq, I, k, metric)
        assert got.shape == D.shape == (7, min(k, 12))
        for q, (want_ids, want_scores) in enumerate(_reference_top(xq, stored, I, k, metric)):
            n = len(want_ids)
            assert sorted(got[q, :n].tolist()) == sorted(want_ids)  # the same set (ties may swap)
            assert D[q, :n] == pytest.approx(want_scores, rel=1e-5, abs=1e-5)
            assert (got[q, n:] == -1).all() and np.isinf(D[q, n:]).all()
    _, got = o.rerank(xq[:1], np.array([[5, -1, 7]]), 2, metric)  # a lone gap
    assert sorted(got[0].tolist()) == [5, 7]


def test_rerank_checks_a_row_the_first_time_it_is_read_and_a_damaged_one_every_time(originals):
    xq = X[:2] + 0.01
    originals.rerank(xq, np.array([[1, 2, 3], [4, 5, 6]]), 2, "ip")
    assert originals._map_state[1][[1, 2, 3, 4, 5, 6]].all() and originals._map_state[1].sum() == 6
    with open(originals.path, "r+b") as f:
        f.seek(200 * 32 + 3)
        byte = f.read(1)
        f.seek(200 * 32 + 3)
        f.write(bytes([byte[0] ^ 0x01]))
    for _ in range(2):  # not marked checked: found again, never scored
        with pytest.raises(CorruptStore, match="row 200 fails its checksum"):
            originals.rerank(xq, np.array([[1, 200, 3], [4, 5, 6]]), 2, "ip")
    originals.write(300, X[:4])  # the file grows: rows checked before stay checked, new ones are checked
    cand = np.array([[301, 2, 3], [4, 5, 302]])
    _, I = originals.rerank(xq, cand, 1, "ip")
    assert I[:, 0].tolist() == [ids[0] for ids, _ in _reference_top(xq, np.vstack([X, X[:4]]), cand, 1, "ip")]
    assert originals._map_state[1][[301, 302]].all() and not originals._map_state[1][200]


def test_reading_past_the_end_in_rerank_is_a_corrupt_store(originals):
    with pytest.raises(CorruptStore, match="holds 300 vectors but vector 300 was asked for"):
        originals.rerank(X[:1], np.array([[5, 300]]), 1, "ip")


def test_a_file_truncated_under_an_open_map_is_a_corrupt_store_not_a_sigbus(originals):
    assert np.array_equal(originals.read([5, 299]), X[[5, 299]])  # the map now covers 300 rows
    os.truncate(originals.path, 100 * originals.row_bytes)
    with pytest.raises(CorruptStore, match="holds 100 vectors but vector 299 was asked for"):
        originals.read([5, 299])
    with pytest.raises(CorruptStore, match="holds 100 vectors but vector 250 was asked for"):
        originals.rerank(X[:1], np.array([[3, 250]]), 1, "cosine")
    assert np.array_equal(originals.read([5, 99]), X[[5, 99]])


def test_reads_are_advised_while_they_wait_for_the_disk(originals):
    """The MADV_WILLNEED calls are made for a new map, stop after ADVISE_HOLD reads that waited
    for nothing, and start again after one read that waited (slow, or with a major page fault)."""
    rows = np.array([3, 70, 140, 290])  # scattered: fewer than one row in DENSE of the 300
    q = X[:1] / np.linalg.norm(X[:1])
    assert np.array_equal(originals.read(rows), X[rows])
    assert originals._advising(len(rows), len(X))
    reads = 0  # a warm file: each read takes microseconds (the first calls, or a busy machine, may take longer)
    while originals._advising(len(rows), len(X)) and reads < 20 * originals_module.ADVISE_HOLD:
        D, I = originals.rerank(q, rows[None, :], 2, "cosine")
        reads += 1
    assert originals_module.ADVISE_HOLD - 1 <= reads < 20 * originals_module.ADVISE_HOLD  # read() was the first
    assert np.array_equal(I[0], rows[np.argsort(-(X[rows] @ q[0]))[:2]])
    originals._waited((time.perf_counter() - 1, 0), len(rows))  # a read that took a second waited for the disk
    assert originals._advising(len(rows), len(X))
    originals._advise_left = 0
    originals._waited((time.perf_counter(), -1), len(rows))  # a read that took a major page fault did too
    assert originals._advising(len(rows), len(X))
    assert not originals._advising(-(-len(X) // DENSE), len(X))  # a dense read never is: read-ahead serves it


def test_a_quiet_read_of_many_rows_counts_as_many_reads(tmp_path):
    """A batch's re-rank reading QUERY_ROWS rows per query counts as that many queries' reads: on
    a warm file the advice stops after a read or two of 1,000 queries' candidates, not after
    ADVISE_HOLD of them (each paid one MADV_WILLNEED per row), and the rows come back exact."""
    n, per_query = 40_000, 10
    x = np.random.default_rng(2).normal(size=(n, 32)).astype(np.float32)
    o = Originals(tmp_path / "originals.f32", 32)
    o.write(0, x)
    I = np.random.default_rng(3).choice(n, (400, per_query), replace=False)  # 4,000 scattered rows: advised
    q = x[:400] / np.linalg.norm(x[:400], axis=1, keepdims=True)
    assert o._advising(I.size, n)
    reads = 0
    while o._advising(I.size, n) and reads < originals_module.ADVISE_HOLD:
        D, got = o.rerank(q, I, 3, "cosine")
        reads += 1
    assert reads <= 3  # the first read of a new map may wait for its first touch of the pages
    assert np.array_equal(got, np.take_along_axis(I, np.argsort(-np.einsum("qd,qkd->qk", q, x[I]), 1)[:, :3], 1))
    o._advise_left = originals_module.ADVISE_HOLD
    o._waited(originals_module._clock(), originals_module.QUERY_ROWS - 1)  # one query's worth of rows or fewer
    assert o._advise_left == originals_module.ADVISE_HOLD - 1


def test_a_warm_file_paged_out_under_its_map_turns_the_advice_back_on(tmp_path):
    """For real: the pages leave memory as memory pressure takes them (MADV_PAGEOUT on the live
    map, then the page cache dropped), and the next unadvised read, which faults them in from
    the disk, switches the advice on again. The rows still come back exact."""
    x = np.random.default_rng(1).normal(size=(20_000, 64)).astype(np.float32)
    o = Originals(tmp_path / "originals.f32", 64)
    o.write(0, x)
    rows = np.arange(0, 20_000, 997)
    assert np.array_equal(o.read(rows), x[rows])
    o._advise_left = 0  # as after ADVISE_HOLD warm reads
    o._mm.madvise(21)  # MADV_PAGEOUT (Linux >= 5.4; Python's mmap does not name it)
    fd = os.open(o.path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    assert np.array_equal(o.read(rows + 1), x[rows + 1])
    assert o._advising(len(rows), len(x))
