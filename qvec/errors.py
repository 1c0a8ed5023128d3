"""The errors qvec raises. Every one is a ``QvecError``; those caused by the caller's
input are also ``ValueError`` (or ``KeyError`` for unknown ids), so generic handlers work.

    QvecError
    ├── InvalidInput (ValueError)          bad vectors, texts, ids, k, metadata
    │   ├── DimensionMismatch              vector width differs from the store's
    │   ├── DuplicateId                    add() of an id that exists, or twice in a batch
    │   ├── InvalidFilter                  a where= that cannot be compiled
    │   ├── InputFileError                 a line of an input file that cannot be read (names file:line)
    │   └── InvalidSpec                    unknown quantization / index / metric string
    ├── SettingsConflict (ValueError)      reopen with settings that differ from the store's
    ├── NotTrained                         train() asked for with too few vectors
    ├── IdNotFound (KeyError)              get/delete of ids that are not stored
    ├── StoreNotFound (FileNotFoundError)  opening a path that is not a store (create=False)
    ├── CorruptStore                       a store file fails its checks
    ├── StorageError                       a store file cannot be read or written
    │   └── StorageFull                    no space left (or the file-size limit reached)
    ├── StoreClosed                        a call on a Store after close()
    ├── IncompatibleStore                  a store written by a newer format version
    ├── EmbedderError                      the embedding model cannot load or run
    ├── StoreLocked                        another process has the store open for writing
    ├── ReadOnlyStore                      a write to a store opened read_only=True
    ├── BuildIncomplete                    a sharded build that has not finished (re-run it to resume)
    ├── MissingExtra (ImportError)         a feature whose optional extra is not installed (qvec[ray])
    └── InternalError (RuntimeError)       FAISS failed where qvec should have prevented it: a qvec bug

Warnings, not errors: ``CheckpointDeferred`` when a write is committed but saving the index
after it failed (the rows are safe in the log), and ``TextTruncated`` (a ``UserWarning``) when a text is longer than the
model's window and only its beginning is embedded.
"""

from __future__ import annotations

__all__ = [
    "QvecError",
    "InvalidInput",
    "DimensionMismatch",
    "DuplicateId",
    "InvalidFilter",
    "InputFileError",
    "InvalidSpec",
    "SettingsConflict",
    "NotTrained",
    "IdNotFound",
    "StoreNotFound",
    "CorruptStore",
    "StorageError",
    "StorageFull",
    "StoreClosed",
    "IncompatibleStore",
    "EmbedderError",
    "StoreLocked",
    "ReadOnlyStore",
    "BuildIncomplete",
    "MissingExtra",
    "InternalError",
    "TextTruncated",
    "CheckpointDeferred",
]


class QvecError(Exception):
    """Base class of every error qvec raises on purpose."""


class InvalidInput(QvecError, ValueError):
    """The caller's input cannot be stored or searched."""


class DimensionMismatch(InvalidInput):
    """A vector's width differs from the store's dimension."""


class DuplicateId(InvalidInput):
    """An id already exists in the store, or appears twice in one batch."""


class InvalidFilter(InvalidInput):
    """A ``where=`` filter that cannot be compiled."""


class InputFileError(InvalidInput):
    """An input file, or one of its lines, that cannot be read: the message names ``file:line``."""


class InvalidSpec(InvalidInput):
    """An unknown quantization, index or metric specification."""


class SettingsConflict(QvecError, ValueError):
    """Reopening a store with settings that differ from the ones it was created with."""


class NotTrained(QvecError):
    """Training was requested with too few vectors."""


class IdNotFound(QvecError, KeyError):
    """One or more ids are not in the store."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class StoreNotFound(QvecError, FileNotFoundError):
    """The path is not a qvec store."""


class CorruptStore(QvecError):
    """A store file is damaged: it fails its size, checksum or format checks."""


class StorageError(QvecError):
    """A store file cannot be read or written (an I/O error of the disk or file system)."""


class StorageFull(StorageError):
    """No space left on the device, or the process's file-size limit reached."""


class StoreClosed(QvecError):
    """A call on a Store after ``close()``."""


class IncompatibleStore(QvecError):
    """The store was written by a newer qvec format version."""


class EmbedderError(QvecError):
    """The embedding model cannot be loaded or run."""


class StoreLocked(QvecError):
    """Another process has the store open for writing."""


class ReadOnlyStore(QvecError):
    """A write to a store opened with ``read_only=True``."""


class BuildIncomplete(QvecError):
    """A sharded store whose build has not finished: no manifest names its shards yet."""


class MissingExtra(QvecError, ImportError):
    """A feature whose optional dependencies are not installed (``pip install "qvec[ray]"``)."""


class InternalError(QvecError, RuntimeError):
    """FAISS raised where qvec's own checks should have kept it from: a bug in qvec, reported
    in one line rather than as FAISS's C++ exception."""


class TextTruncated(UserWarning):
    """Texts longer than the model's token window: only their first tokens were embedded."""


class CheckpointDeferred(UserWarning):
    """A write was committed, but training or saving the index after it failed (e.g. a full
    disk): the rows are safe in the log, and the store tries again later."""
