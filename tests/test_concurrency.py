"""Readers beside a writer: each read-only open is a consistent snapshot (whole batches,
the index agreeing with SQLite), refresh() picks up new commits, writes are refused."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

import qvec

WRITER = r"""
import sys, numpy as np, qvec, qvec.journal
qvec.journal.CHECKPOINT_ROWS = 200  # checkpoints, and index-file swaps, happen under the readers
with qvec.open(sys.argv[1], quantization="int8", dim=32) as s:
    for b in range(10_000):
        x = np.random.default_rng(b).standard_normal((40, 32)).astype("float32")
        s.add(vectors=x, ids=[f"b{b}-{j}" for j in range(40)], metadata=[{"batch": b}] * 40)
        print(b, flush=True)
"""


def snapshot_is_consistent(store) -> int:
    fids = store.journal.index.fids()
    assert len(fids) % 40 == 0, f"a reader saw {len(fids)} rows: a half-applied batch"
    # the batch every indexed row came from is complete in the snapshot
    batches = np.bincount(fids // 40)
    assert set(batches[batches > 0].tolist()) <= {40}
    return len(fids)


@pytest.mark.slow
def test_readers_see_whole_batches_while_a_writer_adds(tmp_path):
    path = str(tmp_path / "c.qvec")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, path], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (tmp_path / "c.qvec" / "qvec.sqlite").exists() and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        seen = []
        with qvec.open(path, read_only=True) as reader:
            for _ in range(15):
                n = snapshot_is_consistent(reader)
                seen.append(n)
                hits = reader.search(np.ones(32, dtype=np.float32), 5)
                assert len(hits) == min(5, n)
                time.sleep(0.2)
                reader.refresh()
            with pytest.raises(qvec.ReadOnlyStore, match="opened with read_only=True"):
                reader.add(vectors=np.ones((1, 32)))
        for _ in range(5):  # fresh opens, too, while the writer goes on
            with qvec.open(path, read_only=True) as r:
                snapshot_is_consistent(r)
        assert seen[-1] > seen[0], "refresh() never picked up the writer's new batches"
        with pytest.raises(qvec.StoreLocked):
            qvec.open(path)
    finally:
        writer.kill()
        writer.wait()
