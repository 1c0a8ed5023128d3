"""qvec as a LlamaIndex vector store, driven by llama-index-core's own types: TextNodes with
real MiniLM embeddings, VectorStoreQuery in each mode, MetadataFilters, deletion by
ref_doc_id, and a VectorStoreIndex inserting and deleting documents through it."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_index.core")
from llama_index.core import Document, StorageContext, VectorStoreIndex  # noqa: E402
from llama_index.core.embeddings import MockEmbedding  # noqa: E402
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode  # noqa: E402
from llama_index.core.vector_stores.types import (  # noqa: E402
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

import qvec  # noqa: E402
from qvec.integrations.llama_index import QvecVectorStore, to_where  # noqa: E402


@pytest.fixture
def store(tmp_path, corpus):
    texts, xb, _, _ = corpus
    s = QvecVectorStore(tmp_path / "li", quantization="int8")
    nodes = [TextNode(id_=f"n{i}", text=texts[i], embedding=xb[i].tolist(), metadata={"n": i, "part": i % 4},
                      relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=f"doc{i // 10}")})
             for i in range(200)]
    assert s.add(nodes) == [f"n{i}" for i in range(200)]
    yield s
    s.close()


def test_queries_in_each_mode_with_filters(store, corpus):
    texts, xb, _, _ = corpus
    r = store.query(VectorStoreQuery(query_embedding=xb[7].tolist(), similarity_top_k=3))
    assert r.ids[0] == "n7" and r.nodes[0].get_content() == texts[7] and r.nodes[0].metadata["n"] == 7
    assert r.nodes[0].ref_doc_id == "doc0" and r.similarities[0] > 0.99
    f = MetadataFilters(filters=[MetadataFilter(key="part", value=1),
                                 MetadataFilter(key="n", value=100, operator=FilterOperator.GTE)])
    r = store.query(VectorStoreQuery(query_embedding=xb[7].tolist(), similarity_top_k=10, filters=f))
    assert len(r.ids) == 10 and all(n.metadata["part"] == 1 and n.metadata["n"] >= 100 for n in r.nodes)
    either = MetadataFilters(filters=[MetadataFilter(key="n", value=3), MetadataFilter(key="n", value=150)],
                             condition=FilterCondition.OR)
    assert sorted(store.query(VectorStoreQuery(query_embedding=xb[0].tolist(), similarity_top_k=5,
                                               filters=either)).ids) == ["n150", "n3"]
    r = store.query(VectorStoreQuery(query_embedding=xb[7].tolist(), similarity_top_k=5, node_ids=["n1", "n2"]))
    assert sorted(r.ids) == ["n1", "n2"]
    r = store.query(VectorStoreQuery(query_embedding=xb[7].tolist(), similarity_top_k=50, doc_ids=["doc3"]))
    assert sorted(r.ids) == sorted(f"n{i}" for i in range(30, 40))
    r = store.query(VectorStoreQuery(query_str=texts[42], similarity_top_k=1, mode=VectorStoreQueryMode.TEXT_SEARCH))
    assert r.nodes[0].get_content() == texts[42]
    r = store.query(VectorStoreQuery(query_embedding=xb[42].tolist(), query_str=texts[42], similarity_top_k=3,
                                     mode=VectorStoreQueryMode.HYBRID))
    assert r.nodes[0].get_content() == texts[42]
    with pytest.raises(qvec.InvalidInput, match="query mode 'svm'"):
        store.query(VectorStoreQuery(query_embedding=xb[0].tolist(), mode=VectorStoreQueryMode.SVM))
    with pytest.raises(qvec.InvalidInput, match="'text_match' is not supported"):
        to_where(MetadataFilters(filters=[MetadataFilter(key="a", value="b", operator=FilterOperator.TEXT_MATCH)]))


def test_delete_by_ref_doc_id_nodes_and_clear(store):
    store.delete("doc2")
    assert len(store.client) == 190 and not store.get_nodes(node_ids=["n20", "n25"])
    store.delete("no-such-doc")
    store.delete_nodes(filters=MetadataFilters(filters=[MetadataFilter(key="part", value=0)]))
    assert len(store.client) == 190 - 47 and all(n.metadata["part"] != 0 for n in store.get_nodes())
    got = store.get_nodes(node_ids=["n1", "n3"])
    assert sorted(n.node_id for n in got) == ["n1", "n3"]
    store.clear()
    assert len(store.client) == 0


def test_a_vector_store_index_inserts_and_deletes_documents_through_it(tmp_path):
    vs = QvecVectorStore(tmp_path / "idx", quantization="fp16")
    index = VectorStoreIndex.from_documents(
        [Document(text="qvec stores vectors", doc_id="a"), Document(text="and their texts", doc_id="b")],
        storage_context=StorageContext.from_defaults(vector_store=vs), embed_model=MockEmbedding(embed_dim=8))
    assert len(vs.client) == 2
    index.insert(Document(text="a third", doc_id="c"))
    assert len(vs.client) == 3
    index.delete_ref_doc("a")
    assert len(vs.client) == 2 and {n.ref_doc_id for n in vs.get_nodes()} == {"b", "c"}
    hits = index.as_retriever(similarity_top_k=2).retrieve("texts")
    assert len(hits) == 2 and {h.node.ref_doc_id for h in hits} == {"b", "c"}
    vs.close()


def test_a_node_without_an_embedding_is_named(store):
    """TextNode.get_embedding() raises a bare ValueError for a node with none: the store names it first."""
    with pytest.raises(qvec.InvalidInput, match="1 node\\(s\\) have no embedding \\('bare'...\\): embed them first"):
        store.add([TextNode(id_="bare", text="no vector")])
    assert len(store.get_nodes(["n1"])) == 1
