"""Faults for real: a full disk (a small tmpfs, mounted in a private mount namespace), damaged
and edited store files, bytes flipped at random. Every failure is one QvecError, and
nothing already stored is lost."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qvec

FULL_DISK = textwrap.dedent("""
    import json, os, sys, warnings, numpy as np, qvec
    root, rescore = sys.argv[1], sys.argv[2] == "1"
    ballast = os.path.join(root, "ballast")
    with open(ballast, "wb") as f:
        f.write(b"\\0" * (3 << 20))
    path = os.path.join(root, "s.qvec")
    x = np.random.default_rng(0).standard_normal((4000, 256)).astype("float32")
    s = qvec.open(path, quantization="int8", rescore=rescore)
    acked, full, deferred = [], None, 0
    for b in range(40):
        ids = [f"b{b}-{j}" for j in range(100)]
        try:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                s.add(vectors=x[b * 100:(b + 1) * 100], ids=ids)
            deferred += sum(issubclass(i.category, qvec.CheckpointDeferred) for i in w)
            acked.append(b)
            s.search(x[0], 1, include=())  # the in-memory id map, built before the failure and kept up after
        except qvec.StorageFull as e:
            full = (b, str(e))
            break
    assert full, "the disk never filled"
    b = full[0]
    stored_of_failed = len(s.existing([f"b{b}-{j}" for j in range(100)]))
    near = x[: (b + 1) * 100 : 13]  # queries from every batch, the failed one too
    map_agrees = [[h.id for h in r] for r in s.search_batch(near, 5, include=())] == \
        [[h.id for h in r] for r in s.search_batch(near, 5, include=("text",))]  # ids from SQLite
    tmp_files = [f for f in os.listdir(path) if f.endswith(".tmp")]
    os.remove(ballast)  # free space, then the same batch again: no DuplicateId
    s.add(vectors=x[b * 100:(b + 1) * 100], ids=[f"b{b}-{j}" for j in range(100)])
    acked.append(b)
    s.close()
    with qvec.open(path) as s:
        count, trained = len(s), s.is_trained
        found = [s.search(x[i * 100 + 7], 1, include=())[0].id == f"b{i}-7" for i in acked]
    print(json.dumps({"acked": acked, "full": full, "deferred": deferred, "stored_of_failed": stored_of_failed,
                      "tmp_files": tmp_files, "count": count, "trained": trained, "found": all(found),
                      "map_agrees": map_agrees}))
""")


def run_on_small_tmpfs(script: str, *args: str, size: str = "6m") -> dict:
    """Run ``script`` with a fresh tmpfs of ``size`` as argv[1], in a private mount namespace
    (root mounts directly; another user maps itself to root in a user namespace)."""
    mnt = f"/tmp/qvec-tmpfs-{os.getpid()}"
    os.makedirs(mnt, exist_ok=True)
    shell = f'mount -t tmpfs -o size={size} tmpfs {mnt} && exec "$0" "$@"'
    flags = ["--mount"] if os.geteuid() == 0 else ["--user", "--map-root-user", "--mount"]
    try:
        r = subprocess.run(["unshare", *flags, "sh", "-c", shell, sys.executable, "-c", script, mnt, *args],
                           capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(mnt, ignore_errors=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("rescore", [False, True])
def test_a_full_disk_is_storage_full_and_loses_nothing(rescore):
    out = run_on_small_tmpfs(FULL_DISK, "1" if rescore else "0")
    b, message = out["full"]
    assert "no space left" in message.lower() or "No space left" in message
    assert out["stored_of_failed"] == 0  # the add that raised stored none of its rows
    assert out["tmp_files"] == []  # a failed checkpoint leaves no half-written file
    assert out["deferred"] >= 1  # training's checkpoint failed after an add committed: a warning, not an error
    assert out["count"] == 100 * len(out["acked"]) and out["trained"] and out["found"]
    assert out["map_agrees"]  # the rolled-back batch never reached the in-memory id map


EXPORT_TO_FULL_DISK = textwrap.dedent("""
    import json, subprocess, sys
    mnt, store = sys.argv[1], sys.argv[2]
    r = subprocess.run([sys.executable, "-m", "qvec", "export", store, mnt + "/rows.jsonl", "--vectors"],
                       capture_output=True, text=True)
    print(json.dumps({"code": r.returncode, "stderr": r.stderr}))
