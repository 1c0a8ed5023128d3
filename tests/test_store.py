"""The store on real MiniLM embeddings of real text: every quantization × index kind
survives add → close → reopen → search, filters, upsert and delete."""

from __future__ import annotations

import numpy as np
import pytest

import qvec
from qvec.metrics import exact_knn, recall_at_k

KINDS = [
    (q, ix)
    for q in ("fp32", "fp16", "bf16", "int8", "int4", "pq48", "opq20", "binary", "rabitq", "rabitq4", "pq96x4fs")
    for ix in ("flat", "ivf16", "hnsw16")
    if not (q == "binary" and ix != "flat") and not (q in ("rabitq", "rabitq4", "pq96x4fs") and ix == "hnsw16")
]
# recall@10 against exact FP32 that each code must reach on this corpus (measured
# 640 docs / 60 queries: int8 0.99+, int4 ~0.95, pq48 ~0.82-0.87, binary ~0.65; rabitq
# ~0.83, rabitq4 ~0.96, pq96x4fs ~0.78 on 1,400 pydoc paragraphs).
FLOOR = {"fp32": 0.98, "fp16": 0.98, "bf16": 0.98, "int8": 0.97, "int4": 0.9, "pq48": 0.75, "opq20": 0.5,
         "binary": 0.55, "rabitq": 0.7, "rabitq4": 0.9, "pq96x4fs": 0.65}


def ids_of(results):
    return [[h.id for h in hits] for hits in results]


def rows(results):
    return np.array([[int(h.id) for h in hits] + [-1] * (10 - len(hits)) for hits in results])


@pytest.fixture
def data(corpus):
    texts, xb, _, xq = corpus
    meta = [{"topic": i % 10, "parity": "even" if i % 2 == 0 else "odd", "len": len(t)} for i, t in enumerate(texts)]
    return xb, xq, [str(i) for i in range(len(xb))], meta


@pytest.mark.parametrize("quantization,index", KINDS)
def test_reopen_gives_identical_results_and_recall(tmp_path, data, quantization, index):
    xb, xq, ids, meta = data
    path = tmp_path / "s"
    with qvec.open(path, quantization=quantization, index=index) as store:
        store.add(vectors=xb, ids=ids, metadata=meta)
        store.train()
        before = store.search_batch(xq, 10, include=(), nprobe=16)
        stats = store.stats()
    with qvec.open(path) as store:
        after = store.search_batch(xq, 10, include=(), nprobe=16)
        assert len(store) == len(xb)
    assert ids_of(before) == ids_of(after)
    assert [[h.score for h in r] for r in before] == [[h.score for h in r] for r in after]
    _, gt = exact_knn(xb, xq, 10)
    assert recall_at_k(rows(after), gt, 10) >= FLOOR[quantization]
    assert stats.count == len(xb) and stats.dim == 384 and stats.trained
    assert stats.bytes_per_vector > 0
    if index == "flat":  # the code, its 8-byte id, and (fast-scan) blocks of 32 padded
        assert abs(stats.bytes_per_vector - qvec.config.parse_codes(quantization).code_bytes(384) - 8) < 1


@pytest.mark.parametrize("quantization,index", KINDS)
def test_filters_return_only_matches_and_k_of_them(tmp_path, data, quantization, index):
    xb, xq, ids, meta = data
    with qvec.open(tmp_path / "s", quantization=quantization, index=index) as store:
        store.add(vectors=xb, ids=ids, metadata=meta)
        store.train()
        where = {"topic": 3, "parity": "odd"}  # 32 of 640 rows
        got = store.search_batch(xq[:10], 10, where=where, nprobe=16)
        allowed = [i for i, m in enumerate(meta) if m["topic"] == 3 and m["parity"] == "odd"]
        for hits in got:
            assert len(hits) == 10
            assert all(h.metadata["topic"] == 3 and h.metadata["parity"] == "odd" for h in hits)
        # a broad filter (50% of rows) goes through FAISS's ID selector, not the exact path
        broad = store.search_batch(xq[:10], 10, where={"parity": "even"}, nprobe=16)
        assert all(len(h) == 10 and all(int(x.id) % 2 == 0 for x in h) for h in broad)
        # a filter matching fewer than k rows returns them all
        few = store.search(xq[0], 10, where={"topic": 3, "len": {"$lt": 60}})
        n_few = sum(1 for m in meta if m["topic"] == 3 and m["len"] < 60)
        assert len(few) == n_few
    if quantization in ("fp32", "fp16", "int8"):
        _, gt = exact_knn(xb[allowed], xq[:10], 10)
        truth = np.array(allowed)[gt]
        assert recall_at_k(rows(got), truth, 10) >= 0.95


