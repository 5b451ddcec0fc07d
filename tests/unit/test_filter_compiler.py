"""The metadata filter compiler (``retrieval.store.filters.compile_filter``) on its own.

Two halves. The SQL it writes, compiled with SQLAlchemy's own dialects (no server): every
value is a bound parameter and never part of the SQL text, the text depends on a
filter's shape and not on its values, comparisons carry their type guards, and paths
reach into nested objects. Then the SQLite conditions run for real against a bare
``documents`` table in memory whose rows are chosen for the edges (a number, the same
number as a string, ``true``, ``1``, an array, an object, an explicit null, a missing
field, no metadata at all), each filter's matches worked out by hand.

tests/search/test_filters.py runs the language end to end (property tests against a
Python oracle, filtered search against brute force) on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, null, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import psycopg
from sqlalchemy.engine import Connection
from sqlalchemy.sql.compiler import Compiled

from retrieval.filters import Filter, FilterError, parse
from retrieval.store.filters import compile_filter
from retrieval.store.models import Document

DIALECTS = {"sqlite": sqlite.dialect(), "postgresql": psycopg.dialect()}


def where(expr: dict[str, Any]) -> Filter:
    f = parse(expr)
    assert f is not None
    return f


def compiled(expr: dict[str, Any], dialect: str) -> Compiled:
    return select(Document.id).where(compile_filter(where(expr), dialect)).compile(dialect=DIALECTS[dialect])


def sql(expr: dict[str, Any], dialect: str) -> str:
    """The condition's SQL text (after WHERE)."""
    return compiled(expr, dialect).string.split("WHERE", 1)[1].strip()


