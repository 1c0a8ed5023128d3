"""The text inputs ``qvec build`` and ``qvec bench`` read: JSONL, CSV, plain text (one
document per line) or stdin, as ``(id, text, metadata)`` records, and the JSONL side file
of ids and metadata beside a vector file. A line that cannot be read is an
``InputFileError`` naming ``file:line``.
"""

from __future__ import annotations

import csv
import json
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from .errors import InputFileError

__all__ = ["read_records", "read_jsonl"]


def read_records(path: str, text_field: str, id_field: str, metadata_fields: str | None):
    """Yield (id, text, metadata) from JSONL, CSV or plain text (one document per line)."""
    name = "stdin" if path == "-" else Path(path).name
    suffix = "" if path == "-" else Path(path).suffix.lower()
    with sys.stdin.buffer if path == "-" else open(path, "rb") as raw:  # noqa: SIM115
        stream = _utf8_lines(raw, name)
        if suffix == ".csv":
            rows = ((i + 2, r) for i, r in enumerate(csv.DictReader(stream)))
        elif suffix in (".jsonl", ".ndjson", ".json"):
            rows = read_jsonl(stream, name)
        else:
            rows = ((i + 1, {text_field: line.rstrip("\n")}) for i, line in enumerate(stream))
        named = metadata_fields.split(",") if metadata_fields and metadata_fields != "all" else []
        seen: set[str] = set()
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
                meta = {**{k: v for k, v in row.items() if k not in (text_field, id_field, "metadata", "vector")},
                        **nested}
            else:
                meta = {**nested, **{k: row[k] for k in named if k in row}}
                seen.update(k for k in named if k in row)
            if suffix == ".csv":
                meta = {k: _typed(v) for k, v in meta.items()}
            yield rid, text, meta
        missing = [k for k in named if k not in seen]
        if missing:
            warnings.warn(f"{name}: no record has the metadata field(s) {', '.join(map(repr, missing))} named in "
                          "--metadata-fields", UserWarning, stacklevel=2)


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


