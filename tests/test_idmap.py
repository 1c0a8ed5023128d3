"""The in-memory fid -> id map searches answer from (qvec.idmap), and the O(1) accounting of
stats(): each checked against what SQLite and a serialised index say."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qvec
from qvec.idmap import IdMap

_id = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.lists(st.tuples(st.integers(0, 40), _id), max_size=30), st.lists(st.integers(0, 2000),
                                                                                                max_size=10)),
                max_size=12))
def test_the_map_answers_as_a_dict_would(steps):
    """Batches appended with gaps between fids (ids spent on failed or replaced rows),
    removals of live, dead and unknown fids, growth past the first buffers."""
    model: dict[int, str] = {}
    m, top = IdMap(np.zeros(0, np.int64), []), 0
    for batch, removed in steps:
        fids = []
        for gap, i in batch:
            top += gap
            fids.append(top)
            model[top] = i
            top += 1
        m.add(np.array(fids, dtype=np.int64), [i for _, i in batch])
        m.remove(np.array(removed, dtype=np.int64))
        for f in removed:
            model.pop(f, None)
        asked = np.array(list(range(-1, top + 3)), dtype=np.int64)
        assert m.ids_of(asked) == model
        few = asked[-9:]  # a single query's hits: looked up one by one
        assert m.ids_of(few) == {f: model[f] for f in few.tolist() if f in model}
        if len(model) % 3 == 0:  # shrunk to fit, the map answers the same and still grows
            m.shrink()
            assert m.ids_of(asked) == model
    rebuilt = IdMap(np.array(sorted(model), dtype=np.int64), [model[f] for f in sorted(model)])
    assert rebuilt.ids_of(np.arange(top + 1)) == model


def test_appending_below_the_top_is_refused():
    m = IdMap(np.array([0, 5]), ["a", "b"])
    with pytest.raises(ValueError):
        m.add(np.array([5]), ["c"])


def _ids(store, x, **kw):
    return [[h.id for h in r] for r in store.search_batch(x, 5, **kw)]


def _agrees(store, x):
    """Ids from the map (include=()) are the ids SQLite gives (include=("text",))."""
    return _ids(store, x, include=()) == _ids(store, x, include=("text",))


@pytest.mark.parametrize("quantization,index", [("int8", "flat"), ("fp32", "hnsw16")])
def test_the_map_follows_writes_compaction_and_a_readers_snapshot(tmp_path, quantization, index):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1500, 32)).astype(np.float32)
    path = tmp_path / "s.qvec"
    w = qvec.open(path, quantization=quantization, index=index)
    w.add(vectors=x[:1000], ids=[f"r{i}" for i in range(1000)])
    w.checkpoint()
    r = qvec.open(path, read_only=True)
    q = x[::37]
    assert _agrees(w, q) and _agrees(r, q)  # both maps built
    before = _ids(r, q, include=())

    w.delete([f"r{i}" for i in range(0, 1000, 3)])
    w.upsert(vectors=x[1000:1200], ids=[f"r{i}" for i in range(1, 200, 2)] + [f"é{i}" for i in range(100)])
    assert _agrees(w, q) and _ids(r, q, include=()) == before  # the reader keeps its snapshot
    assert r.refresh()
    assert _agrees(r, q) and _ids(r, q, include=()) == _ids(w, q, include=())

    w.checkpoint(compact=True)  # fids renumbered 0..n-1
    assert _agrees(w, q) and r.refresh() and _agrees(r, q)
    w.add(vectors=x[1200:], ids=[f"n{i}" for i in range(300)])
    assert _agrees(w, q) and r.refresh() and _agrees(r, q)
    assert w.stats().id_map_bytes > 0
    r.close()
    w.close()


@pytest.mark.parametrize("quantization,index", [("int8", "flat"), ("pq8", "ivf8"), ("int8", "hnsw16"),
                                                ("binary", "flat"), ("rabitq", "flat"), ("pq16x4fs", "flat")])
def test_stats_measures_the_saved_index_without_serialising_it(tmp_path, quantization, index):
    x = np.random.default_rng(4).standard_normal((1200, 32)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a small training set, on purpose
        s = qvec.open(tmp_path / "s.qvec", quantization=quantization, index=index)
        s.add(vectors=x, ids=[str(i) for i in range(len(x))])
        s.train()
        s.checkpoint()
    serialised = s.journal.index.bytes_per_vector()  # measured by serialising the whole index
    assert s.stats().bytes_per_vector == pytest.approx(serialised)
    # the fixed bytes were measured before the first add and saved with the checkpoint: a reopened
    # store knows them without cloning its index (FAISS's clone copies every code)
    emptied = len(s.journal.index.emptied().serialize())
    assert s.stats().fixed_bytes == emptied
    s.close()
    with qvec.open(tmp_path / "s.qvec", read_only=True) as r:
        assert r.journal.index.known_fixed_bytes == emptied and r.stats().fixed_bytes == emptied


def test_a_map_built_from_many_blocks_holds_no_room_to_spare(tmp_path, monkeypatch):
    """The catalog builds the map a block of rows at a time (not 10M tuples at once) and shrinks
    it: its bytes are the ids' bytes + 1, 8 bytes of offset and 1 of liveness per fid."""
    monkeypatch.setattr("qvec.catalog.ID_MAP_BLOCK", 7)
    rng = np.random.default_rng(0)
    ids = [f"doc-{i}" * (1 + i % 3) for i in range(500)]
    with qvec.open(tmp_path / "s", quantization="fp32") as s:
        s.add(vectors=rng.normal(size=(500, 8)), ids=ids)
    with qvec.open(tmp_path / "s", read_only=True) as s:
        x = s.vectors(ids[:50])
        assert [h.id for h in s.search(x[3], 1, include=())] == [ids[3]]
        assert s.stats().id_map_bytes == sum(len(i) + 1 for i in ids) + 8 * 501 + 500
        got = s.search_batch(x, 1, include=())
        assert [h[0].id for h in got] == ids[:50]
