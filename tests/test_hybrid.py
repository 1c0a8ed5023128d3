"""Keyword (FTS5 BM25) and hybrid (reciprocal rank fusion) search, on real pydoc paragraphs:
the full-text index follows every write, survives SIGKILLed writers, is built on demand for
stores made without it, and no query text is FTS5 syntax."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

import qvec
from qvec.cli import main
from qvec.hybrid import RRF_K, match_expression


@pytest.fixture
def store(tmp_path, corpus):
    texts, xb, _, _ = corpus
    s = qvec.open(tmp_path / "s", quantization="int8")
    s.add(texts, vectors=xb, ids=[f"d{i}" for i in range(len(texts))],
          metadata=[{"n": i, "even": i % 2 == 0} for i in range(len(texts))])
    yield s
    s.close()


def fts_rows(s) -> int:
    q = "SELECT count(*) FROM items_fts WHERE items_fts MATCH ?"
    return s.catalog.conn.execute(q, ['"qvecmark"']).fetchone()[0]


def test_keyword_finds_the_words_and_hybrid_fuses_the_ranks(store, corpus):
    texts, xb, _, _ = corpus
    hits = store.search("the __slots__ declaration", k=5, mode="keyword")
    assert "slots" in hits[0].text.lower() and "slots" in hits[1].text.lower()
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    # fusion by hand: the same fids and scores as the store's
    vec = [h.id for h in store.search(xb[10], k=50, include=())]
    kw = [h.id for h in store.search("the __slots__ declaration", k=50, mode="keyword", include=())]
    want: dict[str, float] = {}
    for ranked in (vec, kw):
        for r, i in enumerate(ranked, 1):
            want[i] = want.get(i, 0) + 1 / (RRF_K + r)
    got = store.search(xb[10], k=10, mode="hybrid", text="the __slots__ declaration")
    assert [round(h.score, 6) for h in got] == sorted((round(v, 6) for v in want.values()), reverse=True)[:10]
    assert {h.id for h in got} <= set(want)
    # weights: one half only gives that half's order
    only_vec = store.search(xb[10], k=10, mode="hybrid", text="the __slots__ declaration", weights=(1, 0))
    assert [h.id for h in only_vec] == vec[:10]
    only_kw = store.search("the __slots__ declaration", k=10, mode="hybrid", weights=(0, 1))
    assert [h.id for h in only_kw] == kw[:10]


def test_where_applies_to_both_halves(store):
    for mode in ("keyword", "hybrid"):
        hits = store.search("return value of a function", k=20, mode=mode, where={"even": True})
        assert hits and all(h.metadata["even"] for h in hits)
    assert store.search("function", k=5, mode="hybrid", where={"n": -1}) == []


def test_the_full_text_index_follows_every_write(store, corpus):
    xb = corpus[1]
    store.add(["a qvecmark paragraph"], vectors=xb[:1], ids=["m1"])
    assert [h.id for h in store.search("qvecmark", k=3, mode="keyword")] == ["m1"]
    store.upsert(["rewritten without the word"], vectors=xb[:1], ids=["m1"])
    assert store.search("qvecmark", k=3, mode="keyword") == []
    assert store.search("rewritten", k=1, mode="keyword")[0].id == "m1"
    store.upsert(["qvecmark again"], vectors=xb[:1], ids=["m1"])
    store.delete(["d0", "d1", "d2"])
    store.checkpoint(compact=True)  # renumbers every row: the index follows the fids
    assert [h.id for h in store.search("qvecmark", k=3, mode="keyword")] == ["m1"]
    assert fts_rows(store) == 1
    store.catalog.conn.execute("INSERT INTO items_fts (items_fts, rank) VALUES ('integrity-check', 1)")
    assert store.search(corpus[0][5][:80], k=1, mode="keyword")[0].id == "d5"


@pytest.mark.parametrize("query", ['AND OR NOT', '"unbalanced', 'NEAR(a b, 3)', '*', 'col:value', '(((', "it's",
                                   '^start -minus +plus', '!?', 'x" OR 1=1 --'])
def test_no_query_is_fts5_syntax(store, query):
    for mode in ("keyword", "hybrid"):
        hits = store.search(query, k=3, mode=mode)
        assert isinstance(hits, list)
    assert match_expression("?!") is None


@pytest.mark.parametrize("query", ["", "   ", "\t\n"])
def test_an_empty_query_is_refused_in_every_mode(store, query):
    """Embedded, an empty text has a vector like any other, and its nearest rows look like hits."""
    for mode in ("vector", "keyword", "hybrid"):
        with pytest.raises(qvec.InvalidInput, match="the query is empty: give some text to search for"):
            store.search(query, k=3, mode=mode)


def test_other_scripts_are_words_too(tmp_path):
    texts = ["Ο σκύλος τρέχει στο πάρκο", "Собака бежит в парке", "犬が公園を走る", "Café crème brûlée"]
    x = np.eye(4, 8, dtype=np.float32) + 0.1
    with qvec.open(tmp_path / "s", quantization="fp16") as s:
        s.add(texts, vectors=x, ids=["el", "ru", "ja", "fr"])
        assert s.search("σκύλος", k=1, mode="keyword")[0].id == "el"
        assert s.search("СОБАКА", k=1, mode="keyword")[0].id == "ru"
        assert s.search("犬が公園を走る", k=1, mode="keyword")[0].id == "ja"
        assert s.search("creme brulee", k=1, mode="keyword")[0].id == "fr"  # diacritics folded


def test_bad_arguments_are_one_line_errors(store, corpus):
    with pytest.raises(qvec.InvalidInput, match="mode must be one of"):
        store.search("x", mode="bm25")
    with pytest.raises(qvec.InvalidInput, match="needs the query's text"):
        store.search(corpus[1][0], mode="keyword")
    with pytest.raises(qvec.InvalidInput, match="weights"):
        store.search("x", mode="hybrid", weights=(0, 0))
    with pytest.raises(qvec.InvalidInput, match="rrf_k"):
        store.search("x", mode="hybrid", rrf_k=-1)
    assert store.search(corpus[1][3], k=1, mode="keyword", text=corpus[0][3][:80])[0].id == "d3"


def test_a_store_without_the_index_gets_it_on_demand(tmp_path, corpus):
    texts, xb, _, _ = corpus
    with qvec.open(tmp_path / "s", quantization="int8") as s:
        s.add(texts[:100], vectors=xb[:100], ids=[f"d{i}" for i in range(100)])
        for t in ("TRIGGER items_fts_ai", "TRIGGER items_fts_ad", "TRIGGER items_fts_au", "TABLE items_fts"):
            s.catalog.conn.execute(f"DROP {t}")  # as a store made before qvec had full text
    with qvec.open(tmp_path / "s", read_only=True) as r:
        assert not r.has_fulltext
        with pytest.raises(qvec.ReadOnlyStore, match="no full-text index"):
            r.search("x", mode="keyword")
        assert r.search(xb[0], k=1)[0].id == "d0"  # vector search needs none
    wordy = [i for i in range(100) if len(match_expression(texts[i]) or "") > 200][:2]
    res = CliRunner().invoke(main, ["search", str(tmp_path / "s"), texts[wordy[0]], "--mode", "keyword", "-k", "1"])
    assert res.exit_code == 0, res.output
    assert f"d{wordy[0]} " in res.output and "building its full-text index" in res.output
    with qvec.open(tmp_path / "s") as s:
        assert s.has_fulltext and s.search(texts[wordy[1]], k=1, mode="keyword")[0].text == texts[wordy[1]]


def test_cli_search_modes(tmp_path, store, corpus):
    store.checkpoint()
    for mode in ("keyword", "hybrid", "vector"):
        res = CliRunner().invoke(main, ["search", str(store.path), corpus[0][4][:100], "--mode", mode, "-k", "3"])
        assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    res = CliRunner().invoke(main, ["search", str(store.path), "x", "--mode", "bm25"])
    assert res.exit_code == 2 and "bm25" in res.output


WRITER = r"""
import sys, numpy as np, qvec, qvec.journal
qvec.journal.CHECKPOINT_ROWS = 200
qvec.journal.COMPACT_MIN = 200
path, start = sys.argv[1], int(sys.argv[2])
B = 20
with qvec.open(path, quantization="int8", dim=16) as s:
    b = start
    while True:
        ids = [f"b{b}-{j}" for j in range(B)]
        x = np.random.default_rng(b).standard_normal((B, 16)).astype("float32")
        s.add([f"tok{b}x{j} first" for j in range(B)], vectors=x, ids=ids)
        if b % 3 == 0:
            s.upsert([f"tok{b}x{j} second" for j in range(B)], vectors=x, ids=ids)
        if b % 4 == 0 and b >= 4 and s.get([f"b{b - 4}-0"]):
            s.delete([f"b{b - 4}-{j}" for j in range(B)])
        print(b, flush=True)
        b += 1
"""


def test_killed_writers_leave_the_full_text_index_in_step(tmp_path):
    path = tmp_path / "s"
    rng = np.random.default_rng(3)
    start = 0
    for _ in range(6):
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(start)], stdout=subprocess.PIPE, text=True)
        p.stdout.readline()  # one batch committed: kill it somewhere after
        time.sleep(rng.uniform(0.05, 0.6))
        p.send_signal(signal.SIGKILL)
        p.wait()
        with qvec.open(path) as s:
            s.catalog.conn.execute("INSERT INTO items_fts (items_fts, rank) VALUES ('integrity-check', 1)")
            rows = s.get(s.ids())
            n_fts = s.catalog.conn.execute("SELECT count(*) FROM items_fts WHERE items_fts MATCH 'first OR second'")
            assert n_fts.fetchone()[0] == len(rows)
            for item in rows[:: max(1, len(rows) // 40)]:
                word = item.text.split()[0]
                assert [h.id for h in s.search(word, k=2, mode="keyword")] == [item.id]
            batches = {int(i.id[1:].split("-")[0]) for i in rows}
            start = max(batches, default=-1) + 1
