"""Promises that broke where the old one-class store joined its parts (issue #10): a
read-only store is a snapshot; reading vectors back never changes an index, from any
number of threads; ``include=`` names fields in any order; codes train on as many vectors
as they ask for, and ``retrain()`` learns them again, atomically. Each test here failed on
the store before it was split."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from stand_ins import FixedEmbedder

import qvec
from qvec.cli import main
from qvec.metrics import exact_knn, recall_at_k


def rows(results, k=10):
    return np.array([[int(h.id) for h in r[:k]] + [-1] * (k - len(r[:k])) for r in results])


# -- 1. a reader is a snapshot --------------------------------------------------------------------
def test_a_read_only_store_reads_one_snapshot_until_refresh(tmp_path, corpus):
    xb = corpus[1]
    path = tmp_path / "s"
    ids = [str(i) for i in range(len(xb))]
    meta = [{"g": i % 3} for i in range(len(xb))]
    writer = qvec.open(path, quantization="int8", index="ivf8")
    writer.add(vectors=xb[:400], ids=ids[:400], metadata=meta[:400])
    writer.train()
    reader = qvec.open(path, read_only=True)
    seen = (len(reader), reader.ids(), reader.get(["5", "8"]), reader.vectors(["5"]),
            reader.search_batch(xb[:20], 5, where={"g": 2}), reader.search_batch(xb[:20], 5))

    writer.add(vectors=xb[400:], ids=ids[400:], metadata=meta[400:])  # rows a filter matches, after the snapshot
    writer.delete(["5", "7"])
    writer.upsert(vectors=-xb[8], ids="8", metadata={"g": 7})
    writer.checkpoint()  # the index file the reader loaded is gone now

    now = (len(reader), reader.ids(), reader.get(["5", "8"]), reader.vectors(["5"]),
           reader.search_batch(xb[:20], 5, where={"g": 2}), reader.search_batch(xb[:20], 5))
    assert now[:3] == seen[:3] and np.array_equal(now[3], seen[3]) and now[4:] == seen[4:]
    assert reader.search(xb[500], 3, where={"g": 500 % 3})  # a filter over rows the reader has not seen: no error
    assert all(int(h.id) < 400 for h in reader.search(xb[500], 10))

    assert reader.refresh()
    assert len(reader) == len(xb) - 2 and "5" not in reader.ids()
    assert reader.get("8").metadata == {"g": 7} and reader.search(-xb[8], 1)[0].id == "8"
    assert not reader.refresh()  # nothing new
    reader.close()
    writer.close()


# -- 2. reading vectors back never mutates the index --------------------------------------------------
THREADS = """
import sys, threading, numpy as np, qvec
quantization, index = sys.argv[2], sys.argv[3]
x = np.random.default_rng(0).standard_normal((20_000, 32)).astype("float32")
s = qvec.open(sys.argv[1], quantization=quantization, index=index)
s.add(vectors=x, ids=[str(i) for i in range(len(x))])
s.train()
want = x / np.linalg.norm(x, axis=1, keepdims=True)
errors = []
def work(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        pick = rng.choice(len(x), 64, replace=False)
        got = s.vectors([str(i) for i in pick])
        s.search_batch(x[pick[:4]], 5)
        if (np.sum(got * want[pick], 1) / np.linalg.norm(got, axis=1)).min() < 0.8:
            errors.append("decoded vectors do not match their ids")
threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
print("errors", errors[:1])
sys.exit(1 if errors else 0)
"""


@pytest.mark.slow
@pytest.mark.parametrize("quantization,index", [("int8", "ivf64"), ("int8", "flat"), ("pq8", "flat"),
                                                 ("fp16", "hnsw16"), ("opq8", "ivf16"), ("pq16x4fs", "ivf16")])
def test_vectors_from_many_threads_on_every_index_kind(tmp_path, quantization, index):
    """In a child process: the old IVF path switched the direct map on and off under the
    read lock, and four threads crashed the process (SIGSEGV)."""
    r = subprocess.run([sys.executable, "-c", THREADS, str(tmp_path / "s"), quantization, index],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stdout[-500:], r.stderr[-2000:])


# -- 3. include= in any order ---------------------------------------------------------------------
@pytest.mark.parametrize("include", [p for n in range(3) for p in itertools.permutations(("text", "metadata"), n)])
def test_include_fields_in_any_order(tmp_path, include):
    with qvec.open(tmp_path / "s", quantization="fp32", embedder=FixedEmbedder()) as s:
        s.add([f"text {i}" for i in range(50)], ids=[str(i) for i in range(50)],
              metadata=[{"n": i, "tag": ["a", "b"]} for i in range(50)])
        hits = s.search(s.vectors(["7"])[0], 3, include=include)
    assert hits[0].id == "7" and len(hits) == 3
    assert hits[0].text == ("text 7" if "text" in include else None)
    assert hits[0].metadata == ({"n": 7, "tag": ["a", "b"]} if "metadata" in include else None)


# -- 4. codes train on enough vectors, and retrain -------------------------------------------------
def test_cli_build_waits_for_enough_vectors_before_training(tmp_path, corpus):
    """The old `qvec build` trained the codes on whatever its first run held, even one
    vector: every later code was degenerate and recall@10 fell to 0."""
    xb, xq = corpus[1], corpus[3]
    rng = np.random.default_rng(1)
    x = np.vstack([xb, xb + 0.02 * rng.standard_normal(xb.shape).astype(np.float32)])  # 1,280 real-ish rows
    runner, store = CliRunner(), str(tmp_path / "s.qvec")
    np.save(tmp_path / "one.npy", x[:1])
    np.save(tmp_path / "some.npy", x[1:640])
    np.save(tmp_path / "rest.npy", x[640:])
    for part in ("one", "some"):
        r = runner.invoke(main, ["build", store, str(tmp_path / f"{part}.npy")])
        assert r.exit_code == 0, r.output
    assert "codes not trained yet: 640 vectors searched exactly until 1000 arrive" in r.output
    with qvec.open(store) as s:  # searched exactly meanwhile
        assert not s.is_trained
        truth = exact_knn(x[:640], xq, 10)[1]
        names = np.array(["one.npy:0"] + [f"some.npy:{i}" for i in range(639)])
        hits = [[h.id for h in r] for r in s.search_batch(xq, 10, include=())]
        assert np.mean([len(set(h) & set(names[t])) / 10 for h, t in zip(hits, truth)]) == 1.0
    r = runner.invoke(main, ["build", store, str(tmp_path / "rest.npy")])
    assert r.exit_code == 0 and "392.0 bytes/vector" in r.output, r.output
    with qvec.open(store) as s:
        assert s.is_trained
        names = np.concatenate([names, [f"rest.npy:{i}" for i in range(640)]])
        hits = [[h.id for h in r] for r in s.search_batch(xq, 10, include=())]
    truth = exact_knn(x, xq, 10)[1]
    assert np.mean([len(set(h) & set(names[t])) / 10 for h, t in zip(hits, truth)]) >= 0.95


def badly_trained(path, xb, **kw):
    """A store whose int8 scales were learned from one tiny vector: every other vector clips."""
    s = qvec.open(path, quantization="int8", **kw)
    with pytest.warns(UserWarning, match="training int8/flat on 1 vectors"):
        s.train(vectors=xb[:1] * 1e-3)
    return s


@pytest.mark.parametrize("source", ["originals", "texts"])
def test_retrain_learns_the_codes_again(tmp_path, corpus, source):
    xb, xq = corpus[1], corpus[3]
    ids = [str(i) for i in range(len(xb))]
    if source == "originals":
        s = badly_trained(tmp_path / "s", xb, rescore=True)
        s.add(vectors=xb, ids=ids)
        truth, queries = exact_knn(xb, xq, 10)[1], xq
    else:
        emb = FixedEmbedder()
        s = badly_trained(tmp_path / "s", emb.embed(["seed"]), embedder=emb)
        texts = [f"document number {i}" for i in range(len(xb))]
        s.add(texts, ids=ids)
        x = emb.embed(texts)
        queries = x[:60] + 0.3 * np.random.default_rng(2).standard_normal((60, 16)).astype(np.float32)
        truth = exact_knn(x, queries, 10)[1]
    before = recall_at_k(rows(s.search_batch(queries, 10, include=())), truth, 10)
    with pytest.raises(qvec.NotTrained, match="already trained: use retrain()"):
        s.train(vectors=xb[:10] if source == "originals" else FixedEmbedder().embed(["a"]))
    s.retrain()
    after = recall_at_k(rows(s.search_batch(queries, 10, include=())), truth, 10)
    s.close()
    with qvec.open(tmp_path / "s", **({} if source == "originals" else {"embedder": FixedEmbedder()})) as s:
        reopened = recall_at_k(rows(s.search_batch(queries, 10, include=())), truth, 10)
    assert before < 0.5 and after >= 0.95 and reopened == after, (before, after, reopened)


def test_retrain_refuses_a_store_with_nothing_to_learn_from(tmp_path, corpus):
    xb = corpus[1]
    s = badly_trained(tmp_path / "s", xb)
    s.add(vectors=xb, ids=[str(i) for i in range(len(xb))])
    with pytest.raises(qvec.NotTrained, match="keeps no originals .* 640 row\\(s\\) have no text"):
        s.retrain()
    s.close()


def test_retrain_without_originals_refuses_to_replace_vectors_given_with_their_texts(tmp_path):
    """Rows added as texts with their own vectors keep those vectors. retrain() without
    originals embeds the stored texts again: it used to put the model's vectors in their
    place, silently. Each row records whether its vector was the caller's (add, and ingest
    row by row), through deletes, an upsert and a compaction that renumbers the rows."""
    emb = FixedEmbedder()
    texts = [f"document number {i}" for i in range(1200)]
    given = emb.embed([f"another text {i}" for i in range(40)])  # not what the texts embed to
    s = badly_trained(tmp_path / "s", emb.embed(["seed"]), embedder=emb)
    s.add(texts[:1000], ids=[str(i) for i in range(1000)])
    s.add(texts[1000:1040], vectors=given, ids=[str(i) for i in range(1000, 1040)])
    own_rows = [i for i in range(1040, 1200) if i % 4 == 0]
    s.ingest([(str(i), texts[i], {}) + ((emb.embed([f"other {i}"])[0],) if i in own_rows else ())
              for i in range(1040, 1200)], batch_size=64)
    s.delete([str(i) for i in range(300)])
    s.checkpoint(compact=True)  # renumbers the rows: each keeps its mark
    assert s.stats().dead_ids == 0
    found = [h[0].id for h in s.search_batch(given, 1, include=())]
    with pytest.raises(qvec.NotTrained, match="keeps no originals .* 80 row\\(s\\) hold the vectors they were added"):
        s.retrain()
    assert [h[0].id for h in s.search_batch(given, 1, include=())] == found  # nothing changed
    s.delete([str(i) for i in range(1000, 1040)] + [str(i) for i in own_rows[1:]])
    s.upsert(texts[own_rows[0]], ids=str(own_rows[0]))  # embedded from its text now
    s.retrain()  # every row's vector is its text's embedding: nothing given is lost
    x = emb.embed(texts[300:1000])
    assert [h[0].id for h in s.search_batch(x, 1, include=())] == [str(i) for i in range(300, 1000)]
    s.close()


def test_qvec_retrain_command(tmp_path, corpus):
    xb, xq = corpus[1], corpus[3]
    with badly_trained(tmp_path / "s", xb, rescore=True) as s:
        s.add(vectors=xb, ids=[str(i) for i in range(len(xb))])
    r = CliRunner().invoke(main, ["retrain", str(tmp_path / "s")])
    assert r.exit_code == 0 and r.output.startswith("retrained int8/flat on 640 vectors"), r.output
    with qvec.open(tmp_path / "s") as s:
        assert recall_at_k(rows(s.search_batch(xq, 10, include=())), exact_knn(xb, xq, 10)[1], 10) >= 0.95


RETRAIN = """
import sys, qvec
s = qvec.open(sys.argv[1])
print("go", flush=True)
s.retrain()
s.close()
print("done", flush=True)
"""


@pytest.mark.slow
def test_a_killed_retrain_leaves_the_old_codes_or_the_new(tmp_path):
    import shutil
    import signal
    import time

    x = np.random.default_rng(3).standard_normal((60_000, 64)).astype(np.float32)
    base = tmp_path / "base"
    with badly_trained(base, x, rescore=True) as s:
        for a in range(0, len(x), 20_000):
            s.add(vectors=x[a : a + 20_000], ids=[str(i) for i in range(a, a + 20_000)])
        old = s.stats().trained_parameters["scales"]
    outcomes = set()
    for delay in (0.0, 0.3, 0.6, 0.9, 1.2, 1.6, 2.2, 3.0):
        path = tmp_path / f"k{delay}"
        shutil.copytree(base, path)
        p = subprocess.Popen([sys.executable, "-c", RETRAIN, str(path)], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "go"
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        with qvec.open(path) as s:
            assert len(s) == len(x)
            scales = s.stats().trained_parameters["scales"]
            hits = s.search_batch(x[:20], 1, include=())
        if scales == old:
            outcomes.add("old")
        else:
            outcomes.add("new")
            assert [h[0].id for h in hits] == [str(i) for i in range(20)]  # the new codes find each vector
    assert outcomes


# -- the smaller promises -----------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"metric": "cosin"}, "unknown metric 'cosin'"),
    ({"range_stat": "max"}, "unknown range_stat 'max'"),
    ({"rescore": "yes"}, "rescore must be True, False or the precision"),
    ({"dim": "64"}, "dim must be an integer"),
    ({"dim": 60, "quantization": "pq16"}, "16 does not divide the dimension 60"),
    ({"index": "ivf0"}, "nlist must be an integer from 1"),
    ({"index": "ivf99999999999"}, "nlist must be an integer from 1"),
    ({"index": "hnsw2000000000"}, "HNSW links must be an integer from 2"),
    ({"quantization": "pq999999999"}, "unknown quantization"),
])
def test_settings_are_checked_at_open(tmp_path, kwargs, message):
    with pytest.raises(qvec.InvalidSpec, match=message):
        qvec.open(tmp_path / "s", **kwargs)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("params, message", [
    ({"oversample": 0}, "oversample must be an integer from 1"),
    ({"nprobe": -1}, "nprobe must be an integer from 1"),
    ({"nprobe": 2.5}, "nprobe must be an integer from 1"),
    ({"nprobe": "3"}, "nprobe must be an integer from 1"),
    ({"ef_search": 2**40}, "ef_search must be an integer from 1"),
    ({"ef_search": True}, "ef_search must be an integer from 1"),
    ({"ef_search": np.bool_(True)}, "ef_search must be an integer from 1"),
    ({"nprobe": np.float32(3)}, "nprobe must be an integer from 1"),
    ({"oversample": np.int64(0)}, "oversample must be an integer from 1"),
])
def test_search_parameters_are_checked(tmp_path, corpus, params, message):
    with qvec.open(tmp_path / "s", quantization="fp32") as s:
        s.add(vectors=corpus[1][:5])
        with pytest.raises(qvec.InvalidInput, match=message):
            s.search(corpus[1][0], 3, **params)


def test_numpy_integers_pass_as_search_parameters_as_they_do_for_k(tmp_path, corpus):
    with qvec.open(tmp_path / "s", quantization="int8", index="hnsw16", rescore=True) as s:
        s.add(vectors=corpus[1][:300])
        want = s.search(corpus[1][0], 5, ef_search=40, oversample=2)
        got = s.search(corpus[1][0], np.int64(5), ef_search=np.int32(40), oversample=np.uint8(2))
        assert got == want
        assert s.search_batch(corpus[1][:1], 5, ef_search=np.int64(40), oversample=np.int64(2))[0] == want


def test_get_returns_one_item_per_id_asked_and_k_past_the_count(tmp_path, corpus):
    with qvec.open(tmp_path / "s", quantization="fp32") as s:
        s.add(vectors=corpus[1][:3], ids=["a", "b", "c"])
        assert [i.id for i in s.get(["a", "a", "c"])] == ["a", "a", "c"]
        assert len(s.search(corpus[1][0], 10**9)) == 3  # no allocation for a billion slots


def test_a_failed_first_add_does_not_fix_the_dimension(tmp_path):
    with qvec.open(tmp_path / "s", quantization="fp32") as s:
        with pytest.raises(qvec.DuplicateId):
            s.add(vectors=np.ones((2, 8)), ids=["a", "a"])
        with pytest.raises(qvec.InvalidInput):
            s.add(vectors=np.ones((1, 8)), metadata=[{"x": object()}])
        s.add(vectors=np.ones((1, 16)), ids=["b"])
        assert s.settings.dim == 16




# -- growth: ids are never reused, and compaction reclaims what deletes and upserts leave ----------------
@pytest.mark.parametrize("quantization,index", [("int8", "ivf8"), ("pq16", "flat"), ("fp16", "hnsw16")])
def test_upserts_leave_dead_ids_and_compaction_reclaims_them_beside_a_reader(tmp_path, corpus, quantization, index):
    xb, xq = corpus[1], corpus[3]
    ids = [str(i) for i in range(len(xb))]
    path = tmp_path / "s"
    s = qvec.open(path, quantization=quantization, index=index, rescore=True)
    s.add(vectors=xb, ids=ids, metadata=[{"n": i} for i in range(len(xb))])
    s.train()
    s.upsert(vectors=xb[:400], ids=ids[:400], metadata=[{"n": i} for i in range(400)])
    assert s.stats().dead_ids == 400  # under the automatic threshold (1,000)
    before = s.search_batch(xq, 10, where={"n": {"$lt": 500}})
    reader = qvec.open(path, read_only=True)
    grown = s.stats().disk_bytes["originals"]
    s.checkpoint(compact=True)
    st = s.stats()
    assert st.dead_ids == 0 and st.disk_bytes["originals"] == len(xb) * (4 * 384 + 4) < grown
    assert same(s.search_batch(xq, 10, where={"n": {"$lt": 500}}), before)  # the same rows, scores, metadata
    assert len(list(path.glob("originals*.f32"))) == 1  # the old file is gone from the directory ...
    assert same(reader.search_batch(xq, 10, where={"n": {"$lt": 500}}), before)  # ... not from the reader
    assert len(reader.vectors(ids[:5])) == 5
    reader.refresh()
    assert same(reader.search_batch(xq, 10, where={"n": {"$lt": 500}}), before)
    reader.close()
    for _ in range(4):  # five upserts of every row: the automatic compaction keeps the file near its live size
        s.upsert(vectors=xb, ids=ids, metadata=[{"n": i} for i in range(len(xb))])
    assert s.stats().disk_bytes["originals"] < 3 * len(xb) * (4 * 384 + 4)
    s.close()
    r = CliRunner().invoke(main, ["compact", str(path)])
    assert r.exit_code == 0 and "dead ids reclaimed" in r.output, r.output
    with qvec.open(path) as s:
        after = s.search_batch(xq, 10, where={"n": {"$lt": 500}})
        assert s.stats().dead_ids == 0
    # rows were rewritten and renumbered again and again: the same scores (a row tied with another at the
    # 10th place may trade places with it), each hit its own row's metadata
    assert [[round(h.score, 5) for h in r] for r in after] == [[round(h.score, 5) for h in r] for r in before]
    assert all(h.metadata == {"n": int(h.id)} for r in after for h in r)


def same(a, b) -> bool:
    """The same hits per query, rows with equal scores in either order (the corpus repeats paragraphs)."""
    key = [[sorted((round(h.score, 5), h.id, str(h.metadata)) for h in r)] for r in a]
    return key == [[sorted((round(h.score, 5), h.id, str(h.metadata)) for h in r)] for r in b]
