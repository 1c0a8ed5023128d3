"""The originals file: rows come back exactly, in the order asked, whatever the runs and
repeats, and reads and writes that the OS cuts short are finished, not lost."""

import os

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