@pytest.mark.parametrize("quantization,index", KINDS)
def test_upsert_and_delete_survive_reopen(tmp_path, data, quantization, index):
    xb, xq, ids, meta = data
    path = tmp_path / "s"
    rescore = quantization in ("pq48", "opq20", "pq96x4fs")  # codes too coarse to rank an exact copy first
    with qvec.open(path, quantization=quantization, index=index, rescore=rescore) as store:
        store.add(vectors=xb, ids=ids, metadata=meta)
        store.train()
        gone = [h.id for h in store.search(xq[0], 5)]
        assert store.delete(gone) == 5
        # "7" now carries the vector of query 1, so it must rank first for that query
        store.upsert(vectors=xq[1], ids="7", metadata={"topic": 99})
        assert store.get("7").metadata == {"topic": 99}
        st = store.stats()  # 5 deleted and 1 replaced: 6 ids whose originals and bitmap bits stay
        assert st.dead_ids == 6 and st.dead_original_bytes == (6 * 4 * 384 if st.rescore else 0)

    def check(store):
        assert len(store) == len(xb) - 5
        assert not set(gone) & {h.id for r in store.search_batch(xq[:5], 20, nprobe=16) for h in r}
        top = store.search(xq[1], 1, nprobe=16)[0]
        assert top.id == "7" and top.metadata == {"topic": 99}
        assert [h.id for h in store.search(xq[1], 5, where={"topic": 99})] == ["7"]

    with qvec.open(path) as store:
        check(store)
    with qvec.open(path) as store:  # closed twice: nothing lost by a second checkpoint
        check(store)


@pytest.mark.parametrize("quantization, index, floor", [("int8", "hnsw16", 0.95), ("pq96x4fs", "flat", 0.65),
                                                        ("pq96x4fs", "ivf16", 0.6)])
def test_tombstones_compact_and_stay_correct(tmp_path, data, quantization, index, floor):
    """HNSW graphs and fast-scan lists keep removed ids as tombstones until compaction."""
    xb, xq, ids, meta = data
    with qvec.open(tmp_path / "s", quantization=quantization, index=index) as store:
        store.add(vectors=xb, ids=ids)
        store.train()
        store.delete(ids[:300])
        assert store.stats().tombstones == 300  # under the compaction threshold
        store.checkpoint(compact=True)
        assert store.stats().tombstones == 0
        hits = store.search_batch(xq, 10)
        assert all(int(h.id) >= 300 for r in hits for h in r)
        _, gt = exact_knn(xb[300:], xq, 10)
        assert recall_at_k(rows(hits), gt + 300, 10) >= floor


@pytest.mark.parametrize("quantization, index, rescore", [
    ("binary", "flat", False), ("binary", "flat", True), ("rabitq", "flat", False), ("rabitq", "ivf8", True),
    ("int8", "flat", False), ("int4", "ivf8", False), ("fp16", "hnsw16", False), ("pq8", "flat", True),
    ("pq8x4fs", "ivf8", False), ("opq8", "flat", False)])
def test_every_code_family_compacts_and_answers_as_before(tmp_path, quantization, index, rescore):
    """Compaction renumbers the rows of every kind of index (binary stores could not compact at
    all: FAISS cannot clone an IndexBinaryIDMap, and an add that set off compaction failed)."""
    x = np.random.default_rng(5).standard_normal((1200, 32)).astype(np.float32)
    ids = [str(i) for i in range(len(x))]
    with qvec.open(tmp_path / "s", quantization=quantization, index=index, rescore=rescore) as store:
        store.add(vectors=x, ids=ids)
        store.train()
        store.delete(ids[::3])
        before = [[h.id for h in r] for r in store.search_batch(x[:40], 5, include=())]
        store.checkpoint(compact=True)
        st = store.stats()
        assert st.tombstones == 0 and st.dead_ids == 0 and len(store) == 800
        assert [[h.id for h in r] for r in store.search_batch(x[:40], 5, include=())] == before
    with qvec.open(tmp_path / "s") as store:
        assert [[h.id for h in r] for r in store.search_batch(x[:40], 5, include=())] == before


@pytest.mark.parametrize("index", ["flat", "ivf16"])
def test_rabitq_codes_are_not_decoded_but_filters_and_originals_work(tmp_path, data, index):
    """FAISS decodes RaBitQ from its sign bits alone: vectors come from the originals or not at all."""
    xb, xq, ids, meta = data
    with qvec.open(tmp_path / "codes", quantization="rabitq4", index=index) as store:
        store.add(vectors=xb, ids=ids, metadata=meta)
        store.train()
        with pytest.raises(qvec.InvalidInput, match="rabitq4 codes cannot be decoded to vectors: keep originals"):
            store.vectors(ids[:2])
        few = store.search_batch(xq[:5], 5, where={"topic": 3}, nprobe=16)  # 64 rows: through the index
        allowed = np.flatnonzero(np.arange(len(xb)) % 10 == 3)
        _, gt = exact_knn(xb[allowed], xq[:5], 5)
        assert recall_at_k(np.array([[int(h.id) for h in r] for r in few]), allowed[gt], 5) >= 0.8
    with qvec.open(tmp_path / "originals", quantization="rabitq4", index=index, rescore="fp16") as store:
        store.add(vectors=xb, ids=ids)
        store.train()
        np.testing.assert_allclose(store.vectors(ids[:2]), xb[:2], atol=1e-3)


