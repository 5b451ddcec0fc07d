"""Long texts as passages that each fit the model's window.

A model reads at most :attr:`~retrieval.embed.base.Encoder.window` content tokens of a
text (254 word pieces for all-MiniLM-L6-v2) and truncates the rest. :func:`split` cuts a
longer text into passages of at most that many tokens, counted with the model's own
tokenizer (:meth:`~retrieval.embed.base.Encoder.token_spans` gives each token's
character offsets), the way LangChain's ``RecursiveCharacterTextSplitter`` prefers
coarse boundaries, but on token counts rather than characters:

* a text that fits is one passage, the whole text unchanged, so its vector is exactly the
  one-vector-per-document of before;
* otherwise each passage is a paragraph (text between blank lines): it ends at the first
  paragraph break after at least ``max_tokens // 8`` tokens (so a heading or a one-line
  paragraph goes with the paragraph after it, a short last one with the one before),
  when that break lies within the budget.
  A paragraph longer than the budget (or a text without paragraph breaks) is cut into as
  few pieces as fit, of about equal length, each ending at the last sentence end
  (``.``, ``!``, ``?``, ``…`` before whitespace, ``。``, ``！``, ``？``, or a line break)
  before its share, else at the last whitespace between tokens, else at the last token
  boundary outside a word (punctuation), else at the last token boundary (a 10,000
  character run without spaces still splits).

  Paragraphs rather than windows packed full: a passage that holds the end of one
  paragraph and the start of another is about neither, and equal pieces rather than
  full ones followed by a short tail (nDCG@10 on cranfield-long 0.362 packed full, 0.401
  one paragraph a passage, 0.405 with equal pieces; docs/evaluation.md);
* the next passage repeats at most ``overlap`` tokens of the one before, starting at a
  sentence, else a word, boundary where one lies within them, and always moves on;
* passages start and end on token boundaries, without surrounding whitespace, and
  together hold every token and every non-whitespace character of the text (one that no
  token holds, such as the punctuation between ``hash-N``'s words or a control character
  a tokenizer drops, ends the passage before it).

The splitter counts tokens of the whole text. Re-tokenized on its own, a passage gives
the same tokens wherever the cut falls between the tokenizer's words (whitespace or
punctuation, the only cuts natural text needs); a cut inside a word, the last resort for
a run of more than ``max_tokens // 2`` tokens without a space or punctuation, may change
the count by a token or two.

Everything that changes the split (the tokenizer, the budget, the overlap, this module's
rules) is named by :func:`splitter_key`, for manifests to record.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from retrieval.embed.base import Encoder

# Bump when the rules above change: the same text would split differently.
FORMAT_VERSION = 2
MIN_MAX_TOKENS = 8

# Whitespace as str.isspace() and the regex \s see it (none lies above U+3000).
_WHITESPACE = np.array([c for c in range(0x3001) if chr(c).isspace()], dtype=np.uint32)
# Line breaks as str.splitlines() sees them ("\r\n" counts once, below).
_LINE_BREAKS = np.array([0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029], dtype=np.uint32)
_PARAGRAPH_SEPARATOR = 0x2029
# A sentence end: terminators and closing quotes or brackets, followed by whitespace
# (or not, for the full-width forms, which CJK text writes without a space after them).
_SENTENCE_END = re.compile(r"""[.!?…]+["'”’»)\]]*(?=\s)|[。！？]+[」』”’)\]）]*""")


@dataclass(frozen=True)
class Passage:
    """One passage of a document: its position among the document's passages (from 0)
    and its character offsets ``[start, end)`` into the document's text."""

    ordinal: int
    start: int
    end: int

    def text(self, doc: str) -> str:
        """The passage's text, cut from its document's text."""
        return doc[self.start : self.end]


def check_arguments(max_tokens: int, overlap: int) -> None:
    """Raise ValueError unless ``max_tokens >= 8`` and ``0 <= overlap < max_tokens // 2``."""
    if max_tokens < MIN_MAX_TOKENS:
        raise ValueError(f"passages must hold at least {MIN_MAX_TOKENS} tokens, not {max_tokens}")
    if not 0 <= overlap < max_tokens // 2:
        raise ValueError(
            f"the overlap of passages must be at least 0 and less than half their {max_tokens} tokens "
            f"(at most {max_tokens // 2 - 1}), not {overlap}"
        )


