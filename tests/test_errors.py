"""Errors a user can cause: one clear QvecError each, and the store keeps what it held."""

from __future__ import annotations

import json
import sqlite3
import warnings

import numpy as np
import pytest

import qvec
from qvec.config import HNSW, PQ, parse_codes, parse_index
from qvec.filters import leaf_sql


@pytest.fixture
def store(tmp_path, corpus):
    xb = corpus[1]
    s = qvec.open(tmp_path / "s", quantization="int8")
    s.add(vectors=xb, ids=[str(i) for i in range(len(xb))], metadata=[{"n": i} for i in range(len(xb))])
    s.train()
    yield s
    s.close()


def nested(depth: int, leaf: dict) -> dict:
    """A filter (or metadata) ``depth`` levels deep."""
    for _ in range(depth):
        leaf = {"$and": [leaf]} if "n" in leaf or "$and" in leaf else {"a": leaf}
    return leaf


def unchanged(store, n):
    assert len(store) == n


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda s, x: s.add(vectors=x[:2, :100]), qvec.DimensionMismatch, "store holds 384-dim vectors, got 100"),
        (lambda s, x: s.add(vectors=np.where(np.arange(384) == 5, np.nan, x[:3])), qvec.InvalidInput, "NaN or inf"),
        (lambda s, x: s.add(vectors=np.zeros((0, 384))), qvec.InvalidInput, "the batch is empty"),
        (lambda s, x: s.add(["ok", "  "]), qvec.InvalidInput, "text 1 is empty"),
        (lambda s, x: s.add(texts=5), qvec.InvalidInput, "texts must be a string or a list of strings, got int"),
        (lambda s, x: s.add(texts=b"bytes"), qvec.InvalidInput, "got bytes"),
        (lambda s, x: s.add(vectors=x[:1], ids=["0"]), qvec.DuplicateId, "use upsert() to replace"),
        (lambda s, x: s.add(vectors=x[:2], ids=["a", "a"]), qvec.DuplicateId, "appears twice in one batch"),
        (lambda s, x: s.add(vectors=x[:1], ids=[7]), qvec.InvalidInput, "ids must be non-empty strings"),
        (lambda s, x: s.add(vectors=x[:1], metadata=[{"t": object()}]), qvec.InvalidInput, "JSON-serialisable"),
        (lambda s, x: s.add(vectors=x[:1], metadata=[{"t": float("nan")}]), qvec.InvalidInput, "JSON-serialisable"),
        (lambda s, x: s.search(x[0], k=0), qvec.InvalidInput, "k must be a positive integer"),
        (lambda s, x: s.search(x[0], where={"n": {"$regex": "a"}}), qvec.InvalidFilter, "unknown operator '$regex'"),
        (lambda s, x: s.search(x[0], where={"n": {"$in": 3}}), qvec.InvalidFilter, "takes a list"),
        (lambda s, x: s.search(x[0], where={"n": {"$gt": [1]}}), qvec.InvalidFilter, "needs a string, number"),
        (lambda s, x: s.search(x[0], where="n = 1"), qvec.InvalidFilter, "where must be a dict"),
        (lambda s, x: s.search(x[0], nprobes=3), qvec.InvalidInput, "unknown search parameter"),
        (lambda s, x: s.delete(["0", "nope"]), qvec.IdNotFound, "'nope'"),
        (lambda s, x: s.get(["nope"]), qvec.IdNotFound, "not in the store"),
        # hostile input (#11): each a one-line error that names the fix, nothing stored
        (lambda s, x: s.get(5), qvec.InvalidInput, "ids must be a string or a list of strings, got int"),
        (lambda s, x: s.get(None), qvec.InvalidInput, "got NoneType"),
        (lambda s, x: s.get(b"r1"), qvec.InvalidInput, "got bytes"),
        (lambda s, x: s.delete(5), qvec.InvalidInput, "ids must be a string or a list of strings"),
        (lambda s, x: s.vectors(["0", 1]), qvec.InvalidInput, "ids must be non-empty strings, got 1"),
        (lambda s, x: s.add(vectors=x[:1], ids=["a\0b"]), qvec.InvalidInput, "contains a NUL character"),
        (lambda s, x: s.add(vectors=x[:1], ids=["a\ud800"]), qvec.InvalidInput, "lone surrogate"),
        (lambda s, x: s.add(["fine", "bad \udfff"]), qvec.InvalidInput, "text 1 holds a lone surrogate"),
        (lambda s, x: s.add(vectors=x[:1], metadata=[{"t": "\ud800"}]), qvec.InvalidInput, "metadata.t holds a lone"),
        (lambda s, x: s.search("bad \ud800"), qvec.InvalidInput, "text 0 holds a lone surrogate"),
        (lambda s, x: s.search("bad \udfff", mode="hybrid"), qvec.InvalidInput, "text 0 holds a lone surrogate"),
        (lambda s, x: s.search_batch(["fine", "\ud800"]), qvec.InvalidInput, "text 1 holds a lone surrogate"),
        (lambda s, x: s.search(x[0], include=123), qvec.InvalidInput, "include takes 'text' and/or 'metadata'"),
        (lambda s, x: s.search(x[0], include=[["text"]]), qvec.InvalidInput, "include takes"),
        (lambda s, x: s.search(""), qvec.InvalidInput, "the query is empty: give some text to search for"),
        (lambda s, x: s.search_batch(["fine", " \n"]), qvec.InvalidInput, "query 1 is empty"),
        (lambda s, x: s.search("  ", mode="keyword"), qvec.InvalidInput, "the query is empty"),
        (lambda s, x: s.search(x[0], mode="hybrid", text=""), qvec.InvalidInput, "the query is empty"),
        (lambda s, x: s.report(n_queries=-1), qvec.InvalidInput, "n_queries must be a positive integer, got -1"),
        (lambda s, x: s.tune("0.9"), qvec.InvalidInput, "recall must be between 0 and 1, got '0.9'"),
        (lambda s, x: s.add(vectors=x[:1], metadata=[{"a": {1: "x", "1": "y"}}]), qvec.InvalidInput,
         "metadata keys must be strings, got 1 in metadata.a"),
        (lambda s, x: s.add(vectors=x[:1], metadata=[{"big": 2**64}]), qvec.InvalidInput, "outside the 64-bit"),
        (lambda s, x: s.add(vectors=x[:1], metadata=[nested(40, {})]), qvec.InvalidInput, "nested more than 32"),
        (lambda s, x: s.add(vectors=x[:1] * (1 + 1j)), qvec.InvalidInput, "complex numbers"),
        (lambda s, x: s.add(vectors=[["a"] * 384]), qvec.InvalidInput, "must be numbers"),
        (lambda s, x: s.search(x[0], where={"n": 2**64}), qvec.InvalidFilter, "outside the 64-bit"),
        (lambda s, x: s.search(x[0], where=nested(40, {"n": 1})), qvec.InvalidFilter, "nested more than 32"),
        (lambda s, x: s.search(x[0], where=nested(1000, {"n": 1})), qvec.InvalidFilter, "nested more than 32"),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(store, corpus, call, error, message):
    n = len(store)
    with pytest.raises(error) as e:
        call(store, corpus[1])
    assert message in str(e.value) and "\n" not in str(e.value)
    unchanged(store, n)
    assert store.get("0").metadata == {"n": 0}  # "0" survives a failed delete of ["0", "nope"]


