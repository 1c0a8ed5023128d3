"""qvec report and qvec tune (#14): measured against exact search on real embeddings; an
applied tuning is checked, atomic under SIGKILL, and undone by rollback."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

import qvec
from qvec.cli import main
from qvec.metrics import exact_knn, recall_at_k
from qvec.tune import Candidate, TargetNotMet

FEW = ["int8", "int4", "pq48", "binary"]  # families enough to choose among, quick to train


def rows(results, k=10):
    return np.array([[int(h.id) for h in r] + [-1] * (k - len(r)) for r in results])


@pytest.fixture
def store_path(tmp_path, corpus):
    _, xb, _, _ = corpus
    path = tmp_path / "s.qvec"
    with qvec.open(path, quantization="int8", rescore=True) as s:
        s.add(vectors=xb, ids=[str(i) for i in range(len(xb))])
        s.train()
    return path


def test_report_breaks_bytes_down_and_states_recall_near_an_independent_measure(store_path, corpus):
    _, xb, _, xq = corpus
    with qvec.open(store_path, read_only=True) as s:
        r = s.report()
        independent = recall_at_k(rows(s.search_batch(xq, 10, include=())), exact_knn(xb, xq, 10)[1], 10)
        given = s.report(xq)  # the user's queries instead of held-out rows
    b = r["bytes"]
    assert b["codes"] == 384 and b["ids"] == 8
    assert b["codes"] + b["ids"] + b["links_or_lists"] == pytest.approx(r["bytes_per_vector"], abs=0.01)
    assert r["disk_bytes"]["originals"] > 0 and r["reference"].startswith("exact FP32")
    assert 0 < r["recall_at_1"] <= 1 and 0 < r["recall_at_100"] <= 1
    assert abs(r["recall_at_10"] - independent) <= 0.03
    assert given["recall_at_10"] == pytest.approx(independent, abs=0.01)  # ties (duplicate paragraphs) aside
    assert r["calibration"]["clipped_newest"] is not None
    assert "vectors as int8/flat" in r["verdict"] and "recall@10" in r["verdict"]
    json.dumps(r)  # JSON-able as it is


def test_tune_chooses_the_cheapest_meeting_the_target_and_apply_then_rollback(store_path, corpus):
    _, xb, _, xq = corpus
    _, gt = exact_knn(xb, xq, 10)
    with qvec.open(store_path) as s:
        result = s.tune(0.9, codes=FEW)
        c = result.chosen
        assert c.meets and c.recall_low95 >= 0.9
        assert all(not o.meets or o.ram_bytes >= c.ram_bytes for o in result.candidates)
        assert c.ram_bytes < 0.5 * s.stats().bytes_per_vector  # cheaper than int8 at this target
        applied = s.apply_tuning(c, 0.9)
        assert applied["shadow_check"]["recall_at_10"] >= 0.9
        assert str(s.settings.codes) == c.quantization and s.settings.oversample == c.oversample
    with qvec.open(store_path) as s:  # the swap is on disk
        assert str(s.settings.codes) == c.quantization
        assert recall_at_k(rows(s.search_batch(xq, 10, include=())), gt, 10) >= 0.88
        s.add(vectors=xb[:3] * 0.9 + 0.1, ids=["new0", "new1", "new2"])
        s.delete(["0", "1"])
        back = s.rollback_tuning()
        assert back == {"quantization": "int8", "previous": c.quantization, "rows_added": 3}
    with qvec.open(store_path) as s:
        assert str(s.settings.codes) == "int8" and len(s) == len(xb) + 1
        hits = s.search(xb[5], 3, include=())
        assert hits[0].id == "5"
        assert {h.id for h in s.search(xb[0], 20, include=())}.isdisjoint({"0", "1"})
        assert s.search(xb[2] * 0.9 + 0.1, 1, include=())[0].id == "new2"


def test_an_apply_below_the_target_changes_nothing(store_path, corpus):
    _, xb, _, _ = corpus
    with qvec.open(store_path) as s:
        before = [h.id for h in s.search(xb[7], 10, include=())]
        with pytest.raises(TargetNotMet, match="keeps its int8 codes"):
            s.apply_tuning(Candidate("binary", 1), 0.999)
        assert str(s.settings.codes) == "int8"
        assert [h.id for h in s.search(xb[7], 10, include=())] == before
        with pytest.raises(qvec.QvecError, match="no previous codes"):
            s.rollback_tuning()


def test_a_store_without_originals_or_texts_says_why_it_cannot_be_tuned(tmp_path, corpus):
    _, xb, _, _ = corpus
    with qvec.open(tmp_path / "s", quantization="int8") as s:
        s.add(vectors=xb, ids=[str(i) for i in range(len(xb))])
        s.train()
        r = s.report()  # measured against the decoded codes, and says so
        assert "decoded" in r["reference"] and r["recall_at_10"] > 0.9
        with pytest.raises(qvec.NotTrained, match="no originals .* no text"):
            s.tune(0.9, codes=FEW)


@pytest.mark.slow
def test_a_store_without_originals_is_tuned_from_its_texts_embedded_again(tmp_path, corpus):
    docs = corpus[0][:200]
    with qvec.open(tmp_path / "s", quantization="int8") as s:
        s.add(docs, ids=[str(i) for i in range(len(docs))])
        s.train()
        result = s.tune(0.8, codes=["int8", "int4"])
        assert "embedded again" in result.reference and result.chosen.meets
        s.apply_tuning(result.chosen, 0.8)
        assert str(s.settings.codes) == result.chosen.quantization
        assert s.search(docs[4], 1, include=())[0].id == "4"


APPLY = """
import sys, qvec
from qvec.tune import Candidate
s = qvec.open(sys.argv[1])
print("go", flush=True)
s.apply_tuning(Candidate("pq48", 4), 0.5)
s.close()
print("done", flush=True)
"""


@pytest.mark.slow
def test_a_killed_apply_leaves_the_old_codes_or_the_new_never_a_mix(tmp_path, store_path, corpus):
    _, xb, _, _ = corpus
    outcomes = set()
    for delay in (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0):
        path = tmp_path / f"k{delay}"
        shutil.copytree(store_path, path)
        p = subprocess.Popen([sys.executable, "-c", APPLY, str(path)], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "go"
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        with qvec.open(path) as s:
            codes = str(s.settings.codes)
            assert codes in ("int8", "pq48")
            assert len(s) == len(xb) and s.stats().bytes_per_vector == pytest.approx(392 if codes == "int8" else 56,
                                                                                     abs=1)
            hits = s.search_batch(xb[:20], 1, include=())
            assert all(h[0].score > 0.999 for h in hits)  # each finds itself (or its duplicate paragraph), re-ranked
        outcomes.add(codes)
    assert "int8" in outcomes  # killed before the commit at least once


def test_cli_report_and_tune(store_path):
    runner = CliRunner()
    r = runner.invoke(main, ["report", str(store_path), "--json"])
    assert r.exit_code == 0, r.output
    assert 0 < json.loads(r.output)["recall_at_10"] <= 1
    r = runner.invoke(main, ["report", str(store_path)])
    assert r.exit_code == 0 and "recall       @1" in r.output
    r = runner.invoke(main, ["tune", str(store_path), "--recall", "0.9", "--rollback"])
    assert r.exit_code == 1 and r.output.startswith("Error: ") and "no previous codes" in r.output
    r = runner.invoke(main, ["tune", str(store_path), "--recall", "1.5"])
    assert r.exit_code == 2


def test_cli_tune_apply_writes_the_plot_and_reports_the_swap(store_path, tmp_path):
    png = tmp_path / "tune.png"
    r = CliRunner().invoke(main, ["tune", str(store_path), "--recall", "0.9", "--apply", "--plot", str(png), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    chosen = out["chosen"]
    assert chosen["meets"] and chosen["recall_low95"] >= 0.9
    assert out["applied"]["quantization"] == chosen["quantization"] and out["applied"]["previous"] == "int8"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with qvec.open(store_path, read_only=True) as s:
        assert str(s.settings.codes) == chosen["quantization"]


def test_tiny_and_untrained_stores_get_plain_answers(tmp_path):
    x = np.random.default_rng(0).standard_normal((80, 16)).astype(np.float32)
    with qvec.open(tmp_path / "tiny", quantization="fp16") as s:
        s.add(vectors=x[:8], ids=[str(i) for i in range(8)])
        assert "not measured on so few" in s.report()["verdict"]
        with pytest.raises(qvec.NotTrained, match="holds 8 vectors; tuning measures recall@10 on at least"):
            s.tune(0.9)
    with qvec.open(tmp_path / "untrained", quantization="pq4", rescore=True) as s:
        s.add(vectors=x, ids=[str(i) for i in range(80)])  # too few to train pq4 automatically
        with pytest.raises(qvec.NotTrained, match="no trained codes to report on"):
            s.report()
        chosen = s.tune(0.5, codes=["int8", "fp16"]).chosen
        s.apply_tuning(chosen, 0.5)  # trains the store with the chosen codes
        assert str(s.settings.codes) == "int8" and s.is_trained
        with pytest.raises(qvec.QvecError, match="no previous codes"):
            s.rollback_tuning()  # there were none before
