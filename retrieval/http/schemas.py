"""Request and response bodies. Their limits come from the settings, so the models are
made per application by :func:`make_schemas`, and the OpenAPI schema states every limit."""

# No `from __future__ import annotations`: pydantic and FastAPI read these annotations at
# run time, and the limits are values of the enclosing function.

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, create_model, field_validator

from retrieval.config import Settings
from retrieval.documents import MAX_ID_CHARS

MAX_VECTOR_ITEMS = 65_536  # numbers in a document's or a query's vector (external:NAME:DIM allows fewer)


class PassageOut(BaseModel):
    ordinal: int = Field(description="The passage's position among its document's passages, from 0.")
    start: int = Field(description="Character offset in the document's text where the passage starts.")
    end: int = Field(description="Character offset where it ends (exclusive).")
    text: str
    of: int = Field(description="How many passages the document has.")


class SearchHit(BaseModel):
    id: str
    score: float = Field(description=("Cosine similarity (dense), the keyword rank (BM25 on SQLite, ts_rank_cd on "
                                     "PostgreSQL) or the fused score (hybrid)."))
    text: str
    metadata: dict[str, Any]
    mode: Literal["dense", "keyword", "hybrid"] = "dense"
    dense_rank: int | None = Field(None, description="Hybrid: rank in the dense list (null: not in it).")
    keyword_rank: int | None = Field(None, description="Hybrid: rank in the keyword list (null: not in it).")
    snippet: str | None = Field(None, description="Keyword and hybrid: a passage of the text around the matches.")
    highlights: list[tuple[int, int]] | None = Field(
        None, description="Keyword and hybrid: [start, end) character offsets of the matched terms in snippet.")
    passage: PassageOut | None = Field(
        None, description=("Dense and hybrid, for a document longer than the model's window: the passage that "
                           "scored (documents rank by their best passage)."))


class SearchResponse(BaseModel):
    results: list[SearchHit]
    took_ms: float


class UpsertResponse(BaseModel):
    added: int
    updated: int
    unchanged: int
    index_version: str | None = Field(description=(
        "A published index version that holds this write; null while it waits for its background publish "
        "(searches find it already)."))
    published: bool = Field(description="Whether index_version holds this write (false: published shortly after).")
    took_ms: float


class DocumentOut(BaseModel):
    id: str
    text: str
    metadata: dict[str, Any]


class DeleteResponse(BaseModel):
    id: str
    deleted: bool


class ErrorResponse(BaseModel):
    error: str
    message: str
    request_id: str


