"""Shared fixtures: real embeddings of real text, computed once and cached.

The corpus is paragraphs of Python's own help topics (``pydoc_data``, ships with
CPython); the model is the default all-MiniLM-L6-v2. Embedding ~700 paragraphs takes a
few seconds on 2 cores; the result is cached under pytest's cache directory.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

N_DOCS = 640
N_QUERIES = 60


@pytest.fixture(scope="session")
def corpus(request):
    """(texts, xb, query_texts, xq): real paragraphs and their MiniLM embeddings."""
    from qvec.datasets import pydoc_paragraphs

    texts = pydoc_paragraphs()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(texts))[: N_DOCS + N_QUERIES]
    docs = [texts[i] for i in order[:N_DOCS]]
    queries = [texts[i] for i in order[N_DOCS:]]
    cache = request.config.cache.mkdir("qvec-embeddings")
    path = cache / f"pydoc-{N_DOCS}-{N_QUERIES}.npz"
    if path.exists():
        z = np.load(path)
        xb, xq = z["xb"], z["xq"]
    else:
        from qvec.embedder import SentenceTransformerEmbedder

        emb = SentenceTransformerEmbedder()
        xb, xq = emb.embed(docs), emb.embed(queries)
        np.savez(path, xb=xb, xq=xq)
    return docs, xb, queries, xq


@pytest.fixture(scope="session")
def model():
    from qvec.embedder import SentenceTransformerEmbedder

    emb = SentenceTransformerEmbedder()
    assert emb.dim == 384  # loads the model once for the session
    return emb
