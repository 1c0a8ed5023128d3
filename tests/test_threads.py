"""Threads inside one process share one Store: searches run in parallel, writes one at a
time; and a second writer can wait for the lock instead of failing at once."""

import threading
import time

import numpy as np
import pytest

import qvec


def test_parallel_searches_beside_a_writing_thread_see_whole_batches(tmp_path, corpus):
    _, xb, _, xq = corpus
    store = qvec.open(tmp_path / "s.qvec", quantization="int8")
    store.add(vectors=xb[:320], ids=[f"d{i}" for i in range(320)], metadata=[{"batch": 0}] * 320)
    store.train()  # later batches go through the FAISS index
    expected = store.search_batch(xq, 5, include=())
    errors, rounds = [], []

    def writer():
        try:
            for b in range(1, 9):  # eight batches of 40, each all-or-nothing
                lo = 320 + 40 * (b - 1)
                store.add(vectors=xb[lo : lo + 40], ids=[f"d{i}" for i in range(lo, lo + 40)],
                          metadata=[{"batch": b}] * 40)
                if b % 3 == 0:
                    store.checkpoint()
        except Exception as e:  # noqa: BLE001 -- surfaced below
            errors.append(e)

    def searcher():
        try:
            for _ in range(25):
                n = len(store)
                assert n % 40 == 0, f"saw a half-applied batch: {n} rows"
                hits = store.search_batch(xq, 5, where={"batch": 0}, include=("metadata",))
                assert [[h.id for h in r] for r in hits] == [[h.id for h in r] for r in expected]
                rounds.append(1)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(rounds) == 75 and len(store) == 640
    got = store.search_batch(xq, 1, include=())
    assert [r[0].id for r in got] == [r[0].id for r in qvec.open(tmp_path / "s.qvec", read_only=True)
                                      .search_batch(xq, 1, include=())]
    store.close()


def test_searches_from_several_threads_match_one_thread(tmp_path, corpus):
    _, xb, _, xq = corpus
    with qvec.open(tmp_path / "s.qvec", quantization="pq16", rescore=True) as store:
        store.add(vectors=xb, ids=[str(i) for i in range(len(xb))])
        want = [[h.id for h in store.search(q, 10, include=())] for q in xq]
        got = [None] * len(xq)

        def work(part):
            for i in part:
                got[i] = [h.id for h in store.search(xq[i], 10, include=())]

        threads = [threading.Thread(target=work, args=(range(j, len(xq), 4),)) for j in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert got == want


def test_a_second_writer_waits_for_the_lock_when_asked(tmp_path, corpus):
    path = tmp_path / "s.qvec"
    first = qvec.open(path)
    first.add(vectors=corpus[1][:10], ids=[str(i) for i in range(10)])
    t0 = time.monotonic()
    with pytest.raises(qvec.StoreLocked, match=r"waited 0.3s.*lock_timeout"):
        qvec.open(path, lock_timeout=0.3)
    assert time.monotonic() - t0 >= 0.3
    threading.Timer(0.5, first.close).start()
    with qvec.open(path, lock_timeout=30) as second:  # gets the lock once the first closes
        assert len(second) == 10
    with pytest.raises(qvec.InvalidInput, match="lock_timeout"):
        qvec.open(path, lock_timeout=-1)
    np.testing.assert_equal(len(qvec.open(path, read_only=True)), 10)


def test_two_writing_threads_on_one_store_lose_nothing(tmp_path, corpus):
    xb = corpus[1]
    errors = []
    with qvec.open(tmp_path / "s.qvec", quantization="fp32") as store:

        def write(part):
            try:
                for b in range(8):
                    rows = range(part * 320 + 40 * b, part * 320 + 40 * (b + 1))
                    store.add(vectors=xb[list(rows)], ids=[f"d{i}" for i in rows])
                    store.search_batch(xb[:5], 3, include=())
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=write, args=(p,)) for p in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        assert len(store) == 640
        assert sorted(store.ids()) == sorted(f"d{i}" for i in range(640))
        # every vector is found as its own nearest neighbour (or an identical duplicate's)
        assert all(abs(r[0].score - 1) < 1e-5 for r in store.search_batch(xb, 1, include=()))


@pytest.mark.parametrize("quantization, index", [("pq8x4fs", "ivf8"), ("int8", "flat")])
def test_searches_that_map_the_grown_originals_at_once_agree_on_the_map(tmp_path, quantization, index):
    """Re-ranking searches share one map of the originals. When a write has grown the file,
    the first search to read past the old map maps it again; another search then took the new
    view with the old checked-bits array and failed with an IndexError (seen with fast-scan IVF)."""
    import sys

    x = np.random.default_rng(4).standard_normal((4000, 32)).astype(np.float32)
    s = qvec.open(tmp_path / "s", quantization=quantization, index=index, rescore=True)
    s.add(vectors=x[:1000], ids=[str(i) for i in range(1000)])
    s.train()
    errors, done = [], threading.Event()

    def search(seed):
        rng = np.random.default_rng(seed)
        try:
            while not done.is_set():
                s.search_batch(x[rng.integers(0, 4000, 4)], 5, include=())
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    was = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often: the remap's window is a few bytecodes wide
    readers = [threading.Thread(target=search, args=(i,)) for i in range(3)]
    try:
        for t in readers:
            t.start()
        for a in range(1000, 4000, 100):  # each add grows the originals past every reader's map
            s.add(vectors=x[a : a + 100], ids=[str(i) for i in range(a, a + 100)])
            time.sleep(0.01)
    finally:
        done.set()
        for t in readers:
            t.join()
        sys.setswitchinterval(was)
        s.close()
    assert not errors, errors[0]
