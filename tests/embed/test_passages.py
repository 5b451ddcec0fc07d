"""Passages: long texts split within the model's window, on the model's own tokens.

The splitter (:mod:`retrieval.embed.passages`) is checked on the real all-MiniLM-L6-v2
(every passage, re-tokenized, fits its window; paragraphs, overlap, emoji and CJK
offsets), on ``hash-384``'s words (edge cases, a 1 MiB text, a Hypothesis property),
and the encoders' hooks it needs (``window``, ``token_spans``) and the token budget of
:meth:`Encoder.encode`'s batches.
"""

from __future__ import annotations

import pickle
import random
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.embed import resolve_model
from retrieval.embed.hashing import HashEncoder
from retrieval.embed.passages import FORMAT_VERSION, Passage, split, split_texts, splitter_key
from tests.conftest import HASH

SENTENCES = [
    "The committee reviewed the quarterly figures and found the margins narrower than forecast.",
    "Rain fell over the northern valleys for most of the week, delaying the harvest.",
    "A careful reader will notice that the second chapter contradicts the first.",
    "Engineers replaced the worn bearings before the turbine was started again!",
    "Why would anyone leave a bicycle chain out in the rain for a whole winter?",
    "Café owners in the old town say naïve tourists rarely notice the résumé of the place.",
    "The museum's new wing holds ceramics from the Song dynasty and woodcuts from Edo.",
    "Nobody expected the quiet librarian to win the regional chess championship.",
]


def article(seed: int, paragraphs: int, sentences: tuple[int, int] = (3, 7), extra: Sequence[str] = ()) -> str:
    """Paragraphs of English sentences (and ``extra`` snippets), separated by blank lines."""
    rng = random.Random(seed)
    pool = SENTENCES + list(extra)
    return "\n\n".join(" ".join(rng.choice(pool) for _ in range(rng.randint(*sentences))) for _ in range(paragraphs))


def token_ranges(spans: np.ndarray, passages: Sequence[Passage]) -> list[np.ndarray]:
    """The indices of the tokens each passage holds (any character of the token inside it)."""
    return [np.flatnonzero((spans[:, 0] < p.end) & (spans[:, 1] > p.start)) for p in passages]


def check_passages(doc: str, spans: np.ndarray, passages: Sequence[Passage], max_tokens: int, overlap: int) -> None:
    """The invariants of every split: ordinals, order, budget, overlap, tokens on passage
    boundaries, every token (but whitespace ones) and every non-whitespace character in
    some passage."""
    assert [p.ordinal for p in passages] == list(range(len(passages)))
    if len(spans) <= max_tokens:
        assert passages == [Passage(0, 0, len(doc))]
        return
    starts = [p.start for p in passages]
    assert all(b > a for a, b in zip(starts, starts[1:], strict=False))
    covered = np.zeros(len(doc) + 1, dtype=np.int64)
    for p in passages:
        assert 0 <= p.start < p.end <= len(doc)
        text = p.text(doc)
        assert text == text.strip() and text == doc[p.start : p.end]
        covered[p.start] += 1
        covered[p.end] -= 1
        # Passages start and end on token boundaries: no token is cut in two.
        cut = (spans[:, 0] < p.start) & (spans[:, 1] > p.start) | (spans[:, 0] < p.end) & (spans[:, 1] > p.end)
        assert not cut.any(), (p, spans[cut])
    inside = np.cumsum(covered)[: len(doc)] > 0
    solid = np.array([not ch.isspace() for ch in doc], dtype=bool)
    assert not (solid & ~inside).any(), "a non-whitespace character is in no passage"
    held = token_ranges(spans, passages)
    assert all(len(t) <= max_tokens for t in held), [len(t) for t in held]
    solid_tokens = [i for i, (a, b) in enumerate(spans) if doc[a:b].strip()]
    assert not set(solid_tokens) - set(np.concatenate(held).tolist()), "a token is in no passage"
    for before, after in zip(held, held[1:], strict=False):
        assert len(np.intersect1d(before, after)) <= overlap


# ---------------------------------------------------------------------------------------
# The real model


