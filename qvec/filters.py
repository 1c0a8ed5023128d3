"""``where=`` filters: each leaf compiled to a parameterised SELECT over the catalog's
``meta_kv`` table and the tree evaluated as set algebra (``evaluate``), and the same
meaning in plain Python (``matches``), for tests to check the SQL against.

A row's metadata is indexed as (key, type, value) entries (``index_entries``): each scalar
value once, each scalar element of a list once, nested dicts under dotted keys. A filter
matches a row when:
- ``{"f": v}`` / ``{"f": {"$eq": v}}``: an entry of ``f`` equals v, of the same type
  (``True`` is not ``1``; ``1`` is ``1.0``);
- ``$ne`` / ``$nin``: no entry of ``f`` equals v / any of the values (rows without ``f`` match);
- ``$in``: an entry equals one of the values (an empty list matches nothing);
- ``$gt`` ``$gte`` ``$lt`` ``$lte``: an entry of the value's type (number or string) compares so;
- ``$and`` / ``$or``: all / any of a non-empty list of filters; several fields: all of them;
  nested at most ``MAX_DEPTH`` (32) levels.

User strings never become SQL: field names and values are bound parameters.
"""

from __future__ import annotations

import functools
import json
import math
import operator
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .errors import InvalidFilter

__all__ = ["evaluate", "leaf_sql", "matches", "index_entries", "OPERATORS", "MAX_DEPTH"]

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
    if t[0] == "n" and isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
        raise InvalidFilter(f"{op} on {field!r}: {value} is outside the 64-bit integers metadata can hold")
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
# Each leaf (one field and operator) is one parameterised SELECT over the meta_kv index; the
# tree above the leaves is set algebra on sorted fid arrays ($and: intersection, $or: union,
# $ne/$nin: the complement of the positive leaf). Leaves thus have no size limit ($in binds
# its values as one JSON array), and nesting is bounded by MAX_DEPTH rather than by SQLite's
# expression depth (1,000), compound SELECT (500 terms) or parser stack.
MAX_DEPTH = 32
ALL_FIDS = "SELECT fid FROM items"
_INT64 = (-(2**63), 2**63 - 1)


def leaf_sql(field: str, op: str, operand) -> tuple[str, list]:
    """The SELECT of fids whose entries of ``field`` satisfy a leaf, with its parameters; for
    $ne and $nin the positive form ($eq, $in): the caller takes the complement."""
    if op in ("$eq", "$ne"):
        t, v = operand
        return "SELECT fid FROM meta_kv WHERE key = ? AND type = ? AND value IS ?", [field, t, v]
    if op in ("$in", "$nin"):
        pairs = [[t, v] for t, v in operand if t != "z"]
        sql = ("SELECT fid FROM meta_kv WHERE key = ? AND (type, value) IN "
               "(SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?))")
        params: list = [field, json.dumps(pairs)]
        if len(pairs) < len(operand):  # null matches by IS, which IN cannot do
            sql += " UNION SELECT fid FROM meta_kv WHERE key = ? AND type = 'z'"
            params.append(field)
        return sql, params
    t, v = operand
    return f"SELECT fid FROM meta_kv WHERE key = ? AND type = ? AND value {_CMP[op]} ?", [field, t, v]


def evaluate(where: dict, run: Callable[[str, list], np.ndarray]) -> np.ndarray:
    """Sorted unique fids matching ``where``; ``run(sql, params)`` returns a SELECT's fids,
    sorted and unique."""
    everything: list[np.ndarray] = []

    def all_fids() -> np.ndarray:
        if not everything:
            everything.append(run(ALL_FIDS, []))
        return everything[0]

    def walk(where: dict, depth: int) -> np.ndarray:
        if depth > MAX_DEPTH:
            raise InvalidFilter(f"filter nested more than {MAX_DEPTH} levels deep: flatten it "
                                "($and/$or take lists; $in takes any number of values)")
        result = None
        for field, op, operand in _clauses(where):
            if op == "$and":
                fids = functools.reduce(np.intersect1d, (walk(c, depth + 1) for c in operand))
            elif op == "$or":
                fids = np.unique(np.concatenate([walk(c, depth + 1) for c in operand]))
            elif op in ("$in", "$nin") and not operand:
                fids = np.zeros(0, np.int64)
            else:
                fids = run(*leaf_sql(field, op, operand))
            if op in ("$ne", "$nin"):
                fids = np.setdiff1d(all_fids(), fids, assume_unique=True)
            result = fids if result is None else np.intersect1d(result, fids, assume_unique=True)
        return all_fids() if result is None else result

    return walk(where, 0)


# -- plain Python --------------------------------------------------------------------------------
def matches(where: dict, metadata: dict) -> bool:
    """Whether a row with ``metadata`` passes ``where``: the SQL's meaning, row by row."""
    entries = {(k, t, v) for k, t, v in index_entries(metadata)}
    return _matches(where, entries, 0)


def _matches(where: dict, entries: set, depth: int) -> bool:
    if depth > MAX_DEPTH:
        raise InvalidFilter(f"filter nested more than {MAX_DEPTH} levels deep")
    for field, op, operand in _clauses(where):
        if op == "$and":
            ok = all(_matches(c, entries, depth + 1) for c in operand)
        elif op == "$or":
            ok = any(_matches(c, entries, depth + 1) for c in operand)
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
