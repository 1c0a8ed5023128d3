"""Ingest benchmark (issue 6): documents/s with the FP32 and the INT8 embedding model in one
run, and how much retrieval quality the INT8 model keeps.

    python bench/prepare.py gcide      # once: GCIDE docs, headword queries, FP32 embeddings
    python bench/ingest.py             # writes bench/results/ingest.{json,md}

Speed: the first 2,000 GCIDE definitions, ingested into a fresh int8/flat store, as
`qvec build` does it (``Store.ingest``: reading, embedding and writing pipelined) and as a
plain loop of ``add()`` calls; FP32 and INT8 alternate, the median of ROUNDS. Embedding alone is
timed too, and torch's own dynamic INT8 quantization is measured beside ONNX Runtime's as
the alternative we did not take.

Quality: a 20,000-document subset (every sense of the 1,000 headword queries, plus random
definitions) embedded with both models. recall@10 of INT8 search (INT8 documents, INT8
queries) against the FP32 model's exact neighbours, for the headword queries and 1,000
held-out definitions; MRR@10 and hit@10 of the headword task for FP32, INT8, and FP32
documents searched with INT8 queries (a store built at FP32, queried at INT8).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import qvec
from qvec.bench import embed_cached, machine
from qvec.embedder import SentenceTransformerEmbedder
from qvec.metrics import exact_knn, hit_at_k, mrr_at_k, recall_at_k

HERE = Path(__file__).parent
DATA = HERE / "data" / "gcide"
CACHE = HERE / "data" / "cache"
RESULTS = HERE / "results"
N_SPEED, ROUNDS, N_QUALITY = 2_000, 4, 20_000


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open()]


def ingest_rate(docs: list[dict], precision: str, pipelined: bool) -> float:
    tmp = Path(tempfile.mkdtemp())
    try:
        store = qvec.open(tmp / "s.qvec", quantization="int8", model_precision=precision)
        rows = [(d["id"], d["text"], None) for d in docs]
        t = time.perf_counter()
        if pipelined:
            store.ingest(rows, batch_size=256)
        else:
            for lo in range(0, len(rows), 256):
                part = rows[lo : lo + 256]
                store.add([r[1] for r in part], ids=[r[0] for r in part])
        store.close()
        return len(docs) / (time.perf_counter() - t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def embed_rate(embed, texts: list[str]) -> float:
    t = time.perf_counter()
    embed(texts)
    return len(texts) / (time.perf_counter() - t)


def torch_dynamic_int8(texts: list[str]) -> tuple[float, float]:
    """torch.ao dynamic quantization of the Linear layers (per channel, x86 engine): docs/s
    and mean cosine to FP32, for the record."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    st = SentenceTransformerEmbedder().model
    q = quantize_dynamic(st, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=False)
    rate = embed_rate(lambda t: q.encode(t, batch_size=16), texts)  # the batch size qvec uses
    a = st.encode(texts[:500], normalize_embeddings=True)
    b = q.encode(texts[:500], normalize_embeddings=True)
    return rate, float((a * b).sum(1).mean())


def speed(docs: list[dict]) -> dict:
    fp32, int8 = SentenceTransformerEmbedder(), SentenceTransformerEmbedder(precision="int8")
    texts = [d["text"] for d in docs]
    fp32.embed(texts[:64]), int8.embed(texts[:64])  # load both models (and export INT8) before timing
    runs: dict[str, list[float]] = {}
    for _ in range(ROUNDS):
        for precision, emb in (("fp32", fp32), ("int8", int8)):
            runs.setdefault(f"embed_{precision}", []).append(embed_rate(emb.embed, texts))
            runs.setdefault(f"ingest_{precision}", []).append(ingest_rate(docs, precision, pipelined=True))
            runs.setdefault(f"add_loop_{precision}", []).append(ingest_rate(docs, precision, pipelined=False))
        print({k: [round(x, 1) for x in v] for k, v in runs.items()}, flush=True)
    torch_rate, torch_cos = torch_dynamic_int8(texts)
    med = {k: round(float(np.median(v)), 1) for k, v in runs.items()}  # the machine is shared: medians
    return {
        "docs": len(docs), "rounds": ROUNDS, "runs": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "median_docs_per_s": med,
        "int8_speedup_ingest": round(med["ingest_int8"] / med["ingest_fp32"], 2),
        "int8_speedup_embed": round(med["embed_int8"] / med["embed_fp32"], 2),
        "pipeline_gain_fp32": round(med["ingest_fp32"] / med["add_loop_fp32"], 3),
        "pipeline_gain_int8": round(med["ingest_int8"] / med["add_loop_int8"], 3),
        "torch_dynamic_int8_embed_docs_per_s": round(torch_rate, 1),
        "torch_dynamic_int8_mean_cosine_to_fp32": round(torch_cos, 4),
    }