def test_window_and_character_offsets_of_the_real_model(encoder: Any) -> None:
    assert encoder.window == 254  # max_seq_length 256, less [CLS] and [SEP]
    doc = "Café naïve 😀🎉 日本語の文章です。 Ünïcödé 𝔘𝔫𝔦 end!"
    spans = encoder.token_spans([doc])[0]
    assert spans.dtype == np.int64 and spans.shape[1] == 2
    pieces = [doc[a:b] for a, b in spans]
    # Offsets count characters of the str (not bytes, not UTF-16 units): accented words
    # come back whole, each CJK ideograph is a token, emoji and astral letters ([UNK]) too.
    assert pieces[:3] == ["Café", "naïve", "😀🎉"]
    assert pieces[3:6] == ["日", "本", "語"] and "。" in pieces
    assert "Ünïcödé" in pieces and "𝔘𝔫𝔦" in pieces and pieces[-2:] == ["end", "!"]
    assert all(not piece.isspace() and piece for piece in pieces)


def test_token_spans_are_untruncated_and_leave_encode_as_it_was(encoder: Any) -> None:
    long = article(1, 6)
    before = encoder.encode([long])
    spans = encoder.token_spans([long, "", "two words"])
    assert len(spans[0]) > 400 and spans[1].shape == (0, 2) and len(spans[2]) == 2
    # The tokenizer encode() uses still truncates at max_seq_length.
    assert int(encoder.token_counts([long])[0]) == encoder.max_seq_length == 256
    np.testing.assert_array_equal(encoder.encode([long]), before)


def test_every_passage_fits_the_window_when_tokenized_again(encoder: Any) -> None:
    emoji = ["Pizza 🍕 and sushi 🍣 were served at the 🎉 party.", "東京タワーは高さ三百三十三メートルです。"]
    doc = article(2, 14, (4, 12), extra=emoji)
    spans = encoder.token_spans([doc])[0]
    assert len(spans) > 3 * encoder.window
    for overlap in (0, 32):
        passages = split_texts(encoder, [doc], overlap=overlap)[0]
        assert len(passages) > 3
        check_passages(doc, spans, passages, encoder.window, overlap)
        counts = [len(s) for s in encoder.token_spans([p.text(doc) for p in passages])]
        assert max(counts) <= encoder.window, counts
        assert split_texts(encoder, [doc], overlap=overlap)[0] == passages  # deterministic


def test_a_text_within_the_window_is_one_passage_with_todays_vector(encoder: Any) -> None:
    doc = "  A comfortable and durable cotton t-shirt, perfect for everyday wear.\n"
    [passages] = split_texts(encoder, [doc], overlap=16)
    assert passages == [Passage(0, 0, len(doc))] and passages[0].text(doc) == doc
    np.testing.assert_array_equal(encoder.encode([passages[0].text(doc)]), encoder.encode([doc]))


def test_paragraphs_that_fit_are_never_cut(encoder: Any) -> None:
    paragraphs = [" ".join(SENTENCES[i % 8 : i % 8 + 3] + SENTENCES[: (i % 3) + 1]) for i in range(12)]
    doc = "\n\n".join(paragraphs)
    sizes = [len(s) for s in encoder.token_spans(paragraphs)]
    assert max(sizes) < encoder.window // 2
    passages = split_texts(encoder, [doc])[0]
    assert len(passages) >= 3
    for p in passages:
        # Each passage is whole paragraphs: it starts and ends where a paragraph does.
        assert p.start == 0 or doc[p.start - 2 : p.start] == "\n\n"
        assert p.end == len(doc) or doc[p.end : p.end + 2] == "\n\n"
        assert p.text(doc) in doc and all(par in paragraphs for par in p.text(doc).split("\n\n"))
    # One paragraph a passage: none packs the end of one with the start of the next.
    assert [p.text(doc) for p in passages] == paragraphs


