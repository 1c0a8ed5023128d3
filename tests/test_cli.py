"""The qvec CLI through click's CliRunner, and once as the installed entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

import qvec
from qvec.cli import main


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def vectors_file(tmp_path, corpus):
    np.save(tmp_path / "docs.npy", corpus[1][:300])
    with open(tmp_path / "docs.jsonl", "w") as f:
        for i in range(300):
            f.write(json.dumps({"id": f"p{i}", "metadata": {"n": i, "even": i % 2 == 0}}) + "\n")
    return tmp_path / "docs.npy"


def test_build_from_vectors_is_idempotent_and_summarises(runner, tmp_path, vectors_file):
    store = str(tmp_path / "v.qvec")
    r = runner.invoke(main, ["build", store, str(vectors_file), "-q", "int8"])
    assert r.exit_code == 0, r.output
    # int8 learns its scales from 1,000 vectors, as in the Python API: until then, exact search
    assert r.output.startswith(f"300 vectors in {store} (+300 added, 0 already stored): int8/flat codes not "
                               "trained yet: 300 vectors searched exactly until 1000 arrive")
    again = runner.invoke(main, ["build", store, str(vectors_file)])
    assert "(+0 added, 300 already stored)" in again.output
    with qvec.open(store) as s:
        assert len(s) == 300 and s.get("p4").metadata == {"n": 4, "even": True}


def test_search_info_get_delete_export(runner, tmp_path, corpus, model, monkeypatch):
    texts = corpus[0][:60]
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": t, "lang": "en", "n": i}) + "\n"
                           for i, t in enumerate(texts)))
    store = str(tmp_path / "t.qvec")
    r = runner.invoke(main, ["build", store, str(src), "-q", "fp16", "--metadata-fields", "lang,n", "--quiet"])
    assert r.exit_code == 0, r.output

    r = runner.invoke(main, ["search", store, texts[5], "-k", "2", "--json", "--where", '{"n": {"$lte": 10}}'])
    hits = [json.loads(line) for line in r.output.splitlines()]
    assert r.exit_code == 0 and len(hits) == 2 and hits[0]["id"] == "d5" and hits[0]["metadata"]["lang"] == "en"
    assert all(h["metadata"]["n"] <= 10 for h in hits)

    table = runner.invoke(main, ["search", store, texts[7], "-k", "1"]).output
    assert table.startswith(f"query: {texts[7]}\n  1   ") and "d7" in table

    info = runner.invoke(main, ["info", store]).output
    assert "count        60" in info and "fp16 / flat / cosine, dim 384" in info and "776.0 bytes/vector" in info
    assert json.loads(runner.invoke(main, ["info", store, "--json"]).output)["count"] == 60

    got = json.loads(runner.invoke(main, ["get", store, "d3"]).output)
    assert got == {"id": "d3", "text": texts[3], "metadata": {"lang": "en", "n": 3}}
    assert runner.invoke(main, ["delete", store, "d3", "d4"]).output == "deleted 2\n"

    out = tmp_path / "rows.jsonl"
    assert runner.invoke(main, ["export", store, str(out)]).exit_code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 58 and rows[0] == {"id": "d0", "text": texts[0], "metadata": {"lang": "en", "n": 0}}
    copy = str(tmp_path / "copy.qvec")
    r = runner.invoke(main, ["build", copy, str(out), "-q", "fp16", "--quiet"])  # nested metadata: read as it is
    assert r.exit_code == 0 and "58 vectors" in r.output
    with qvec.open(copy) as c:
        assert c.get("d0").metadata == {"lang": "en", "n": 0}


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["info", "{tmp}/missing.qvec"], 1, "Error: no qvec store at {tmp}/missing.qvec: create it with"),
        (["search", "{store}", "x", "--where", "{bad"], 2, "Error: --where is not valid JSON"),
        (["search", "{store}", "x", "--where", '{"n": {"$like": 1}}'], 2, "Error: unknown operator '$like'"),
        (["build", "{tmp}/new.qvec", "{tmp}/docs.npy", "-q", "int3"], 2, "Error: unknown quantization 'int3'"),
        (["build", "{tmp}/new.qvec", "{tmp}/bad.jsonl"], 2, "Error: bad.jsonl:2: not valid JSON"),
        (["build", "{store}", "{tmp}/short.npy"], 1, "Error: store holds 384-dim vectors, got 10"),
        (["delete", "{store}", "nope"], 1, "Error: 1 id(s) not in the store: 'nope'"),
    ],
)
def test_errors_are_one_line_with_exit_status(runner, tmp_path, vectors_file, args, code, message):
    store = tmp_path / "v.qvec"
    runner.invoke(main, ["build", str(store), str(vectors_file)])
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "text": "fine"}\n{oops\n')
    np.save(tmp_path / "short.npy", np.ones((2, 10), dtype=np.float32))
    def fill(s):
        return s.replace("{tmp}", str(tmp_path)).replace("{store}", str(store))

    r = runner.invoke(main, [fill(a) for a in args])
    assert r.exit_code == code, r.output
    assert fill(message) in r.output and "Traceback" not in r.output
    assert r.output.strip().splitlines()[-1].startswith("Error: ")


def test_a_bad_line_keeps_the_batches_before_it(runner, tmp_path, corpus, model):
    lines = [json.dumps({"id": f"g{i}", "text": t}) for i, t in enumerate(corpus[0][:20])]
    (tmp_path / "in.jsonl").write_text("\n".join(lines[:10] + ["{broken"] + lines[10:]) + "\n")
    r = runner.invoke(main, ["build", str(tmp_path / "s.qvec"), str(tmp_path / "in.jsonl"), "--batch-size", "5"])
    assert r.exit_code == 2 and "in.jsonl:11: not valid JSON" in r.output
    with qvec.open(tmp_path / "s.qvec") as s:
        assert len(s) == 10  # the two full batches before the bad line were committed


def test_every_command_has_help_with_an_example(runner):
    for name in main.commands:
        r = runner.invoke(main, [name, "--help"])
        assert r.exit_code == 0, name
        assert f"qvec {name} " in r.output, f"{name} --help shows no worked example"
    assert "Example" in runner.invoke(main, ["--help"]).output
    assert runner.invoke(main, ["--version"]).output == f"qvec, version {qvec.__version__}\n"


@pytest.mark.slow
def test_installed_entry_point_on_real_text(tmp_path):
    exe = shutil.which("qvec")
    assert exe, "the qvec console script is not installed: pip install -e ."
    docs = tmp_path / "pydoc.txt"
    docs.write_text(subprocess.run(["python", "-m", "qvec.datasets", "pydoc", "150"], capture_output=True,
                                   text=True, check=True).stdout)
    build = subprocess.run([exe, "build", str(tmp_path / "d.qvec"), str(docs), "-q", "fp16"], capture_output=True,
                           text=True)
    assert build.returncode == 0, build.stderr
    assert "150 vectors" in build.stdout and "776.0 bytes/vector in RAM" in build.stdout
    found = subprocess.run([exe, "search", str(tmp_path / "d.qvec"), "how do I define a function?", "-k", "3",
                            "--json"], capture_output=True, text=True, check=True)
    assert len(found.stdout.splitlines()) == 3


def test_fvecs_input_and_export_with_vectors(runner, tmp_path, corpus):
    xb = corpus[1][:50]
    rows = np.hstack([np.full((50, 1), 384, dtype=np.int32).view(np.float32), xb])
    rows.tofile(tmp_path / "x.fvecs")
    store = str(tmp_path / "f.qvec")
    r = runner.invoke(main, ["build", store, str(tmp_path / "x.fvecs"), "-q", "fp32", "--rescore"])
    assert r.exit_code == 0 and "50 vectors" in r.output, r.output
    out = tmp_path / "rows.jsonl"
    assert runner.invoke(main, ["export", store, str(out), "--vectors"]).exit_code == 0
    got = np.array([json.loads(line)["vector"] for line in out.read_text().splitlines()], dtype=np.float32)
    np.testing.assert_allclose(got, xb / np.linalg.norm(xb, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    (tmp_path / "bad.fvecs").write_bytes(b"\x05\x00\x00\x00abc")
    r = runner.invoke(main, ["build", str(tmp_path / "g.qvec"), str(tmp_path / "bad.fvecs")])
    assert r.exit_code == 2 and "not a readable vector file" in r.output



def test_debug_shows_the_traceback(runner, tmp_path):
    r = runner.invoke(main, ["info", str(tmp_path / "missing.qvec")])
    assert r.exit_code == 1 and r.exception is not None and isinstance(r.exception, SystemExit)
    r = runner.invoke(main, ["--debug", "info", str(tmp_path / "missing.qvec")])
    assert isinstance(r.exception, qvec.StoreNotFound)


def test_build_sums_up_texts_longer_than_the_model_window_in_one_line(runner, tmp_path, model):
    from pydoc_data.topics import topics

    lines = [topics["assignment"].replace("\n", " "), topics["import"].replace("\n", " "), "a short line"]
    (tmp_path / "long.txt").write_text("\n".join(lines) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", qvec.TextTruncated)  # no per-batch warning escapes
        r = runner.invoke(main, ["build", str(tmp_path / "l.qvec"), str(tmp_path / "long.txt")])
    assert r.exit_code == 0, r.output
    notes = [line for line in r.output.splitlines() if line.startswith("note:")]
    assert notes == ["note: 2 of the texts in long.txt are longer than all-MiniLM-L6-v2's 256-token window; "
                     "only their first 256 tokens were embedded (split long documents into passages to make all of "
                     "their text searchable)"]


@pytest.mark.parametrize("name, content, where", [
    ("bad.txt", b"fine\nbad \xff here\n", "bad.txt:2"),
    ("bad.jsonl", b'{"id": "a", "text": "fine"}\n{"id": "b", "text": "\xc3("}\n', "bad.jsonl:2"),
    ("bad.csv", b"id,text\na,fine\nb,caf\xe9\n", "bad.csv:3"),
])
def test_invalid_utf8_names_file_and_line_and_leaves_no_store(runner, tmp_path, name, content, where):
    (tmp_path / name).write_bytes(content)
    store = tmp_path / "new.qvec"
    r = runner.invoke(main, ["build", str(store), str(tmp_path / name)])
    assert r.exit_code == 2 and f"Error: {where}: not valid UTF-8" in r.output and "Traceback" not in r.output
    assert not store.exists()  # a failed first build leaves no empty store behind


@pytest.mark.parametrize("args, message", [
    (["{tmp}/missing.txt"], "Error: {tmp}/missing.txt: no such file"),
    (["{tmp}/ok.txt", "-q", "binary", "--index", "ivf8"], "Error: binary quantization supports index='flat' only"),
])
def test_a_build_refused_before_it_starts_leaves_no_store(runner, tmp_path, args, message):
    (tmp_path / "ok.txt").write_text("a line\n")
    store = tmp_path / "new.qvec"
    r = runner.invoke(main, ["build", str(store)] + [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert r.exit_code == 2 and message.replace("{tmp}", str(tmp_path)) in r.output, r.output
    assert not store.exists()


def test_search_with_a_huge_k_returns_every_row(runner, tmp_path, vectors_file, model):
    store = str(tmp_path / "v.qvec")
    runner.invoke(main, ["build", store, str(vectors_file), "-q", "fp16"])
    r = runner.invoke(main, ["search", store, "how do I open a file?", "-k", "1000000000", "--json"])
    assert r.exit_code == 0, r.output
    assert len(r.output.splitlines()) == 300  # one hit per row; no room made for 10**9


def test_build_keeps_originals_at_the_precision_asked_and_info_says_so(runner, tmp_path, vectors_file):
    store = str(tmp_path / "v.qvec")
    r = runner.invoke(main, ["build", store, str(vectors_file), "-q", "fp16", "--rescore", "int8"])
    assert r.exit_code == 0, r.output
    info = runner.invoke(main, ["info", store])
    assert "rescore from int8 originals" in info.output
    assert "originals 117,600 B" in info.output  # 300 rows × (384 + a 4-byte scale + a 4-byte checksum)
    again = runner.invoke(main, ["build", store, str(vectors_file), "--rescore"])  # alone: the store's precision
    assert again.exit_code == 0, again.output
    clash = runner.invoke(main, ["build", store, str(vectors_file), "--rescore", "fp32"])
    assert clash.exit_code == 1 and "originals='fp32' (store has 'int8')" in clash.output
    bad = runner.invoke(main, ["build", store, str(vectors_file), "--rescore", "int4"])
    assert bad.exit_code == 2 and "'int4' is not one of" in bad.output


def test_cli_habits_info_delete_where_min_score_like_metric(runner, tmp_path, vectors_file):
    store = str(tmp_path / "h.qvec")
    assert runner.invoke(main, ["build", store, str(vectors_file), "--metric", "ip"]).exit_code == 0
    assert runner.invoke(main, ["retrain", store]).exit_code == 0  # 300 rows: trained now, not at 1,000
    info = runner.invoke(main, ["info", store]).output
    assert sum(line.startswith("trained") for line in info.splitlines()) == 1 and "/ ip," in info
    st = json.loads(runner.invoke(main, ["info", store, "--json"]).output)
    assert st["trained_parameters"]["scales"]["dims"] == 384 and "vmin" not in st["trained_parameters"]["scales"]
    full = json.loads(runner.invoke(main, ["info", store, "--json", "--scales"]).output)
    assert len(full["trained_parameters"]["scales"]["vmin"]) == 384
    # more like this: the row's neighbours, itself left out
    r = runner.invoke(main, ["search", store, "--like", "p5", "-k", "3", "--json"])
    hits = [json.loads(line) for line in r.output.splitlines()]
    assert r.exit_code == 0 and len(hits) == 3 and "p5" not in {h["id"] for h in hits}
    r = runner.invoke(main, ["search", store, "--like", "p5", "-k", "50", "--json", "--min-score", "0.5"])
    scores = [json.loads(line)["score"] for line in r.output.splitlines()]
    assert scores and min(scores) >= 0.5 and len(scores) < 50
    assert runner.invoke(main, ["search", store, "q", "--like", "p5"]).exit_code == 2
    r = runner.invoke(main, ["delete", store, "--where", '{"even": true}'])
    assert r.exit_code == 0 and "deleted 150" in r.output
    assert runner.invoke(main, ["delete", store]).exit_code == 2
    assert runner.invoke(main, ["delete", store, "p1", "--where", '{"n": 1}']).exit_code == 2
    r = runner.invoke(main, ["delete", store, "--where", '{"n": 1'])
    assert r.exit_code == 2 and "not valid JSON" in r.output
    with qvec.open(store, read_only=True) as s:
        assert len(s) == 150 and all(not i.metadata["even"] for i in s.get(s.ids()))


def test_warnings_print_as_one_line_without_source(tmp_path, vectors_file):
    qvec_cli = [sys.executable, "-m", "qvec"]
    subprocess.run([*qvec_cli, "build", str(tmp_path / "w.qvec"), str(vectors_file)], check=True, capture_output=True)
    r = subprocess.run([*qvec_cli, "retrain", str(tmp_path / "w.qvec")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "warning: training int8/flat on 300 vectors" in r.stderr
    assert "warnings.warn" not in r.stderr and ".py:" not in r.stderr


def test_text_inputs_nested_metadata_typed_csv_and_missing_fields(runner, tmp_path):
    from qvec.sources import read_records

    (tmp_path / "a.jsonl").write_text(json.dumps({"id": "x", "text": "a cat", "vector": [0.1],
                                                  "metadata": {"lang": "en", "n": 3}}) + "\n")
    assert list(read_records(str(tmp_path / "a.jsonl"), "text", "id", None)) == [
        ("x", "a cat", {"lang": "en", "n": 3}, [0.1])]
    assert list(read_records(str(tmp_path / "a.jsonl"), "text", "id", "all"))[0][2] == {"lang": "en", "n": 3}
    (tmp_path / "b.csv").write_text("id,text,year,zip,score\n1,a dog,1999,02134,0.5\n2,a bird,2004,10001,x\n")
    rows = list(read_records(str(tmp_path / "b.csv"), "text", "id", "year,zip,score"))
    assert rows[0][2] == {"year": 1999, "zip": "02134", "score": 0.5} and rows[1][2]["score"] == "x"
    with pytest.warns(UserWarning, match="no record has the metadata field.s. 'colour'"):
        list(read_records(str(tmp_path / "b.csv"), "text", "id", "year,colour"))


def test_export_to_stdout_builds_back_with_its_vectors_and_embeds_nothing(runner, tmp_path, corpus, model,
                                                                          monkeypatch):
    texts, xb = corpus[0][:40], corpus[1][:40]
    store = str(tmp_path / "a.qvec")
    with qvec.open(store, quantization="fp32", embedder=model) as s:
        s.add(texts, vectors=xb, ids=[f"d{i}" for i in range(40)],
              metadata=[{"n": i, "text": "a field named text", "id": "and one named id"} for i in range(40)])
    r = runner.invoke(main, ["export", store, "--vectors", "--where", '{"n": {"$lt": 30}}'])  # stdout by default
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.splitlines()]
    assert len(rows) == 30 and set(rows[0]) == {"id", "text", "metadata", "vector"}
    assert rows[3]["metadata"] == {"n": 3, "text": "a field named text", "id": "and one named id"}  # not clobbered
    (tmp_path / "rows.jsonl").write_text(r.output)

    def no_model(*a, **k):
        raise AssertionError("an export with vectors must not be embedded again")

    monkeypatch.setattr(type(model), "embed", no_model)
    monkeypatch.setattr("qvec.embedder.SentenceTransformerEmbedder.embed", no_model)
    copy = str(tmp_path / "copy.qvec")
    r = runner.invoke(main, ["build", copy, str(tmp_path / "rows.jsonl"), "-q", "fp32", "--quiet"])
    assert r.exit_code == 0 and r.output.startswith("30 vectors"), r.output
    with qvec.open(store) as a, qvec.open(copy) as c:
        ids = [f"d{i}" for i in range(30)]
        np.testing.assert_allclose(c.vectors(ids), a.vectors(ids), rtol=1e-6, atol=1e-7)  # 9 digits: float32 exact
        assert c.get("d3").metadata == rows[3]["metadata"] and c.get("d3").text == texts[3]
        assert [h.id for h in c.search(xb[7], 5)] == [h.id for h in a.search(xb[7], 5, where={"n": {"$lt": 30}})]
        # the vectors are not kept as metadata: SQLite holds texts, not 384 floats per row as JSON
        assert "vector" not in json.dumps([i.metadata for i in c.get(ids)])
    # the pipe: `qvec export --vectors | qvec build COPY -` (stdin whose first line is a JSON object is JSONL)
    r = runner.invoke(main, ["build", str(tmp_path / "piped.qvec"), "-", "-q", "int8", "--quiet"],
                      input="".join(json.dumps(row) + "\n" for row in rows))
    assert r.exit_code == 0 and r.output.startswith("30 vectors"), r.output
    with qvec.open(tmp_path / "piped.qvec") as p:
        assert p.get("d29").text == texts[29] and p.get("d29").metadata["n"] == 29


def test_a_first_build_from_no_records_creates_no_store(runner, tmp_path, vectors_file):
    """`printf "" | qvec build new.qvec -` succeeded with an empty store, where any other
    first build that stores nothing leaves no store behind."""
    store = tmp_path / "new.qvec"
    (tmp_path / "empty.jsonl").write_text("")
    for args, given in [(["-"], ""), ([str(tmp_path / "empty.jsonl")], None)]:
        r = runner.invoke(main, ["build", str(store), *args, "--quiet"], input=given)
        assert r.exit_code == 2 and not store.exists(), r.output  # 2: bad input, as click's usage errors
        assert r.output.count("\n") == 1 and "no records read" in r.output and "was not created" in r.output
    r = runner.invoke(main, ["build", str(store), str(vectors_file)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["build", str(store), "-", "--quiet"], input="")  # extending: nothing new is fine
    assert r.exit_code == 0 and r.output.startswith("300 vectors"), r.output


def test_jsonl_records_with_and_without_their_own_vectors(runner, tmp_path, corpus, model):
    texts, xb = corpus[0][:3], corpus[1][:3]
    src = tmp_path / "mixed.jsonl"
    src.write_text(json.dumps({"id": "a", "text": texts[0], "emb": xb[0].tolist()}) + "\n"
                   + json.dumps({"id": "b", "text": texts[1]}) + "\n"  # no vector: embedded with the model
                   + json.dumps({"id": "c", "text": texts[2], "emb": xb[2].tolist()}) + "\n")
    store = str(tmp_path / "m.qvec")
    r = runner.invoke(main, ["build", store, str(src), "-q", "fp32", "--vector-field", "emb", "--quiet"])
    assert r.exit_code == 0, r.output
    with qvec.open(store) as s:
        got = s.vectors(["a", "b", "c"])
        unit = xb / np.linalg.norm(xb, axis=1, keepdims=True)
        np.testing.assert_allclose(got[[0, 2]], unit[[0, 2]], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[1], model.embed([texts[1]])[0], rtol=1e-4, atol=1e-5)
        assert s.get("a").metadata == {}  # "emb" is the vector, not metadata


@pytest.mark.parametrize("lines, message, code", [
    ([{"id": "a", "text": "x", "vector": "0.1 0.2"}], "bad.jsonl:1: field 'vector' is not a list of numbers", 2),
    ([{"id": "a", "text": "x", "vector": [0.1, 0.2]}, {"id": "b", "text": "y", "vector": [0.1]}],
     "bad.jsonl:2: a 1-dim vector after 2-dim ones", 2),
    ([{"id": "a", "text": "x", "vector": [0.1, None]}], "bad.jsonl:1: field 'vector' is not a list of numbers", 2),
    ([{"id": "a", "text": "x", "vector": [0.1, 0.2, 0.3]}, {"id": "b", "text": "no vector: embedded at 384"}],
     "the rows' own vectors are 3-dim and the model embeds the rest at 384-dim", 1),
    ([{"id": "a", "text": "x", "vector": [1e39, 0.0]}], "contains NaN or inf (or a value beyond float32)", 1),
])
def test_a_bad_vector_field_names_file_and_line(runner, tmp_path, lines, message, code):
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    r = runner.invoke(main, ["build", str(tmp_path / "b.qvec"), str(tmp_path / "bad.jsonl"), "--quiet"])
    assert r.exit_code == code and message in r.output and len(r.output.splitlines()) == 1, r.output
    assert not (tmp_path / "b.qvec").exists()


def test_faiss_clustering_chatter_only_with_verbose(tmp_path):
    x = np.random.default_rng(0).normal(size=(1200, 32)).astype(np.float32)
    np.save(tmp_path / "v.npy", x)
    qvec_cli = [sys.executable, "-m", "qvec"]
    for name in ("q", "v"):
        subprocess.run([*qvec_cli, "build", str(tmp_path / f"{name}.qvec"), str(tmp_path / "v.npy"), "-q", "pq8",
                        "--index", "ivf16", "--rescore"], check=True, capture_output=True)
    quiet = subprocess.run([*qvec_cli, "retrain", str(tmp_path / "q.qvec")], capture_output=True, text=True)
    assert quiet.returncode == 0, quiet.stderr
    # qvec's own one line says the training set is small; FAISS's 9 lines saying it again are not shown
    assert quiet.stderr.splitlines() == ["warning: training pq8/ivf16 on 1200 vectors; 9984 or more give better codes"]
    loud = subprocess.run([*qvec_cli, "--verbose", "retrain", str(tmp_path / "v.qvec")], capture_output=True, text=True)
    assert loud.returncode == 0 and "faiss: WARNING clustering 1200 points to 256 centroids" in loud.stderr
