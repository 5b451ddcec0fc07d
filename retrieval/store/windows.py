"""Snippets of large documents, at a bounded cost whatever their size.

FTS5's snippet() (and PostgreSQL's ts_headline) would read a whole document; for a large
one this module finds its first real match with a scan at C speed (a pattern of the
query's stems, each candidate word's own stem checked), cuts a window of a few KB around
it, and makes the snippet of that window the same way: FTS5's snippet() in a private
in-memory table with revision 0002's tokenizer (or ts_headline of the window). No
SQLAlchemy: the keyword module reads the text and asks for the snippet.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain, islice

from retrieval.store.terms import (
    SNIPPET_CLOSE,
    SNIPPET_ELLIPSIS,
    SNIPPET_OPEN,
    SNIPPET_TOKENS,
    parse_snippet,
    query_terms,
)

# FTS5's snippet() scores a fragment around every match of the query against every other
# match, so its time grows with the square of a document's matches. Measured on a 2-core
# AMD EPYC (Python's SQLite 3.40), a document whose every token matches: 512 tokens
# 1.3-1.9 ms, 1,024 tokens 6.1-8.4 ms, 2,048 21 ms, 4,096 84-94 ms; catalog text with one
# match in 20 tokens: 16 KB 0.3 ms, 64 KB 3 ms, 256 KB 36 ms (and the 1 MB
# document 41 s). Up to SNIPPET_MAX_TOKENS tokens and SNIPPET_MAX_BYTES, snippet() still
# runs on the stored row, exactly as before: that is every document of the catalog,
# Cranfield and MEDLINE (the largest, 4.2 KB, has about 700 tokens), at most about 8 ms
# even when every token matches. A token count, since one-letter words put 4,096 tokens
# (84 ms) in 8 KB; a byte count too, since snippet() returns its fragment's tokens whole
# and unicode61 makes one token of a run of letters without spaces (Chinese text, a
# base64 blob): 2 tokens in 1 MB would make a 1 MB snippet.
SNIPPET_MAX_TOKENS = 1024
SNIPPET_MAX_BYTES = 16 * 1024
# ts_headline parses the whole text and costs about linearly in its size (same machine,
# PostgreSQL 15: 4 KB 0.6-3.7 ms, 16 KB 2.2-4.3 ms, 64 KB 10-16 ms, 1 MB 140-180 ms):
# a text over HEADLINE_MAX_BYTES (octet_length, which reads no TOASTed value) is
# headlined in a window, at about the cost of a 4 KB text.
HEADLINE_MAX_BYTES = 16 * 1024
# A window: up to WINDOW_BEFORE_TOKENS tokens before the first match (snippet() may open
# its fragment up to 15 tokens before a match, at a sentence start) and WINDOW_AFTER_TOKENS
# from it, where snippet() finds the best fragment near the match; the character limits
# bound it whatever the tokens' length. Its snippet() takes about 0.15 ms even when every
# token matches (and a large document's whole snippet, 0.5 to 0.9 ms when its first match
# is in its first 64 KB, 5 to 7 ms when in its last, for 1 MB).
WINDOW_BEFORE_TOKENS = 32
WINDOW_AFTER_TOKENS = 128
WINDOW_BEFORE_CHARS = 512
WINDOW_AFTER_CHARS = 2048
# The most of a large document read and searched for a match, in bytes on SQLite, in
# characters on PostgreSQL: the whole of any document within the 1 MiB
# max_document_bytes limit; a larger one, written before the limit, is searched in its
# first MiB only.
SCAN_LIMIT = 1 << 20
# A large document's first PREFIX_CHARS (bytes on SQLite) are searched first, the rest
# read only when they hold no match: decoding a whole MB of text into a str takes about
# 2 ms on SQLite, more than the rest of the snippet, and reading it from PostgreSQL 8 ms
# (its first 64 K characters, 1 ms), while the first match is usually near the start.
PREFIX_CHARS = 1 << 16
# Words that start like a term's stem checked (their own stem, cached), and windows around
# words with a term's stem tried (the window's MATCH confirms a phrase or not), before the
# snippet falls back to the document's start.
MAX_CANDIDATES = 1024
MAX_WINDOWS = 8
# Longer candidate words are not stemmed (the cache keeps its words), only tried in a window.
_LONGEST_WORD = 64
# Revision 0002's tokenizer: the scratch FTS5 table reads a window as documents_fts reads
# the whole document (tests/store/test_large_documents.py compares the two).
FTS5_TOKENIZE = "porter unicode61 remove_diacritics 2"

# Characters unicode61 keeps in tokens (letters, digits, combining marks, private use; see
# is_token_char), as a regular expression class, so that scans run at C speed.
_MARKS = "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
_TOKEN_CHAR = f"(?:[^\\W_]|[{_MARKS}\ue000-\uf8ff])"
_TOKEN = re.compile(f"{_TOKEN_CHAR}+")
_IS_TOKEN_CHAR = re.compile(_TOKEN_CHAR)
# The same, as two patterns of one character class each: re scans for those fastest.
_WORD_CHAR = re.compile(r"[^\W_]")
_OTHER_TOKEN_CHAR = re.compile(f"[{_MARKS}\ue000-\uf8ff]")
# How far from a window a document is searched for a token before or after it (beyond,
# tokens are assumed: only thousands of spaces or punctuation marks in a row would say
# otherwise, and whether they do costs a scan of the whole document).
_EDGE_CHARS = 4096


class _Scratch(threading.local):
    con: sqlite3.Connection | None = None
    pid = 0


_SCRATCH = _Scratch()


def _scratch() -> sqlite3.Connection:
    """This thread's in-memory database with the FTS5 table ``w`` (revision 0002's
    tokenizer) and ``w_terms``, its fts5vocab of token instances: made on first use, and
    again in a forked process (an SQLite connection must not cross a fork)."""
    if _SCRATCH.con is None or _SCRATCH.pid != os.getpid():
        con = sqlite3.connect(":memory:", isolation_level=None)
        con.execute(f"CREATE VIRTUAL TABLE w USING fts5(text, tokenize='{FTS5_TOKENIZE}')")
        con.execute("CREATE VIRTUAL TABLE w_terms USING fts5vocab(w, 'instance')")
        _SCRATCH.con, _SCRATCH.pid = con, os.getpid()
    return _SCRATCH.con


def _stems(terms: list[str]) -> list[str]:
    """The longest token of each term as documents_fts indexes it (case and diacritics
    folded, Porter-stemmed): every match of the term has a token with this stem."""
    con = _scratch()
    con.execute("DELETE FROM w")
    con.executemany("INSERT INTO w (rowid, text) VALUES (?, ?)", enumerate(terms, 1))
    longest: dict[int, str] = {}
    for doc, term in con.execute("SELECT doc, term FROM w_terms"):
        if len(term) > len(longest.get(doc, "")):
            longest[doc] = term
    return sorted(set(longest.values()))


@lru_cache(maxsize=1)
def _folded_letters() -> dict[str, str]:
    """Latin letters with diacritics, by the letter that remove_diacritics folds them to."""
    out: dict[str, str] = {}
    for ch in map(chr, chain(range(0xC0, 0x250), range(0x1E00, 0x1F00))):
        base = unicodedata.normalize("NFD", ch)[0].lower()
        if base != ch.lower() and base.isascii() and base.isalnum():
            out[base] = out.get(base, "") + ch
    return out


def _letter(ch: str) -> str:
    """The characters that fold to ``ch`` (a letter of a stem, folded): itself, its
    upper case, and its forms with diacritics."""
    forms = {ch, ch.upper()} if len(ch.upper()) == 1 else {ch}
    return "".join(sorted(forms | set(_folded_letters().get(ch, ""))))


@lru_cache(maxsize=256)
def _stem_pattern(stems: tuple[str, ...]) -> re.Pattern[str] | None:
    """Where a token with one of ``stems`` may start: a word that begins with the stem, in
    any case, with or without diacritics. Porter's stem is the start of the word but for
    a final "i" or "e" it may write itself ("happy", "happiness" give "happi"; "hoping",
    "hopes" give "hope"): the word has an "e", "i" or "y" there (so in every one of the
    64,162 distinct ASCII words of the 100,000-document catalog, Cranfield and MEDLINE;
    in all of them the stem is otherwise the word's start). A word that merely starts
    like a stem is a candidate that :func:`locate` rejects.

    The pattern opens with one character class, the first letters of all stems, so that
    ``re`` skips to those letters at C speed (about 4 ms a MB; with a lookbehind first,
    30 ms)."""
    firsts: list[str] = []
    alternatives: list[str] = []
    for stem in stems:
        letters = [re.escape(_letter(ch)) for ch in stem]
        if len(stem) > 1 and stem[-1] in "ie":
            letters[-1] = re.escape("".join(_letter(ch) for ch in "eiy"))
        firsts.append(letters[0])
        alternatives.append(f"(?<=[{letters[0]}])" + "".join(f"[{_MARKS}]*[{chars}]" for chars in letters[1:]))
    if not alternatives:
        return None
    # (?<!T.): the character before the first letter is not a token's.
    return re.compile(f"[{''.join(firsts)}](?<!{_TOKEN_CHAR}.)(?:{'|'.join(alternatives)})", re.DOTALL)


@dataclass(frozen=True)
class Terms:
    """What a scan of a large document looks for: ``pattern`` finds words that may have
    one of ``stems``, the stems of the query's terms (see :func:`_stems`)."""

    pattern: re.Pattern[str]
    stems: frozenset[str]


@lru_cache(maxsize=256)
def term_pattern(query: str) -> Terms | None:
    stems = tuple(_stems(query_terms(query)))
    pattern = _stem_pattern(stems)
    return Terms(pattern, frozenset(stems)) if pattern is not None else None


@lru_cache(maxsize=4096)
def _word_stems(word: str) -> frozenset[str]:
    """The stems documents_fts gives the tokens of ``word``: whether a candidate is a match
    (a document repeats its words, so most answers come from the cache)."""
    con = _scratch()
    con.execute("INSERT OR REPLACE INTO w (rowid, text) VALUES (1, ?)", (word,))
    return frozenset(term for (term,) in con.execute("SELECT term FROM w_terms WHERE doc = 1"))


class Prefix:
    """A large document's text, read as far as a scan has needed it: ``text``, its first
    PREFIX_CHARS characters (about) and then all of it up to :data:`SCAN_LIMIT` (from
    ``rest``, which gives that text and whether the document goes on after it)."""

    def __init__(self, first: str, rest: Callable[[], tuple[str, bool]] | None) -> None:
        self.text = first
        self._rest = rest
        self._truncated = False

    @classmethod
    def of_bytes(cls, data: bytes) -> Prefix:
        """The first SCAN_LIMIT + 1 bytes of a UTF-8 text, decoded in two steps."""
        def rest() -> tuple[str, bool]:
            return data[:_char_boundary(data, SCAN_LIMIT)].decode("utf-8", errors="replace"), len(data) > SCAN_LIMIT

        first = data[:_char_boundary(data, PREFIX_CHARS)].decode("utf-8", errors="replace")
        return cls(first, rest if len(data) > PREFIX_CHARS else None)

    @property
    def more(self) -> bool:
        """Whether the document goes on after ``text``."""
        return self._truncated or self._rest is not None

    def grow(self) -> bool:
        """Read the rest; False when there is none."""
        if self._rest is None:
            return False
        self.text, self._truncated = self._rest()
        self._rest = None
        return True


def _char_boundary(data: bytes, end: int) -> int:
    """``end``, moved back to the start of the UTF-8 character it falls inside (not
    beyond 3 bytes: the decoder replaces what is not UTF-8)."""
    if end >= len(data):
        return len(data)
    back = end
    while back > max(0, end - 3) and 0x80 <= data[back] < 0xC0:  # a continuation byte
        back -= 1
    return back if back > 0 else end


@dataclass(frozen=True)
class _Window:
    """``text[start:end]`` of a large document; ``before`` and ``after``: whether the
    document has tokens outside it; ``marked``: FTS5's snippet() of it, None when it holds
    no match (the window at the document's start, when no window tried matched)."""

    start: int
    end: int
    before: bool
    after: bool
    marked: str | None = None


def _window(text: str, at: int, more: bool) -> _Window:
    """The window around the token starting at ``at``, cut at token boundaries."""
    lo = max(0, at - WINDOW_BEFORE_CHARS)
    before = [m.start() for m in _TOKEN.finditer(text, lo, at)]
    if before and before[0] == lo > 0 and _IS_TOKEN_CHAR.match(text, lo - 1):
        before.pop(0)  # the end of a token the character limit cut
    kept = before[-WINDOW_BEFORE_TOKENS:]
    start = kept[0] if kept else at
    hi = min(len(text), at + WINDOW_AFTER_CHARS)
    after = list(islice(_TOKEN.finditer(text, at, hi), WINDOW_AFTER_TOKENS))
    if len(after) > 1 and after[-1].end() == hi and _IS_TOKEN_CHAR.match(text, hi):
        after.pop()  # the start of a token the character limit cut
    end = after[-1].end() if after else hi
    more_before = start > _EDGE_CHARS or _has_token_char(text, 0, start)
    more_after = more or len(text) - end > _EDGE_CHARS or _has_token_char(text, end, len(text))
    # At the document's edge, snippet() shows the text before its first token or after
    # its last (punctuation, spaces): so does the window, when that text is short.
    if not more_before and start <= WINDOW_BEFORE_CHARS:
        start = 0
    if not more_after and len(text) - end <= WINDOW_AFTER_CHARS:
        end = len(text)
    return _Window(start, end, more_before, more_after)


def _has_token_char(text: str, start: int, end: int) -> bool:
    return _WORD_CHAR.search(text, start, end) is not None or _OTHER_TOKEN_CHAR.search(text, start, end) is not None


_SCRATCH_SNIPPET = "SELECT snippet(w, 0, ?, ?, ?, ?) FROM w WHERE w MATCH ? AND rowid = 1"


def _fts5_snippet(match: str, window: str) -> str | None:
    """FTS5's snippet() of ``window`` for the MATCH expression ``match``, as keyword_snippets
    asks it of a stored row; None when the window does not match."""
    con = _scratch()
    con.execute("INSERT OR REPLACE INTO w (rowid, text) VALUES (1, ?)", (window,))
    row = con.execute(_SCRATCH_SNIPPET, (SNIPPET_OPEN, SNIPPET_CLOSE, SNIPPET_ELLIPSIS, SNIPPET_TOKENS, match)).fetchone()
    return None if row is None else str(row[0] or "")


def locate(doc: Prefix, match: str, terms: Terms | None) -> _Window:
    """The window of a large document around its first match of ``match``.

    ``terms`` (:func:`term_pattern`) finds candidate words at C speed, first to last; a
    word whose stem is a term's is tried: FTS5 confirms it by matching the window around
    it (a phrase needs its other words), and its snippet() of that window is the
    snippet. After :data:`MAX_CANDIDATES` words or :data:`MAX_WINDOWS` windows without a
    match, or none found (a spelling the pattern does not foresee, a match past
    :data:`SCAN_LIMIT`), the window at the document's start, unmarked. Time and memory
    are bounded by the windows' size and the scan's.
    """
    pos = 0
    tried = 0
    words = 0
    while terms is not None and tried < MAX_WINDOWS and words < MAX_CANDIDATES:
        found = terms.pattern.search(doc.text, pos)
        # A candidate needs its window's text after it, and a word cut where the decoded
        # text ends can hide one: decode further and search again.
        if (found is None or found.start() + WINDOW_AFTER_CHARS >= len(doc.text)) and doc.grow():
            continue
        if found is None:
            break
        words += 1
        word = _TOKEN.match(doc.text, found.start(), found.start() + _LONGEST_WORD)
        if word is not None and word.end() < found.start() + _LONGEST_WORD and not _word_stems(word.group()) & terms.stems:
            pos = word.end()  # starts like a stem, has another ("runtime" for "run")
            continue
        window = _window(doc.text, found.start(), doc.more)
        marked = _fts5_snippet(match, doc.text[window.start:window.end])
        if marked is not None:
            return _Window(window.start, window.end, window.before, window.after, marked)
        pos = window.end
        tried += 1
    return _window(doc.text, 0, doc.more)


def widened(plain: str, spans: tuple[tuple[int, int], ...], before: bool,
             after: bool) -> tuple[str, tuple[tuple[int, int], ...]]:
    """A window's snippet with ``…`` where the window cut text off the document, as
    snippet() marks a cut, unless the snippet already starts (ends) with one of its own."""
    if before and not plain.startswith(SNIPPET_ELLIPSIS):
        plain = SNIPPET_ELLIPSIS + plain
        shift = len(SNIPPET_ELLIPSIS)
        spans = tuple((s + shift, e + shift) for s, e in spans)
    if after and not plain.endswith(SNIPPET_ELLIPSIS):
        plain += SNIPPET_ELLIPSIS
    return plain, spans


def window_snippet(text: str, window: _Window) -> tuple[str, tuple[tuple[int, int], ...]]:
    """The snippet of a large document on SQLite: FTS5's of its window, or without a
    match, its first SNIPPET_TOKENS tokens, as snippet() shows a text it finds no match in."""
    if window.marked is not None:
        return widened(*parse_snippet(window.marked), window.before, window.after)
    first = list(islice(_TOKEN.finditer(text, window.start, window.end), SNIPPET_TOKENS))
    end = first[-1].end() if first else window.end
    after = window.after or _has_token_char(text, end, window.end)
    if not after:
        end = window.end
    return widened(*parse_snippet(text[window.start:end]), window.before, after)
