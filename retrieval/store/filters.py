"""Metadata filters compiled to SQL over ``documents.metadata`` (the language itself is
:mod:`retrieval.filters`): SQLite's JSON functions, or PostgreSQL's jsonb operators.

Every value is a bound parameter. A field path is rendered into the SQL text (so that an
expression index made by :meth:`Store.index_field` on :func:`field_expression` serves
it); :func:`retrieval.filters.parse` has refused every character that could end the
literal. Comparisons are typed, as in MongoDB: ``json_type`` guards each comparison, so
a number never equals a string and ``true`` is not 1.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, any_, bindparam, false, func, literal_column, not_, or_, true
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.sql.elements import ColumnElement

from retrieval.filters import Cond, Filter, FilterError, Node, Scalar
from retrieval.store.models import Document


def json_path(path: Sequence[str]) -> str:
    """The SQLite JSON path of a field path: ``$."specs"."weight_g"``."""
    return "$" + "".join(f'."{p}"' for p in path)


def index_name(path: Sequence[str]) -> str:
    """The name :meth:`Store.index_field` gives the index on a field."""
    return "ix_meta_" + hashlib.sha1(json_path(path).encode()).hexdigest()[:10]


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


def _exists(path: Sequence[str]) -> ColumnElement[bool]:
    return _type(path).is_not(None)


class _Dialect:
    """What a compiler needs from a database: equality, membership, order, presence."""

    def __init__(self, eq: Callable[[Sequence[str], Scalar], ColumnElement[bool]],
                 in_: Callable[[Sequence[str], Sequence[Scalar]], ColumnElement[bool]],
                 compare: Callable[[Sequence[str], str, Any], ColumnElement[bool]],
                 exists: Callable[[Sequence[str]], ColumnElement[bool]]) -> None:
        self.eq, self.in_, self.compare, self.exists = eq, in_, compare, exists


# -- PostgreSQL: jsonb ---------------------------------------------------------------
#
# jsonb equality is typed already (1 = 1.0, "1" <> 1, true <> 1), so equality needs no
# type guard. Equality with a string, number or boolean is written as containment,
# ``metadata @> '{"a": {"b": v}}'``, which revision 0003's GIN index (jsonb_path_ops)
# serves for every field; for scalars it means exactly equality (an array holding v does
# not contain {"a": v} below the top level). Order comparisons are guarded by
# jsonb_typeof; strings compare by code point (COLLATE "C"), as on SQLite.
#
# Two things jsonb cannot hold need care to keep SQLite's (and Python's) answers:
#
# * NUL: no jsonb string contains U+0000 (nor may a text parameter), so a value with one
#   equals nothing, and orders against stored strings as its part before the NUL does;
# * the difference between an integer and a double beyond 2**53. jsonb numbers are exact
#   decimals, and a double arrives as its shortest repr: 2.0**60 is stored as
#   1152921504606847000, although it is the integer 2**60 = 1152921504606846976, which
#   SQLite and Python compare it with exactly. So a number at or beyond 2**53 is compared
#   by its exact value, and also with the repr of the double nearest it (its "twin"),
#   which stands for that double wherever the two differ. jsonb cannot tell an integer
#   from a double whose repr it is: a stored number equal to a twin's repr is read as
#   that double, any other as the integer it is (so the double 1e30, stored as 10**30,
#   equals the filter value 10**30).


def _pg_path(path: Sequence[str]) -> str:
    # Rendered into the SQL text for the same reason as SQLite's path (an expression
    # index made by index-field serves it); field_path() refused every quote.
    return "".join(f" -> '{p}'" for p in path)


def pg_field_expression(path: Sequence[str], *, qualified: bool = True) -> ColumnElement[Any]:
    """``documents.metadata -> 'a' -> 'b'`` (jsonb): what filters compare, and what an index covers."""
    return literal_column(("documents.metadata" if qualified else "metadata") + _pg_path(path), type_=JSONB)


def _pg_text(path: Sequence[str]) -> ColumnElement[Any]:
    # Parenthesised, so that a COLLATE after it applies to the value and not to the key.
    head, last = list(path[:-1]), path[-1]
    return literal_column(f"(documents.metadata{_pg_path(head)} ->> '{last}')")


def _pg_typeof(path: Sequence[str]) -> ColumnElement[Any]:
    return func.jsonb_typeof(pg_field_expression(path))


def _nest(path: Sequence[str], value: Scalar) -> Any:
    doc: Any = value
    for p in reversed(path):
        doc = {p: doc}
    return doc


_EXACT = 2**53  # below it every integer is a double, and a double's repr orders as the double does


def _pg_number(value: int | float) -> tuple[int | float, float | None]:
    """A filter's number as jsonb should see it: its exact value (an integer from 2**53
    on), and the twin double whose stored repr differs from that value, or None."""
    if abs(value) < _EXACT:
        return value, None
    exact = int(value)  # a double this large is integral
    try:
        twin = float(value)
    except OverflowError:  # no double is that large
        return exact, None
    return exact, (None if Decimal(repr(twin)) == exact else twin)


def _pg_values(value: Scalar) -> list[Scalar]:
    """The jsonb values that equal ``value`` as SQLite and Python compare (none for a string with NUL)."""
    if isinstance(value, str):
        return [] if "\x00" in value else [value]
    if isinstance(value, bool) or value is None:
        return [value]
    exact, twin = _pg_number(value)
    return [exact] if twin is None or twin != exact else [exact, twin]


def _pg_contains(path: Sequence[str], value: Scalar) -> ColumnElement[bool]:
    return literal_column("documents.metadata").op("@>")(bindparam(None, _nest(path, value), type_=JSONB))


def _pg_eq(path: Sequence[str], value: Scalar) -> ColumnElement[bool]:
    if value is None:
        return or_(pg_field_expression(path).is_(None), _pg_typeof(path) == "null")
    alts = [_pg_contains(path, v) for v in _pg_values(value)]
    return or_(*alts) if len(alts) > 1 else alts[0] if alts else false()


# Up to this many values, $in is ORed containments (each served by the GIN index); more
# are compared with one = ANY(array), a single parameter (an IN list of 10,000 took a
# bound parameter each, and PostgreSQL refuses a statement of more than 65,535).
_PG_IN_CONTAINS = 64


def _pg_in(path: Sequence[str], values: Sequence[Scalar]) -> ColumnElement[bool]:
    # One of each value by its JSON form (1 and 1.0 are one value to jsonb, True is not 1).
    wanted = (w for v in values if v is not None for w in _pg_values(v))
    present = [json.loads(v) for v in dict.fromkeys(json.dumps(w) for w in wanted)]
    alts: list[ColumnElement[bool]] = []
    if len(present) <= _PG_IN_CONTAINS:
        alts.extend(_pg_contains(path, v) for v in present)
    else:
        alts.append(pg_field_expression(path) == any_(bindparam(None, present, type_=ARRAY(JSONB))))
    if any(v is None for v in values):
        alts.append(_pg_eq(path, None))
    return or_(*alts) if alts else false()


_ORDER: dict[str, Callable[[Any, Any], Any]] = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt,
                                                "$lte": operator.le}


def _pg_compare(path: Sequence[str], op: str, value: int | float | str) -> ColumnElement[bool]:
    if isinstance(value, str):
        if "\x00" in value:  # stored strings have no NUL: order against the part before it
            value, op = value[: value.index("\x00")], ("$gt" if op in ("$gt", "$gte") else "$lte")
        return and_(_pg_typeof(path) == "string", _ORDER[op](_pg_text(path).collate("C"), value))
    x = pg_field_expression(path)
    exact, twin = _pg_number(value)
    cmp = _ORDER[op](x, bindparam(None, exact, type_=JSONB))
    if twin is not None:  # the twin's repr may sit on the other side of the exact value
        truth, stored = _ORDER[op](twin, exact), _ORDER[op](Decimal(repr(twin)), exact)
        if truth and not stored:
            cmp = or_(cmp, x == bindparam(None, twin, type_=JSONB))
        elif stored and not truth:
            cmp = and_(cmp, x != bindparam(None, twin, type_=JSONB))
    return and_(_pg_typeof(path) == "number", cmp)


def _pg_exists(path: Sequence[str]) -> ColumnElement[bool]:
    return pg_field_expression(path).is_not(None)


_SQLITE = _Dialect(_eq, _in, _compare, _exists)
_POSTGRES = _Dialect(_pg_eq, _pg_in, _pg_compare, _pg_exists)


def _cond(c: Cond, d: _Dialect) -> ColumnElement[bool]:
    if c.op == "$eq":
        return d.eq(c.path, c.value)
    if c.op == "$ne":
        return _negate(d.eq(c.path, c.value))
    if c.op == "$in":
        return d.in_(c.path, c.value)
    if c.op == "$nin":
        return _negate(d.in_(c.path, c.value))
    if c.op == "$exists":
        present = d.exists(c.path)
        return present if c.value else not_(present)
    return d.compare(c.path, c.op, c.value)


def _compile(node: Node, d: _Dialect) -> ColumnElement[bool]:
    if isinstance(node, Cond):
        return _cond(node, d)
    parts = [_compile(p, d) for p in node.parts]
    if node.op == "$and":
        return and_(true(), *parts)
    if node.op == "$or":
        return or_(false(), *parts)
    return _negate(parts[0])


def compile_sqlite(f: Filter) -> ColumnElement[bool]:
    """The filter as a condition over ``documents`` (SQLite's JSON functions)."""
    return _compile(f.root, _SQLITE)


def compile_filter(f: Filter, dialect: str) -> ColumnElement[bool]:
    """The filter as a condition over ``documents`` for the database ``dialect``."""
    if dialect == "sqlite":
        return compile_sqlite(f)
    if dialect == "postgresql":
        return _compile(f.root, _POSTGRES)
    raise FilterError(f"metadata filters are not available on {dialect}")


__all__ = ["compile_filter", "compile_sqlite", "field_expression", "index_expression", "index_name", "json_path",
           "pg_field_expression"]