def splitter_key(model_key: str, max_tokens: int, overlap: int = 0) -> str:
    """A short name for everything that changes how texts split: the tokenizer (named by
    the encoder's ``model_key``), ``max_tokens``, ``overlap`` and this module's rules
    (``FORMAT_VERSION``). Two splits with the same key cut every text the same way.
    The form is ``split1-t254-o32-`` and 12 hex digits of a digest of the model key.
    """
    check_arguments(max_tokens, overlap)
    digest = hashlib.blake2b(model_key.encode(), digest_size=6).hexdigest()
    return f"split{FORMAT_VERSION}-t{max_tokens}-o{overlap}-{digest}"


def split_texts(encoder: Encoder, texts: Sequence[str], *, max_tokens: int | None = None,
                overlap: int = 0) -> list[list[Passage]]:
    """:func:`split` each text on ``encoder``'s tokens, in passages of at most
    ``max_tokens`` tokens (default and maximum: the encoder's window)."""
    window = encoder.window
    budget = window if max_tokens is None else max_tokens
    if budget > window:
        raise ValueError(f"passages of {budget} tokens do not fit the model's window of {window}")
    check_arguments(budget, overlap)
    return [split(text, spans, budget, overlap) for text, spans in zip(texts, encoder.token_spans(texts), strict=True)]


def split(text: str, spans: np.ndarray, max_tokens: int, overlap: int = 0) -> list[Passage]:
    """Cut ``text`` into passages of at most ``max_tokens`` tokens (see the module docstring).

    ``spans`` is the (n, 2) array of the character ``[start, end)`` offsets of the text's
    content tokens, in order, as :meth:`~retrieval.embed.base.Encoder.token_spans` gives
    it. A text of at most ``max_tokens`` tokens (an empty one too) is one passage, the
    whole text: ``Passage(0, 0, len(text))``. Raises ValueError for ``max_tokens < 8``, an
    overlap outside ``0 <= overlap < max_tokens // 2``, or spans outside the text.
    """
    check_arguments(max_tokens, overlap)
    spans = np.asarray(spans, dtype=np.int64)
    if spans.size == 0:
        spans = spans.reshape(0, 2)
    if spans.ndim != 2 or spans.shape[1] != 2:
        raise ValueError(f"token spans must be an (n, 2) array of character offsets, not of shape {spans.shape}")
    n = len(spans)
    if n <= max_tokens:
        return [Passage(0, 0, len(text))]
    starts, ends = spans[:, 0], spans[:, 1]
    if starts.min() < 0 or ends.max() > len(text) or bool((ends < starts).any()) or bool((np.diff(starts) < 0).any()):
        raise ValueError("token spans must lie within the text, in order, each with start <= end")
    return _Splitter(text, starts, ends).pack(max_tokens, overlap)


