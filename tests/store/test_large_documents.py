"""Snippets of large documents: FTS5's snippet() (PostgreSQL: ts_headline) of a bounded
window around the document's first match, never of the whole stored row, whose cost
grows with the square of its matches (see retrieval/store/keyword.py).

No timing here. A statement hook shows which rows snippet() runs on, and the window's
snippet is compared with FTS5's own snippet() of the whole row where the two must agree
(one match). The tests marked ``both_databases`` run on SQLite and on PostgreSQL; the
thresholds are lowered (monkeypatch) where a small document stands for a large one.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import make_url

from retrieval.store import windows
from retrieval.store.keyword import keyword_search, keyword_snippets
from retrieval.store.models import Document
from retrieval.store.records import NewDocument
from retrieval.store.repository import Store
from retrieval.store.terms import (
    SNIPPET_CLOSE,
    SNIPPET_ELLIPSIS,
    SNIPPET_OPEN,
    SNIPPET_TOKENS,
    KeywordHit,
    fts_query,
    parse_snippet,
)
from retrieval.store.windows import FTS5_TOKENIZE, SNIPPET_MAX_TOKENS

both_databases = pytest.mark.both_databases

# Filler without the words the tests search for (nor words that start like them).
SENTENCES = (
    "The committee met on Tuesday to review the quarterly figures.",
    "Several members asked for a clearer account of the travel costs.",
    "A new printer was ordered for the second floor office.",
    "Minutes of the previous meeting were read and approved.",
    "The treasurer presented a summary of income and expenses.",
    "Volunteers will paint the hall before the autumn fair.",
    "Questions about parking were deferred to the next session.",
    "The library asked for donations of children's books.",
)
TAIL = "Waterproof hiking boots with a sturdy sole."
EARLY = "These boots are fine."


def filler(size: int, start: int = 0) -> str:
    """About ``size`` characters of numbered sentences."""
    parts: list[str] = []
    n = 0
    i = start
    while n < size:
        sentence = f"Item {i}. {SENTENCES[i % len(SENTENCES)]}"
        parts.append(sentence)
        n += len(sentence) + 1
        i += 1
    return " ".join(parts)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store.open(database_url)
    yield s
    s.close()


def put(store: Store, **texts: str) -> dict[str, int]:
    """Upsert documents by external id; their internal ids."""
    store.upsert([NewDocument(key, text, {}) for key, text in texts.items()])
    with store.connection() as conn:
        rows = conn.execute(select(Document.external_id, Document.id).where(Document.external_id.in_(list(texts))))
        return {str(r[0]): int(r[1]) for r in rows}


def hits(store: Store, query: str) -> dict[int, KeywordHit]:
    with store.connection() as conn:
        return {h.id: h for h in keyword_search(conn, query, 10)}


def words(snippet: str, highlights: tuple[tuple[int, int], ...]) -> list[str]:
    assert all(0 <= s < e <= len(snippet) for s, e in highlights)
    return [snippet[s:e] for s, e in highlights]


@contextmanager
def statements(store: Store) -> Iterator[list[tuple[str, list[Any]]]]:
    """Every statement run on the store's engine while inside, with its parameter values."""
    seen: list[tuple[str, list[Any]]] = []

    def hook(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        values = list(parameters.values()) if isinstance(parameters, dict) else list(parameters or ())
        seen.append((statement, values))

    event.listen(store.engine, "before_cursor_execute", hook)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", hook)


def snippet_ids(seen: list[tuple[str, list[Any]]]) -> set[int]:
    """The ids of the stored rows that FTS5's snippet() ran on (SQLite): the parameters
    after the MATCH expression, the last string, in its statements."""
    out: set[int] = set()
    for sql, values in seen:
        if "snippet(" in sql:
            last = max(k for k, v in enumerate(values) if isinstance(v, str))
            out.update(v for v in values[last + 1:] if isinstance(v, int))
    return out


def fts5_snippet(store: Store, query: str, doc_id: int) -> tuple[str, tuple[tuple[int, int], ...]]:
    """FTS5's own snippet() of the stored row, as keyword_snippets asks it of a small one."""
    con = sqlite3.connect(Path(make_url(store.url).database or ""))
    try:
        row = con.execute(
            "SELECT snippet(documents_fts, 0, ?, ?, ?, ?) FROM documents_fts WHERE documents_fts MATCH ? AND rowid = ?",
            (SNIPPET_OPEN, SNIPPET_CLOSE, SNIPPET_ELLIPSIS, SNIPPET_TOKENS, fts_query(query), doc_id),
        ).fetchone()
    finally:
        con.close()
    assert row is not None
    return parse_snippet(row[0])


# -- a 1 MB document -----------------------------------------------------------------


@both_databases
def test_a_1mb_documents_snippet_is_a_window_around_its_first_match(store: Store) -> None:
    big = filler(300_000) + f" {EARLY} " + filler(700_000, 5000) + f" {TAIL} " + filler(2_000, 20_000)
    assert len(big.encode()) > 1_000_000
    ids = put(store, big=big, rain="Boots for the rain.")
    with statements(store) as seen:
        result = hits(store, "waterproof")  # only near the end
    (hit,) = result.values()
    assert hit.id == ids["big"]
    assert hit.snippet.startswith(SNIPPET_ELLIPSIS) and hit.snippet.endswith(SNIPPET_ELLIPSIS)
    assert len(hit.snippet) < 500 and len(hit.snippet.split()) <= SNIPPET_TOKENS + 1
    assert words(hit.snippet, hit.highlights) == ["Waterproof"]
    assert big.rindex(hit.snippet.strip(SNIPPET_ELLIPSIS)) > len(big) - 3_000
    if store.engine.dialect.name == "sqlite":
        assert ids["big"] not in snippet_ids(seen)
    else:  # the window's text is what ts_headline is given, as a parameter
        windows = [v for _, values in seen for v in values if isinstance(v, str) and TAIL in v]
        assert windows and all(len(w) < 3_000 for w in windows)

    # The first match, not the best: the whole row's snippet would show both terms at the end.
    with statements(store) as seen:
        result = hits(store, "waterproof boots")
    assert set(result) == {ids["big"], ids["rain"]}
    first = result[ids["big"]]
    assert words(first.snippet, first.highlights) == ["boots"]
    assert "are fine" in first.snippet and first.snippet.startswith(SNIPPET_ELLIPSIS)
    assert words(result[ids["rain"]].snippet, result[ids["rain"]].highlights) == ["Boots"]
    if store.engine.dialect.name == "sqlite":
        shown = snippet_ids(seen)
        assert ids["rain"] in shown and ids["big"] not in shown  # the hook sees snippet() on small rows
    with store.connection() as conn:
        assert keyword_snippets(conn, "waterproof boots", [ids["big"], ids["rain"]]) == {
            i: (h.snippet, h.highlights) for i, h in result.items()}


@both_databases
def test_search_modes_bound_the_snippet_of_a_large_document(make_retriever: Any) -> None:
    r = make_retriever()
    big = filler(1_000_000) + f" {TAIL} " + filler(1_000, 30_000)
    r.ingest([{"id": "big", "text": big}, {"id": "rain", "text": "Boots for the rain."},
              {"id": "tea", "text": "A teapot for green tea."}])
    for mode in ("keyword", "hybrid"):
        found = {h.id: h for h in r.search("waterproof boots", k=3, mode=mode)}
        assert {"big", "rain"} <= set(found), mode
        hit = found["big"]
        assert hit.mode == mode and hit.text == big
        assert hit.snippet is not None and len(hit.snippet) < 500 and hit.snippet.startswith(SNIPPET_ELLIPSIS)
        assert words(hit.snippet, hit.highlights) == ["Waterproof", "boots"], mode
        small = found["rain"]
        assert small.snippet == "Boots for the rain." and words(small.snippet, small.highlights) == ["Boots"]


# -- small documents keep FTS5's own snippet() ------------------------------------------


def test_up_to_the_threshold_fts5_runs_on_the_stored_row(store: Store) -> None:
    at = " ".join(["alpha"] * (SNIPPET_MAX_TOKENS - 1) + ["zebra"])
    over = "alpha " + at
    small = "Zebra crossings. " + filler(400)
    ids = put(store, at=at, over=over, small=small)
    with statements(store) as seen, store.connection() as conn:
        got = keyword_snippets(conn, "zebra", list(ids.values()))
    shown = snippet_ids(seen)
    assert ids["at"] in shown and ids["small"] in shown and ids["over"] not in shown
    for key, i in ids.items():  # one match each: the window's snippet is FTS5's of the whole row
        assert got[i] == fts5_snippet(store, "zebra", i), key
    assert got[ids["over"]][0] == SNIPPET_ELLIPSIS + " ".join(["alpha"] * (SNIPPET_TOKENS - 1) + ["zebra"])


@pytest.mark.parametrize(("query", "sentence", "expected"), [
    ("waterproof boots", TAIL, ["Waterproof", "boots"]),
    ("creme", "Crème brûlée for dessert.", ["Crème"]),
    ("CRÈME", "CRE\u0300ME brûlée for dessert.", ["CRE\u0300ME"]),  # decomposed
    ("happy", "Their happiness showed.", ["happiness"]),  # Porter: happi
    ("hopes", "We are hoping for sun.", ["hoping"]),  # Porter: hope
    ("t-shirt", "Two T-shirts and a scarf.", ["T-shirts"]),  # a phrase
    ("run", " ".join(["The runtime is slow."] * 40) + " Keep running.", ["running"]),  # 40 words start like it
])
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_a_windows_snippet_is_fts5s_snippet_of_the_whole_row(store: Store, monkeypatch: pytest.MonkeyPatch,
                                                             query: str, sentence: str, expected: list[str],
                                                             where: str) -> None:
    """With one match, FTS5's snippet() of the whole row and of the window agree, ellipses
    and the document's edges included; the scan finds the match whatever its case,
    diacritics (composed or not) and Porter stem."""
    monkeypatch.setattr(windows, "SNIPPET_MAX_TOKENS", 64)
    before = filler(20_000) if where != "start" else ""
    after = filler(20_000, 400) if where != "end" else ""
    ids = put(store, doc=" ".join(p for p in (before, sentence, after) if p))
    with statements(store) as seen, store.connection() as conn:
        got = keyword_snippets(conn, query, [ids["doc"]])[ids["doc"]]
    assert ids["doc"] not in snippet_ids(seen)
    assert got == fts5_snippet(store, query, ids["doc"])
    assert words(*got) == expected


@both_databases
def test_without_a_match_in_reach_the_snippet_is_the_documents_start(store: Store,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A match past SCAN_LIMIT (a document longer than any within the size limit) is not
    looked for: the snippet is the document's first words, as snippet() shows a text
    without a match, and the search still finds the document."""
    for name, value in (("SNIPPET_MAX_TOKENS", 64), ("HEADLINE_MAX_BYTES", 512), ("SCAN_LIMIT", 8_192),
                        ("PREFIX_CHARS", 2_048)):
        monkeypatch.setattr(windows, name, value)
    doc = filler(50_000) + f" {TAIL}"
    ids = put(store, doc=doc)
    (hit,) = hits(store, "waterproof").values()
    assert hit.id == ids["doc"] and hit.highlights == ()
    assert hit.snippet.endswith(SNIPPET_ELLIPSIS) and doc.startswith(hit.snippet.rstrip(SNIPPET_ELLIPSIS))
    if store.engine.dialect.name == "sqlite":
        first = list(re.finditer(r"\w+", doc))[SNIPPET_TOKENS - 1]
        assert hit.snippet == doc[: first.end()] + SNIPPET_ELLIPSIS
    else:
        assert 0 < len(hit.snippet.split()) <= SNIPPET_TOKENS


@both_databases
def test_highlights_stay_within_snippets_whatever_the_window(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows at the start, the end and in between, long words at their edges, stray
    marker characters in the text: offsets always lie within the snippet."""
    huge = "中文" * 20_000 + " boots " + "x" * 40_000
    monkeypatch.setattr(windows, "SNIPPET_MAX_TOKENS", 32)
    monkeypatch.setattr(windows, "HEADLINE_MAX_BYTES", 256)
    long_word = "x" * 3_000
    texts = {
        "start": "boots " + filler(5_000),
        "end": filler(5_000) + " boots",
        "long": f"{long_word} boots {long_word} " + filler(2_000),
        "marker": filler(3_000) + f" a {SNIPPET_OPEN}stray boots{SNIPPET_CLOSE} b " + filler(3_000, 99),
        "huge": huge,
    }
    ids = put(store, **texts)
    result = hits(store, "boots")
    assert set(result) == set(ids.values())
    for key, i in ids.items():
        hit = result[i]
        assert "boots" in words(hit.snippet, hit.highlights), key
        assert len(hit.snippet) < 3_000, key
    assert not result[ids["start"]].snippet.startswith(SNIPPET_ELLIPSIS)
    assert not result[ids["end"]].snippet.endswith(SNIPPET_ELLIPSIS)
    # Three tokens, but 120 KB: snippet() of the whole row would return the tokens whole.
    assert len(huge.split()) == 3 and len(huge.encode()) > windows.SNIPPET_MAX_BYTES
    if store.engine.dialect.name == "sqlite":
        monkeypatch.setattr(windows, "SNIPPET_MAX_TOKENS", SNIPPET_MAX_TOKENS)
        with statements(store) as seen, store.connection() as conn:
            assert keyword_snippets(conn, "boots", [ids["huge"]]) == {
                ids["huge"]: (result[ids["huge"]].snippet, result[ids["huge"]].highlights)}
        assert ids["huge"] not in snippet_ids(seen)


def test_the_scratch_table_tokenizes_as_revision_0002(store: Store) -> None:
    with store.connection() as conn:
        sql = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'documents_fts'").scalar()
    assert f"tokenize='{FTS5_TOKENIZE}'" in str(sql)
