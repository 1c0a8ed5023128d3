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

from .errors import CorruptStore, QvecError, StorageError, StorageFull, StoreClosed

__all__ = ["holding", "storage_errors", "reads", "writes", "FULL_DISK"]

FULL_DISK = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}  # what a full disk (or file-size limit) raises


@contextmanager
def storage_errors(path):
    """Turn a failure of the disk or of SQLite under ``path`` into one QvecError."""
    try:
        yield
    except QvecError:
        raise
    except sqlite3.DatabaseError as e:
        msg = str(e)
        if "full" in msg:  # "database or disk is full": SQLite's word for ENOSPC and EFBIG
            raise StorageFull(f"{path}: no space left to write ({msg}): free space and retry; "
                              "the call stored nothing") from None
        if "malformed" in msg or "not a database" in msg or not isinstance(e, sqlite3.OperationalError):
            raise CorruptStore(f"{path}: qvec.sqlite is damaged ({msg}): restore the store from a backup") from None
        raise StorageError(f"{path}: SQLite failed: {msg}") from None
    except OSError as e:
        where = e.filename or path
        if e.errno in FULL_DISK:
            raise StorageFull(f"{where}: {os.strerror(e.errno)}: free space (or raise the file-size limit) and "
                              "retry; the call stored nothing") from None
        raise StorageError(f"{where}: {e.strerror or e}") from None


@contextmanager
def holding(store, mode: str):
    """``store._rw`` held in ``mode`` ("shared" or "exclusive"), the store open, errors translated."""
    with getattr(store._rw, mode)():
        if store._closed:
            raise StoreClosed(f"{store.path} is closed: open it again with qvec.open()")
        with storage_errors(store.path):
            yield


def _holding(mode: str):
    def decorator(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            with holding(self, mode):
                return method(self, *args, **kwargs)

        return wrapper

    return decorator


reads, writes = _holding("shared"), _holding("exclusive")
