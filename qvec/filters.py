"""``where=`` filters: compiled to parameterised SQL over the catalog's ``meta_kv`` table,
and evaluated in plain Python (``matches``) with the same meaning, for tests to check
the SQL against.

A row's metadata is indexed as (key, type, value) entries (``index_entries``): each scalar
value once, each scalar element of a list once, nested dicts under dotted keys. A filter
matches a row when:
- ``{"f": v}`` / ``{"f": {"$eq": v}}``: an entry of ``f`` equals v, of the same type
  (``True`` is not ``1``; ``1`` is ``1.0``);
- ``$ne`` / ``$nin``: no entry of ``f`` equals v / any of the values (rows without ``f`` match);
- ``$in``: an entry equals one of the values (an empty list matches nothing);
- ``$gt`` ``$gte`` ``$lt`` ``$lte``: an entry of the value's type (number or string) compares so;
- ``$and`` / ``$or``: all / any of a non-empty list of filters; several fields: all of them.

User strings never become SQL: field names and values are bound parameters.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator
from typing import Any

from .errors import InvalidFilter

__all__ = ["compile_where", "matches", "index_entries", "OPERATORS"]

OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$and", "$or")
_CMP = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_PY_CMP = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}


def _typed(value: Any) -> tuple[str, Any] | None:
    """(type tag, SQL value) for a filterable scalar; None for anything else."""
    if isinstance(value, bool):
        return "b", int(value)
    if isinstance(value, (int, float)):
        return "n", value
    if isinstance(value, str):
        return "s", value
    if value is None:
        return "z", None
    return None


def index_entries(meta: dict, prefix: str = "") -> Iterator[tuple[str, str, Any]]:
    """The (key, type tag, value) entries a filter can match for one row's metadata."""
    for key, value in meta.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from index_entries(value, name + ".")
        elif isinstance(value, (list, tuple)):
            for v in value:
                t = _typed(v)
                if t:
                    yield name, *t
        else:
            t = _typed(value)
            if t:
                yield name, *t


# -- checking ----------------------------------------------------------------------------------
def _clauses(where: Any) -> Iterator[tuple[str, str, Any]]:
    """(field or $and/$or, operator, operand) for each clause of a filter, checked."""
    if not isinstance(where, dict):
        raise InvalidFilter(f"where must be a dict such as {{'lang': 'en'}}, got {type(where).__name__}")
    for key, cond in where.items():
        if not isinstance(key, str):
            raise InvalidFilter(f"filter field names must be strings, got {key!r}")
        if key in ("$and", "$or"):
            if not isinstance(cond, list) or not cond:
                raise InvalidFilter(f"{key} takes a non-empty list of filters, got {cond!r}")
            yield key, key, cond
        elif key.startswith("$"):
            raise InvalidFilter(f"unknown operator {key!r} at field level: use one of $and, $or")
        elif isinstance(cond, dict):
            if not cond:
                raise InvalidFilter(f"empty condition for field {key!r}")
            for op, value in cond.items():
                yield key, op, _operand(key, op, value)
        else:
            yield key, "$eq", _operand(key, "$eq", cond)


def _scalar(field: str, op: str, value: Any) -> tuple[str, Any]:
    t = _typed(value)
    if t is None:
        raise InvalidFilter(f"{op} on {field!r} needs a string, number, boolean or null, got {type(value).__name__}")
    if t[0] == "n" and isinstance(value, float) and not math.isfinite(value):
        raise InvalidFilter(f"{op} on {field!r} needs a finite number, got {value}")
    return t


def _operand(field: str, op: str, value: Any):
    """The operand as typed pairs: one for $eq/$ne/comparisons, a list for $in/$nin."""
    if op in ("$in", "$nin"):
        if not isinstance(value, (list, tuple)):
            raise InvalidFilter(f"{op} on {field!r} takes a list, got {type(value).__name__}")
        return [_scalar(field, op, v) for v in value]
    if op in ("$eq", "$ne"):
        return _scalar(field, op, value)
    if op in _CMP:
        t = _scalar(field, op, value)
        if t[0] not in ("n", "s"):
            raise InvalidFilter(f"{op} on {field!r} compares numbers or strings, got {value!r}")
        return t
    raise InvalidFilter(f"unknown operator {op!r} on {field!r}: expected one of {', '.join(OPERATORS)}")


# -- SQL -----------------------------------------------------------------------------------------
# A filter compiles to a SELECT of matching fids built from set operations over index
# range scans of meta_kv (INTERSECT for $and, UNION for $or, EXCEPT for $ne/$nin), so a
# filter matching 10% of rows reads those rows' index entries, not the whole table.
_ALL = "SELECT fid FROM items"


def compile_where(where: dict) -> tuple[str, list]:
    """A SELECT of the fids matching ``where``, with its parameters."""
    parts = [_compile_clause(field, op, operand) for field, op, operand in _clauses(where)]
    if not parts:
        return _ALL, []
    return _combine(parts, "INTERSECT")


def _compile_clause(field: str, op: str, operand) -> tuple[str, list]:
    if op in ("$and", "$or"):
        return _combine([compile_where(c) for c in operand], "INTERSECT" if op == "$and" else "UNION")
    if op in ("$eq", "$ne"):
        part = _member(field, [operand])
        return part if op == "$eq" else _negate(part)
    if op in ("$in", "$nin"):
        if not operand:
            return (f"{_ALL} WHERE 0" if op == "$in" else _ALL), []
        part = _member(field, operand)
        return part if op == "$in" else _negate(part)
    t, v = operand
    return f"SELECT fid FROM meta_kv WHERE key = ? AND type = ? AND value {_CMP[op]} ?", [field, t, v]


def _combine(parts: list[tuple[str, list]], op: str) -> tuple[str, list]:
    if len(parts) == 1:
        return parts[0]
    sql = f" {op} ".join(f"SELECT fid FROM ({p})" for p, _ in parts)
    return sql, [x for _, params in parts for x in params]


def _member(field: str, pairs: list[tuple[str, Any]]) -> tuple[str, list]:
    cond = " OR ".join("(type = ? AND value IS ?)" for _ in pairs)
    params: list = [field]
    for t, v in pairs:
        params += [t, v]
    return f"SELECT fid FROM meta_kv WHERE key = ? AND ({cond})", params


def _negate(part: tuple[str, list]) -> tuple[str, list]:
    return f"{_ALL} EXCEPT SELECT fid FROM ({part[0]})", part[1]


# -- plain Python --------------------------------------------------------------------------------
def matches(where: dict, metadata: dict) -> bool:
    """Whether a row with ``metadata`` passes ``where``: the SQL's meaning, row by row."""
    entries = {(k, t, v) for k, t, v in index_entries(metadata)}
    return _matches(where, entries)


def _matches(where: dict, entries: set) -> bool:
    for field, op, operand in _clauses(where):
        if op == "$and":
            ok = all(_matches(c, entries) for c in operand)
        elif op == "$or":
            ok = any(_matches(c, entries) for c in operand)
        elif op in ("$eq", "$ne"):
            ok = (field, *operand) in entries
            ok = ok if op == "$eq" else not ok
        elif op in ("$in", "$nin"):
            ok = any((field, *pair) in entries for pair in operand)
            ok = ok if op == "$in" else not ok
        else:
            t, v = operand
            ok = any(k == field and tt == t and _PY_CMP[op](vv, v) for k, tt, vv in entries)
        if not ok:
            return False
    return True
