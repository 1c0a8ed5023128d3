"""Embed a real corpus once and cache it as .npy, so benchmarks rerun in seconds.

    python bench/prepare.py gcide --n-docs 100000 --n-queries 1000

writes bench/data/gcide/{docs.jsonl, xb.npy, xq.npy, queries.jsonl}: a seeded random split of
the GCIDE definitions into documents (the store) and held-out queries (other definitions),
embedded with all-MiniLM-L6-v2 (normalised, float32). Nothing here is committed: bench/data
is git-ignored and rebuilt by this script.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from qvec import datasets
from qvec.embedder import SentenceTransformerEmbedder

DATA = Path(__file__).parent / "data"
CORPORA = {"gcide": datasets.gcide_definitions, "pydoc": datasets.pydoc_paragraphs, "fortunes": datasets.fortunes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", choices=sorted(CORPORA))
    ap.add_argument("--n-docs", type=int, default=100_000)
    ap.add_argument("--n-queries", type=int, default=1_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()

    texts = CORPORA[args.corpus]()
    texts = list(dict.fromkeys(texts))  # exact duplicates would make ground truth ambiguous
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(texts))
    need = args.n_docs + args.n_queries
    if need > len(texts):
        raise SystemExit(f"{args.corpus} has {len(texts)} unique documents, asked for {need}")
    docs = [texts[i] for i in order[: args.n_docs]]
    queries = [texts[i] for i in order[args.n_docs : need]]

    out = DATA / args.corpus
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("docs.jsonl", docs), ("queries.jsonl", queries)):
        with open(out / name, "w") as f:
            for i, t in enumerate(rows):
                f.write(json.dumps({"id": f"{args.corpus}-{name[0]}{i}", "text": t}) + "\n")

    emb = SentenceTransformerEmbedder()
    for name, rows in (("xq.npy", queries), ("xb.npy", docs)):
        t0 = time.perf_counter()
        x = emb.embed(rows, batch_size=args.batch_size, show_progress=True)
        dt = time.perf_counter() - t0
        np.save(out / name, x.astype(np.float32))
        print(f"{name}: {x.shape} in {dt:.0f}s ({len(rows) / dt:.0f} texts/s)", flush=True)


if __name__ == "__main__":
    main()