def test_cjk_without_spaces_splits_at_sentence_ends(encoder: Any) -> None:
    doc = "日本語の文章です。東京は大きな都市であり、多くの人が住んでいます。" * 120
    spans = encoder.token_spans([doc])[0]
    passages = split_texts(encoder, [doc], overlap=20)[0]
    check_passages(doc, spans, passages, encoder.window, 20)
    assert all(p.text(doc).endswith("。") for p in passages)
    assert max(len(s) for s in encoder.token_spans([p.text(doc) for p in passages])) <= encoder.window


def test_the_torch_encoder_gives_the_same_window_and_offsets(encoder: Any, torch_encoder: Any) -> None:
    docs = [article(3, 4), "Café naïve 😀🎉 日本語の文章です。 𝔘𝔫𝔦", ""]
    assert torch_encoder.window == encoder.window == 254
    for ours, theirs in zip(torch_encoder.token_spans(docs), encoder.token_spans(docs), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert int(torch_encoder.token_counts([docs[0]])[0]) == 256  # its own tokenizer still truncates


# ---------------------------------------------------------------------------------------
# hash-384: a word is a token


@pytest.fixture
def words() -> HashEncoder:
    return HashEncoder(resolve_model(HASH), progress=False)


def test_hash_window_and_spans(words: HashEncoder) -> None:
    doc = "Crème brûlée, 😀 日本語 and snake_case-words!"
    spans = words.token_spans([doc])[0]
    assert words.window == 256
    assert [doc[a:b] for a, b in spans] == ["Crème", "brûlée", "日本語", "and", "snake_case", "words"]
    copy = pickle.loads(pickle.dumps(words))  # still picklable (Ray ships encoders)
    np.testing.assert_array_equal(copy.token_spans([doc])[0], spans)


@pytest.mark.parametrize("overlap", [0, 5, 31])
def test_hash_invariants_on_articles(words: HashEncoder, overlap: int) -> None:
    doc = article(4, 30, extra=["Short one.", "Line one\nline two\nline three", "e.g. the U.S.A. and 3.14 are no ends"])
    spans = words.token_spans([doc])[0]
    for max_tokens in (8, 64, 256):
        if overlap < max_tokens // 2:
            check_passages(doc, spans, split(doc, spans, max_tokens, overlap), max_tokens, overlap)


def test_a_heading_goes_with_its_paragraph(words: HashEncoder) -> None:
    body = [article(seed, 1, (6, 8)) for seed in range(3)]
    doc = "\n\n".join(["Chapter one", body[0], "Notes", body[1], body[2]])
    spans = words.token_spans([doc])[0]
    passages = split(doc, spans, 200, 0)
    check_passages(doc, spans, passages, 200, 0)
    # A paragraph of fewer than max_tokens // 8 tokens is no passage of its own.
    assert [p.text(doc) for p in passages] == ["Chapter one\n\n" + body[0], "Notes\n\n" + body[1], body[2]]


def test_a_long_paragraph_splits_into_equal_pieces_at_sentence_ends(words: HashEncoder) -> None:
    rng = random.Random(3)
    paragraph = " ".join(rng.choice(SENTENCES) for _ in range(26))  # about 330 words
    doc = paragraph + "\n\n" + SENTENCES[0]
    spans = words.token_spans([doc])[0]
    passages = split(doc, spans, 254, 0)
    check_passages(doc, spans, passages, 254, 0)
    sizes = [len(t) for t in token_ranges(spans, passages)]
    # Two halves ending at sentence ends, not 254 tokens and a short tail; the short
    # paragraph after it goes with the second half, which then fits the budget.
    assert len(passages) == 2 and all(p.text(doc).endswith((".", "!", "?")) for p in passages), sizes
    assert max(sizes) < 254 * 3 // 4 and min(sizes) > 254 // 4, sizes


def test_a_10000_character_word(words: HashEncoder) -> None:
    one = "x" * 10_000  # one \w run: one token, one passage
    assert split_texts(words, [one]) == [[Passage(0, 0, 10_000)]]
    joined = "-".join(["ab"] * 3334)  # 10,001 characters, 3,334 words, no whitespace
    spans = words.token_spans([joined])[0]
    passages = split(joined, spans, 256, 16)
    check_passages(joined, spans, passages, 256, 16)
    assert len(passages) >= 3334 // 256 + 1
    # Within a run without spaces, cuts fall at punctuation, never inside a word; a
    # character no token holds (here the hyphen) stays with the passage before it.
    assert all(re.fullmatch(r"ab(-ab)*-?", p.text(joined)) for p in passages)


def test_a_run_without_spaces_or_punctuation_splits_between_tokens() -> None:
    doc = "日" * 10_000
    spans = np.stack([np.arange(10_000), np.arange(1, 10_001)], axis=1)  # one token a character, as BERT does
    passages = split(doc, spans, 254, 10)
    check_passages(doc, spans, passages, 254, 10)
    assert max(p.end - p.start for p in passages) == 254


def test_a_mebibyte(words: HashEncoder) -> None:
    doc = article(5, 2000, (2, 9))
    doc += "\n\n" + "tail " * max(0, ((1 << 20) - len(doc)) // 5 + 1)
    assert len(doc) >= 1 << 20
    spans = words.token_spans([doc])[0]
    passages = split(doc, spans, words.window, 32)
    assert len(passages) > len(spans) // words.window
    ends = np.array([p.end for p in passages])
    assert passages[0].start == 0 and ends.max() == len(doc.rstrip()) and np.all(np.diff([p.start for p in passages]) > 0)
    # Budget, vectorised: the tokens between a passage's start and end.
    first = np.searchsorted(spans[:, 0], [p.start for p in passages], side="left")
    last = np.searchsorted(spans[:, 1], ends, side="right")
    assert int((last - first).max()) <= words.window
    assert np.all(first[1:] <= last[:-1])  # consecutive passages meet or overlap: no token left out


@pytest.mark.parametrize("doc", ["", " ", "   \n\n\t  ", "?!"])
def test_empty_or_whitespace_only_text_is_one_passage(words: HashEncoder, doc: str) -> None:
    assert split_texts(words, [doc], overlap=3) == [[Passage(0, 0, len(doc))]]


def test_tokens_of_whitespace_only() -> None:
    doc = " " * 100
    spans = np.stack([np.arange(100), np.arange(1, 101)], axis=1)  # a tokenizer with whitespace tokens
    assert split(doc, spans, 8) == [Passage(0, 0, 100)]
    doc = "word " * 20 + "\n" * 60 + " word" * 20
    spans = np.array([(m.start(), m.end()) for m in re.finditer(r"\S+|\n", doc)])
    check_passages(doc, spans, split(doc, spans, 8, 3), 8, 3)


def test_arguments_are_checked(words: HashEncoder) -> None:
    spans = words.token_spans(["a b c"])[0]
    with pytest.raises(ValueError, match="at least 8 tokens"):
        split("a b c", spans, 7)
    with pytest.raises(ValueError, match="less than half"):
        split("a b c", spans, 64, 32)
    with pytest.raises(ValueError, match="less than half"):
        split("a b c", spans, 64, -1)
    with pytest.raises(ValueError, match="shape"):
        split("a b c", np.zeros((3, 3), dtype=np.int64), 8)
    with pytest.raises(ValueError, match="within the text"):
        split("a b", np.array([[0, 1]] * 8 + [[2, 9]]), 8)
    with pytest.raises(ValueError, match="window of 256"):
        split_texts(words, ["a b c"], max_tokens=300)


def test_splitter_key_names_what_changes_the_split(words: HashEncoder) -> None:
    key = splitter_key(words.model_key, 256, 32)
    assert key == splitter_key(words.model_key, 256, 32) and len(key) < 40 and key.startswith(f"split{FORMAT_VERSION}-t256-o32-")
    others = {splitter_key(words.model_key, 255, 32), splitter_key(words.model_key, 256, 0),
              splitter_key(resolve_model("all-MiniLM-L6-v2").key, 256, 32)}
    assert key not in others and len(others) == 3
    with pytest.raises(ValueError):
        splitter_key(words.model_key, 256, 128)


WORDS = st.sampled_from(["word", "Word", "a", "bb", "café", "日本", "x_y", "3.14", "😀", "ab-cd", "“quoted”", ""])
SEPARATORS = st.sampled_from([" ", " ", " ", "  ", "\n", "\n\n", "\t", "\r\n", "\u3000", ". ", "! ", "? ", "… ", ", ",
                              "-", "—", "'", '"', "。", "\u200b", ".\n\n", ""])


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.tuples(WORDS, SEPARATORS), min_size=20, max_size=400), max_tokens=st.integers(8, 24),
       overlap_share=st.floats(0, 0.99))
