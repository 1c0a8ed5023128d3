"""Property tests: random sequences of add / upsert / delete / search / checkpoint / compact /
reopen, and of a read-only reader opening and refreshing beside them, against a plain exact
reference model (a dict and numpy), comparing ids, metadata and search results after every step.

Every store here is searched exactly, so results must match the reference: FP32 codes in a
flat index; INT8 below its training size (the exact buffer, which must survive reopening
through the log); FP32 in IVF lists with every list probed; FP32 in an HNSW graph walked wider
than it is (deletes are tombstones until compaction); and PQ codes whose candidates, more than
the rows, are re-ranked from the originals. Filters are random trees of every operator,
checked against ``qvec.filters.matches``, the plain-Python meaning of the SQL they compile to.
"""

import itertools
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import qvec
from qvec.filters import matches

DIM = 8
POOL = [f"id{i}" for i in range(12)]
TAGS = [[], ["a"], ["a", "b"], ["c"]]
ids_st = st.lists(st.sampled_from(POOL), min_size=1, max_size=4)
seed_st = st.integers(0, 2**31 - 1)
INCLUDES = [p for n in range(3) for p in itertools.permutations(("text", "metadata"), n)]

# random filters over the metadata written below (g, n, tags) and a field no row has (z)
_field = st.sampled_from(["g", "n", "tags", "z"])
_scalar = st.one_of(st.integers(0, 3), st.sampled_from(["a", "b", "c"]), st.booleans(), st.none(),
                    st.sampled_from([1.0, 2.5]))
_leaf = st.one_of(
    st.tuples(_field, _scalar).map(lambda t: {t[0]: t[1]}),
    st.tuples(_field, st.sampled_from(["$eq", "$ne"]), _scalar).map(lambda t: {t[0]: {t[1]: t[2]}}),
    st.tuples(_field, st.sampled_from(["$in", "$nin"]), st.lists(_scalar, max_size=3)).map(
        lambda t: {t[0]: {t[1]: t[2]}}),
    st.tuples(_field, st.sampled_from(["$gt", "$gte", "$lt", "$lte"]),
              st.one_of(st.integers(0, 3), st.sampled_from(["a", "b"]))).map(lambda t: {t[0]: {t[1]: t[2]}}),
)
filters_st = st.recursive(_leaf, lambda inner: st.one_of(
    st.lists(inner, min_size=1, max_size=3).map(lambda f: {"$and": f}),
    st.lists(inner, min_size=1, max_size=3).map(lambda f: {"$or": f}),
    st.tuples(inner, inner).map(lambda t: {**t[0], **t[1]}),  # several fields at one level
), max_leaves=6)