@pytest.mark.parametrize("path, message", [
    ("bad\0name", "holds a NUL character: no file can have that name"),
    ("x" * 300, "cannot hold a store (File name too long): choose another path"),
    (b"bytes", "path must be a directory path (str or Path), got bytes"),
])
def test_a_path_no_file_can_have_is_one_invalid_input(tmp_path, path, message):
    with pytest.raises(qvec.InvalidInput) as e:
        qvec.open(tmp_path / path if isinstance(path, str) else path)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []  # nothing made


def test_filters_of_any_size(store, corpus):
    """$in with 1,000 values, $or with 600 branches and $and 30 deep failed in SQLite
    (expression depth, compound SELECT and parser stack limits)."""
    q = corpus[1][0]
    assert len(store.search(q, 700, where={"n": {"$in": list(range(1000))}}, include=())) == 640
    assert len(store.search(q, 700, where={"n": {"$nin": list(range(100, 1000))}}, include=())) == 100
    assert len(store.search(q, 700, where={"$or": [{"n": j} for j in range(600)]}, include=())) == 600
    assert len(store.search(q, 700, where=nested(30, {"n": {"$lt": 10}}), include=())) == 10
    assert len(store.search(q, 5, where={"n": {"$in": [None, 3, "3", True]}}, include=())) == 1


