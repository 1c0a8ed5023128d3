"""What every Store call passes through: the Store's lock (shared for reads, exclusive for
writes), a check that the store is still open, and the one place where failures of the
disk or of SQLite become QvecErrors (``StorageFull``, ``StorageError``, ``CorruptStore``)
instead of bare ``OSError`` or ``sqlite3`` exceptions."""

from __future__ import annotations

import errno
import functools
import os
import sqlite3
from contextlib import contextmanager

from .errors import CorruptStore, InternalError, QvecError, StorageError, StorageFull, StoreClosed

__all__ = ["holding", "storage_errors", "translated", "reads", "writes", "FULL_DISK"]

FULL_DISK = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}  # what a full disk (or file-size limit) raises


def translated(e: BaseException, path) -> QvecError | None:
    """The QvecError a failure of the disk or of SQLite under ``path`` is (or of FAISS: an
    ``InternalError``), or None for any other."""
    if isinstance(e, sqlite3.DatabaseError):
        msg = str(e)
        if "full" in msg:  # "database or disk is full": SQLite's word for ENOSPC and EFBIG
            return StorageFull(f"{path}: no space left to write ({msg}): free space and retry; "
                               "the call stored nothing")
        if ("malformed" in msg or "not a database" in msg or "decode to UTF-8" in msg
                or not isinstance(e, sqlite3.OperationalError)):
            return CorruptStore(f"{path}: qvec.sqlite is damaged ({msg}): restore the store from a backup")
        return StorageError(f"{path}: SQLite failed: {msg}")
    if isinstance(e, UnicodeDecodeError):  # SQLite handed back text that is not UTF-8: damaged bytes
        return CorruptStore(f"{path}: qvec.sqlite holds text that is not valid UTF-8 ({e.reason}): it is damaged; "
                            "restore the store from a backup")
    if isinstance(e, OSError) and not isinstance(e, QvecError):
        where = e.filename or path
        if e.errno in FULL_DISK:
            return StorageFull(f"{where}: {os.strerror(e.errno)}: free space (or raise the file-size limit) and "
                               "retry; the call stored nothing")
        return StorageError(f"{where}: {e.strerror or e}")
    if isinstance(e, RuntimeError) and "faiss" in str(e):  # FAISS's C++ exceptions, as SWIG raises them
        detail = " ".join(str(e).split())
        return InternalError(f"{path}: FAISS failed ({detail}): a qvec bug; please report it with the call that "
                             "raised it")
    return None


@contextmanager
def storage_errors(path):
    """Turn a failure of the disk or of SQLite under ``path`` into one QvecError."""
    try:
        yield
    except (sqlite3.DatabaseError, OSError, UnicodeDecodeError) as e:
        error = translated(e, path)
        if error is None:
            raise
        raise error from None


class holding:
    """``store._rw`` held in ``mode`` ("shared" or "exclusive"), the store open, errors
    translated. A class rather than a generator: a single query takes it once, and the three
    generator context managers it was (lock, check, translation) took 8 us of a 0.4 ms HNSW
    query with the caches the graph walk had left cold."""

    __slots__ = ("_store", "_lock")

    def __init__(self, store, mode: str):
        self._store, self._lock = store, getattr(store._rw, mode)()

    def __enter__(self) -> None:
        self._lock.__enter__()
        if self._store._closed:
            self._lock.__exit__(None, None, None)
            raise StoreClosed(f"{self._store.path} is closed: open it again with qvec.open()")

    def __exit__(self, kind, e, tb) -> bool:
        self._lock.__exit__(kind, e, tb)
        if e is not None and not isinstance(e, QvecError):
            error = translated(e, self._store.path)
            if error is not None:
                raise error from None
        return False


def _holding(mode: str):
    def decorator(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            with holding(self, mode):
                return method(self, *args, **kwargs)

        return wrapper

    return decorator


reads, writes = _holding("shared"), _holding("exclusive")
