"""Build the real benchmark corpora from offline sources, and embed them once.

    python bench/prepare.py gcide       # ~26 min on 2 cores: 101K GCIDE definitions + 1,000 headwords
    python bench/prepare.py fortunes    # ~3 min: Debian's fortunes

writes bench/data/CORPUS/:
- docs.jsonl, queries.jsonl: a seeded random split of the unique documents into the store
  and held-out queries (other documents of the same kind);
- headwords.jsonl (gcide only): labelled queries for task quality. Each is a headword of the
  dictionary ("Pudgy") with, as ``relevant``, the ids of every sense of that headword in
  docs.jsonl: the look-up a dictionary user makes;
- xb.npy, xq.npy: the embeddings of docs and queries (bench/core.py and range_stats.py).

Embeddings go through the cache `qvec bench --cache-dir bench/data/cache` reads, so
``qvec bench --corpus bench/data/gcide/docs.jsonl ...`` finds them instead of re-embedding.
Nothing here is committed: bench/data is git-ignored and rebuilt by this script.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from qvec import datasets
from qvec.bench import embed_cached
from qvec.embedder import SentenceTransformerEmbedder

DATA = Path(__file__).parent / "data"
CACHE = DATA / "cache"
CORPORA = {"gcide": datasets.gcide_definitions, "pydoc": datasets.pydoc_paragraphs, "fortunes": datasets.fortunes}
SPLITS = {"gcide": (100_000, 1_000), "fortunes": (13_910, 1_000), "pydoc": (1_500, 300)}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def headword_queries(docs: list[dict], n: int, rng: np.random.Generator) -> list[dict]:
    """n headwords drawn from the documents, each labelled with all of its senses."""
    senses = defaultdict(list)
    for d in docs:
        senses[d["text"].split(":", 1)[0].strip().lower()].append(d["id"])
    words = sorted(w for w in senses if len(w) > 2)
    pick = rng.choice(len(words), size=min(n, len(words)), replace=False)
    return [{"id": f"head-{i}", "text": words[j], "relevant": senses[words[j]]} for i, j in enumerate(pick)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", choices=sorted(CORPORA))
    ap.add_argument("--n-docs", type=int, default=None)
    ap.add_argument("--n-queries", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n_docs, n_queries = args.n_docs or SPLITS[args.corpus][0], args.n_queries or SPLITS[args.corpus][1]

    texts = list(dict.fromkeys(CORPORA[args.corpus]()))  # exact duplicates make ground truth ambiguous
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(texts))
    if n_docs + n_queries > len(texts):
        raise SystemExit(f"{args.corpus} has {len(texts)} unique documents, asked for {n_docs + n_queries}")
    out = DATA / args.corpus
    out.mkdir(parents=True, exist_ok=True)
    docs = [{"id": f"{args.corpus}-d{i}", "text": texts[j]} for i, j in enumerate(order[:n_docs])]
    held_out = order[n_docs : n_docs + n_queries]
    queries = [{"id": f"{args.corpus}-q{i}", "text": texts[j]} for i, j in enumerate(held_out)]
    write_jsonl(out / "docs.jsonl", docs)
    write_jsonl(out / "queries.jsonl", queries)
    sets = [("xq.npy", queries), ("xb.npy", docs)]
    if args.corpus == "gcide":
        heads = headword_queries(docs, n_queries, np.random.default_rng(args.seed + 1))
        write_jsonl(out / "headwords.jsonl", heads)
        sets.insert(0, (None, heads))

    emb = SentenceTransformerEmbedder()
    for name, rows in sets:
        t0 = time.perf_counter()
        x = embed_cached([r["text"] for r in rows], emb, CACHE, show_progress=True)
        if name:
            np.save(out / name, x)
        dt = time.perf_counter() - t0
        print(f"{name or 'headwords'}: {x.shape} in {dt:.0f}s", flush=True)


if __name__ == "__main__":
    main()
