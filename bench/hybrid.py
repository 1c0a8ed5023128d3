"""Vector, keyword and hybrid search compared on labelled queries (#16): MRR@10, hit@10 and
the time per query, through the store.

    python bench/prepare.py gcide && python bench/prepare.py fortunes   # once
    python bench/hybrid.py            # writes bench/results/hybrid.{json,md}

- GCIDE: the 100,000 definitions of bench/data/gcide (each starts with its headword) and
  its 1,000 headword queries ("aspalathus"), relevant = every sense of that headword. The
  look-up a dictionary user makes: the word is in the text, and MiniLM knows rare words badly.
- fortunes: the 13,910 Debian fortunes of bench/data/fortunes; 1,000 known-item queries,
  each the first 8 words of a stored fortune of 16 or more words, relevant = that fortune
  and its exact copies. What someone remembering how a quote starts types.

Stores are int8/flat built from the prepared embeddings (texts with their own vectors:
nothing is embedded but the queries). Hybrid is RRF with k=60 and equal weights.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
from core import RESULTS

import qvec
from qvec.bench import embed_cached, machine
from qvec.embedder import SentenceTransformerEmbedder
from qvec.metrics import hit_at_k, mrr_at_k

HERE = Path(__file__).parent
DATA = HERE / "data"
K = 10
MODES = ("vector", "keyword", "hybrid", "hybrid w=1:2")  # the last weighs the keyword half twice


def jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def gcide():
    docs = jsonl(DATA / "gcide" / "docs.jsonl")
    queries = jsonl(DATA / "gcide" / "headwords.jsonl")
    return docs, np.load(DATA / "gcide" / "xb.npy"), [q["text"] for q in queries], [q["relevant"] for q in queries]


def fortunes():
    docs = jsonl(DATA / "fortunes" / "docs.jsonl")
    by_text: dict[str, list[str]] = {}
    for d in docs:
        by_text.setdefault(d["text"], []).append(d["id"])
    rng = np.random.default_rng(0)
    long = [d for d in docs if len(d["text"].split()) >= 16]
    picked = [long[i] for i in rng.choice(len(long), 1000, replace=False)]
    qs = [" ".join(d["text"].split()[:8]) for d in picked]
    return docs, np.load(DATA / "fortunes" / "xb.npy"), qs, [by_text[d["text"]] for d in picked]


def run(name: str, docs, xb, queries, relevant, model, work: Path) -> list[dict]:
    path = work / name
    shutil.rmtree(path, ignore_errors=True)
    t = time.perf_counter()
    with qvec.open(path, quantization="int8") as s:
        for i in range(0, len(docs), 10_000):
            part = docs[i:i + 10_000]
            s.add([d["text"] for d in part], vectors=xb[i:i + len(part)], ids=[d["id"] for d in part])
    build_s = time.perf_counter() - t
    xq = embed_cached(queries, model, DATA / "cache")
    rows = []
    with qvec.open(path, read_only=True) as s:
        fts = s.catalog.conn.execute("SELECT sum(pgsize) FROM dbstat WHERE name LIKE 'items_fts%'").fetchone()[0]
        for mode in MODES:
            ids, times = [], []
            for q, v in zip(queries, xq):
                t = time.perf_counter()
                if mode == "keyword":
                    hits = s.search(q, K, mode=mode, include=())
                elif mode.startswith("hybrid"):
                    hits = s.search(v, K, mode="hybrid", text=q, include=(), weights=(1, 2 if "w=" in mode else 1))
                else:
                    hits = s.search(v, K, include=())
                times.append(time.perf_counter() - t)
                ids.append([h.id for h in hits] + [""] * (K - len(hits)))
            rows.append({"corpus": name, "mode": mode, "docs": len(docs), "queries": len(queries),
                         "mrr@10": round(mrr_at_k(np.array(ids), relevant, K), 4),
                         "hit@10": round(hit_at_k(np.array(ids), relevant, K), 4),
                         "ms_per_query": round(1e3 * statistics.median(times), 2)})
            print(rows[-1], flush=True)
    rows[0].update({"build_s": round(build_s, 1), "fts_bytes": fts})
    return rows


def main() -> None:
    model = SentenceTransformerEmbedder()
    work = DATA / "work"
    work.mkdir(parents=True, exist_ok=True)
    rows = run("gcide", *gcide(), model, work) + run("fortunes", *fortunes(), model, work)
    result = {"machine": machine(), "k": K, "rrf_k": 60, "rows": rows}
    (RESULTS / "hybrid.json").write_text(json.dumps(result, indent=1) + "\n")
    m = result["machine"]
    lines = [f"# Vector, keyword and hybrid search ({m['cpu']}, {m['cores']} cores)", "",
             "Made by `python bench/hybrid.py`: int8/flat stores, k=10, hybrid = RRF (k=60, equal weights); "
             "query embedding time excluded (vectors given, with `text=` for the keyword half).", "",
             "| corpus | queries | mode | MRR@10 | hit@10 | ms/query |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['corpus']} ({r['docs']:,} docs) | {r['queries']} | {r['mode']} | {r['mrr@10']} | {r['hit@10']} | "
              f"{r['ms_per_query']} |" for r in rows]
    for r in rows:
        if "fts_bytes" in r:
            lines.append(f"\n{r['corpus']}: built (texts with their own vectors, FTS5 kept by triggers) in "
                         f"{r['build_s']} s; the full-text index takes {r['fts_bytes'] / 2**20:.1f} MiB.")
    (RESULTS / "hybrid.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