def test_a_closed_store_says_so(store, corpus):
    store.close()
    for call in (len, lambda s: s.search(corpus[1][0], 3), lambda s: s.get("0"), lambda s: s.add(vectors=corpus[1][:1]),
                 lambda s: s.delete("0"), lambda s: s.stats(), lambda s: s.ids(), lambda s: s.checkpoint()):
        with pytest.raises(qvec.StoreClosed, match="is closed: open it again with qvec.open()"):
            call(store)
    store.close()  # twice: nothing happens
    assert "closed" in repr(store)


def test_an_injected_embedder_must_have_what_the_protocol_names(tmp_path):
    class Partial:
        name, dim = "partial", 4

        def embed(self, texts):
            return np.ones((len(texts), 4), np.float32)

    with pytest.raises(qvec.InvalidInput, match="embedder Partial lacks precision, truncated, window"):
        qvec.open(tmp_path / "s", embedder=Partial())
    with pytest.raises(qvec.InvalidInput, match="embedder object lacks name, dim"):
        qvec.open(tmp_path / "s", embedder=object())
    with pytest.raises(qvec.InvalidInput, match="path must be a directory path"):
        qvec.open(None)
    assert not (tmp_path / "s").exists()


def test_the_dimension_given_at_open_holds_for_the_first_add(tmp_path):
    with qvec.open(tmp_path / "s", quantization="fp32", dim=64) as s:
        with pytest.raises(qvec.DimensionMismatch, match="store holds 64-dim vectors, got 32"):
            s.add(vectors=np.ones((2, 32)))
        assert s.settings is None and len(s) == 0


def test_k_larger_than_count_returns_count_hits(store, corpus):
    assert len(store.search(corpus[3][0], k=10_000)) == len(store)


def test_sql_in_filters_is_just_a_value(store, corpus):
    evil = "x' OR 1=1 --"
    assert store.search(corpus[3][0], where={"n": evil}) == []
    assert store.search(corpus[3][0], where={evil: 1}) == []
    assert len(store) == len(corpus[1])


def test_filter_operators(store, corpus):
    q = corpus[3][0]

    def ns(where):
        return sorted(h.metadata["n"] for h in store.search(q, k=1000, where=where))

    assert ns({"n": {"$gte": 10, "$lt": 13}}) == [10, 11, 12]
    assert ns({"n": {"$in": [1, 5, 700]}}) == [1, 5]
    assert ns({"$or": [{"n": 1}, {"n": {"$lte": 0}}]}) == [0, 1]
    assert ns({"$and": [{"n": {"$gt": 3}}, {"n": {"$lt": 6}}, {"n": {"$ne": 4}}]}) == [5]
    assert len(ns({"n": {"$nin": [0, 1]}})) == len(store) - 2
    assert ns({"n": {"$in": []}}) == []
    sql, params = leaf_sql("a' OR 1=1 --", "$eq", ("s", "x' OR 1=1 --"))
    assert "OR 1=1" not in sql and "x' OR 1=1 --" in params and "a' OR 1=1 --" in params


def test_unknown_specs_list_the_valid_ones(tmp_path):
    with pytest.raises(qvec.InvalidSpec, match="expected one of fp32, fp16, bf16, int8, int4"):
        qvec.open(tmp_path / "a", quantization="int3")
    with pytest.raises(qvec.InvalidSpec, match="e.g. ivf1024 or hnsw32"):
        qvec.open(tmp_path / "b", index="lsh")
    with pytest.raises(qvec.InvalidSpec, match="does not divide the dimension 384: use pq with one of .*, or "
                                              "opq40, whose rotation keeps 360 dimensions"):
        qvec.open(tmp_path / "c", quantization="pq40", dim=384)
    with pytest.raises(qvec.InvalidSpec, match="400 sub-vectors, more than their 384 dimensions"):
        qvec.open(tmp_path / "c", quantization="opq400", dim=384)
    assert parse_codes("PQ48") == PQ(48) and parse_index("hnsw") == HNSW(32)