def vectors(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


class StoreVsReference(RuleBasedStateMachine):
    open_kwargs: dict = {"quantization": "fp32"}
    search_params: dict = {}
    train_on = 0  # vectors to train on before the first add (0: none)

    def __init__(self):
        super().__init__()
        self.dir = Path(tempfile.mkdtemp())
        self.store = qvec.open(self.dir / "s.qvec", **self.open_kwargs)
        if self.train_on:  # codes learned up front: every row then goes into them
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "training on N vectors; more give better codes"
                self.store.train(vectors=vectors(12345, self.train_on))
        self.ref: dict[str, tuple[np.ndarray, dict]] = {}  # id -> (unit vector, metadata)
        self.reader = None
        self.seen: dict[str, tuple[np.ndarray, dict]] = {}  # the reader's snapshot of ref

    def teardown(self):
        if self.reader is not None:
            self.reader.close()
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _write(self, ids, seed, group, upsert):
        x = vectors(seed, len(ids))
        meta = [{"g": group, "n": i, "tags": TAGS[(seed + i) % 4]} for i in range(len(ids))]
        write = self.store.upsert if upsert else self.store.add
        if len(set(ids)) < len(ids) or (not upsert and any(i in self.ref for i in ids)):
            with pytest.raises(qvec.DuplicateId):
                write(vectors=x, ids=ids, metadata=meta)
            return  # nothing changed: the invariants check it
        write(vectors=x, ids=ids, metadata=meta)
        for i, v, m in zip(ids, x, meta):
            self.ref[i] = (v / np.linalg.norm(v), m)

    @rule(ids=ids_st, seed=seed_st, group=st.integers(0, 2))
    def add(self, ids, seed, group):
        self._write(ids, seed, group, upsert=False)

    @rule(ids=ids_st, seed=seed_st, group=st.integers(0, 2))
    def upsert(self, ids, seed, group):
        self._write(ids, seed, group, upsert=True)

    @rule(ids=ids_st)
    def delete(self, ids):
        ids = list(dict.fromkeys(ids))
        if any(i not in self.ref for i in ids):
            with pytest.raises(qvec.IdNotFound):
                self.store.delete(ids)
            return
        assert self.store.delete(ids) == len(ids)
        for i in ids:
            del self.ref[i]

    def check_search(self, store, ref, q, k, where, include=("text", "metadata")):
        hits = store.search(q, k, where=where, include=include, **self.search_params)
        qn = q / np.linalg.norm(q)
        expected = {i: float(v @ qn) for i, (v, m) in ref.items() if where is None or matches(where, m)}
        # The hits are the k best scores, in order, each the true score of a distinct row that
        # passes the filter. Ids are not compared position by position: rows with equal
        # vectors (the same seed written twice) tie, and either order is right.
        top = sorted(expected.values(), reverse=True)[:k]
        np.testing.assert_allclose([h.score for h in hits], top, rtol=1e-4, atol=1e-5)
        assert len({h.id for h in hits}) == len(hits)
        for h in hits:
            assert h.id in expected, f"{h.id} does not pass the filter {where}"
            assert abs(h.score - expected[h.id]) <= 1e-4
            assert h.metadata == (ref[h.id][1] if "metadata" in include else None)
            assert h.text is None  # rows written as vectors have no text, whatever include asks

    @rule(seed=seed_st, k=st.integers(1, 8), group=st.none() | st.integers(0, 2),
          include=st.sampled_from(INCLUDES))
    def search(self, seed, k, group, include):
        self.check_search(self.store, self.ref, vectors(seed, 1)[0], k, None if group is None else {"g": group},
                          include)

    @rule(seed=seed_st, where=filters_st)
    def search_random_filter(self, seed, where):
        q = vectors(seed, 1)[0]
        self.check_search(self.store, self.ref, q, 3, where)
        # every row the filter passes, and no other: the SQL against the plain-Python evaluator
        got = {h.id for h in self.store.search(q, len(POOL) + 1, where=where, include=(), **self.search_params)}
        assert got == {i for i, (_, m) in self.ref.items() if matches(where, m)}

    @rule()
    def checkpoint(self):
        self.store.checkpoint()

    @rule()
    def compact(self):
        self.store.checkpoint(compact=True)
        st = self.store.stats()
        assert st.tombstones == 0 and (st.dead_ids == 0 or not self.store.is_trained)

    @rule()
    def reopen(self):
        self.store.close()
        self.store = qvec.open(self.dir / "s.qvec")

    @rule()
    def open_reader(self):
        if self.reader is not None:
            self.reader.close()
        self.reader = qvec.open(self.dir / "s.qvec", read_only=True)
        self.seen = {k: (v.copy(), dict(m)) for k, (v, m) in self.ref.items()}

    @precondition(lambda self: self.reader is not None)
    @rule()
    def refresh_reader(self):
        self.reader.refresh()
        self.seen = {k: (v.copy(), dict(m)) for k, (v, m) in self.ref.items()}

    @precondition(lambda self: self.reader is not None)
    @rule(seed=seed_st, where=st.none() | filters_st)
    def reader_search(self, seed, where):
        self.check_search(self.reader, self.seen, vectors(seed, 1)[0], 4, where)

    @invariant()
    def same_rows(self):
        for store, ref in ((self.store, self.ref), (self.reader, self.seen)):
            if store is None:
                continue
            assert len(store) == len(ref)
            assert sorted(store.ids()) == sorted(ref)
            if ref:
                items = store.get(sorted(ref))
                assert [it.metadata for it in items] == [ref[i][1] for i in sorted(ref)]


class Int8Untrained(StoreVsReference):
    open_kwargs = {"quantization": "int8"}


class FP32InIVFLists(StoreVsReference):
    open_kwargs = {"quantization": "fp32", "index": "ivf4"}
    search_params = {"nprobe": 4}
    train_on = 200


class FP32InHNSW(StoreVsReference):
    open_kwargs = {"quantization": "fp32", "index": "hnsw8"}
    search_params = {"ef_search": 512}


class PQRescored(StoreVsReference):
    open_kwargs = {"quantization": "pq4", "rescore": True}
    search_params = {"oversample": 16}  # k × 16 candidates: every row, re-ranked from its original
    train_on = 300


# QVEC_HYPOTHESIS_EXAMPLES=1000 runs a longer search than CI's sequences per machine.
SETTINGS = settings(max_examples=int(os.environ.get("QVEC_HYPOTHESIS_EXAMPLES", 25)),
                    stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TestFP32Store = StoreVsReference.TestCase
TestInt8UntrainedStore = Int8Untrained.TestCase
TestFP32IVFStore = FP32InIVFLists.TestCase
TestFP32HNSWStore = FP32InHNSW.TestCase
TestPQRescoredStore = PQRescored.TestCase
for _case in (TestFP32Store, TestInt8UntrainedStore, TestFP32IVFStore, TestFP32HNSWStore, TestPQRescoredStore):
    _case.settings = SETTINGS
del _case  # pytest collects any TestCase bound at module level