""")


def test_an_export_to_a_full_disk_is_one_line_and_the_store_unchanged(tmp_path):
    x = np.random.default_rng(2).standard_normal((3000, 64)).astype(np.float32)
    with qvec.open(tmp_path / "s.qvec", quantization="fp32") as s:
        s.add(vectors=x, ids=[f"r{i}" for i in range(len(x))])
    out = run_on_small_tmpfs(EXPORT_TO_FULL_DISK, str(tmp_path / "s.qvec"), size="256k")
    assert out["code"] == 1 and "Traceback" not in out["stderr"], out["stderr"]
    assert out["stderr"].startswith("Error: ") and len(out["stderr"].splitlines()) == 1
    assert "No space left on device after" in out["stderr"] and "the export stopped part-way" in out["stderr"]
    with qvec.open(tmp_path / "s.qvec", read_only=True) as s:
        assert len(s) == 3000 and np.allclose(s.vectors(["r7"])[0], x[7] / np.linalg.norm(x[7]), atol=1e-6)


# -- damaged and edited files ---------------------------------------------------------------------
@pytest.fixture
def built(tmp_path):
    x = np.random.default_rng(1).standard_normal((1200, 32)).astype(np.float32)
    path = tmp_path / "s.qvec"
    with qvec.open(path, quantization="int8", rescore=True) as s:
        s.add(vectors=x, ids=[f"r{i}" for i in range(len(x))], metadata=[{"i": i} for i in range(len(x))])
    return path, x


def edit(path, sql, *params):
    with sqlite3.connect(path / "qvec.sqlite") as c:
        c.execute(sql, params)


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "qvec.sqlite").write_bytes(b""), "is empty, but .* holds an index"),
    (lambda p: (p / "qvec.sqlite").write_bytes(b"not a database at all" * 100), "not a readable qvec database"),
    (lambda p: (p / "qvec.sqlite").write_bytes((p / "qvec.sqlite").read_bytes()[:5000]), "qvec"),
    (lambda p: edit(p, "UPDATE state SET value = '{\"dim\": \"x\"}' WHERE key = 'config'"), "settings are not valid"),
    (lambda p: edit(p, "UPDATE state SET value = '3' WHERE key = 'next_fid'"), "id counter \\(3\\) is not past"),
    (lambda p: edit(p, "INSERT INTO vector_log (op, fid) VALUES ('drop', 5)"), "vector log entry [0-9]+ \\('drop'"),
    (lambda p: edit(p, "INSERT INTO vector_log (op, fid, vector) VALUES ('add', 5000, x'00')"), "vector log entry"),
    (lambda p: edit(p, "ALTER TABLE items DROP COLUMN own_vector"), "table items has no column own_vector: .* backup"),
    (lambda p: edit(p, "DROP TABLE tombstones"), "has no table tombstones: .* backup"),
])
def test_damaged_or_edited_database_is_corrupt_store(built, damage, message):
    path, _ = built
    damage(path)
    with pytest.raises(qvec.CorruptStore, match=message):
        with qvec.open(path) as s:
            s.search(np.ones(32), 3)  # a lazily found damage surfaces here


def test_another_stores_index_file_is_refused_even_with_its_checksum_rewritten(tmp_path, built):
    path, x = built
    other = tmp_path / "other.qvec"
    with qvec.open(other, quantization="int8") as s:  # same settings, other rows
        s.add(vectors=x[::-1] * 2, ids=[f"o{i}" for i in range(len(x))])
    (theirs,) = other.glob("index-*.faiss")
    (mine,) = path.glob("index-*.faiss")
    data = theirs.read_bytes()
    mine.write_bytes(data)
    edit(path, "UPDATE state SET value = ? WHERE key = 'index_size'", json.dumps(len(data)))
    edit(path, "UPDATE state SET value = ? WHERE key = 'index_digest'", json.dumps(hashlib.sha256(data).hexdigest()))
    with pytest.raises(qvec.CorruptStore, match="fails its checksum"):
        qvec.open(path)


def test_damage_is_found_before_anything_is_lost(built):
    """A store that failed to open because of damage opens again once the damage is undone."""
    path, x = built
    good = (path / "qvec.sqlite").read_bytes()
    (path / "qvec.sqlite").write_bytes(b"")
    with pytest.raises(qvec.CorruptStore):
        qvec.open(path)
    (path / "qvec.sqlite").write_bytes(good)
    with qvec.open(path) as s:
        assert len(s) == 1200 and s.search(x[5], 1)[0].id == "r5"


@settings(max_examples=int(os.environ.get("QVEC_HYPOTHESIS_EXAMPLES", 25)), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=8),
       target=st.sampled_from(["qvec.sqlite", "index"]))
def test_random_byte_damage_is_a_qvec_error_or_harmless(tmp_path_factory, flips, target):
    base = tmp_path_factory.mktemp("damage")
    path = base / "s.qvec"
    x = np.random.default_rng(2).standard_normal((1100, 16)).astype(np.float32)
    with qvec.open(path, quantization="int8") as s:
        s.add(vectors=x, ids=[f"r{i}" for i in range(len(x))], metadata=[{"i": i} for i in range(len(x))])
    file = path / "qvec.sqlite" if target == "qvec.sqlite" else next(path.glob("index-*.faiss"))
    data = bytearray(file.read_bytes())
    for where, xor in flips:
        data[int(where * len(data))] ^= xor
    file.write_bytes(bytes(data))
    try:
        with qvec.open(path) as s:
            ids = s.ids()
            s.get(ids[:50])
            s.search_batch(x[:5], 5, where={"i": {"$lt": 500}})
            s.search_batch(x[:5], 5)
            s.stats()
    except qvec.QvecError as e:
        assert "\n" not in str(e)
    shutil.rmtree(base, ignore_errors=True)


def test_text_that_is_not_utf8_in_the_database_is_a_corrupt_store(tmp_path):
    """A damaged byte inside a stored text reached the caller as a bare UnicodeDecodeError
    (hypothesis found one flip in qvec.sqlite's schema that did the same at open)."""
    path = tmp_path / "s.qvec"
    x = np.random.default_rng(3).standard_normal((20, 8)).astype(np.float32)
    with qvec.open(path, quantization="fp32") as s:
        s.add(["some text"] * 20, vectors=x, ids=[f"r{i}" for i in range(20)])
    conn = sqlite3.connect(path / "qvec.sqlite")
    conn.execute("UPDATE items SET text = CAST(X'66ff6f' AS TEXT) WHERE id = 'r1'")
    conn.commit()
    conn.close()
    with qvec.open(path) as s:
        with pytest.raises(qvec.CorruptStore, match="damaged .*decode to UTF-8.*restore the store from a backup"):
            s.get("r1")
        with pytest.raises(qvec.CorruptStore, match="decode to UTF-8"):
            s.search(x[1], 3, include=("text",))
        assert s.get("r2").text == "some text" and s.search(x[1], 1, include=())[0].id == "r1"


_keys = st.text(max_size=4) | st.integers(0, 3)
_json = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
                     max_leaves=8)