class DocumentIn(BaseModel):
    """A document's shape; its rules (sizes, NaN, an id twice in one batch) are checked by
    :mod:`retrieval.documents`, as for files and the Python API, whose limits these are."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=MAX_ID_CHARS, pattern=r"\S", description="Your id for the document.")
    text: str = Field(min_length=1, pattern=r"\S", description=(
        "The text that is embedded and searched (at most max_document_bytes of UTF-8)."))
    metadata: dict[str, Any] = Field(default_factory=dict, description=(
        "Any JSON object (no NaN or infinities), returned with results."))
    vector: list[FiniteFloat] | None = Field(None, min_length=1, max_length=MAX_VECTOR_ITEMS, description=(
        "Your embedding of the text (finite numbers, not all zero), only for a store of model "
        "external:NAME:DIM, where it is required (DIM numbers) unless the same text is stored with one; "
        "a store that embeds texts itself refuses it."))


Mode = Literal["dense", "keyword", "hybrid"]
EXAMPLES = 32  # texts or documents in plus / minus / like / unlike


class SearchRequest(BaseModel):
    """A search; :func:`make_schemas` gives each application a subclass with its limits."""

    model_config = ConfigDict(extra="forbid")
    query: str | None = None
    vector: list[FiniteFloat] | None = Field(None, min_length=1, max_length=MAX_VECTOR_ITEMS, description=(
        "Search with this query vector instead of a query text (dense mode, without plus, minus, like or "
        "unlike): the store's dimension, finite numbers, not all zero; for a store of model external:NAME:DIM."))
    k: int
    min_score: float | None = None
    where: dict[str, Any] | None = Field(
        None, description='Metadata filter, e.g. {"category": "footwear", "price": {"$lt": 100}}; operators '
                          "$eq $ne $gt $gte $lt $lte $in $nin $exists, $and $or $not, dotted paths.")
    mode: Mode = Field("dense", description="dense (by meaning), keyword (by words) or hybrid (both, fused by RRF).")
    alpha: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False,
                                description="Hybrid: convex combination of normalised scores, this weight on dense.")
    plus: list[str] = Field(default_factory=list, max_length=EXAMPLES, description="Texts whose vectors are added.")
    minus: list[str] = Field(default_factory=list, max_length=EXAMPLES,
                             description="Texts whose vectors are subtracted.")
    like: list[str] = Field(default_factory=list, max_length=EXAMPLES,
                            description="Ids of stored documents whose vectors are added.")
    unlike: list[str] = Field(default_factory=list, max_length=EXAMPLES,
                              description="Ids of stored documents whose vectors are subtracted.")
    include_examples: bool = Field(False, description="Let the like/unlike documents appear in the results.")


class UpsertRequest(BaseModel):
    """A batch upsert; :func:`make_schemas` gives each application a subclass with its limits."""

    model_config = ConfigDict(extra="forbid")
    documents: list[DocumentIn]


class EmbeddingsRequest(BaseModel):
    """OpenAI's embeddings request (``POST /v1/embeddings``), so that an OpenAI client with
    its ``base_url`` here embeds with the store's encoder; :func:`make_schemas` adds limits."""

    model_config = ConfigDict(extra="forbid")
    input: str | list[str] = Field(description=(
        "A text, or a list of at most max_batch texts, each within the model's window (token arrays are not taken)."))
    model: str = Field(description="The store's model (its name as configured, e.g. all-MiniLM-L6-v2).")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: a list of numbers; base64: the little-endian float32 bytes, base64-encoded.")
    dimensions: int | None = Field(None, description="Must be the model's dimension when given (vectors are not cut).")
    user: str | None = Field(None, max_length=256, description="Accepted and ignored, as a label of the caller.")

    @field_validator("input", mode="before")
    @classmethod
    def _texts(cls, value: Any) -> Any:
        # One message instead of one per branch of the union; the service checks the rest.
        if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return value
        raise ValueError("expected a text or a list of texts (token arrays are not taken)")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingsUsage(BaseModel):
    prompt_tokens: int = Field(description="Tokens of the inputs, by the model's tokenizer (no special tokens).")
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingsUsage


@dataclass(frozen=True)
class Schemas:
    """The request models of one application (their limits are its settings')."""

    SearchRequest: type[SearchRequest]
    UpsertRequest: type[UpsertRequest]
    EmbeddingsRequest: type[EmbeddingsRequest]


def make_schemas(s: Settings) -> Schemas:
    search = create_model(
        "SearchRequest",
        __base__=SearchRequest,
        query=(str | None, Field(None, min_length=1, max_length=s.search.max_query_chars,
                                 description="The text to search for (optional with like or plus).")),
        k=(int, Field(s.search.k, ge=1, le=s.search.max_k, description="How many results (at most max_k).")),
        min_score=(float | None, Field(None, ge=-1.0, le=1.0, allow_inf_nan=False,
                                       description="Leave out results with a lower cosine similarity.")),
    )
    upsert = create_model(
        "UpsertRequest",
        __base__=UpsertRequest,
        documents=(list[DocumentIn], Field(min_length=1, max_length=s.serve.max_batch,
                                           description="Documents to add or replace (matched by id).")),
    )
    return Schemas(search, upsert, EmbeddingsRequest)


class OpenAIError(BaseModel):
    message: str
    type: str
    param: str | None
    code: str


class OpenAIErrorResponse(BaseModel):
    """The error body of the OpenAI-compatible routes, as OpenAI's clients read it."""

    error: OpenAIError
    request_id: str


# Error bodies the OpenAPI schema documents for every protected route.
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 401, 413, 422, 500, 503)}
NOT_FOUND: dict[int | str, dict[str, Any]] = {**ERRORS, 404: {"model": ErrorResponse}}
OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": OpenAIErrorResponse}
                                                   for code in (400, 401, 413, 422, 500, 503)}