def test_missing_store_and_not_a_store(tmp_path):
    with pytest.raises(qvec.StoreNotFound, match="no qvec store at"):
        qvec.open(tmp_path / "nothing", create=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("hello")
    with pytest.raises(qvec.StoreNotFound, match="non-empty directory but not a qvec store"):
        qvec.open(tmp_path / "full")


def test_conflicting_settings_on_reopen(store):
    path = store.path
    store.close()
    with pytest.raises(qvec.SettingsConflict, match=r"quantization='pq48' \(store has 'int8'\)"):
        qvec.open(path, quantization="pq48")
    with qvec.open(path, quantization="int8") as s:  # agreeing settings are fine
        assert s.stats().quantization == "int8"


def test_second_writer_is_refused(store):
    with pytest.raises(qvec.StoreLocked, match="open for writing elsewhere"):
        qvec.open(store.path)


def test_corrupt_index_file_is_detected_before_faiss_reads_it(store):
    path = store.path
    store.close()
    (index_file,) = path.glob("index-*.faiss")
    data = bytearray(index_file.read_bytes())
    data[len(data) // 2] ^= 0x40  # one flipped bit
    index_file.write_bytes(bytes(data))
    with pytest.raises(qvec.CorruptStore, match="fails its checksum"):
        qvec.open(path)
    index_file.write_bytes(bytes(data[:100]))  # truncated
    with pytest.raises(qvec.CorruptStore, match="truncated or modified"):
        qvec.open(path)


def test_newer_format_is_refused(store):
    path = store.path
    store.close()
    con = sqlite3.connect(path / "qvec.sqlite")
    con.execute("UPDATE state SET value = ? WHERE key = 'format_version'", (json.dumps(99),))
    con.commit()
    con.close()
    with pytest.raises(qvec.IncompatibleStore, match="store format 99 is newer"):
        qvec.open(path)


def test_another_model_dimension_is_a_clear_error(tmp_path, corpus, model):
    with qvec.open(tmp_path / "s", dim=100, quantization="fp32", embedder=model) as s:
        s.add(vectors=np.ones((3, 100)))
        with pytest.raises(qvec.DimensionMismatch, match="gives 384-dim vectors, the store holds 100-dim"):
            s.add(["a text"])
        with pytest.raises(qvec.DimensionMismatch):
            s.search("a query")


def test_errors_subclass_value_error_where_input_is_at_fault():
    assert issubclass(qvec.InvalidFilter, ValueError) and issubclass(qvec.DimensionMismatch, ValueError)
    assert issubclass(qvec.IdNotFound, KeyError) and issubclass(qvec.StoreNotFound, FileNotFoundError)
    assert set(qvec.__all__) >= {"open", "Store", "Hit", "QvecError"}
    assert all(hasattr(qvec, name) for name in qvec.__all__)


def test_text_longer_than_the_model_window_is_stored_with_a_warning(tmp_path, model):
    from pydoc_data.topics import topics

    huge = topics["assignment"]  # ~2,500 tokens; the model reads 256
    with qvec.open(tmp_path / "s", embedder=model) as s:
        with pytest.warns(qvec.TextTruncated, match=r"1 of 2 texts .* 256-token window .* first 256 tokens"):
            s.add([huge, "a short text"], ids=["huge", "short"])
        assert s.get("huge").text == huge  # the whole text is kept; only its embedding is cut
        with pytest.warns(qvec.TextTruncated):
            assert s.search(huge, 1)[0].id == "huge"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            s.search("a short query", 1)  # no warning for texts inside the window


def test_a_faiss_exception_is_one_internal_error(tmp_path):
    """FAISS's C++ exceptions reach Python as RuntimeErrors; one that qvec's checks did not
    prevent (this one: the clone that broke binary compaction) is an InternalError in one line."""
    import faiss

    from qvec.guard import translated

    with pytest.raises(RuntimeError) as raw:
        faiss.clone_binary_index(faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(8)))
    error = translated(raw.value, tmp_path)
    assert isinstance(error, qvec.InternalError) and isinstance(error, RuntimeError)
    assert "FAISS failed (Error in" in str(error) and "cannot clone this type of index" in str(error)
    assert "a qvec bug; please report it" in str(error) and "\n" not in str(error)
    assert translated(RuntimeError("not from FAISS"), tmp_path) is None
