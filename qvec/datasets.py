"""Real text corpora that are available offline, for tests, benchmarks and the demo.

Each loader returns a list of short documents (strings) in a stable order, so a seeded
split is reproducible across machines.

- ``pydoc_paragraphs()``: paragraphs of Python's own help topics (ships with CPython).
- ``gcide_definitions()``: numbered senses of the GNU Collaborative International
  Dictionary of English (Debian package ``dict-gcide``), about 200K documents.
- ``fortunes()``: Debian's ``fortunes`` cookies.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

GCIDE_PATH = Path("/usr/share/dictd/gcide.dict.dz")
FORTUNES_DIR = Path("/usr/share/games/fortunes")

__all__ = ["pydoc_paragraphs", "gcide_definitions", "fortunes"]


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def pydoc_paragraphs(min_chars: int = 40, max_chars: int = 600) -> list[str]:
    """Paragraphs of ``pydoc_data.topics``: about 2,000 real English/technical texts."""
    from pydoc_data.topics import topics

    out = []
    for name in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[name]):
            para = _squash(para)
            if min_chars <= len(para):
                out.append(para[:max_chars])
    return out


_SENSE = re.compile(r"^\s{3}(\d+)\.\s", re.M)
_HEAD = re.compile(r"^(\S[^\\\n]*?)\s*\\", re.M)


def gcide_definitions(path: str | os.PathLike = GCIDE_PATH, limit: int | None = None) -> list[str]:
    """One document per numbered sense: ``"headword: definition"``.

    Raises FileNotFoundError naming the Debian package when the dictionary is missing.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: install the dictionary with `apt-get install dict-gcide`"
        )
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        data = f.read()
    docs: list[str] = []
    # Entries start at column 0 with "Headword \Pro*nun"ci*a`tion\, part of speech".
    for entry in re.split(r"\n(?=\S)", data):
        head = _HEAD.match(entry)
        if not head:
            continue
        word = head.group(1).strip()
        senses = _SENSE.split(entry)[1:]
        bodies = senses[1::2] if senses else [entry[head.end() - 1 :]]
        for body in bodies:
            # A sense ends at its first citation marker or quotation block.
            text = body.split("[1913 Webster]")[0].split("[PJC]")[0]
            text = re.sub(r"\\[^\\]*\\,?|\[[^\]]*\]|[{}]", "", text)  # pronunciations, tags
            text = _squash(text)
            if len(text) >= 12:
                docs.append(f"{word}: {text[:400]}")
                if limit is not None and len(docs) >= limit:
                    return docs
    return docs


def fortunes(directory: str | os.PathLike = FORTUNES_DIR) -> list[str]:
    """Debian ``fortunes`` cookies (``apt-get install fortunes``), one document each."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} not found: install it with `apt-get install fortunes`")
    out = []
    for f in sorted(directory.iterdir()):
        if f.suffix or not f.is_file():
            continue
        for cookie in f.read_text(errors="replace").split("\n%\n"):
            cookie = _squash(cookie)
            if len(cookie) >= 20:
                out.append(cookie)
    return out


if __name__ == "__main__":
    # python -m qvec.datasets pydoc|gcide|fortunes [LIMIT]: one document per line, for `qvec build`.
    import sys

    name = sys.argv[1] if len(sys.argv) > 1 else "pydoc"
    loaders = {"pydoc": pydoc_paragraphs, "gcide": gcide_definitions, "fortunes": fortunes}
    if name not in loaders:
        raise SystemExit(f"unknown corpus {name!r}: expected one of {', '.join(loaders)}")
    docs = loaders[name]()
    limit = int(sys.argv[2]) if len(sys.argv) > 2 else len(docs)
    sys.stdout.write("".join(d.replace("\n", " ") + "\n" for d in docs[:limit]))