def test_rescore_recovers_pq_recall(tmp_path, data):
    xb, xq, ids, _ = data
    _, gt = exact_knn(xb, xq, 10)
    recall = {}
    for rescore in (False, True):
        with qvec.open(tmp_path / f"s{rescore}", quantization="pq48", rescore=rescore) as store:
            store.add(vectors=xb, ids=ids)
            store.train()
            recall[rescore] = recall_at_k(rows(store.search_batch(xq, 10, oversample=4)), gt, 10)
            if rescore:
                assert store.stats().disk_bytes["originals"] == xb.nbytes + 4 * len(xb)  # rows + checksums
    assert recall[True] >= 0.98 and recall[True] > recall[False] + 0.05


def test_originals_at_lower_precision_rescore_as_well_and_persist(tmp_path, data):
    xb, xq, ids, meta = data
    _, gt = exact_knn(xb, xq, 10)
    with qvec.open(tmp_path / "s", quantization="pq48", rescore=True) as store:
        store.add(vectors=xb, ids=ids)
        store.train()
        fp32 = recall_at_k(rows(store.search_batch(xq, 10, oversample=4)), gt, 10)
    for precision, row in (("fp16", 768), ("int8", 388)):
        path = tmp_path / precision
        with qvec.open(path, quantization="pq48", rescore=precision) as store:
            store.add(vectors=xb, ids=ids, metadata=meta)
            store.train()
            got = recall_at_k(rows(store.search_batch(xq, 10, oversample=4)), gt, 10)
            st = store.stats()
            assert st.rescore and st.originals == precision
            assert st.disk_bytes["originals"] == len(xb) * (row + 4)  # rows + checksums
            assert abs(got - fp32) <= 0.01
            np.testing.assert_allclose(store.vectors(ids[:3]), xb[:3], atol=0.002)
            store.delete(ids[:2])
            assert store.stats().dead_original_bytes == 2 * row
        with qvec.open(path, rescore=True) as store:  # True: whatever precision the store keeps
            assert store.stats().originals == precision
            assert recall_at_k(rows(store.search_batch(xq, 10, oversample=4)), gt, 10) >= got - 0.02
            store.checkpoint(compact=True)  # the compacted originals keep the precision
            assert store.stats().disk_bytes["originals"] == (len(xb) - 2) * (row + 4)
            np.testing.assert_allclose(store.vectors(ids[2:5]), xb[2:5], atol=0.002)
        with pytest.raises(qvec.SettingsConflict, match="originals="):
            qvec.open(path, rescore="fp32")


def test_untrained_store_searches_exactly_then_trains_automatically(tmp_path, data):
    xb, xq, ids, meta = data
    with qvec.open(tmp_path / "s", quantization="int8") as store:
        store.add(vectors=xb[:500], ids=ids[:500], metadata=meta[:500])
        assert not store.is_trained  # int8 learns its scales from 1,000 vectors
        hits = store.search_batch(xq, 10, include=())
        _, gt = exact_knn(xb[:500], xq, 10)
        assert recall_at_k(rows(hits), gt, 10) == 1.0
        topic4 = np.arange(4, 500, 10)
        expected = topic4[exact_knn(xb[topic4], xq[:1], 3)[1][0]]
        assert [h.id for h in store.search(xq[0], 3, where={"topic": 4})] == [str(i) for i in expected]
    with qvec.open(tmp_path / "s") as store:  # untrained vectors survive in the log
        assert ids_of(store.search_batch(xq, 10, include=())) == ids_of(hits)
        store.add(vectors=np.vstack([xb[500:], xb[:400] * 0.5]), ids=ids[500:] + [f"x{i}" for i in range(400)])
        assert store.is_trained and store.stats().trained_parameters["scales"]["range_stat"] == "minmax"


def test_text_api_with_the_real_model(tmp_path, corpus, model):
    texts = corpus[0][:120]
    with qvec.open(tmp_path / "docs.qvec", quantization="fp16", embedder=model) as store:
        ids = store.add(texts, metadata=[{"n": i} for i in range(len(texts))])
        assert len(ids) == 120 and len(set(ids)) == 120
        hit = store.search(texts[17], k=3)[0]
        assert hit.text == texts[17] and hit.metadata == {"n": 17} and hit.score == pytest.approx(1.0, abs=1e-2)
        # a paraphrase-like query lands on the paragraph it describes
        store.add(["Cats purr when they are content.", "Dogs bark at strangers."], ids=["cat", "dog"])
        assert store.search("which animal purrs?", k=1)[0].id == "cat"
        assert store.stats().model == "all-MiniLM-L6-v2"


