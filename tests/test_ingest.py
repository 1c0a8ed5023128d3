"""Fast ingest (issue 6): the INT8 embedding model, and the pipelined ingest that
`qvec build` uses (reading, embedding and writing overlap; each batch one transaction)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from stand_ins import FixedEmbedder

import qvec
from qvec.cli import main


@pytest.fixture(scope="session")
def int8_model(request):
    """The INT8 model, exported once into pytest's cache (about 20 s the first time)."""
    import os

    os.environ["QVEC_CACHE"] = str(request.config.cache.mkdir("qvec-models"))
    from qvec.embedder import SentenceTransformerEmbedder

    emb = SentenceTransformerEmbedder(precision="int8")
    emb.embed(["warm up"])
    return emb


def test_int8_model_embeddings_stay_close_to_fp32(corpus, model, int8_model):
    docs = corpus[0][:64]
    a, b = model.embed(docs), int8_model.embed(docs)
    assert a.shape == b.shape == (64, 384) and b.dtype == np.float32
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.mean() > 0.98 and cos.min() > 0.95
    # the same neighbours, mostly: each text's nearest other text under both models
    na, nb = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    sa, sb = na @ na.T - 2 * np.eye(64), nb @ nb.T - 2 * np.eye(64)
    assert (sa.argmax(1) == sb.argmax(1)).mean() > 0.85


def test_the_int8_runtime_tokenizes_and_pools_as_the_model_does(corpus, model, int8_model):
    """The run-time path (the export's tokenizer.json through the tokenizers library, no
    sentence-transformers) gives the vectors the model's own tokenizer would feed the same
    ONNX session: padding, truncation at the window, pooling and normalising all agree."""
    from qvec.embedder import _load_int8

    enc = _load_int8(int8_model.name)
    st = model.model
    texts = [corpus[0][0], "short", " ".join(corpus[0][:40])]  # the last is past the 256-token window
    hf = st.tokenizer(texts, padding=True, truncation=True, max_length=st.max_seq_length, return_tensors="np",
                      return_token_type_ids=True)
    (hidden,) = enc.session.run(None, {k: hf[k].astype(np.int64) for k in ("input_ids", "attention_mask",
                                                                          "token_type_ids")})
    mask = hf["attention_mask"][..., None].astype(np.float32)
    want = (hidden * mask).sum(1) / mask.sum(1)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(enc.encode(texts, batch_size=3), want, atol=1e-5)
    assert enc.token_counts(texts)[2] > st.max_seq_length == int8_model.window
    with pytest.warns(qvec.TextTruncated, match="256-token window"):
        int8_model.embed(texts[2:])


