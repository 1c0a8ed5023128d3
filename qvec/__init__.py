"""qvec: a compressed vector store. Quantized codes in FAISS, metadata in SQLite.

    import qvec
    with qvec.open("docs.qvec", quantization="int8") as store:
        store.add(["Cats purr.", "Dogs bark."], metadata=[{"lang": "en"}, {"lang": "en"}])
        hits = store.search("which animal purrs?", k=5, where={"lang": "en"})
"""

from .errors import (
    BuildIncomplete,
    CheckpointDeferred,
    CorruptStore,
    DimensionMismatch,
    DuplicateId,
    EmbedderError,
    IdNotFound,
    IncompatibleStore,
    InputFileError,
    InternalError,
    InvalidFilter,
    InvalidInput,
    InvalidSpec,
    MissingExtra,
    NotTrained,
    QvecError,
    ReadOnlyStore,
    SettingsConflict,
    StorageError,
    StorageFull,
    StoreClosed,
    StoreLocked,
    StoreNotFound,
    TextTruncated,
)
from .store import FORMAT_VERSION, Hit, Item, Stats, Store, open

__version__ = "0.1.0"

__all__ = [
    "open",
    "Store",
    "Hit",
    "Item",
    "Stats",
    "FORMAT_VERSION",
    "QvecError",
    "InvalidInput",
    "DimensionMismatch",
    "DuplicateId",
    "InvalidFilter",
    "InputFileError",
    "InternalError",
    "InvalidSpec",
    "SettingsConflict",
    "NotTrained",
    "IdNotFound",
    "StoreNotFound",
    "CorruptStore",
    "IncompatibleStore",
    "EmbedderError",
    "StorageError",
    "StorageFull",
    "StoreClosed",
    "StoreLocked",
    "ReadOnlyStore",
    "BuildIncomplete",
    "MissingExtra",
    "TextTruncated",
    "CheckpointDeferred",
]
