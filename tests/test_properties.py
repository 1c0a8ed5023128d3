"""Property tests: random sequences of add / upsert / delete / search / checkpoint / reopen
against a plain exact reference model (a dict and numpy), comparing ids, metadata and
search results after every step.

Two stores whose search is exact, so results must match the reference exactly: FP32 codes
in a flat FAISS index, and an INT8 store below its training size (searched exactly from
the vectors waiting for training, which must survive reopening through the log).
"""

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import qvec

DIM = 8
POOL = [f"id{i}" for i in range(12)]
ids_st = st.lists(st.sampled_from(POOL), min_size=1, max_size=4)
seed_st = st.integers(0, 2**31 - 1)


def vectors(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


class StoreVsReference(RuleBasedStateMachine):
    quantization = "fp32"

    def __init__(self):
        super().__init__()
        self.dir = Path(tempfile.mkdtemp())
        self.store = qvec.open(self.dir / "s.qvec", quantization=self.quantization)
        self.ref: dict[str, tuple[np.ndarray, dict]] = {}  # id -> (unit vector, metadata)

    def teardown(self):
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _snapshot(self):
        return {k: (v.copy(), dict(m)) for k, (v, m) in self.ref.items()}

    def _write(self, ids, seed, group, upsert):
        x = vectors(seed, len(ids))
        meta = [{"g": group, "n": i} for i in range(len(ids))]
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

    @rule(seed=seed_st, k=st.integers(1, 8), group=st.none() | st.integers(0, 2))
    def search(self, seed, k, group):
        q = vectors(seed, 1)[0]
        where = None if group is None else {"g": group}
        hits = self.store.search(q, k, where=where)
        qn = q / np.linalg.norm(q)
        expected = {i: float(v @ qn) for i, (v, m) in self.ref.items() if where is None or m["g"] == group}
        # The hits are the k best scores, in order, each the true score of a distinct row that
        # passes the filter. Ids are not compared position by position: rows with equal
        # vectors (the same seed written twice) tie, and either order is right.
        top = sorted(expected.values(), reverse=True)[:k]
        np.testing.assert_allclose([h.score for h in hits], top, rtol=1e-4, atol=1e-5)
        assert len({h.id for h in hits}) == len(hits)
        for h in hits:
            assert h.id in expected, f"{h.id} does not pass the filter {where}"
            assert abs(h.score - expected[h.id]) <= 1e-4
            assert h.metadata == self.ref[h.id][1]

    @rule()
    def checkpoint(self):
        self.store.checkpoint()

    @rule()
    def reopen(self):
        self.store.close()
        self.store = qvec.open(self.dir / "s.qvec")

    @invariant()
    def same_rows(self):
        assert len(self.store) == len(self.ref)
        assert sorted(self.store.ids()) == sorted(self.ref)
        if self.ref:
            items = self.store.get(sorted(self.ref))
            assert [it.metadata for it in items] == [self.ref[i][1] for i in sorted(self.ref)]


class Int8UntrainedVsReference(StoreVsReference):
    quantization = "int8"


# QVEC_HYPOTHESIS_EXAMPLES=1000 runs a longer search than CI's 30 sequences per machine.
SETTINGS = settings(max_examples=int(os.environ.get("QVEC_HYPOTHESIS_EXAMPLES", 30)),
                    stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TestFP32Store = StoreVsReference.TestCase
TestFP32Store.settings = SETTINGS
TestInt8UntrainedStore = Int8UntrainedVsReference.TestCase
TestInt8UntrainedStore.settings = SETTINGS
