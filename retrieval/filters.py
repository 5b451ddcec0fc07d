"""Metadata filters: one language for Python, HTTP and the command line, run in the database.

The language is the one users know from Chroma and MongoDB::

    {"category": "footwear", "price": {"$lt": 100}}
    {"$or": [{"brand": {"$in": ["acme", "zenith"]}}, {"specs.weight_g": {"$lte": 250}}]}

* a field maps to a value (equality) or to an object of operators, ANDed:
  ``$eq $ne $gt $gte $lt $lte $in $nin $exists``;
* ``$and`` and ``$or`` take a list of filters, ``$not`` one filter;
* a dotted path (``specs.weight_g``) reaches into nested objects.

Comparisons are typed, as in MongoDB: a number matches only numbers, a string only
strings, ``true`` only ``true``; ``$gt``/``$lt`` order numbers numerically and strings by
code point. ``{"field": null}`` matches an explicit null or a missing field; ``$ne`` and
``$nin`` match documents where the field is missing.

:func:`parse` checks an expression and names the offending part when it is wrong, and
:func:`from_cli` reads the command line's ``--where`` shorthand. This module is the
language only (it imports no SQLAlchemy, so `retrieve search --server` stays light);
:mod:`retrieval.store.filters` compiles it to SQL. A field path may not contain quotes,
backslashes, brackets or control characters, because the compiler renders paths into the
SQL text so that expression indexes can serve them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from retrieval.errors import ArgumentError


class FilterError(ArgumentError):
    """A metadata filter that is not valid; the message names the offending part."""

    http_status = 400
    code = "invalid_filter"


COMPARISONS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")
OPERATORS = (*COMPARISONS, "$in", "$nin", "$exists")
LOGICAL = ("$and", "$or", "$not")
MAX_LIST = 10_000  # values in one $in / $nin
MAX_DEPTH = 32  # nesting of $and / $or / $not
_BAD_PATH = re.compile(r"[\"'\\\x00-\x1f\x7f\[\]]")

Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class Cond:
    """One field condition: ``path`` (dotted, split), an operator and its operand."""

    path: tuple[str, ...]
    op: str
    value: Any


@dataclass(frozen=True)
class Logic:
    op: str  # $and | $or | $not ($not has one part)
    parts: tuple[Node, ...]


Node = Cond | Logic


@dataclass(frozen=True)
class Filter:
    """A parsed filter: its tree and a canonical JSON form (the same for equal filters)."""

    root: Node
    canonical: str


# -- parsing --------------------------------------------------------------------------


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _is_scalar(value: Any) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return value is None or isinstance(value, (str, int, float, bool))


def field_path(key: Any, where: str | None = None) -> tuple[str, ...]:
    """A field name checked and split on dots (``specs.weight_g`` -> ("specs", "weight_g"))."""
    where = key if where is None else where
    if not isinstance(key, str) or not key:
        raise FilterError(f"{where}: a field name must be a non-empty string")
    parts = tuple(key.split("."))
    if any(not p for p in parts):
        raise FilterError(f"{where}: {key!r} is not a valid field path (empty part between dots)")
    if _BAD_PATH.search(key) or len(key) > 256:
        raise FilterError(f"{where}: field {key!r} may not contain quotes, backslashes, brackets or control "
                          "characters, or be longer than 256 characters")
    return parts


def _operand(op: str, value: Any, where: str) -> Any:
    if op in ("$eq", "$ne"):
        if not _is_scalar(value):
            raise FilterError(f"{where}: {op} takes a string, number, boolean or null, got {_kind(value)}")
        return value
    if op in COMPARISONS:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)) or not _is_scalar(value):
            raise FilterError(f"{where}: {op} takes a number or a string, got {_kind(value)}")
        return value
    if op in ("$in", "$nin"):
        if not isinstance(value, (list, tuple)):
            raise FilterError(f"{where}: {op} takes a list of values, got {_kind(value)}")
        if len(value) > MAX_LIST:
            raise FilterError(f"{where}: {op} takes at most {MAX_LIST} values, got {len(value)}")
        for i, v in enumerate(value):
            if not _is_scalar(v):
                raise FilterError(f"{where}[{i}]: {op} values must be strings, numbers, booleans or null, "
                                  f"got {_kind(v)}")
        return tuple(value)
    if op == "$exists":
        if not isinstance(value, bool):
            raise FilterError(f"{where}: $exists takes true or false, got {_kind(value)}")
        return value
    raise AssertionError(op)


def _field(key: str, spec: Any, where: str) -> Node:
    path = field_path(key, where)
    if not isinstance(spec, dict):
        if isinstance(spec, (list, tuple)):
            raise FilterError(f"{where}: a list is not a value to compare with; use {{\"$in\": [...]}}")
        if not _is_scalar(spec):
            raise FilterError(f"{where}: expected a string, number, boolean, null or an object of operators, "
                              f"got {_kind(spec)}")
        return Cond(path, "$eq", spec)
    if not spec:
        raise FilterError(f"{where}: an empty object; give an operator such as {{\"$eq\": ...}}")
    conds: list[Node] = []
    for op, value in spec.items():
        here = f"{where}.{op}"
        if not isinstance(op, str) or not op.startswith("$"):
            raise FilterError(f"{where}: {op!r} is not an operator; to reach a nested field use the dotted path "
                              f"{key}.{op}")
        if op not in OPERATORS:
            hint = " ($and, $or and $not go at the top level, around field conditions)" if op in LOGICAL else ""
            raise FilterError(f"{here}: unknown operator; use one of {', '.join(OPERATORS)}{hint}")
        conds.append(Cond(path, op, _operand(op, value, here)))
    return conds[0] if len(conds) == 1 else Logic("$and", tuple(conds))


def _node(expr: Any, where: str, depth: int) -> Node:
    if depth > MAX_DEPTH:
        shown = where if len(where) <= 48 else where[:40] + "…"
        raise FilterError(f"the filter is nested more than {MAX_DEPTH} levels deep (at {shown})")
    if not isinstance(expr, dict):
        raise FilterError(f"{where or 'where'}: expected an object such as {{\"category\": \"footwear\"}}, "
                          f"got {_kind(expr)}")
    parts: list[Node] = []
    for key, value in expr.items():
        here = f"{where}.{key}" if where else str(key)
        if isinstance(key, str) and key.startswith("$"):
            if key in ("$and", "$or"):
                if not isinstance(value, (list, tuple)) or not value:
                    raise FilterError(f"{here}: {key} takes a non-empty list of filters, got {_kind(value)}")
                subs = tuple(_node(v, f"{here}[{i}]", depth + 1) for i, v in enumerate(value))
                parts.append(subs[0] if len(subs) == 1 else Logic(key, subs))
            elif key == "$not":
                parts.append(Logic("$not", (_node(value, here, depth + 1),)))
            elif key in OPERATORS:
                raise FilterError(f"{here}: {key} needs a field, as in {{\"price\": {{\"{key}\": ...}}}}")
            else:
                raise FilterError(f"{here}: unknown operator; at the top level use a field name or one of "
                                  f"{', '.join(LOGICAL)}")
        else:
            parts.append(_field(key, value, here))
    if not parts:
        return Logic("$and", ())
    return parts[0] if len(parts) == 1 else Logic("$and", tuple(parts))


def parse(expr: Any) -> Filter | None:
    """Check a filter expression (a dict, or its JSON text); None for no filter (None or ``{}``)."""
    if expr is None:
        return None
    if isinstance(expr, Filter):
        return expr
    if isinstance(expr, str):
        try:
            expr = json.loads(expr)
        except json.JSONDecodeError as exc:
            raise FilterError(f"where: not valid JSON ({exc.msg} at character {exc.pos})") from None
        except RecursionError:
            raise FilterError(f"the filter is nested more than {MAX_DEPTH} levels deep") from None
    root = _node(expr, "", 0)
    if isinstance(root, Logic) and root.op == "$and" and not root.parts:
        return None
    return Filter(root, json.dumps(expr, sort_keys=True, separators=(",", ":"), ensure_ascii=False))


# -- the command line's shorthand ------------------------------------------------------

_SHORT = re.compile(r"^\s*(?P<field>[^=!<>]+?)\s*(?P<op>==|!=|<=|>=|=|<|>)\s*(?P<value>.*?)\s*$")
_SHORT_OPS = {"=": "$eq", "==": "$eq", "!=": "$ne", "<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte"}


def _short_value(raw: str) -> Any:
    """``100`` is a number, ``true``/``false``/``null`` are JSON, ``"100"`` a string, anything else a string."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return raw
    return value if _is_scalar(value) else raw


