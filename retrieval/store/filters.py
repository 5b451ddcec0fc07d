"""Metadata filters compiled to SQL over ``documents.metadata`` (the language itself is
:mod:`retrieval.filters`).

Every value is a bound parameter. A field path is rendered into the SQL text (so that an
expression index made by :meth:`Store.index_field` on :func:`field_expression` serves
it); :func:`retrieval.filters.parse` has refused every character that could end the
literal. Comparisons are typed, as in MongoDB: ``json_type`` guards each comparison, so
a number never equals a string and ``true`` is not 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, false, func, literal_column, not_, or_, true
from sqlalchemy.sql.elements import ColumnElement

from retrieval.filters import Cond, Filter, FilterError, Node, Scalar
from retrieval.store.models import Document


def json_path(path: Sequence[str]) -> str:
    """The SQLite JSON path of a field path: ``$."specs"."weight_g"``."""
    return "$" + "".join(f'."{p}"' for p in path)


def _path_sql(path: Sequence[str]) -> ColumnElement[Any]:
    # Rendered into the SQL text so that an expression index on the same expression can
    # serve it; field_path() has refused every character that could end the literal.
    return literal_column("'" + json_path(path).replace("'", "''") + "'")


def field_expression(path: Sequence[str]) -> ColumnElement[Any]:
    """``json_extract(metadata, '$."a"."b"')``: what filters compare, and what an index covers."""
    return func.json_extract(Document.meta, _path_sql(path))


def index_expression(path: Sequence[str]) -> ColumnElement[Any]:
    """:func:`field_expression` as an index on ``documents`` declares it: SQLite allows no
    table-qualified column in an index expression, and matches the two all the same."""
    return func.json_extract(literal_column("metadata"), _path_sql(path))


def _type(path: Sequence[str]) -> ColumnElement[Any]:
    return func.json_type(Document.meta, _path_sql(path))


_NUMBER = ("integer", "real")


def _plain(value: str) -> bool:
    """Whether equality with ``value`` needs no type check: ``json_extract`` gives SQL text
    for JSON strings and for objects and arrays (as JSON text, which starts with ``{`` or
    ``[``), an integer for numbers and booleans, so only such a string could equal a value
    of another type. Without the check an expression index answers the filter alone."""
    return not value.startswith(("[", "{"))


def _eq(path: Sequence[str], value: Scalar) -> ColumnElement[bool]:
    if value is None:  # an explicit null, or missing
        return or_(_type(path) == "null", _type(path).is_(None))
    if isinstance(value, bool):
        return _type(path) == ("true" if value else "false")
    x = field_expression(path)
    if isinstance(value, str):
        return x == value if _plain(value) else and_(x == value, _type(path) == "text")
    return and_(x == value, _type(path).in_(_NUMBER))


def _in(path: Sequence[str], values: Sequence[Scalar]) -> ColumnElement[bool]:
    strings = sorted({v for v in values if isinstance(v, str)})
    numbers = sorted({v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)})
    x = field_expression(path)
    alts: list[ColumnElement[bool]] = []
    if strings:
        alts.append(x.in_(strings) if all(map(_plain, strings)) else and_(x.in_(strings), _type(path) == "text"))
    if numbers:
        alts.append(and_(x.in_(numbers), _type(path).in_(_NUMBER)))
    alts.extend(_eq(path, v) for v in sorted({v for v in values if isinstance(v, bool)}))
    if any(v is None for v in values):
        alts.append(_eq(path, None))
    return or_(*alts) if alts else false()


def _compare(path: Sequence[str], op: str, value: int | float | str) -> ColumnElement[bool]:
    x = field_expression(path)
    cmp = {"$gt": x > value, "$gte": x >= value, "$lt": x < value, "$lte": x <= value}[op]
    return and_(cmp, _type(path) == "text") if isinstance(value, str) else and_(cmp, _type(path).in_(_NUMBER))


def _negate(cond: ColumnElement[bool]) -> ColumnElement[bool]:
    # A positive condition may be NULL where the field is missing, which a WHERE treats as
    # false but NOT keeps NULL: negations see it as false first. (Positive conditions stay
    # bare, so that an expression index can serve them.)
    return not_(func.coalesce(cond, false()))


def _cond(c: Cond) -> ColumnElement[bool]:
    if c.op == "$eq":
        return _eq(c.path, c.value)
    if c.op == "$ne":
        return _negate(_eq(c.path, c.value))
    if c.op == "$in":
        return _in(c.path, c.value)
    if c.op == "$nin":
        return _negate(_in(c.path, c.value))
    if c.op == "$exists":
        present = _type(c.path).is_not(None)
        return present if c.value else not_(present)
    return _compare(c.path, c.op, c.value)


def _compile(node: Node) -> ColumnElement[bool]:
    if isinstance(node, Cond):
        return _cond(node)
    parts = [_compile(p) for p in node.parts]
    if node.op == "$and":
        return and_(true(), *parts)
    if node.op == "$or":
        return or_(false(), *parts)
    return _negate(parts[0])


def compile_sqlite(f: Filter) -> ColumnElement[bool]:
    """The filter as a condition over ``documents`` (SQLite's JSON functions)."""
    return _compile(f.root)


def compile_filter(f: Filter, dialect: str) -> ColumnElement[bool]:
    if dialect == "sqlite":
        return compile_sqlite(f)
    # PostgreSQL (jsonb operators) comes with the PostgreSQL issue.
    raise FilterError(f"metadata filters are not available on {dialect} yet")


__all__ = ["compile_filter", "compile_sqlite", "field_expression", "index_expression", "json_path"]