def test_stats_reports_measured_memory_and_scales(tmp_path, data):
    xb, _, ids, _ = data
    with qvec.open(tmp_path / "s", quantization="int8") as store:
        store.add(vectors=xb, ids=ids)
        store.train()
        st = store.stats()
    assert st.bytes_per_vector == pytest.approx(384 + 8)  # codes + the 8-byte id
    scales = st.trained_parameters["scales"]
    assert len(scales["vmin"]) == len(scales["vdiff"]) == 384
    assert set(st.disk_bytes) == {"index", "originals", "sqlite", "total"}
    assert st.disk_bytes["index"] > 384 * len(xb)


@pytest.mark.parametrize("quantization,index", [
    ("int8", "flat"), ("int8", "ivf8"), ("opq20", "ivf8"), ("fp16", "hnsw16")
])
def test_vectors_decodes_codes_on_every_float_index(tmp_path, corpus, quantization, index):
    xb = corpus[1]
    with qvec.open(tmp_path / "s", quantization=quantization, index=index) as s:
        s.add(vectors=xb, ids=[str(i) for i in range(len(xb))])
        s.train()
        got = s.vectors(["3", "0", "600"])
        if quantization == "opq20":  # 20 does not divide 384: OPQ rotates to 380 dims, 20 sub-vectors of 19
            assert s.stats().trained_parameters["opq_rotation"] == [380, 384]
    want = xb[[3, 0, 600]] / np.linalg.norm(xb[[3, 0, 600]], axis=1, keepdims=True)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1)
    assert (cos > (0.8 if quantization == "opq20" else 0.99)).all()


@pytest.mark.parametrize("index", ["flat", "hnsw16"])
def test_everything_deleted_then_refilled(tmp_path, data, index):
    xb, xq, ids, meta = data
    with qvec.open(tmp_path / "s", quantization="int8", index=index, rescore=True) as store:
        store.add(vectors=xb, ids=ids, metadata=meta)
        store.train()
        store.delete(ids)
        assert len(store) == 0
        assert store.search(xq[0], 5) == [] and store.search(xq[0], 5, where={"topic": 1}) == []
        store.add(vectors=xb[:3], ids=["a", "b", "c"])
        assert store.search(xb[1], 1)[0].id == "b"


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("quantization", ["fp16", "bf16", "int8", "int4"])
def test_batch_search_by_decoded_blocks_matches_faiss_scan(tmp_path, data, monkeypatch, quantization, metric):
    """Big batches over flat scalar-quantized codes are decoded block by block and scored by
    GEMM (qvec.index._search_decoded): the hits must be FAISS's own scan's, score for score."""
    import faiss

    import qvec.index

    xb, xq, ids, _ = data
    queries = np.vstack([xq, xb[::5] + 0.01 * xq[0]])  # 188 queries: over the batch threshold
    with qvec.open(tmp_path / "s", quantization=quantization, metric=metric) as s:
        s.add(vectors=xb, ids=ids)
        s.train()
        s.delete(ids[100:150])  # codes move up: a block's positions are no longer fids
        monkeypatch.setattr(qvec.index, "DECODED_SEARCH_MIN_QUERIES", 10**9)
        scanned = s.search_batch(queries, 10, include=())
        monkeypatch.setattr(qvec.index, "DECODED_SEARCH_MIN_QUERIES", 64)
        monkeypatch.setattr(qvec.index, "DECODE_BLOCK", 100)  # 7 blocks, the last one short
        threads = faiss.omp_get_max_threads()
        decoded = s.search_batch(queries, 10, include=())
        assert faiss.omp_get_max_threads() == threads  # the search gives FAISS its threads back
        few = s.search_batch(queries, len(xb) + 5, include=())  # k above the count: every row, once
    for a, b in zip(scanned, decoded):
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=1e-5, atol=1e-5)
        # ids agree wherever the score does not tie with a neighbour's (the 10th may tie
        # with an 11th that neither returned)
        sa = np.array([h.score for h in a])
        distinct = np.abs(np.diff(sa, prepend=np.inf)) > 1e-5
        distinct[:-1] &= np.abs(np.diff(sa)) > 1e-5
        distinct[-1] = False
        assert [h.id for h, d in zip(a, distinct) if d] == [h.id for h, d in zip(b, distinct) if d]
    assert all(sorted(h.id for h in hits) == sorted(ids[:100] + ids[150:]) for hits in few)
