"""Bring-your-own vectors: a store of model ``external:NAME:DIM`` takes each document's
vector from the caller, stores it before the documents' commit, never embeds, and
refuses what it cannot hold with one line per document."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from retrieval.embed.external import ExternalEncoder, external_model, parse_external
from retrieval.errors import InvalidInputError, ModelMismatchError, RetrievalError

pytestmark = pytest.mark.both_databases

MODEL = "external:my-embeddings:4"


def doc(i: str, text: str, vector: Any = None, **metadata: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": i, "text": text, "metadata": metadata}
    if vector is not None:
        out["vector"] = vector
    return out


def test_the_callers_vectors_are_stored_normalised_and_searched(make_retriever: Callable[..., Any]) -> None:
    r = make_retriever(model=MODEL)
    report = r.ingest([doc("a", "alpha", [3, 0, 0, 0], color="red"), doc("b", "beta", np.array([1.0, 1.0, 0, 0])),
                       doc("c", "gamma", (0, 0, 0, 2.5), color="red")])
    assert (report.added, report.as_dict()["embedded"]) == (3, 0)
    vectors = r.document_vectors(["a", "b", "missing"])
    assert set(vectors) == {"a", "b"}
    np.testing.assert_allclose(vectors["a"], [1, 0, 0, 0])
    np.testing.assert_allclose(vectors["b"], [2 ** -0.5, 2 ** -0.5, 0, 0], rtol=1e-6)
    (hits,) = r.search_vectors(np.array([[1, 0.2, 0, 0]], np.float32), k=3)
    assert [h.id for h in hits] == ["a", "b", "c"]
    (red,) = r.search_vectors(np.array([[0, 1, 0, 0]], np.float32), k=3, where={"color": "red"})
    assert {h.id for h in red} == {"a", "c"}
    assert [h.id for h in r.similar("a", k=1)] == ["b"]
    assert r.verify().ok


def test_text_searches_and_files_say_vectors_come_from_the_caller(make_retriever: Callable[..., Any],
                                                                  tmp_path: Any) -> None:
    r = make_retriever(model=MODEL)
    r.ingest([doc("a", "alpha", [1, 0, 0, 0])])
    with pytest.raises(RetrievalError, match=r"vectors come from the caller \(model my-embeddings, 4 dimensions\)"):
        r.search("alpha")
    source = tmp_path / "docs.jsonl"
    source.write_text('{"id": "b", "text": "beta"}\n')
    with pytest.raises(RetrievalError, match="files carry none"):
        r.ingest_files([str(source)])
    assert r.store.count_documents() == 1


def test_every_bad_vector_is_named_and_nothing_is_written(make_retriever: Callable[..., Any]) -> None:
    r = make_retriever(model=MODEL)
    with pytest.raises(InvalidInputError) as caught:
        r.ingest([doc("ok", "fine", [1, 0, 0, 0]), doc("nan", "n", [float("nan"), 0, 0, 0]),
                  doc("inf", "i", [0, float("inf"), 0, 0]), doc("short", "s", [1, 2]), doc("bare", "no vector"),
                  doc("zero", "z", [0, 0, 0, 0]), doc("word", "w", "1234"), doc("huge", "h", [1e300, 0, 0, 0])])
    problems = caught.value.problems
    assert len(problems) == 7
    text = "\n".join(problems)
    assert "documents[1] (id 'nan'): vector[0] is nan" in text
    assert "documents[2] (id 'inf'): vector[1] is inf" in text
    assert "documents[3] (id 'short'): the vector has 2 dimensions; this store's (external:my-embeddings|4|caller) have 4" in text
    assert "documents[4] (id 'bare'): no vector; this store's vectors come from the caller" in text
    assert "documents[5] (id 'zero'): vector is all zeros" in text
    assert "documents[6] (id 'word'): vector must be an array of numbers, got string" in text
    assert "documents[7] (id 'huge'): the vector does not fit float32" in text
    assert r.store.count_documents() == 0
    report = r.ingest([doc("ok", "fine", [1, 0, 0, 0]), doc("bare", "no vector")], skip_invalid=True)
    assert (report.added, report.invalid) == (1, 1)


def test_a_metadata_update_needs_no_vector_and_a_stored_text_keeps_its_vector(make_retriever: Callable[..., Any]) -> None:
    r = make_retriever(model=MODEL)
    r.ingest([doc("a", "alpha", [1, 0, 0, 0])])
    r.ingest([doc("a", "alpha", tag="new")])  # the text has a stored vector
    r.ingest([doc("a2", "alpha", [0, 1, 0, 0])])  # one text, one vector per model: the first stays
    assert r.get("a").metadata == {"tag": "new"}
    np.testing.assert_allclose(r.document_vectors(["a2"])["a2"], [1, 0, 0, 0])


def test_a_store_that_embeds_refuses_vectors(make_retriever: Callable[..., Any]) -> None:
    r = make_retriever()  # hash-384
    with pytest.raises(InvalidInputError, match=r"documents\[0\] \(id 'a'\): a vector was given, but this store "
                                                r"embeds texts with its own model \(hash-384\)"):
        r.ingest([doc("a", "alpha", [1.0] * 384)])
    assert r.store.count_documents() == 0


def test_another_model_of_the_callers_is_refused(make_retriever: Callable[..., Any]) -> None:
    r = make_retriever(model=MODEL)
    r.ingest([doc("a", "alpha", [1, 0, 0, 0])])
    for other in ("external:my-embeddings:8", "external:other-embeddings:4"):
        again = make_retriever(model=other)
        dim = parse_external(other)[1]
        with pytest.raises(ModelMismatchError, match="a store keeps one model's vectors"):
            again.ingest([doc("b", "beta", [1.0] * dim)])
    assert r.store.count_documents() == 1


def test_long_documents_are_one_vector_each(make_retriever: Callable[..., Any]) -> None:
    r = make_retriever(model=MODEL, chunk_tokens=8)
    long_text = " ".join(f"word{i}" for i in range(2000))
    r.ingest([doc("long", long_text, [0, 0, 1, 0])])
    (hits,) = r.search_vectors(np.array([[0, 0, 1, 0]], np.float32), k=1)
    assert hits[0].id == "long" and hits[0].passage is None and hits[0].score == pytest.approx(1.0)


def test_model_names() -> None:
    assert external_model("OpenAI Embeddings|v3", 1536) == "external:OpenAI-Embeddings-v3:1536"
    assert ExternalEncoder.of("external:x:3").model_key == "external:x|3|caller"
    for bad in ("external:x", "external::3", "external:x:0", "external:a|b:3"):
        with pytest.raises(RetrievalError, match="external:NAME:DIM|DIM must be"):
            parse_external(bad)