def test_property_split_of_random_texts(pieces: list[tuple[str, str]], max_tokens: int, overlap_share: float) -> None:
    doc = "".join(word + separator for word, separator in pieces)
    overlap = int(overlap_share * (max_tokens // 2))
    spans = HashEncoder(resolve_model(HASH), progress=False).token_spans([doc])[0]
    passages = split(doc, spans, max_tokens, overlap)
    check_passages(doc, spans, passages, max_tokens, overlap)


# ---------------------------------------------------------------------------------------
# Batches within a token budget


class CountedWords(HashEncoder):
    """hash-384 whose prepare() knows lengths (words + 2) and which records each batch."""

    def __init__(self) -> None:
        super().__init__(resolve_model(HASH), batch_size=8, progress=False)
        self.padded: list[tuple[int, int]] = []

    def prepare(self, texts: Sequence[str]) -> tuple[Sequence[Any], np.ndarray]:
        return texts, np.array([len(s) + 2 for s in self.token_spans(texts)], dtype=np.int64)

    def embed_batch(self, items: Sequence[Any]) -> np.ndarray:
        longest = max(len(s) + 2 for s in self.token_spans([str(t) for t in items]))
        self.padded.append((len(items), len(items) * longest))
        return super().embed_batch(items)


def mixed_texts(seed: int, short: int, long: int) -> list[str]:
    rng = random.Random(seed)
    texts = [rng.choice(SENTENCES)[: rng.randint(10, 40)] for _ in range(short)]
    texts += [article(seed + i, 3) for i in range(long)]
    rng.shuffle(texts)
    return texts


def test_batches_keep_to_the_token_budget_with_the_same_vectors() -> None:
    enc = CountedWords()
    enc.max_batch_tokens = 450
    texts = mixed_texts(6, 40, 12)
    texts.insert(17, article(99, 10))  # longer than the whole budget
    together = enc.encode(texts)
    assert sum(k for k, _ in enc.padded) == len(texts)
    assert all(padded <= enc.max_batch_tokens or k == 1 for k, padded in enc.padded), enc.padded
    assert any(k == enc.batch_size for k, _ in enc.padded)  # short texts still fill whole batches
    assert any(1 < k < enc.batch_size for k, padded in enc.padded if padded > 300)  # long ones fewer a batch
    assert any(padded > enc.max_batch_tokens for k, padded in enc.padded)  # a text over the budget goes alone
    np.testing.assert_allclose(together, np.vstack([enc.encode([t]) for t in texts]), atol=1e-5)
    enc.max_batch_tokens = 10**9
    enc.padded.clear()
    np.testing.assert_allclose(enc.encode(texts), together, atol=1e-6)
    assert [k for k, _ in enc.padded] == [8] * 6 + [5]  # no budget: batches of batch_size, as before


def test_batches_of_the_real_encoder_keep_to_the_budget(encoder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = mixed_texts(7, 24, 6)
    padded: list[tuple[int, int]] = []
    embed = encoder.embed_batch

    def counted(items: Sequence[Any]) -> np.ndarray:
        padded.append((len(items), len(items) * max(len(e.ids) for e in items)))
        return embed(items)

    singles = np.vstack([encoder.encode([t]) for t in texts])
    monkeypatch.setattr(encoder, "embed_batch", counted)
    monkeypatch.setattr(encoder, "max_batch_tokens", 1024)
    together = encoder.encode(texts)
    assert sum(k for k, _ in padded) == len(texts) and max(p for _, p in padded) <= 1024
    assert any(k > 4 for k, _ in padded) and any(k <= 4 for k, p in padded if p > 512)
    np.testing.assert_allclose(together, singles, atol=1e-5)
