"""qvec bench: configuration specs, vector file formats, the Pareto frontier, and the
command end to end on real embeddings (vectors, ann-benchmarks HDF5 and text forms)."""

import json
import os
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from qvec import InvalidInput, InvalidSpec
from qvec.bench import Config, default_sweep, pareto
from qvec.cli import main
from qvec.config import parse_codes
from qvec.formats import read_ann_hdf5, read_vectors, write_vecs
from qvec.metrics import exact_knn

REQUIRED_KEYS = {"quantization", "index", "rescore", "bytes_per_vector", "recall_at_10", "qps"}


@pytest.fixture
def runner():
    return CliRunner()


@pytest.mark.parametrize("spec, want", [
    ("int8", Config("int8")),
    ("int8/flat", Config("int8")),
    ("PQ48/IVF1024/rescore=4/nprobe=64", Config("pq48", "ivf1024", True, 4, 64)),
    ("binary/flat/rescore", Config("binary", rescore=True)),
    ("int8/hnsw32/ef=128", Config("int8", "hnsw32", ef_search=128)),
    ("fp16/rescore", Config("fp16", rescore=True)),
])
def test_config_specs_parse_and_print_back(spec, want):
    assert Config.parse(spec) == want
    assert Config.parse(str(want)) == want


@pytest.mark.parametrize("spec, says", [
    ("int9/flat", "unknown quantization"),
    ("int8/tree", "unknown index"),
    ("int8/flat/nprobe=0", "not a positive integer"),
    ("int8/flat/turbo", "unknown option"),
    ("", "empty configuration"),
])
def test_bad_config_specs_say_what_is_wrong(spec, says):
    with pytest.raises(InvalidSpec, match=says):
        Config.parse(spec)


@pytest.mark.parametrize("dim", [100, 128, 256, 384, 768])
def test_default_sweep_fits_any_dimension(dim):
    configs = default_sweep(dim, 100_000)
    for c in configs:
        if c.quantization.startswith(("pq", "opq")):
            parse_codes(c.quantization).check_dim(dim)  # InvalidSpec unless M divides dim
    assert {parse_codes(c.quantization).kind for c in configs} >= {
        "fp32", "fp16", "bf16", "int8", "int4", "pq", "opq", "pqx4fs", "rabitq", "binary"}  # every family
    assert {c.originals for c in configs if c.rescore} == {"fp32", "fp16", "int8"}
    assert Config("fp32") in configs and Config("int8") in configs
    assert any(c.index.startswith("ivf") for c in configs) and any(c.rescore for c in configs)


def test_quick_sweep_keeps_one_point_per_step_and_skips_slow_training():
    full, quick = default_sweep(384, 100_000), default_sweep(384, 100_000, quick=True)
    assert set(quick) <= set(full) and len(quick) < len(full)
    # a configuration at each budget step (RAM bytes per 384-d vector, 8 of them the id), with and without rescoring
    code_bytes = {c: parse_codes(c.quantization).code_bytes(384) for c in quick}
    for budget in (776, 392, 200, 100, 56):
        fits = [c for c in quick if code_bytes[c] + 8 <= budget and code_bytes[c] + 8 > budget / 2.5]
        assert any(not c.rescore for c in fits), budget
        assert budget > 392 or any(c.rescore for c in fits), budget
    assert not any(c.quantization.startswith("opq") or c.index.startswith("ivf") for c in quick)
    assert Config("int8") in quick and any(c.rescore for c in quick)


def test_pareto_marks_the_undominated_points():
    recs = [
        {"bytes_per_vector": 1544, "recall_at_10": 1.0, "rescore": False},
        {"bytes_per_vector": 392, "recall_at_10": 0.99, "rescore": False},
        {"bytes_per_vector": 392, "recall_at_10": 0.70, "rescore": False},  # same size, worse
        {"bytes_per_vector": 56, "recall_at_10": 0.97, "rescore": True},
        {"bytes_per_vector": 56, "recall_at_10": 0.72, "rescore": False},
        {"bytes_per_vector": 100, "recall_at_10": 0.60, "rescore": False},  # bigger and worse than 56/0.72
    ]
    pareto(recs)
    assert [r["pareto"] for r in recs] == [True, True, False, True, False, False]
    assert [r["pareto_codes_only"] for r in recs] == [True, True, False, False, True, False]


@pytest.mark.parametrize("suffix, dtype", [(".fvecs", np.float32), (".ivecs", np.int32), (".bvecs", np.uint8)])
def test_texmex_files_round_trip(tmp_path, suffix, dtype):
    x = (np.arange(60).reshape(12, 5) % 200).astype(dtype)
    write_vecs(tmp_path / f"x{suffix}", x)
    got = read_vectors(tmp_path / f"x{suffix}")
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, x)


