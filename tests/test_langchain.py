"""qvec as a LangChain VectorStore: langchain-tests' standard VectorStoreIntegrationTests
suite, and the parts that suite leaves out (filters, MMR, relevance scores, reopening)."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_core")
vectorstores = pytest.importorskip("langchain_tests.integration_tests")
from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding  # noqa: E402

import qvec  # noqa: E402
from qvec.integrations.langchain import QvecVectorStore  # noqa: E402


class TestQvecVectorStoreStandard(vectorstores.VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, tmp_path):
        vs = QvecVectorStore(tmp_path / "lc", self.get_embeddings(), quantization="int8")
        yield vs
        vs.close()


@pytest.fixture
def vs(tmp_path):
    v = QvecVectorStore(tmp_path / "lc", DeterministicFakeEmbedding(size=16), quantization="fp16")
    yield v
    v.close()


def test_filters_mmr_and_relevance(vs):
    texts = ["cat", "cats", "dog", "bird", "fish"]
    ids = vs.add_texts(texts, metadatas=[{"n": i, "pet": i < 3} for i in range(5)])
    assert len(ids) == 5 and len(set(ids)) == 5
    docs = vs.similarity_search("dog", k=5, filter={"pet": True})
    assert docs[0].page_content == "dog" and {d.page_content for d in docs} == {"cat", "cats", "dog"}
    assert [d.page_content for d in vs.similarity_search("fish", k=2, filter={"n": {"$gte": 3}})][0] == "fish"
    mmr = vs.max_marginal_relevance_search("cat", k=3, fetch_k=5)
    assert mmr[0].page_content == "cat" and len({d.id for d in mmr}) == 3
    rel = vs.similarity_search_with_relevance_scores("bird", k=5)
    assert rel[0][0].page_content == "bird" and abs(rel[0][1] - 1.0) < 1e-3 and all(0 <= s <= 1 for _, s in rel)
    with pytest.raises(qvec.InvalidInput, match="needs the ids"):
        vs.delete()


def test_from_texts_persists_and_reopens(tmp_path):
    emb = DeterministicFakeEmbedding(size=8)
    vs = QvecVectorStore.from_texts(["a b", "c d"], emb, metadatas=[{"k": 1}, {"k": 2}], ids=["x", "y"],
                                    path=tmp_path / "s", quantization="fp16")
    vs.close()
    again = QvecVectorStore(tmp_path / "s", emb)
    assert again.get_by_ids(["y", "nope", "x"]) == [Document(id="y", page_content="c d", metadata={"k": 2}),
                                                    Document(id="x", page_content="a b", metadata={"k": 1})]
    again.close()
    with pytest.raises(qvec.InvalidInput, match="needs path="):
        QvecVectorStore.from_texts(["a"], emb)


@pytest.mark.parametrize("call, message", [
    (lambda v: v.add_texts(["fine", None]), "text 1 is NoneType: pass non-empty strings"),
    (lambda v: v.add_texts([5]), "text 0 is int"),
    (lambda v: v.add_texts(["bad \ud800"]), "text 0 holds a lone surrogate"),
    (lambda v: v.similarity_search_by_vector("abc"), "embedding must be numbers"),
    (lambda v: v.similarity_search_by_vector([float("nan")] * 16), "contains NaN or inf"),
    (lambda v: v.similarity_search(""), "the query is empty"),
    (lambda v: v.max_marginal_relevance_search("x \udfff"), "the query holds a lone surrogate"),
    (lambda v: v.similarity_search(None), "the query must be a string, got NoneType"),
])
def test_bad_input_is_one_qvec_error_before_the_embeddings_see_it(vs, call, message):
    """LangChain's embeddings answer a None or a lone surrogate with AttributeError or
    UnicodeEncodeError: the texts are checked before they are embedded."""
    vs.add_texts(["kept"], ids=["k"])
    with pytest.raises(qvec.InvalidInput) as e:
        call(vs)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert [d.id for d in vs.get_by_ids(["k"])] == ["k"] and len(vs.store) == 1
