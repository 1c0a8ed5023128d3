"""Stores written by format 1 (qvec before the store was split; fixtures made by
tests/fixtures/make_v1.py with that version) open, are migrated to format 2 on open, and
hold exactly what they held: rows, metadata, vectors, the log that was not yet saved,
tombstones, and untrained vectors."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from stand_ins import FixedEmbedder

import qvec
from qvec.journal import WriterLock

FIXTURES = Path(__file__).parent / "fixtures"
X = np.load(FIXTURES / "v1-vectors.npy")


def copy(tmp_path, name) -> Path:
    path = tmp_path / name
    shutil.copytree(FIXTURES / f"{name}.qvec", path)
    return path


def tables(path) -> set[str]:
    with sqlite3.connect(path / "qvec.sqlite") as c:
        return {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_int8_store_with_an_unsaved_log_migrates_and_keeps_everything(tmp_path):
    path = copy(tmp_path, "v1-int8-flat")
    assert {"settings", "wal"} <= tables(path)
    with qvec.open(path) as s:
        assert tables(path) >= {"state", "vector_log", "items", "meta_kv", "tombstones"}
        assert not {"settings", "wal"} & tables(path)
        st = s.stats()
        assert st.format_version == 3 and st.quantization == "int8" and st.rescore and st.trained
        assert st.log_rows == 104  # 100 adds, 2 deletes, the upsert's delete and add: replayed, not lost
        expect = [f"r{i}" for i in range(1300) if i not in (3, 1250)]
        assert sorted(s.ids()) == sorted(expect) and len(s) == 1298
        assert s.get("r4").metadata == {"g": 9} and s.get("r10").metadata == {"g": 1, "tag": "a"}
        np.testing.assert_allclose(s.vectors(["r4", "r1299"]), unit(np.stack([X[5] * 2, X[1299]])), atol=1e-6)
        assert [h.id for h in s.search(X[1280], 1)] == ["r1280"]  # a row that lived only in the log
        assert {h.id for h in s.search(X[1280], 5, where={"g": 9})} == {"r4"}
        s.add(vectors=X[:1], ids=["new"])
    with qvec.open(path, read_only=True) as s:  # and as a format-2 store from now on
        assert len(s) == 1299 and s.search(X[0], 2)[0].id in ("new", "r0")


def test_hnsw_store_keeps_its_tombstones(tmp_path):
    path = copy(tmp_path, "v1-fp32-hnsw")
    with qvec.open(path, read_only=True) as s:  # a reader migrates too, while no writer holds the store
        assert s.stats().tombstones == 3 and s.stats().metric == "l2"
        hits = s.search(X[1], 5, include=())
        assert "r1" not in {h.id for h in hits} and len(hits) == 5
        assert s.search(X[7], 1)[0].id == "r7"


def test_untrained_store_keeps_its_waiting_vectors(tmp_path):
    path = copy(tmp_path, "v1-int8-untrained")
    with qvec.open(path) as s:
        assert not s.is_trained and len(s) == 50
        assert [h.id for h in s.search(X[17], 1)] == ["r17"]
        assert s.search(X[17], 1)[0].score == pytest.approx(1.0, abs=1e-5)  # searched exactly


def test_a_reader_cannot_migrate_while_an_old_writer_holds_the_store(tmp_path):
    path = copy(tmp_path, "v1-int8-untrained")
    lock = WriterLock(path, 0)
    try:
        with pytest.raises(qvec.IncompatibleStore, match="older format, open for writing elsewhere"):
            qvec.open(path, read_only=True)
    finally:
        lock.release()
    assert "wal" in tables(path)  # untouched


def test_a_reader_of_old_originals_reads_them_unchecked_and_writes_nothing(tmp_path):
    path = copy(tmp_path, "v1-int8-flat")
    with qvec.open(path, read_only=True) as s:  # migrates (no writer), then reads rows that have no checksums
        np.testing.assert_allclose(s.vectors(["r1299"]), unit(X[1299:1300]), atol=1e-6)
        assert s.search(X[1280], 1)[0].id == "r1280"
    assert not (path / "originals.f32.sum").exists()


def test_a_format_2_store_gains_the_own_vector_mark_and_retrains_from_its_texts_as_before(tmp_path):
    """Format 3 records per row whether the caller gave its vector. A format-2 store (this
    schema without the column) is migrated on open with the mark unknown for its rows, which
    retrain() embeds again as format 2 did; rows added from then on are marked."""
    path = tmp_path / "s"
    texts, emb = [f"text {i}" for i in range(600)], FixedEmbedder()
    with qvec.open(path, quantization="int8", embedder=emb) as s:
        s.add(texts[:500], vectors=emb.embed([t + "!" for t in texts[:500]]), ids=[str(i) for i in range(500)])
    with sqlite3.connect(path / "qvec.sqlite") as c:  # as format 2 wrote it
        c.execute("ALTER TABLE items DROP COLUMN own_vector")
        c.execute("UPDATE state SET value = '2' WHERE key = 'format_version'")
    with qvec.open(path, embedder=emb) as s:
        assert s.stats().format_version == 3
        s.retrain()  # unknown marks: the texts embedded again, as before
        s.add(texts[500:], vectors=emb.embed(texts[500:]), ids=[str(i) for i in range(500, 600)])
        with pytest.raises(qvec.NotTrained, match="100 row\\(s\\) hold the vectors they were added with"):
            s.retrain()
    with sqlite3.connect(path / "qvec.sqlite") as c:
        marks = dict(c.execute("SELECT coalesce(own_vector, -1), count(*) FROM items GROUP BY 1").fetchall())
    assert marks == {-1: 500, 1: 100}