@pytest.mark.parametrize("damage", ["qvec-model.json", "tokenizer.json", "model-int8.onnx"])
def test_a_damaged_int8_export_is_one_embedder_error(tmp_path, int8_model, damage):
    import shutil

    from qvec.embedder import _load_int8
    from qvec.int8model import OnnxInt8Encoder

    copy = tmp_path / "export"
    shutil.copytree(_load_int8(int8_model.name).path.parent, copy)
    data = (copy / damage).read_bytes()
    (copy / damage).write_bytes(data[: len(data) // 3])  # cut short, as a full disk or a killed copy leaves it
    with pytest.raises(qvec.EmbedderError, match="is damaged .*: delete that directory"):
        OnnxInt8Encoder(copy)


def test_a_text_search_with_the_int8_model_imports_no_torch(tmp_path, corpus, int8_model):
    """From a cold start (a new process), once the export is cached."""
    import os
    import subprocess
    import sys

    docs = corpus[0][:20]
    with qvec.open(tmp_path / "s", model_precision="int8") as s:
        s.add(docs, ids=[str(i) for i in range(20)])
    script = ("import sys, qvec\n"
              f"s = qvec.open({str(tmp_path / 's')!r}, read_only=True)\n"
              f"print(s.search({docs[5]!r}, 1)[0].id, 'torch' in sys.modules, 'sentence_transformers' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       env=os.environ | {"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["5", "False", "False"]


def test_store_records_the_model_precision_and_reports_a_mismatch(tmp_path, corpus, int8_model):
    docs = corpus[0][:40]
    with qvec.open(tmp_path / "s", model_precision="int8") as s:
        s.add(docs, ids=[str(i) for i in range(40)])
        st = s.stats()
        assert st.model_precision == st.query_model_precision == "int8"
        assert not st.model_precision_mismatch
        assert s.search(docs[7], 1)[0].id == "7"
    with qvec.open(tmp_path / "s", model_precision="fp32") as s:  # queries at another precision: allowed
        assert s.search(docs[7], 1)[0].id == "7"
        st = s.stats()
        assert st.model_precision == "int8" and st.query_model_precision == "fp32"
        assert st.model_precision_mismatch
        with pytest.raises(qvec.SettingsConflict, match="model_precision='int8' to add texts"):
            s.add(["a new text"], ids=["new"])
        assert len(s) == 40
    with qvec.open(tmp_path / "s") as s:  # reopened plainly: the store's own precision
        assert s.model_precision == "int8"
    with pytest.raises(qvec.InvalidSpec, match="unknown model_precision 'int4'"):
        qvec.open(tmp_path / "t", model_precision="int4")


def test_cli_builds_and_searches_with_the_int8_model(tmp_path, corpus, int8_model):
    (tmp_path / "d.txt").write_text("\n".join(corpus[0][:30]) + "\n")
    r = CliRunner().invoke(main, ["build", str(tmp_path / "d.qvec"), str(tmp_path / "d.txt"),
                                  "--model-precision", "int8"])
    assert r.exit_code == 0 and "documents/s" in r.output, r.output
    r = CliRunner().invoke(main, ["info", str(tmp_path / "d.qvec"), "--json"])
    assert json.loads(r.output)["model_precision"] == "int8"
    r = CliRunner().invoke(main, ["search", str(tmp_path / "d.qvec"), corpus[0][3], "-k", "1", "--json"])
    assert json.loads(r.output)["id"] == "d.txt:4", r.output


def test_ingest_commits_batches_in_order_and_skips_what_is_stored(tmp_path):
    rows = [(f"r{i}", f"text {i}", {"i": i}) for i in range(1000)]
    seen = []
    with qvec.open(tmp_path / "s", embedder=FixedEmbedder(8), quantization="fp32") as s:
        assert s.ingest(rows[:300], batch_size=64) == (300, 0)
        # a rerun over everything adds only what is new; a repeat inside the stream is skipped too
        added, skipped = s.ingest(rows + rows[990:], batch_size=64, skip_existing=True,
                                  on_batch=lambda n, a: seen.append((n, a)))
        assert (added, skipped) == (700, 310)
        assert sum(n for n, _ in seen) == 1010 and sum(a for _, a in seen) == 700
        assert len(s) == 1000 and s.get("r999").metadata == {"i": 999}
        assert s.search(FixedEmbedder(8).embed(["text 500"])[0], 1)[0].id == "r500"


def test_ingest_failures_keep_the_batches_before_them(tmp_path):
    def rows():
        for i in range(500):
            if i == 300:
                raise ValueError("input line 300 is broken")
            yield f"r{i}", f"text {i}", None

    with qvec.open(tmp_path / "s", embedder=FixedEmbedder(8), quantization="fp32") as s:
        with pytest.raises(ValueError, match="line 300"):
            s.ingest(rows(), batch_size=100)
        assert len(s) == 300  # batches 0-2 committed whole
        with pytest.raises(qvec.DuplicateId):  # without skip_existing, a stored id is an error
            s.ingest([("r5", "again", None)])
        with pytest.raises(qvec.InvalidInput, match="text 1 is empty"):
            s.ingest([("x1", "fine", None), ("x2", " ", None)], batch_size=2)
        assert len(s) == 300


@pytest.mark.parametrize("rows, kwargs, message", [
    ([("a", "t", None), ("b", "t")], {}, "row 1 is 2 values: ingest takes"),
    ([(f"a{i}", "t", None) for i in range(5)] + [("b", "t", None, None, "x")], {"batch_size": 2}, "row 5 is 5 values"),
    ([1, 2], {}, "row 0 is a int"),
    ([{"id": "a"}], {}, "row 0 is a dict"),
    ("rows", {}, "rows must be an iterable of (id, text, metadata) tuples, got str"),
    (5, {}, "got int"),
    ([("a", "t", None)], {"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ([("a", "t", None)], {"batch_size": "8"}, "batch_size must be a positive integer, got '8'"),
])
def test_malformed_rows_are_one_invalid_input_and_the_batches_before_them_stay(tmp_path, rows, kwargs, message):
    with qvec.open(tmp_path / "s", embedder=FixedEmbedder(8), quantization="fp32") as s:
        with pytest.raises(qvec.InvalidInput) as e:
            s.ingest(rows, **kwargs)
        assert message in str(e.value) and "\n" not in str(e.value)
        # the batches before row 5's were written (rows 0-3); nothing otherwise
        assert len(s) == (4 if kwargs.get("batch_size") == 2 else 0)


def test_a_batch_size_past_what_islice_takes_is_one_batch(tmp_path):
    with qvec.open(tmp_path / "s", embedder=FixedEmbedder(8), quantization="fp32") as s:
        assert s.ingest([(f"r{i}", f"text {i}", None) for i in range(5)], batch_size=10**30) == (5, 0)