def quality(docs: list[dict], heads: list[dict], queries: list[dict]) -> dict:
    rng = np.random.default_rng(0)
    row_of = {d["id"]: i for i, d in enumerate(docs)}
    need = sorted({row_of[r] for h in heads for r in h["relevant"]})
    rest = np.setdiff1d(np.arange(len(docs)), need)
    rows = np.concatenate([need, rng.choice(rest, N_QUALITY - len(need), replace=False)])
    pos = {int(r): i for i, r in enumerate(rows)}
    relevant = [{pos[row_of[r]] for r in h["relevant"]} for h in heads]

    fp32, int8 = SentenceTransformerEmbedder(), SentenceTransformerEmbedder(precision="int8")
    xb32 = np.load(DATA / "xb.npy")[rows]
    sub_texts = [docs[i]["text"] for i in rows]
    t = time.perf_counter()
    xb8 = embed_cached(sub_texts, int8, CACHE, show_progress=True)
    int8_s = time.perf_counter() - t
    unit32 = xb32 / np.linalg.norm(xb32, axis=1, keepdims=True)
    cos = float((unit32 * xb8 / np.linalg.norm(xb8, axis=1, keepdims=True)).sum(1).mean())
    out = {"subset_docs": len(rows), "int8_embed_s": round(int8_s, 1), "mean_cosine_int8_vs_fp32_docs": round(cos, 4)}
    for name, qs in (("headwords", heads), ("definitions", queries)):
        qt = [q["text"] for q in qs]
        xq32 = embed_cached(qt, fp32, CACHE)
        xq8 = embed_cached(qt, int8, CACHE)
        s32, gt = exact_knn(xb32, xq32, 110)
        _, I8 = exact_knn(xb8, xq8, 10)
        _, Imix = exact_knn(xb32, xq8, 10)
        rec = {"recall_at_10_int8": round(recall_at_k(I8, gt, 10, s32), 4),
               "recall_at_10_fp32_docs_int8_queries": round(recall_at_k(Imix, gt, 10, s32), 4)}
        if name == "headwords":
            for label, I in (("fp32", gt), ("int8", I8), ("fp32_docs_int8_queries", Imix)):
                rec[f"mrr_at_10_{label}"] = round(mrr_at_k(I, relevant, 10), 4)
                rec[f"hit_at_10_{label}"] = round(hit_at_k(I, relevant, 10), 4)
            rec["mrr_ratio_int8_vs_fp32"] = round(rec["mrr_at_10_int8"] / rec["mrr_at_10_fp32"], 4)
        out[name] = rec
    return out


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    docs, heads = jsonl(DATA / "docs.jsonl"), jsonl(DATA / "headwords.jsonl")
    queries = jsonl(DATA / "queries.jsonl")
    parts = sys.argv[1:] or ["speed", "quality"]
    old = RESULTS / "ingest.json"
    out = json.loads(old.read_text()) if old.exists() else {}  # a part run alone keeps the other's results
    out |= {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "corpus": "GCIDE definitions (bench/prepare.py)"}
    if "speed" in parts:
        out["speed"] = speed(docs[:N_SPEED])
        print(json.dumps(out["speed"], indent=1), flush=True)
    if "quality" in parts:
        out["quality"] = quality(docs, heads, queries)
        print(json.dumps(out["quality"], indent=1), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps(out, indent=1) + "\n")
    (RESULTS / "ingest.md").write_text(markdown(out))
    print(markdown(out))


def markdown(out: dict) -> str:
    m, sp, q = out["machine"], out.get("speed"), out.get("quality")
    lines = ["# Ingest: FP32 vs INT8 embedding model (all-MiniLM-L6-v2)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB. Run {out['date']}. "
             "Made by `bench/ingest.py`.", ""]
    if sp:
        b = sp["median_docs_per_s"]
        lines += [
            f"## Speed: {sp['docs']:,} GCIDE definitions, median of {sp['rounds']} alternating rounds", "",
            "| documents/s | FP32 model | INT8 model (ONNX Runtime) | INT8 / FP32 |", "|---|---|---|---|",
            f"| `Store.ingest` (= `qvec build`: read, embed, write pipelined) | {b['ingest_fp32']} "
            f"| {b['ingest_int8']} "
            f"| {sp['int8_speedup_ingest']}× |",
            f"| a loop of `add()` calls | {b['add_loop_fp32']} | {b['add_loop_int8']} "
            f"| {b['add_loop_int8'] / b['add_loop_fp32']:.2f}× |",
            f"| embedding only | {b['embed_fp32']} | {b['embed_int8']} | {sp['int8_speedup_embed']}× |", "",
            f"Pipelining gains {sp['pipeline_gain_fp32']}× (FP32) and {sp['pipeline_gain_int8']}× (INT8) over the "
            f"`add()` loop. torch's own dynamic INT8 quantization (x86 engine, per channel) embeds "
            f"{sp['torch_dynamic_int8_embed_docs_per_s']} docs/s with a mean cosine of "
            f"{sp['torch_dynamic_int8_mean_cosine_to_fp32']} to the FP32 embeddings. All runs: `{sp['runs']}`.", "",
        ]
    if q:
        h, d = q["headwords"], q["definitions"]
        lines += [
            f"## Quality: {q['subset_docs']:,} documents, 1,000 headword and 1,000 definition queries", "",
            f"Mean cosine between a document's INT8 and FP32 embeddings: {q['mean_cosine_int8_vs_fp32_docs']}.", "",
            "| | FP32 model | INT8 model | FP32 documents, INT8 queries |", "|---|---|---|---|",
            f"| recall@10 vs FP32 exact neighbours, headword queries | 1.0 | {h['recall_at_10_int8']} "
            f"| {h['recall_at_10_fp32_docs_int8_queries']} |",
            f"| recall@10 vs FP32 exact neighbours, definition queries | 1.0 | {d['recall_at_10_int8']} "
            f"| {d['recall_at_10_fp32_docs_int8_queries']} |",
            f"| MRR@10, headword → its senses | {h['mrr_at_10_fp32']} | {h['mrr_at_10_int8']} "
            f"| {h['mrr_at_10_fp32_docs_int8_queries']} |",
            f"| hit@10, headword → its senses | {h['hit_at_10_fp32']} | {h['hit_at_10_int8']} "
            f"| {h['hit_at_10_fp32_docs_int8_queries']} |", "",
            f"INT8 MRR@10 / FP32 MRR@10 = {h['mrr_ratio_int8_vs_fp32']}.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
