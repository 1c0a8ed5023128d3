"""A qvec store as a LangChain ``VectorStore`` (``pip install "qvec[langchain]"``).

    from qvec.integrations.langchain import QvecVectorStore
    vs = QvecVectorStore(path="docs.qvec", embedding=my_embeddings, quantization="int8")
    vs.add_texts(["..."], metadatas=[{"lang": "en"}])
    vs.similarity_search("...", k=4, filter={"lang": "en"})

LangChain's ``Embeddings`` embed the texts; qvec stores each text with its vector (nothing
is embedded twice) and compresses the vectors as ``quantization`` says. LangChain's habits
hold: adding an id that exists replaces it, deleting an id that does not exist is no
error, and ``filter`` is a qvec ``where`` (``{"lang": "en", "year": {"$gte": 2000}}``).
Scores are qvec's (cosine similarity by default); ``similarity_search_with_relevance_scores``
maps them to [0, 1].
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from .. import inputs
from ..errors import InvalidInput, MissingExtra

try:
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import VectorStore
    from langchain_core.vectorstores.utils import maximal_marginal_relevance
except ImportError:  # pragma: no cover - only without the extra
    raise MissingExtra('LangChain is not installed: pip install "qvec[langchain]"') from None

__all__ = ["QvecVectorStore"]


class QvecVectorStore(VectorStore):
    """A LangChain vector store over the qvec store at ``path`` (created if absent).
    ``open_kwargs`` go to ``qvec.open`` (``quantization``, ``index``, ``metric``, ``rescore``...)."""

    def __init__(self, path, embedding: Embeddings, **open_kwargs: Any):
        from ..store import open as open_store

        self.path, self._embedding = path, embedding
        self.store = open_store(path, **open_kwargs)

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    # -- writes ---------------------------------------------------------------------------
    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *, ids: list[str] | None = None,
                  **kwargs: Any) -> list[str]:
        texts = inputs.check_texts(texts)  # before the embeddings see them: theirs are bare errors
        if not texts:
            return []
        ids = [i if i is not None else uuid.uuid4().hex for i in (ids or [None] * len(texts))]
        if metadatas is not None and len(metadatas) != len(texts):
            raise InvalidInput(f"got {len(texts)} texts and {len(metadatas)} metadatas: give one per text")
        vectors = np.asarray(self._embedding.embed_documents(texts), dtype=np.float32)
        return self.store.upsert(texts, vectors=vectors, ids=ids, metadata=metadatas)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        if ids is None:
            raise InvalidInput("delete() needs the ids to delete")
        found = self.store.existing(ids)
        if found:
            self.store.delete([i for i in dict.fromkeys(ids) if i in found])
        return True

    # -- reads ----------------------------------------------------------------------------
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        found = self.store.existing(ids)
        keep = [i for i in dict.fromkeys(ids) if i in found]
        return [Document(id=it.id, page_content=it.text or "", metadata=it.metadata) for it in self.store.get(keep)]

    def similarity_search(self, query: str, k: int = 4, filter: dict | None = None, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, filter=filter, **kwargs)]

    def similarity_search_with_score(self, query: str, k: int = 4, filter: dict | None = None,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        return self._search(self._embed_query(query), k, filter, kwargs)

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, filter: dict | None = None,
                                    **kwargs: Any) -> list[Document]:
        return [d for d, _ in self._search(embedding, k, filter, kwargs)]

    def _embed_query(self, query: str):
        """The query's embedding, the text checked first as the store checks its own queries."""
        if not isinstance(query, str):
            raise InvalidInput(f"the query must be a string, got {type(query).__name__}")
        return self._embedding.embed_query(inputs.query_texts([inputs.check_string(query, "the query")])[0])

    def _search(self, vector, k: int, filter: dict | None, params: dict) -> list[tuple[Document, float]]:
        vector = inputs.as_matrix([vector] if not isinstance(vector, np.ndarray) else vector[None, :], None,
                                  "embedding")[0]
        if not len(self.store):
            return []
        hits = self.store.search(vector, k, where=filter, **params)
        return [(Document(id=h.id, page_content=h.text or "", metadata=h.metadata), h.score) for h in hits]

    def max_marginal_relevance_search(self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
                                      filter: dict | None = None, **kwargs: Any) -> list[Document]:
        return self.max_marginal_relevance_search_by_vector(self._embed_query(query), k, fetch_k,
                                                            lambda_mult, filter=filter, **kwargs)

    def max_marginal_relevance_search_by_vector(self, embedding: list[float], k: int = 4, fetch_k: int = 20,
                                                lambda_mult: float = 0.5, filter: dict | None = None,
                                                **kwargs: Any) -> list[Document]:
        found = self._search(embedding, max(k, fetch_k), filter, kwargs)
        if not found:
            return []
        # the candidates' vectors as the store keeps them (originals when rescoring, else decoded codes)
        vectors = self.store.vectors([d.id for d, _ in found])
        picked = maximal_marginal_relevance(np.asarray(embedding, dtype=np.float32), vectors, lambda_mult, k)
        return [found[i][0] for i in picked]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        metric = self.store.settings.metric if self.store.settings else "cosine"
        if metric == "l2":  # qvec scores squared L2 distances
            return lambda d: 1.0 - float(np.sqrt(max(d, 0.0))) / np.sqrt(2.0)
        return lambda s: (1.0 + s) / 2.0  # cosine and inner product of unit vectors: [-1, 1] → [0, 1]

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None, *,
                   ids: list[str] | None = None, path=None, **kwargs: Any) -> QvecVectorStore:
        if path is None:
            raise InvalidInput("QvecVectorStore.from_texts needs path=: the directory of the store to create")
        vs = cls(path, embedding, **kwargs)
        vs.add_texts(texts, metadatas, ids=ids)
        return vs

    def close(self) -> None:
        self.store.close()
