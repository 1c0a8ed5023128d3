"""The text inputs ``qvec build`` and ``qvec bench`` read: JSONL, CSV, plain text (one
document per line) or stdin, as ``(id, text, metadata, vector)`` records (``vector``: a
JSONL record's own embedding, as ``qvec export --vectors`` writes it, else None), and the
JSONL side file of ids and metadata beside a vector file. A line that cannot be read is an
``InputFileError`` naming ``file:line``.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from .errors import InputFileError

__all__ = ["read_records", "read_jsonl"]


def read_records(path: str, text_field: str, id_field: str, metadata_fields: str | None,
                 vector_field: str | None = "vector"):
    """Yield (id, text, metadata, vector or None) from JSONL, CSV or plain text (one document
    per line); stdin (``-``) is JSONL when its first line is a JSON object. A JSONL record's
    ``vector_field`` list is its embedding, used instead of embedding its text (None: no record
    has one); every vector of a file must have the same length."""
    name = "stdin" if path == "-" else Path(path).name
    suffix = "" if path == "-" else Path(path).suffix.lower()
    with sys.stdin.buffer if path == "-" else open(path, "rb") as raw:  # noqa: SIM115
        stream = _utf8_lines(raw, name)
        if path == "-":  # no name to go by: JSONL if the first line is a JSON object (qvec export's output)
            first = next(stream, "")
            stream = itertools.chain([first], stream)
            suffix = ".jsonl" if first.lstrip().startswith("{") else ""
        if suffix == ".csv":
            rows = ((i + 2, r) for i, r in enumerate(csv.DictReader(stream)))
        elif suffix in (".jsonl", ".ndjson", ".json"):
            rows = read_jsonl(stream, name)
        else:
            rows = ((i + 1, {text_field: line.rstrip("\n")}) for i, line in enumerate(stream))
        named = metadata_fields.split(",") if metadata_fields and metadata_fields != "all" else []
        seen: set[str] = set()
        dim = None
        for lineno, row in rows:
            text = row.get(text_field)
            if not isinstance(text, str) or not text.strip():
                if suffix in ("", ".txt"):
                    continue  # blank lines in plain text are separators, not documents
                raise InputFileError(f"{name}:{lineno}: no text in field {text_field!r}; use --text-field")
            rid = row.get(id_field)
            rid = f"{name}:{lineno}" if rid in (None, "") else str(rid)
            # a nested "metadata" object (the shape the vector side file and qvec export use) is read as it is
            nested = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
            if metadata_fields == "all":
                meta = {**{k: v for k, v in row.items()
                           if k not in (text_field, id_field, "metadata", "vector", vector_field)}, **nested}
            else:
                meta = {**nested, **{k: row[k] for k in named if k in row}}
                seen.update(k for k in named if k in row)
            if suffix == ".csv":
                meta = {k: _typed(v) for k, v in meta.items()}
            vector = row.get(vector_field) if vector_field and suffix not in (".csv", "", ".txt") else None
            if vector is not None:
                dim = _check_vector(vector, dim, f"{name}:{lineno}", vector_field)
            yield rid, text, meta, vector
        missing = [k for k in named if k not in seen]
        if missing:
            warnings.warn(f"{name}: no record has the metadata field(s) {', '.join(map(repr, missing))} named in "
                          "--metadata-fields", UserWarning, stacklevel=2)


def _check_vector(vector, dim: int | None, where: str, field: str) -> int:
    """A record's own vector: a non-empty list of numbers as long as the file's first."""
    if not isinstance(vector, list) or not vector or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in vector):
        raise InputFileError(f"{where}: field {field!r} is not a list of numbers; fix it, or drop the field to embed "
                             "the text")
    if dim is not None and len(vector) != dim:
        raise InputFileError(f"{where}: a {len(vector)}-dim vector after {dim}-dim ones: every vector of a file must "
                             "come from the same model")
    return len(vector)


_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")


def _typed(value):
    """A CSV cell as a number when it is written as one (so $gte compares numbers), else the string;
    "007" stays a string: the number would lose its zeros."""
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        return int(value) if value.lstrip("-").isdigit() else float(value)
    return value


def _utf8_lines(raw, name: str) -> Iterator[str]:
    """Lines of a binary stream decoded as UTF-8 one by one, so that a bad byte is named by
    its line (a leading byte-order mark is dropped)."""
    for i, line in enumerate(raw, 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputFileError(f"{name}:{i}: not valid UTF-8 (byte 0x{line[e.start]:02x} at column {e.start + 1}): "
                                 "re-encode the file as UTF-8") from None
        yield text.lstrip("\ufeff") if i == 1 else text


def read_jsonl(stream, name: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL stream."""
    for i, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputFileError(f"{name}:{i}: not valid JSON ({e.msg}); fix or remove the line") from None
        if not isinstance(row, dict):
            raise InputFileError(f"{name}:{i}: expected a JSON object per line")
        yield i, row