def test_unreadable_vector_files_are_invalid_input(tmp_path):
    (tmp_path / "bad.fvecs").write_bytes(b"\x05\x00\x00\x00abc")
    with pytest.raises(InvalidInput, match="bad.fvecs: not a readable .fvecs file"):
        read_vectors(tmp_path / "bad.fvecs")
    with pytest.raises(InvalidInput, match="no such file"):
        read_vectors(tmp_path / "missing.npy")
    with pytest.raises(InvalidInput, match="unknown vector file type"):
        read_vectors(tmp_path / "x.csv")
    (tmp_path / "not.hdf5").write_bytes(b"plain text")
    with pytest.raises(InvalidInput, match="not a readable HDF5 file"):
        read_ann_hdf5(tmp_path / "not.hdf5")
    with h5py.File(tmp_path / "wrong.hdf5", "w") as f:
        f["vectors"] = np.zeros((3, 4), np.float32)
    with pytest.raises(InvalidInput, match="no train or test dataset"):
        read_ann_hdf5(tmp_path / "wrong.hdf5")


def _results(out):
    res = json.loads((out / "results.json").read_text())
    assert (out / "recall_vs_memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    for r in res["records"]:
        assert REQUIRED_KEYS <= set(r)
        assert f"`{r['config']}`" in md
    return res, {r["config"]: r for r in res["records"]}


def test_bench_on_npy_vectors_writes_json_markdown_and_plot(runner, tmp_path, corpus):
    _, xb, _, xq = corpus
    np.save(tmp_path / "docs.npy", xb)
    np.save(tmp_path / "queries.npy", xq)
    out = tmp_path / "out"
    stores_before = set(Path(tempfile.gettempdir()).glob("qvec-bench-*"))
    r = runner.invoke(main, ["bench", "--vectors", str(tmp_path / "docs.npy"),
                             "--queries", str(tmp_path / "queries.npy"), "--out", str(out),
                             "--config", "fp32/flat", "--config", "int8/flat",
                             "--config", "binary/flat", "--config", "binary/flat/rescore=8", "--repeat", "1",
                             "--rounds", "2"])
    assert r.exit_code == 0, r.output
    res, by = _results(out)
    # --rounds: every store timed again in turn once all were built, then removed
    assert res["rounds"] == 2 and all(rec["qps_in_turn"] > 0 for rec in res["records"])
    assert "q/s in turn" in (out / "results.md").read_text() and "for 2 rounds" in (out / "results.md").read_text()
    assert set(Path(tempfile.gettempdir()).glob("qvec-bench-*")) <= stores_before
    assert res["dataset"]["n_docs"] == len(xb) and res["dataset"]["n_queries"] == len(xq)
    assert res["machine"]["cores"] == os.cpu_count() and res["machine"]["faiss"]
    exact = by["fp32/flat"]
    assert exact["recall_at_1"] == exact["recall_at_10"] == exact["recall_at_100"] == 1.0
    int8 = by["int8/flat"]
    assert 384 <= int8["bytes_per_vector"] <= 400  # 384 code bytes + the id, measured from the index
    assert int8["saved"] == pytest.approx(0.745, abs=0.01) and int8["recall_at_10"] > 0.95
    # rescoring buys back what the 1-bit codes lose, and costs the originals on disk
    assert by["binary/flat/rescore=8"]["recall_at_10"] > by["binary/flat"]["recall_at_10"] + 0.1
    assert by["binary/flat/rescore=8"]["disk_originals_bytes"] >= 4 * xb.size
    assert by["binary/flat"]["bytes_per_vector"] < int8["bytes_per_vector"] / 4
    for rec in res["records"]:
        assert rec["qps"] > 0 and rec["faiss_qps"] > 0 and 0 < rec["p50_ms"] <= rec["p99_ms"]


def test_bench_reads_the_ann_benchmarks_layout_and_its_neighbours(runner, tmp_path, corpus):
    _, xb, _, xq = corpus
    _, gt = exact_knn(xb, xq, 100, metric="l2")
    with h5py.File(tmp_path / "pydoc-384-euclidean.hdf5", "w") as f:
        f.attrs["distance"] = "euclidean"
        f["train"], f["test"], f["neighbors"] = xb, xq, gt
    out = tmp_path / "out"
    r = runner.invoke(main, ["bench", "--vectors", str(tmp_path / "pydoc-384-euclidean.hdf5"), "--out", str(out),
                             "--config", "fp32/flat", "--config", "int4/flat", "--repeat", "1"])
    assert r.exit_code == 0, r.output
    res, by = _results(out)
    assert res["dataset"]["metric"] == "l2" and res["dataset"]["gt_from_file"]
    assert by["fp32/flat"]["recall_at_10"] == 1.0 and by["int4/flat"]["recall_at_10"] < 1.0


def test_bench_on_text_with_labels_caches_the_embeddings(runner, tmp_path, corpus, model, monkeypatch):
    docs = list(dict.fromkeys(corpus[0]))[:150]  # unique: a duplicate could take rank 1
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n"
                                                 for i, t in enumerate(docs)))
    # ten labelled queries (a document's own text: it must rank first) and one without a label
    queries = [{"text": docs[i], "relevant": [f"d{i}"]} for i in range(0, 100, 10)] + [{"text": "open a file"}]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    args = ["bench", "--corpus", str(tmp_path / "docs.jsonl"), "--queries", str(tmp_path / "q.jsonl"),
            "--config", "fp32/flat", "--config", "int8/flat", "--repeat", "1"]
    r = runner.invoke(main, args + ["--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    res, by = _results(tmp_path / "a")
    assert res["dataset"]["n_labelled"] == 10
    assert res["exact_task_quality"] == {"mrr_at_10": 1.0, "hit_at_10": 1.0}
    assert by["fp32/flat"]["mrr_at_10"] == 1.0 and by["int8/flat"]["hit_at_10"] == 1.0
    assert len(list((tmp_path / "a" / "cache").glob("*.npy"))) == 2

    def no_model(*a, **k):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(type(model), "embed", no_model)
    r = runner.invoke(main, args + ["--out", str(tmp_path / "b"), "--cache-dir", str(tmp_path / "a" / "cache")])
    assert r.exit_code == 0, r.output
    # --limit 50 keeps the first 50 documents: only the 5 queries whose document is among them stay labelled
    r = runner.invoke(main, args + ["--out", str(tmp_path / "c"), "--cache-dir", str(tmp_path / "a" / "cache"),
                                    "--limit", "50"])
    assert r.exit_code == 0, r.output
    res, by = _results(tmp_path / "c")
    assert res["dataset"]["n_labelled"] == 5 and by["fp32/flat"]["mrr_at_10"] == 1.0


def test_bench_usage_errors_are_one_line(runner, tmp_path, corpus):
    _, xb, _, xq = corpus
    np.save(tmp_path / "docs.npy", xb)
    np.save(tmp_path / "q100.npy", xq[:, :100])
    (tmp_path / "q.jsonl").write_text(json.dumps({"text": "x", "relevant": "nope"}) + "\n")
    base = ["bench", "--out", str(tmp_path / "o")]
    cases = [
        (base, "give the base data as --vectors FILE or --corpus FILE"),
        (base + ["--vectors", str(tmp_path / "docs.npy")], "give --queries FILE"),
        (base + ["--vectors", str(tmp_path / "nope.npy")], "--vectors"),
        (base + ["--vectors", str(tmp_path / "docs.npy"), "--queries", str(tmp_path / "q100.npy")],
         "queries have dimension 100, base vectors 384"),
        (base + ["--vectors", str(tmp_path / "docs.npy"), "--queries", str(tmp_path / "q100.npy"),
                 "--config", "int8/tree"], "unknown index"),
        (base + ["--vectors", str(tmp_path / "docs.npy"), "--quick", "--config", "int8/flat"],
         "--quick chooses the configurations"),
    ]
    for args, says in cases:
        r = runner.invoke(main, args)
        assert r.exit_code == 2 and says in r.output, (args, r.output)


def test_bench_takes_ground_truth_from_ivecs_and_limits(runner, tmp_path, corpus):
    _, xb, _, xq = corpus
    write_vecs(tmp_path / "docs.fvecs", xb)
    np.save(tmp_path / "q.npy", xq)
    _, gt = exact_knn(xb, xq, 100)
    write_vecs(tmp_path / "gt.ivecs", gt)
    base = ["bench", "--vectors", str(tmp_path / "docs.fvecs"), "--queries", str(tmp_path / "q.npy"),
            "--config", "fp32/flat", "--repeat", "1"]
    r = runner.invoke(main, base + ["--ground-truth", str(tmp_path / "gt.ivecs"), "--n-queries", "20",
                                    "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    res, by = _results(tmp_path / "a")
    assert res["dataset"]["gt_from_file"] and res["dataset"]["n_queries"] == 20
    assert by["fp32/flat"]["recall_at_10"] == 1.0
    # --limit drops the file's neighbours (they index the full set) and searches exactly instead
    r = runner.invoke(main, base + ["--ground-truth", str(tmp_path / "gt.ivecs"), "--limit", "300",
                                    "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    res, by = _results(tmp_path / "b")
    assert not res["dataset"]["gt_from_file"] and res["dataset"]["n_docs"] == 300
    assert by["fp32/flat"]["recall_at_100"] == 1.0
