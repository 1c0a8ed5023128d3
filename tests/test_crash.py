"""SIGKILL a writer at random moments: after each kill the store reopens with SQLite and
the index agreeing, every batch whole or absent, and the writer carries on."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import qvec

WRITER = r"""
import sys, warnings, numpy as np, qvec, qvec.journal
warnings.simplefilter("error", qvec.CheckpointDeferred)  # with disk to spare, a deferred checkpoint is a bug
qvec.journal.CHECKPOINT_ROWS = 200  # checkpoint every few batches, so kills land inside them too
qvec.journal.COMPACT_MIN = 200  # and compact the ids (rewriting the originals) every few dozen batches
path, start = sys.argv[1], int(sys.argv[2])
B = 40
def vecs(b, version):
    return np.random.default_rng(b * 1000 + version).standard_normal((B, 32)).astype("float32")
quantization, index = sys.argv[3], sys.argv[4]
with qvec.open(path, quantization=quantization, index=index, dim=32, rescore=True) as s:
    b = start
    while True:
        ids = [f"b{b}-{j}" for j in range(B)]
        if b % 5 == 4:
            s.checkpoint()
        s.add(vectors=vecs(b, 0), ids=ids, metadata=[{"batch": b, "v": 0}] * B)
        if b % 3 == 0:
            s.upsert(vectors=vecs(b, 1), ids=ids, metadata=[{"batch": b, "v": 1}] * B)
        if b % 4 == 0 and b >= 4:
            old = [f"b{b - 4}-{j}" for j in range(B)]
            if s.get(old[0:1]):
                s.delete(old)
        print(b, flush=True)
        b += 1
"""


def check(path) -> int:
    with qvec.open(path) as s:
        rows = {i.id: i for i in s.get(s.ids())} if len(s) else {}
        batches: dict[int, list] = {}
        for item in rows.values():
            batches.setdefault(item.metadata["batch"], []).append(item)
        for b, items in batches.items():
            assert len(items) == 40, f"batch {b} is half-applied: {len(items)} of 40 rows"
            assert len({i.metadata["v"] for i in items}) == 1, f"batch {b} is half-upserted"
        # the index (trained, or the exact buffer before training) holds exactly the rows SQLite
        # holds, beside the tombstones a graph keeps until compaction
        index = s.journal.index
        assert sorted(set(index.fids().tolist()) - index.tombstones) == sorted(s.catalog.all_fids().tolist())
        # and each row is found by its own vector
        some = list(rows)[:: max(1, len(rows) // 50)]
        for rid in some:
            b, j = (int(x) for x in rid[1:].split("-"))
            v = rows[rid].metadata["v"]
            x = np.random.default_rng(b * 1000 + v).standard_normal((40, 32)).astype("float32")[j]
            assert s.search(x, 1, include=())[0].id == rid
        return max(batches, default=-1) + 1


@pytest.mark.slow
@pytest.mark.parametrize("quantization, index, kills_wanted", [("int8", "flat", 20), ("binary", "flat", 8),
                                                               ("int8", "hnsw16", 8)])
def test_sigkill_at_random_moments_loses_nothing_committed(tmp_path, quantization, index, kills_wanted):
    """int8/flat at length; binary (whose compaction once failed: the writer's deferred
    checkpoints are errors here) and an HNSW graph (tombstones, a rebuild at compaction) more
    briefly."""
    path = str(tmp_path / "crash.qvec")
    rng = np.random.default_rng(7)
    start, kills = 0, 0
    while kills < kills_wanted:
        p = subprocess.Popen([sys.executable, "-c", WRITER, path, str(start), quantization, index],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(float(rng.uniform(0.6, 1.6)))  # imports take ~0.5 s; then it writes
        p.send_signal(signal.SIGKILL)
        out, err = p.communicate()
        assert "Traceback" not in err, err  # killed, never failed
        kills += 1
        done = [int(line) for line in out.split()]
        start = check(path)
        if done:  # every batch reported finished is there (or deleted by a later batch)
            assert start >= done[-1] + 1
    assert start > 1.5 * kills_wanted, "the writer made too little progress to exercise anything"
