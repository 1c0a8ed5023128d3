"""A qvec store as a LlamaIndex vector store (``pip install "qvec[llamaindex]"``).

    from llama_index.core import StorageContext, VectorStoreIndex
    from qvec.integrations.llama_index import QvecVectorStore
    store = QvecVectorStore(path="docs.qvec", quantization="int8")
    index = VectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=store))

Nodes keep their text and their LlamaIndex fields (ref_doc_id, relationships) in qvec's
metadata, so a node comes back whole; ``delete(ref_doc_id)`` removes every node of a
document. ``MetadataFilters`` become a qvec ``where`` (==, !=, >, >=, <, <=, in, nin; and/or,
nested). Query modes: default (vectors), ``text_search`` (BM25 over the texts) and
``hybrid`` (both fused by reciprocal rank), all through ``Store.search``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInput, MissingExtra

try:
    from llama_index.core.bridge.pydantic import PrivateAttr
    from llama_index.core.schema import BaseNode, MetadataMode
    from llama_index.core.vector_stores.types import (
        BasePydanticVectorStore,
        FilterCondition,
        FilterOperator,
        MetadataFilters,
        VectorStoreQuery,
        VectorStoreQueryMode,
        VectorStoreQueryResult,
    )
    from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
except ImportError:  # pragma: no cover - only without the extra
    raise MissingExtra('LlamaIndex is not installed: pip install "qvec[llamaindex]"') from None

__all__ = ["QvecVectorStore", "to_where"]

_OPS = {FilterOperator.EQ: "$eq", FilterOperator.NE: "$ne", FilterOperator.GT: "$gt", FilterOperator.GTE: "$gte",
        FilterOperator.LT: "$lt", FilterOperator.LTE: "$lte", FilterOperator.IN: "$in", FilterOperator.NIN: "$nin"}
_MODES = {VectorStoreQueryMode.DEFAULT: "vector", VectorStoreQueryMode.TEXT_SEARCH: "keyword",
          VectorStoreQueryMode.SPARSE: "keyword", VectorStoreQueryMode.HYBRID: "hybrid"}


def to_where(filters: MetadataFilters | None) -> dict | None:
    """LlamaIndex MetadataFilters as a qvec where= filter."""
    if filters is None or not filters.filters:
        return None
    parts = []
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            parts.append(to_where(f))
            continue
        op = _OPS.get(f.operator)
        if op is None:
            raise InvalidInput(f"filter operator {f.operator.value!r} is not supported by qvec: use one of "
                               f"{', '.join(o.value for o in _OPS)}")
        parts.append({f.key: {op: f.value}})
    cond = filters.condition or FilterCondition.AND
    if cond == FilterCondition.NOT:
        raise InvalidInput("filter condition 'not' is not supported by qvec: use != or nin")
    parts = [p for p in parts if p]
    return parts[0] if len(parts) == 1 else {"$and" if cond == FilterCondition.AND else "$or": parts}


class QvecVectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store over the qvec store at ``path`` (created if absent);
    ``open_kwargs`` go to ``qvec.open``."""

    stores_text: bool = True
    flat_metadata: bool = False
    path: str
    _store: Any = PrivateAttr()

    def __init__(self, path, **open_kwargs: Any):
        from ..store import open as open_store

        super().__init__(path=str(path))
        self._store = open_store(path, **open_kwargs)

    @property
    def client(self) -> Any:
        """The qvec Store."""
        return self._store

    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        if not nodes:
            return []
        missing = [n.node_id for n in nodes if n.embedding is None]  # get_embedding() raises a ValueError
        if missing:
            raise InvalidInput(f"{len(missing)} node(s) have no embedding ({missing[0]!r}...): embed them first "
                               "(VectorStoreIndex does)")
        texts = [n.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]
        # node_id beside LlamaIndex's own fields: queries restricted to some nodes filter on it
        metas = [{**node_to_metadata_dict(n, remove_text=True, flat_metadata=False), "node_id": n.node_id}
                 for n in nodes]
        x = np.asarray([n.get_embedding() for n in nodes], dtype=np.float32)
        return self._store.upsert(texts, vectors=x, ids=[n.node_id for n in nodes], metadata=metas)

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        ids = self._store.ids(where={"ref_doc_id": ref_doc_id})
        if ids:
            self._store.delete(ids)

    def delete_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None,
                     **delete_kwargs: Any) -> None:
        ids = self._select(node_ids, filters)
        if ids:
            self._store.delete(ids)

    def clear(self) -> None:
        ids = self._store.ids()
        if ids:
            self._store.delete(ids)

    def get_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None) -> list[BaseNode]:
        return [self._node(it.metadata, it.text) for it in self._store.get(self._select(node_ids, filters))]

    def _select(self, node_ids, filters) -> list[str]:
        where = to_where(filters)
        if node_ids is not None:
            ids = {"node_id": {"$in": list(node_ids)}}
            where = {"$and": [where, ids]} if where else ids
        return self._store.ids(where=where)

    @staticmethod
    def _node(metadata: dict, text: str | None) -> BaseNode:
        return metadata_dict_to_node(metadata, text=text)

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        mode = _MODES.get(query.mode)
        if mode is None:
            raise InvalidInput(f"query mode {query.mode.value!r} is not supported by qvec: use default, "
                               "text_search or hybrid")
        where = to_where(query.filters)
        for key, wanted in (("node_id", query.node_ids), ("ref_doc_id", query.doc_ids)):
            if wanted:  # a restriction to some nodes or documents is one more filter, applied inside the search
                where = {"$and": [where, {key: {"$in": list(wanted)}}]} if where else {key: {"$in": list(wanted)}}
        if not len(self._store):
            return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
        k = query.similarity_top_k
        if mode == "keyword":
            hits = self._store.search(query.query_str or "", k, where=where, mode="keyword")
        else:
            if query.query_embedding is None:
                raise InvalidInput("this query has no embedding: give query_embedding (the retriever embeds the "
                                   "query string for you)")
            kw = {"mode": "hybrid", "text": query.query_str or ""} if mode == "hybrid" else {}
            hits = self._store.search(np.asarray(query.query_embedding, dtype=np.float32), k, where=where, **kw)
        return VectorStoreQueryResult(nodes=[self._node(h.metadata, h.text) for h in hits],
                                      similarities=[h.score for h in hits], ids=[h.id for h in hits])

    def close(self) -> None:
        self._store.close()