def values(obj: Any) -> Iterator[Any]:
    """Every scalar inside bound parameters (JSON documents and lists included)."""
    if isinstance(obj, dict):
        for v in obj.values():
            yield from values(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from values(v)
    else:
        yield obj


# -- the SQL it writes -------------------------------------------------------------------

SENTINEL_S = "zq'sentinel\" OR 1=1 --"
SENTINEL_N = 7654321.25

BOUND = [
    {"f": SENTINEL_S},
    {"f": {"$ne": SENTINEL_S}},
    {"f": SENTINEL_N},
    {"f.g": {"$gt": SENTINEL_N}},
    {"f": {"$lte": SENTINEL_S}},
    {"f": {"$in": [SENTINEL_S, SENTINEL_N, True]}},
    {"f": {"$nin": [SENTINEL_S, SENTINEL_N]}},
    {"f": {"$in": [SENTINEL_S] + [f"v{i}" for i in range(100)]}},  # beyond PostgreSQL's ORed containments
    {"$or": [{"f": SENTINEL_S}, {"$not": {"g": {"$gte": SENTINEL_N}}}]},
]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("expr", BOUND, ids=[str(i) for i in range(len(BOUND))])
def test_values_are_bound_parameters_never_sql_text(expr: dict[str, Any], dialect: str) -> None:
    c = compiled(expr, dialect)
    text = c.string
    assert "sentinel" not in text and "7654321" not in text
    bound = list(values(c.params))
    assert any(v == SENTINEL_S for v in bound) or any(v == SENTINEL_N for v in bound)


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(("one", "other"), [
    ({"f": 5}, {"f": 7.5}),
    ({"f": "red"}, {"f": "blue"}),
    ({"f.g": {"$lt": 3}}, {"f.g": {"$lt": 4}}),
    ({"f": {"$gte": "a"}}, {"f": {"$gte": "zz"}}),
    ({"f": {"$in": ["a", "b"]}}, {"f": {"$in": ["c", "d"]}}),
    ({"f": {"$ne": True}}, {"f": {"$ne": False}}),
])
def test_the_sql_text_depends_on_the_shape_not_the_values(one: dict[str, Any], other: dict[str, Any],
                                                          dialect: str) -> None:
    # So a statement cache (and PostgreSQL's plan cache) sees one statement per shape.
    assert compiled(one, dialect).string == compiled(other, dialect).string
    assert compiled(one, dialect).params != compiled(other, dialect).params


def test_nested_paths_reach_into_objects_on_both_databases() -> None:
    assert "json_extract(documents.metadata, '$.\"specs\".\"w\"')" in sql({"specs.w": {"$lt": 3}}, "sqlite")
    assert "documents.metadata -> 'specs' -> 'w'" in sql({"specs.w": {"$lt": 3}}, "postgresql")
    # PostgreSQL's equality is containment of the nested document (its GIN index serves it).
    c = compiled({"specs.brand": "acme"}, "postgresql")
    assert "documents.metadata @> " in c.string
    assert list(c.params.values()) == [{"specs": {"brand": "acme"}}]


def test_sqlite_comparisons_are_guarded_by_type() -> None:
    number = compiled({"f": {"$gt": 2}}, "sqlite")
    assert "json_type(documents.metadata, '$.\"f\"') IN " in number.string
    assert ["integer", "real"] in number.params.values()
    string = compiled({"f": {"$gt": "m"}}, "sqlite")
    assert "json_type(documents.metadata, '$.\"f\"') = ?" in string.string and "text" in string.params.values()
    assert "json_type" in sql({"f": 5}, "sqlite")  # 5 is not "5", nor true
    assert "json_type(documents.metadata, '$.\"f\"') = ?" in sql({"f": True}, "sqlite")
    # A plain string needs no guard (json_extract gives text only for strings, or for
    # arrays and objects as JSON text, which starts with [ or {): an expression index
    # answers such a filter alone. A string that looks like JSON text keeps the guard.
    assert "json_type" not in sql({"f": "red"}, "sqlite")
    assert "json_type" in sql({"f": "[1]"}, "sqlite") and "json_type" in sql({"f": "{}"}, "sqlite")


def test_postgresql_comparisons_are_guarded_by_type() -> None:
    number = compiled({"f": {"$lt": 3}}, "postgresql")
    assert "jsonb_typeof(documents.metadata -> 'f') = " in number.string and "number" in number.params.values()
    string = compiled({"f": {"$lt": "m"}}, "postgresql")
    assert "jsonb_typeof(documents.metadata -> 'f') = " in string.string and "string" in string.params.values()
    assert "COLLATE \"C\"" in string.string  # by code point, as SQLite and Python order strings


def test_exists_tests_the_presence_of_the_path() -> None:
    assert sql({"f.g": {"$exists": True}}, "sqlite") == "json_type(documents.metadata, '$.\"f\".\"g\"') IS NOT NULL"
    assert sql({"f.g": {"$exists": False}}, "sqlite") == "json_type(documents.metadata, '$.\"f\".\"g\"') IS NULL"
    assert sql({"f.g": {"$exists": True}}, "postgresql") == "documents.metadata -> 'f' -> 'g' IS NOT NULL"
    assert sql({"f.g": {"$exists": False}}, "postgresql") == "documents.metadata -> 'f' -> 'g' IS NULL"


@pytest.mark.parametrize("expr", [{"f": {"$ne": 5}}, {"f": {"$nin": ["a"]}}, {"$not": {"f": {"$lt": 5}}}])
def test_negations_read_a_missing_field_as_false_first(expr: dict[str, Any]) -> None:
    # The positive condition is NULL where the field is missing; NOT NULL is NULL, which
    # a WHERE drops: the negation must coalesce it to false before negating.
    assert sql(expr, "sqlite").startswith("coalesce(") and sql(expr, "sqlite").endswith(", 0) = 0")
    assert sql(expr, "postgresql").startswith("NOT coalesce(") and sql(expr, "postgresql").endswith(", false)")


def test_postgresql_in_lists_are_containments_then_one_array_parameter() -> None:
    few = compiled({"f": {"$in": [f"v{i}" for i in range(64)]}}, "postgresql")
    assert few.string.count("@>") == 64 and len(few.params) == 64
    many = compiled({"f": {"$in": [f"v{i}" for i in range(65)]}}, "postgresql")
    assert "@>" not in many.string and "= ANY (" in many.string
    assert list(many.params.values()) == [[f"v{i}" for i in range(65)]]  # one parameter, whatever the length


def test_a_string_with_nul_equals_nothing_on_postgresql() -> None:
    # jsonb holds no U+0000: no stored string can equal it.
    assert sql({"f": "a\x00b"}, "postgresql") == "false"


def test_an_unknown_dialect_is_refused() -> None:
    with pytest.raises(FilterError, match="metadata filters are not available on mysql"):
        compile_filter(where({"f": 1}), "mysql")


# -- the SQLite conditions, run -------------------------------------------------------

ROWS: dict[str, Any] = {
    "int": {"v": 5, "tag": "red", "specs": {"w": 250, "brand": "acme"}},
    "float": {"v": 5.0, "tag": None},
    "str": {"v": "5", "tag": "blue"},
    "true": {"v": True},
    "one": {"v": 1},
    "array": {"v": [5]},
    "object": {"v": {"x": 5}, "specs": {"w": 900}},
    "null": {"v": None},
    "jsonish": {"tag": "[1]"},
    "list": {"tag": [1]},
    "empty": {},
    "no_metadata": null(),  # SQL NULL
}
WITHOUT_V = {"jsonish", "list", "empty", "no_metadata"}
ALL = set(ROWS)

RUN = [
    ({"v": 5}, {"int", "float"}),  # 5 and 5.0 are one number; "5", true and [5] are not it
    ({"v": 1}, {"one"}),  # true is not 1
    ({"v": True}, {"true"}),
    ({"v": "5"}, {"str"}),
    ({"v": None}, {"null"} | WITHOUT_V),  # an explicit null, or missing
    ({"v": {"$ne": 5}}, ALL - {"int", "float"}),  # $ne matches where the field is missing
    ({"v": {"$ne": None}}, ALL - {"null"} - WITHOUT_V),
    ({"v": {"$exists": True}}, ALL - WITHOUT_V),  # an explicit null exists
    ({"v": {"$exists": False}}, WITHOUT_V),
    ({"v": {"$gt": 2}}, {"int", "float"}),  # numbers only: not "5", not true, not [5]
    ({"v": {"$lt": 5}}, {"one"}),
    ({"v": {"$gte": "4"}}, {"str"}),  # strings only, by code point
    ({"v": {"$in": [5, "x"]}}, {"int", "float"}),
    ({"v": {"$in": [True, None]}}, {"true", "null"} | WITHOUT_V),
    ({"v": {"$nin": [5, None]}}, {"str", "true", "one", "array", "object"}),
    ({"v": {"$in": []}}, set()),
    ({"v": {"$nin": []}}, ALL),
    ({"specs.w": {"$lte": 300}}, {"int"}),
    ({"specs.brand": "acme"}, {"int"}),
    ({"specs.w": {"$exists": False}}, ALL - {"int", "object"}),
    ({"tag": "[1]"}, {"jsonish"}),  # the array [1] reads as the text [1]: the type guard tells them apart
    ({"tag": {"$ne": "red"}}, ALL - {"int"}),
    ({"$not": {"v": 5}}, ALL - {"int", "float"}),
    ({"$not": {"v": {"$gt": 2}}}, ALL - {"int", "float"}),
    ({"$or": [{"v": "5"}, {"specs.w": {"$gt": 500}}]}, {"str", "object"}),
    ({"$and": [{"v": {"$exists": True}}, {"tag": None}]}, {"float", "true", "one", "array", "object", "null"}),
    ({"$not": {"$or": [{"v": {"$exists": False}}, {"v": {"$lt": 10}}]}}, {"str", "true", "array", "object", "null"}),
]


@pytest.fixture(scope="module")
def table() -> Iterator[Connection]:
    """A bare ``documents`` table in an in-memory SQLite database, holding :data:`ROWS`."""
    engine = create_engine("sqlite://")
    Document.__table__.create(engine)
    with engine.begin() as conn:
        conn.execute(Document.__table__.insert(), [{"external_id": name, "text": name, "metadata": meta}
                                                   for name, meta in ROWS.items()])
    with engine.connect() as conn:
        yield conn
    engine.dispose()


@pytest.mark.parametrize(("expr", "expected"), RUN, ids=[str(e) for e, _ in RUN])
def test_sqlite_conditions_match_the_rows_they_say(table: Connection, expr: dict[str, Any], expected: set[str]) -> None:
    matched = set(table.scalars(select(Document.external_id).where(compile_filter(where(expr), "sqlite"))))
    assert matched == expected


def test_the_rows_are_what_they_seem(table: Connection) -> None:
    stored = {name: meta for name, meta in table.execute(select(Document.external_id, Document.meta))}
    assert stored["no_metadata"] is None and stored["empty"] == {} and stored["array"] == {"v": [5]}
