"""Sharded stores built on Ray (qvec[ray]) and searched locally or through Ray actors.

One Ray (2 CPUs) serves the module; the fault test runs its build in a child process it
kills. Real MiniLM embeddings of pydoc paragraphs throughout."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import qvec
from qvec.cli import main

ray = pytest.importorskip("ray")
from qvec import distributed  # noqa: E402
from qvec.shards import BUILD_STATE, MANIFEST, shard_of  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def own_marks(path) -> dict[str, int]:
    """Each row's items.own_vector across the shards: 1 where the vector was the caller's."""
    out: dict[str, int] = {}
    for shard in json.loads((path / MANIFEST).read_text())["shards"]:
        with sqlite3.connect(path / shard / "qvec.sqlite") as c:
            out.update(c.execute("SELECT id, own_vector FROM items"))
    return out


@pytest.fixture
def docs_npy(tmp_path, corpus):
    np.save(tmp_path / "docs.npy", corpus[1])
    with open(tmp_path / "docs.jsonl", "w") as f:
        for i, t in enumerate(corpus[0]):
            f.write(json.dumps({"id": f"d{i}", "text": t, "metadata": {"n": i, "even": i % 2 == 0}}) + "\n")
    return tmp_path / "docs.npy"


def test_sharded_build_answers_as_one_store_with_the_same_codes(tmp_path, docs_npy, corpus):
    texts, xb, _, xq = corpus
    r = distributed.build(tmp_path / "s", [str(docs_npy)], shards=3, quantization="int8", progress=False)
    assert (r.shards, r.count, r.added, r.skipped) == (3, len(xb), len(xb), 0)
    assert (tmp_path / "s" / MANIFEST).exists() and not (tmp_path / "s" / BUILD_STATE).exists()

    with qvec.open(tmp_path / "s") as s:
        assert s.n_shards == 3 and len(s) == len(xb) and s.stats().shards == 3
        one = qvec.open(tmp_path / "one", quantization="int8")
        one.train(codes=s._shards.stores[0].trained_codes())  # the codes the build shared
        one.add(texts, vectors=xb, ids=[f"d{i}" for i in range(len(xb))],
                metadata=[{"n": i, "even": i % 2 == 0} for i in range(len(xb))])
        for q in xq[:20]:
            a, b = s.search(q, k=10), one.search(q, k=10)
            assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
            # pydoc repeats some paragraphs: their copies tie, and either is right, so compare texts
            assert sorted(h.text for h in a) == sorted(h.text for h in b)
        hits = s.search(xq[0], k=10, where={"even": True})
        assert len(hits) == 10 and all(h.metadata["even"] for h in hits)
        assert s.get(["d7"])[0].text == texts[7]
        # writes go to the shard an id hashes to; deletes are all or nothing
        s.upsert(["new"], vectors=xq[:1], ids=["x1"])
        assert "x1" in s._shards.stores[shard_of("x1", 3)].existing(["x1"])
        with pytest.raises(qvec.IdNotFound):
            s.delete(["d1", "nope"])
        assert len(s) == len(xb) + 1
        assert s.delete(["d1", "x1"]) == 2
        one.close()
    # a vector file's rows are the caller's vectors: a shard opened alone will not re-embed them
    assert set(own_marks(tmp_path / "s").values()) == {1}
    with qvec.open(tmp_path / "s", read_only=True) as s:
        assert len(s) == len(xb) - 1
        with pytest.raises(qvec.ReadOnlyStore):
            s.add(["t"], vectors=xq[:1])
    # searched by Ray actors holding the shards: the same answer
    with qvec.open(tmp_path / "s", ray="auto", read_only=True) as s, qvec.open(tmp_path / "s", read_only=True) as t:
        assert [h.id for h in s.search(xq[3], k=5)] == [h.id for h in t.search(xq[3], k=5)]


def test_keyword_and_hybrid_search_over_shards(tmp_path, docs_npy, corpus):
    texts, xb, _, xq = corpus
    distributed.build(tmp_path / "s", [str(docs_npy)], shards=3, quantization="int8", progress=False)
    one = qvec.open(tmp_path / "one", quantization="int8")
    with qvec.open(tmp_path / "s") as s:
        one.train(codes=s._shards.stores[0].trained_codes())
        one.add(texts, vectors=xb, ids=[f"d{i}" for i in range(len(xb))],
                metadata=[{"n": i, "even": i % 2 == 0} for i in range(len(xb))])
        hits = s.search("generator expression", k=10, mode="keyword")
        assert hits and all("generator" in h.text.casefold() or "expression" in h.text.casefold() for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        # BM25 on each shard's own statistics: the same rows as one store's, in nearly the same order
        same = {h.id for h in one.search("generator expression", k=10, mode="keyword")}
        assert len(same & {h.id for h in hits}) >= 8
        evens = s.search("generator expression", k=10, mode="keyword", where={"even": True})
        assert evens and all(h.metadata["even"] for h in evens)
        for i in (3, 50, 200):
            fused = s.search(texts[i], k=5, mode="hybrid")
            assert fused[0].text == texts[i] and all(h.score <= 2 / 61 + 1e-9 for h in fused)
            assert len({h.id for h in fused} & {h.id for h in one.search(texts[i], k=5, mode="hybrid")}) >= 4
        assert [h.id for h in s.search(xq[0], k=3, text="class")] == [h.id for h in s.search(xq[0], k=3)]
        bare = s.search(xq[0], k=3, mode="hybrid", text="class", include=())
        assert len(bare) == 3 and all(h.text is None and h.metadata is None for h in bare)
        with pytest.raises(qvec.InvalidInput, match="needs the query's text"):
            s.search(xq[0], k=3, mode="keyword")
    one.close()
    with qvec.open(tmp_path / "s", ray="auto", read_only=True) as r, qvec.open(tmp_path / "s", read_only=True) as t:
        assert [h.id for h in r.search("file object", k=5, mode="hybrid")] == \
            [h.id for h in t.search("file object", k=5, mode="hybrid")]


def test_a_killed_build_is_incomplete_until_the_same_command_resumes_it(tmp_path, corpus):
    xb = np.tile(corpus[1], (24, 1))  # 15K rows, ids docs.npy:i
    np.save(tmp_path / "docs.npy", xb)
    store = tmp_path / "s"
    qvec_cli = [sys.executable, "-c", "from qvec.cli import main; main()"]
    child = subprocess.Popen([*qvec_cli, "build", str(store), str(tmp_path / "docs.npy"),
                              "--shards", "2", "--ray", "--quiet", "--batch-size", "64"],
                             env={**os.environ, "HF_HUB_OFFLINE": "1"}, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(store.glob("shard-*/qvec.sqlite")) and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    os.killpg(child.pid, signal.SIGKILL)  # the driver and the Ray it started
    child.wait()
    assert not (store / MANIFEST).exists(), "the build finished before it could be killed: make the input larger"
    with pytest.raises(qvec.BuildIncomplete):
        qvec.open(store)
    r = distributed.build(store, [str(tmp_path / "docs.npy")], shards=2, progress=False)
    assert r.count == len(xb) and r.skipped > 0 and r.added + r.skipped == len(xb)
    with qvec.open(store, read_only=True) as s:
        assert len(s) == len(xb) and len(set(s.ids())) == len(xb)


def _writer_pids() -> list[int]:
    """Processes of this machine's Ray shard writers (their title is ray::ShardWriter...)."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and b"ShardWriter" in (d / "cmdline").read_bytes():
                out.append(int(d.name))
        except OSError:
            pass
    return out