class _Splitter:
    """The boundaries of one text, as sorted arrays of cut indices: cut ``k`` (1 to n-1)
    lies between token ``k - 1`` and token ``k``; a passage is a token range ``[a, b)``."""

    def __init__(self, text: str, starts: np.ndarray, ends: np.ndarray) -> None:
        self.text = text
        self.starts = starts
        self.n = n = len(starts)
        self.codes = codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        space = np.isin(codes, _WHITESPACE)
        self.solid = np.flatnonzero(~space)  # positions of non-whitespace characters
        breaks = np.isin(codes, _LINE_BREAKS).astype(np.int64)
        breaks[:-1] -= (codes[:-1] == 0x0D) & (codes[1:] == 0x0A)  # "\r\n" is one line break
        breaks += codes == _PARAGRAPH_SEPARATOR  # as good as a blank line
        space_before = np.concatenate(([0], np.cumsum(space, dtype=np.int64)))
        breaks_before = np.concatenate(([0], np.cumsum(breaks)))

        # The gap of cut k: the characters after every token before it, up to token k.
        gap_lo = np.maximum.accumulate(ends)[:-1]
        gap_hi = starts[1:]
        valid = gap_hi >= gap_lo  # else two tokens share characters: no cut between them
        lo = np.minimum(gap_lo, gap_hi)
        spaced = valid & (space_before[gap_hi] - space_before[lo] > 0)
        line_breaks = np.where(valid, breaks_before[gap_hi] - breaks_before[lo], 0)
        ends_at = np.fromiter((m.end() for m in _SENTENCE_END.finditer(text)), dtype=np.int64)
        first = np.searchsorted(ends_at, gap_lo, side="left")
        sentence_end = (first < len(ends_at)) & (ends_at[np.minimum(first, len(ends_at) - 1)] <= gap_hi) \
            if len(ends_at) else np.zeros(n - 1, dtype=bool)
        cuts = np.arange(1, n, dtype=np.int64)
        self.gap_lo, self.gap_hi = gap_lo, gap_hi
        self.valid = cuts[valid]
        self.paragraphs = cuts[line_breaks >= 2]
        self.sentences = cuts[valid & ((line_breaks >= 1) | sentence_end)]
        self.words = cuts[spaced]

    def pack(self, max_tokens: int, overlap: int) -> list[Passage]:
        n = self.n
        least = max(1, max_tokens // 8)
        ranges: list[tuple[int, int]] = []
        a = 0
        b = 0  # where the passage before ended: each one ends after it
        while True:
            limit = a + max_tokens
            floor = b + 1
            # The paragraph this passage starts (with any short ones before it)...
            end = _first(self.paragraphs, max(a + least, floor), n - 1) or n
            if n - end < least:
                end = n  # and a short last paragraph with it
            if end <= limit:
                cut: int | None = end
            else:
                # ...too long: this passage is the first of as few equal pieces as fit.
                pieces = -(-(end - a) // max_tokens)
                share = a + -(-(end - a) // pieces)
                lo = max(a + (share - a) // 2, floor)
                cut = (_last(self.sentences, lo, share) or _last(self.sentences, lo, limit)
                       or _last(self.words, lo, share) or _last(self.words, lo, limit)
                       or _last(self.outside_words, lo, limit) or _last(self.valid, floor, limit))
            if cut is None:
                # No cut within the budget: more than max_tokens tokens share characters
                # (one character the tokenizer expands), so the passage must run over.
                cut = _first(self.valid, limit + 1, n - 1) or n
            b = cut
            ranges.append((a, b))
            if b >= n:
                break
            if overlap:
                lo = max(b - overlap, a + 1)
                a = (_first(self.sentences, lo, b) or _first(self.words, lo, b)
                     or _first(self.outside_words, lo, b) or _first(self.valid, lo, b) or b)
            else:
                a = b
        return self._passages(ranges)

    @functools.cached_property
    def outside_words(self) -> np.ndarray:
        """The valid cuts that do not fall inside a word: a gap between the tokens, or a
        non-word character on either side (punctuation). Only needed where no whitespace
        lies within half a passage, so worked out on first use."""
        cuts = self.valid
        left, right = self.gap_lo[cuts - 1], self.gap_hi[cuts - 1]
        size = len(self.codes)
        outside = (right > left) | (left == 0) | (right >= size)
        outside |= ~_word_characters(self.codes[np.clip(left - 1, 0, size - 1)])
        outside |= ~_word_characters(self.codes[np.clip(right, 0, size - 1)])
        return cuts[outside]

    def _passages(self, ranges: list[tuple[int, int]]) -> list[Passage]:
        """Token ranges to character offsets, trimmed of whitespace; a character no token
        holds (a control character the tokenizer drops) goes with the passage before it."""
        solid, starts, n = self.solid, self.starts, self.n
        if len(solid) == 0:
            return [Passage(0, 0, len(self.text))]
        bounds: list[tuple[int, int]] = []
        for a, b in ranges:
            first = np.searchsorted(solid, 0 if a == 0 else starts[a], side="left")
            last = np.searchsorted(solid, len(self.text) if b == n else starts[b], side="left") - 1
            if first > last:
                continue  # whitespace tokens only
            start, end = int(solid[first]), int(solid[last]) + 1
            while bounds and bounds[-1][0] >= start:
                bounds.pop()  # held whole by this passage (the tokens between were whitespace)
            bounds.append((start, end))
        return [Passage(i, start, end) for i, (start, end) in enumerate(bounds)]


def _last(cuts: np.ndarray, lo: int, hi: int) -> int | None:
    """The largest cut in [lo, hi], or None."""
    i = int(np.searchsorted(cuts, hi, side="right")) - 1
    return int(cuts[i]) if i >= 0 and cuts[i] >= lo else None


def _first(cuts: np.ndarray, lo: int, hi: int) -> int | None:
    """The smallest cut in [lo, hi], or None."""
    i = int(np.searchsorted(cuts, lo, side="left"))
    return int(cuts[i]) if i < len(cuts) and cuts[i] <= hi else None


@functools.cache
def _basic_plane_words() -> np.ndarray:
    """Which characters of the Basic Multilingual Plane are word characters (``\\w``)."""
    return np.array([chr(c).isalnum() or c == 0x5F for c in range(0x10000)], dtype=bool)


def _word_characters(codes: np.ndarray) -> np.ndarray:
    """Whether each code point is a word character, as the regex ``\\w`` has it."""
    basic = codes < 0x10000
    out = np.zeros(len(codes), dtype=bool)
    out[basic] = _basic_plane_words()[codes[basic]]
    for i in np.flatnonzero(~basic):  # emoji, historic scripts, math letters: rare
        out[i] = chr(int(codes[i])).isalnum()
    return out