@settings(max_examples=int(os.environ.get("QVEC_HYPOTHESIS_EXAMPLES", 25)) * 4, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ident=st.text(max_size=6), meta=st.dictionaries(_keys, _json, max_size=3))
def test_any_id_and_metadata_round_trip_or_are_refused(tmp_path_factory, ident, meta):
    """Random ids and metadata (NUL, lone surrogates, huge integers, NaN, non-string keys,
    nesting): either stored and read back exactly, or one InvalidInput with nothing stored."""
    path = tmp_path_factory.mktemp("ids") / "s.qvec"
    with qvec.open(path, quantization="fp32") as s:
        try:
            s.add(vectors=np.ones((1, 4)), ids=[ident], metadata=[meta])
        except qvec.InvalidInput as e:
            assert "\n" not in str(e) and len(s) == 0
            return
        got = s.get(ident)
        assert got.id == ident and got.metadata == json.loads(json.dumps(meta))
        assert s.search(np.ones(4), 1, where={"$or": [{"x": 1}, {"y": {"$ne": 2}}]})[0].id == ident
        assert s.delete([ident]) == 1


def test_a_damaged_original_is_found_when_read(built):
    """A flipped byte in originals.f32 was rescored silently into wrong hits."""
    path, x = built
    with qvec.open(path) as s:
        assert s.search(x[5], 1)[0].id == "r5"
    with open(path / "originals.f32", "r+b") as f:
        f.seek(5 * 32 * 4 + 9)
        byte = f.read(1)
        f.seek(5 * 32 * 4 + 9)
        f.write(bytes([byte[0] ^ 0x10]))
    with qvec.open(path) as s:
        with pytest.raises(qvec.CorruptStore, match="originals.f32 row 5 fails its checksum"):
            s.search(x[5], 1)
        with pytest.raises(qvec.CorruptStore, match="row 5 fails its checksum"):
            s.vectors(["r5"])
        assert s.vectors(["r6"]).shape == (1, 32)  # the rows around it still read