def test_a_writer_killed_mid_build_is_restarted_and_nothing_is_lost_or_doubled(tmp_path, corpus):
    xb = np.tile(corpus[1], (24, 1))
    np.save(tmp_path / "docs.npy", xb)
    result, failure = [], []

    def run():
        try:
            result.append(distributed.build(tmp_path / "s", [str(tmp_path / "docs.npy")], shards=2, batch_size=64,
                                            progress=False))
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            failure.append(e)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 120
    while not list((tmp_path / "s").glob("shard-*/qvec.sqlite")) and time.monotonic() < deadline and t.is_alive():
        time.sleep(0.05)
    time.sleep(0.3)
    victims = _writer_pids()
    assert victims and t.is_alive(), "no writer to kill: the build ended first"
    os.kill(victims[0], signal.SIGKILL)
    t.join(180)
    assert not failure, failure
    assert result[0].count == len(xb)
    with qvec.open(tmp_path / "s", read_only=True) as s:
        assert len(s) == len(xb) and len(set(s.ids())) == len(xb)
        assert {h.id for h in s.search(xb[5], k=48)} >= {f"docs.npy:{5 + 640 * r}" for r in range(24)}


def test_cli_builds_a_sharded_store_from_text(tmp_path, corpus):
    (tmp_path / "p.txt").write_text("\n".join(t.replace("\n", " ") for t in corpus[0][:120]) + "\n")
    runner = CliRunner()
    r = runner.invoke(main, ["build", str(tmp_path / "t"), str(tmp_path / "p.txt"), "--shards", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "120 vectors" in r.output and "2 shards" in r.output
    r = runner.invoke(main, ["info", str(tmp_path / "t")])
    assert r.exit_code == 0 and "shards       2" in r.output, r.output
    r = runner.invoke(main, ["search", str(tmp_path / "t"), corpus[0][5].replace("\n", " ")[:200], "-k", "3"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["search", str(tmp_path / "t"), "objects", "--mode", "hybrid", "-k", "3"])
    assert r.exit_code == 0 and r.output.count("\n") == 4 and "Traceback" not in r.output, r.output
    r = runner.invoke(main, ["build", str(tmp_path / "t"), str(tmp_path / "p.txt"), "--shards", "3", "--quiet"])
    assert r.exit_code != 0 and "2 shards, not 3" in r.output and "Traceback" not in r.output


def test_texts_and_their_own_vectors_are_stored_together(tmp_path, corpus):
    texts, xb, _, _ = corpus
    with qvec.open(tmp_path / "s", quantization="fp16") as s:
        s.add(texts[:50], vectors=xb[:50], ids=[f"d{i}" for i in range(50)])
        assert s.get(["d3"])[0].text == texts[3]
        assert np.allclose(s.vectors(["d3"])[0], xb[3] / np.linalg.norm(xb[3]), atol=1e-3)
        assert s.search(xb[3], k=1)[0].text == texts[3]
        with pytest.raises(qvec.InvalidInput, match="not a sharded store"):
            qvec.open(tmp_path / "s", ray="auto")
        with pytest.raises(qvec.InvalidInput, match="2 texts and 3 vectors"):
            s.add(texts[:2], vectors=xb[:3])
        with pytest.raises(qvec.InvalidInput, match="nothing to add"):
            s.add()
        assert len(s) == 50


def test_parquet_texts_are_embedded_into_shards_with_their_metadata(tmp_path, corpus):
    pd = pytest.importorskip("pandas")
    texts = [t.replace("\n", " ") for t in corpus[0][:60]]
    pd.DataFrame({"doc": [f"q{i}" for i in range(60)], "body": texts, "n": list(range(60)),
                  "lang": ["en" if i % 3 else "fr" for i in range(60)]}).to_parquet(tmp_path / "p.parquet")
    r = distributed.build(tmp_path / "s", [str(tmp_path / "p.parquet")], shards=2, quantization="fp16",
                          text_field="body", id_field="doc", metadata_fields="n,lang", progress=False)
    assert r.count == 60
    with qvec.open(tmp_path / "s", read_only=True) as s:
        assert s.get(["q4"])[0].metadata == {"n": 4, "lang": "en"} and s.get(["q4"])[0].text == texts[4]
        hits = s.search(texts[9], k=5, where={"lang": "fr"})
        assert hits[0].id == "q9" and all(h.metadata["lang"] == "fr" for h in hits)
        assert len(s.search(texts[0], k=60, where={"n": {"$lt": 10}})) == 10
    with pytest.raises(qvec.InputFileError, match="no column 'id'"):
        distributed.build(tmp_path / "t", [str(tmp_path / "p.parquet")], shards=2, text_field="body", progress=False)
    # the build embedded every row; writes through the sharded store mark what the caller gave
    assert set(own_marks(tmp_path / "s").values()) == {0}
    with qvec.open(tmp_path / "s") as s:
        s.add([texts[1] + " again"], ids=["e1"])
        s.add(["with its vector"], vectors=corpus[1][:1], ids=["v1"])
        s.ingest([("e2", "embedded in the batch", None), ("v2", "brought its own", None, corpus[1][2])])
        s.upsert(["replaced, now embedded"], ids=["v1"])
    marks = own_marks(tmp_path / "s")
    assert (marks["e1"], marks["e2"], marks["v2"], marks["v1"], marks["q4"]) == (0, 0, 1, 0, 0)
    with qvec.open(tmp_path / "s" / json.loads((tmp_path / "s" / MANIFEST).read_text())["shards"][0]) as shard:
        shard.retrain()  # a shard alone holds only embedded rows: retraining embeds its texts again


def test_codes_for_other_settings_are_refused_by_a_store_opened_asking_for_others(tmp_path, corpus):
    with qvec.open(tmp_path / "a", quantization="int8") as a:
        a.add(vectors=corpus[1][:300])
        a.retrain()
        codes = a.trained_codes()
    with qvec.open(tmp_path / "b", quantization="pq8", dim=384) as b:
        with pytest.raises(qvec.SettingsConflict, match="other settings than the trained codes"):
            b.train(codes=codes)
        assert b.settings is None and len(b) == 0
    with qvec.open(tmp_path / "c") as c:  # nothing asked: the codes' settings are taken
        c.train(codes=codes)
        assert c.is_trained and c.settings == codes.settings