def from_cli(items: Sequence[str]) -> Filter | None:
    """``--where`` values: each a JSON object or a shorthand ``field=value``, ``price<100``,
    ``tag!=x``; several are ANDed."""
    parts: list[Any] = []
    for item in items:
        text = item.strip()
        if text.startswith("{"):
            f = parse(text)
            if f is not None:
                parts.append(json.loads(f.canonical))
            continue
        m = _SHORT.match(text)
        if not m or not m.group("field").strip():
            raise FilterError(f"--where {item!r}: expected JSON such as '{{\"price\": {{\"$lt\": 100}}}}' or a "
                              "shorthand such as category=footwear, 'price<100'")
        op = _SHORT_OPS[m.group("op")]
        if m.group("value")[:1] in ("<", ">", "=", "!") or not m.group("value"):
            raise FilterError(f"--where {item!r}: expected one operator (=, !=, <, <=, >, >=) between a field "
                              "and a value")
        value = _short_value(m.group("value"))
        parts.append({m.group("field").strip(): value if op == "$eq" else {op: value}})
    if not parts:
        return None
    return parse(parts[0] if len(parts) == 1 else {"$and": parts})


__all__ = ["Cond", "Filter", "FilterError", "Logic", "Node", "field_path", "from_cli", "parse"]
