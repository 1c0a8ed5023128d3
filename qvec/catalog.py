"""The SQLite side of a store (through sqlite-utils): its rows, metadata, state, the log of
vectors not yet in the saved index, and tombstones. The catalog owns transactions and
snapshots: a write is one ``transaction()``; a reader ``hold_snapshot()``s one read
transaction and sees exactly that state, whatever writers commit, until it lets go.

Tables (format 3)
- ``state(key, value)``: JSON values: the format version, the store's ``config`` (its
  ``Settings``), the next fid, and the saved index file's name, size and checksum.
- ``items(fid, id, text, metadata, own_vector)``: fid is the FAISS id; id the user's string
  id; own_vector 1 where the caller gave the row's vector (so its text, if any, is not what
  it was embedded from), 0 where qvec embedded the text, NULL for rows stored before format 3.
- ``meta_kv(key, type, value, fid)``: the rows' metadata as filter entries
  (``filters.index_entries``), so filters are index look-ups, not JSON scans.
- ``vector_log(seq, op, fid, vector)``: adds and deletes since the index was last saved.
- ``tombstones(fid)``: deleted fids still inside an HNSW graph.

Format 1 called ``state`` ``settings`` (with the config under the key ``settings``) and
``vector_log`` ``wal``, beside SQLite's own WAL; ``migrate()`` renames them. Format 2 had no
``own_vector``: ``migrate()`` adds it, NULL for the rows already stored.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import sqlite_utils

from .errors import CorruptStore, DuplicateId, IdNotFound, IncompatibleStore, QvecError, StoreLocked, StoreNotFound
from .filters import evaluate, index_entries
from .idmap import IdMap, trim_heap
from .inputs import id_list

__all__ = ["Catalog", "FORMAT_VERSION"]

FORMAT_VERSION = 3
ID_MAP_BLOCK = 65_536  # rows fetched at a time to build the fid -> id map

_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    fid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, text TEXT, metadata TEXT, own_vector INTEGER);
CREATE TABLE IF NOT EXISTS meta_kv (
    key TEXT NOT NULL, type TEXT NOT NULL, value, fid INTEGER NOT NULL,
    PRIMARY KEY (key, type, value, fid)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS meta_kv_fid ON meta_kv (fid);
CREATE TABLE IF NOT EXISTS vector_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL, fid INTEGER NOT NULL, vector BLOB);
CREATE TABLE IF NOT EXISTS tombstones (fid INTEGER PRIMARY KEY);
"""


@functools.cache
def _schema_columns() -> dict[str, tuple[str, ...]]:
    """Each table of ``_SCHEMA`` and its columns, read from the schema itself."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(_SCHEMA)
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                             "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        return {t: tuple(r[1] for r in conn.execute(f"PRAGMA table_info({t})")) for t in tables}
    finally:
        conn.close()


# The full-text index of items.text (qvec.hybrid): external content, so the texts are stored
# once; triggers keep it in step inside every write's transaction. Written out rather than
# through sqlite-utils' enable_fts, whose separate scripts commit between the table and its
# triggers: a crash there would leave an index that silently stops following the rows.
_FTS = (
    "CREATE VIRTUAL TABLE items_fts USING fts5(text, content='items', content_rowid='fid', "
    "tokenize='unicode61 remove_diacritics 2')",
    "CREATE TRIGGER items_fts_ai AFTER INSERT ON items BEGIN "
    "INSERT INTO items_fts (rowid, text) VALUES (new.fid, new.text); END",
    "CREATE TRIGGER items_fts_ad AFTER DELETE ON items BEGIN "
    "INSERT INTO items_fts (items_fts, rowid, text) VALUES ('delete', old.fid, old.text); END",
    "CREATE TRIGGER items_fts_au AFTER UPDATE ON items BEGIN "
    "INSERT INTO items_fts (items_fts, rowid, text) VALUES ('delete', old.fid, old.text); "
    "INSERT INTO items_fts (rowid, text) VALUES (new.fid, new.text); END",
    "INSERT INTO items_fts (items_fts) VALUES ('rebuild')",
)


class Catalog:
    """The store's SQLite database."""

    def __init__(self, path):
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT), so a
        # batch is applied whole or not at all.
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        self.conn = conn
        self.path = str(path)
        self._snapshot_version: int | None = None
        self._holding = False
        # fid -> id in RAM, built on the first search that needs it (``id_map``); the rows a
        # transaction inserts and deletes reach it when it commits.
        self._id_map: IdMap | None = None
        self._id_map_version: int | None = None
        self._pending: list[tuple] | None = None  # the open transaction's changes to items
        try:
            # Freed pages (the log empties at every checkpoint) go back to the file system.
            # Takes effect only on a new database, and only before the journal mode is set.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("PRAGMA journal_mode = WAL")
        except (sqlite3.Error, UnicodeDecodeError) as e:  # a damaged schema can decode as neither
            conn.close()
            raise CorruptStore(f"{path} is not a readable qvec database ({e})") from None
        conn.execute("PRAGMA synchronous = FULL")  # a commit survives power loss too
        conn.execute("PRAGMA busy_timeout = 10000")
        # Filters read thousands of index entries per query: serve them from memory
        # (64 MB page cache, reads through mmap) rather than one pread per page.
        conn.execute("PRAGMA cache_size = -65536")
        conn.execute("PRAGMA mmap_size = 1073741824")

    def close(self) -> None:
        self.conn.close()

    # -- schema and format -------------------------------------------------------------
    def format_version(self) -> int | None:
        """The store's format version; None for a database with no qvec tables yet."""
        tables = set(self.db.table_names())
        for table in ("state", "settings"):  # format 2, format 1
            if table in tables and "items" in tables:
                row = self.conn.execute(f"SELECT value FROM {table} WHERE key = 'format_version'").fetchone()
                return json.loads(row[0]) if row else -1
        return None

    def open_format(self, *, create: bool, lock: Callable[[], Callable[[], None]] | None) -> None:
        """Check the format: create a new store's tables when ``create``, migrate an older
        format (holding the writer's lock: ``lock()`` takes it and returns its release, for a
        reader; a writer holds it already), refuse a newer one."""
        where = f"{self.path}"
        try:
            version = self.format_version()
            if version is None and create:
                self.create()
                version = FORMAT_VERSION
            elif isinstance(version, int) and 1 <= version < FORMAT_VERSION:
                release = lock() if lock else None
                try:
                    self.migrate()
                finally:
                    if release:
                        release()
                version = FORMAT_VERSION
        except StoreLocked:
            raise IncompatibleStore(f"{where} is a store in an older format, open for writing elsewhere: reopen it "
                                    "after that writer closes, and qvec upgrades it") from None
        except QvecError:
            raise
        except (sqlite3.Error, ValueError) as e:  # not a database, malformed, a format version that is not JSON
            raise CorruptStore(f"{where} is not a readable qvec database ({e})") from None
        if version is None:
            raise StoreNotFound(f"no qvec store at {Path(where).parent}: create it with qvec.open(path)")
        if not isinstance(version, int) or version < 1:
            raise CorruptStore(f"{where} has no format version: not a qvec store")
        if version > FORMAT_VERSION:
            raise IncompatibleStore(f"store format {version} is newer than this qvec reads ({FORMAT_VERSION}): "
                                    "upgrade qvec")
        self._check_tables(where)

    def _check_tables(self, where: str) -> None:
        """CorruptStore unless every table of this format is there with its columns: a damaged
        schema is named at open, not by the first write that needs the missing part."""
        for table, columns in _schema_columns().items():
            try:
                have = {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}
            except sqlite3.Error as e:
                raise CorruptStore(f"{where} is not a readable qvec database ({e})") from None
            missing = [c for c in columns if c not in have]
            if missing:
                what = f"has no table {table}" if not have else f"table {table} has no column {', '.join(missing)}"
                raise CorruptStore(f"{where} {what}: the store is damaged; restore it from a backup")

    def create(self) -> None:
        with self.transaction():
            for stmt in filter(str.strip, _SCHEMA.split(";")):  # executescript() would COMMIT
                self.conn.execute(stmt)
            self.put_state({"format_version": FORMAT_VERSION, "next_fid": 0, "store_id": uuid.uuid4().hex})
            self.create_fts()

    def migrate(self) -> None:
        """To this format, in one transaction. 1 → 2: tables renamed to say what they hold.
        2 → 3: ``items.own_vector``, unknown (NULL) for the rows already stored: ``retrain()``
        without originals embeds their texts again, as it did."""
        with self.transaction():
            if self.format_version() == 1:
                self.conn.execute("ALTER TABLE settings RENAME TO state")
                self.conn.execute("ALTER TABLE wal RENAME TO vector_log")
                self.conn.execute("UPDATE state SET key = 'config' WHERE key = 'settings'")
                self.put_state({"format_version": 2, "store_id": uuid.uuid4().hex})
            if self.format_version() == 2:
                self.conn.execute("ALTER TABLE items ADD COLUMN own_vector INTEGER")
                self.put_state({"format_version": 3})

    # -- transactions and snapshots ----------------------------------------------------
    @contextmanager
    def transaction(self):
        self.conn.execute("BEGIN IMMEDIATE")
        self._pending = []
        try:
            yield
        except BaseException:
            self._pending = None
            self.conn.execute("ROLLBACK")
            raise
        try:
            self.conn.execute("COMMIT")
        except BaseException:
            self._id_map = None  # committed or not: build the map again from what SQLite holds
            raise
        finally:
            pending, self._pending = self._pending, None
        self._apply(pending)

    def _changed(self, *change) -> None:
        if self._pending is None:  # outside a transaction (SQLite commits it at once)
            self._id_map = None
        else:
            self._pending.append(change)

    def _apply(self, pending: list[tuple]) -> None:
        """Bring the id map to what the transaction just committed."""
        m = self._id_map
        if m is None:
            return
        for change in pending:
            if change[0] == "insert":
                m.add(*change[1:])
            elif change[0] == "delete":
                m.remove(change[1])
            else:  # renumbered
                self._id_map = None
                return

    def hold_snapshot(self) -> None:
        """Open a read transaction and keep it: every read sees this state until
        ``release_snapshot``. (SQLite's WAL keeps the pages a held snapshot needs.)"""
        self.conn.execute("BEGIN")
        self.conn.execute("SELECT count(*) FROM state").fetchone()  # the snapshot starts at the first read
        self._snapshot_version = self.data_version()
        self._holding = True
        if self._id_map_version != self._snapshot_version:  # another connection committed since it was built
            self._id_map = None

    def release_snapshot(self) -> None:
        if self._holding:
            self._holding = False
            self.conn.execute("COMMIT")

    def changed_since_snapshot(self) -> bool:
        """Whether another connection committed since the held snapshot was taken."""
        return self._snapshot_version is None or self.data_version() != self._snapshot_version

    def data_version(self) -> int:
        """Changes whenever another connection commits (as this one can see)."""
        return self.conn.execute("PRAGMA data_version").fetchone()[0]

    # -- state
    def state(self) -> dict:
        return {k: json.loads(v) for k, v in self.conn.execute("SELECT key, value FROM state")}

    def put_state(self, values: dict) -> None:
        # Plain SQL, not sqlite-utils' upsert_all: that wraps itself in `with conn:`, which
        # would commit the caller's transaction half-way through a batch.
        self.conn.executemany("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)",
                              ((k, json.dumps(v)) for k, v in values.items()))

    def renumber(self, live: np.ndarray) -> None:
        """Give the rows with fids ``live`` (ascending) the fids 0..n-1, in the caller's
        transaction. Through negative fids, so that no step collides with a row not yet moved."""
        self.conn.execute("CREATE TEMP TABLE IF NOT EXISTS remap (old INTEGER PRIMARY KEY, new INTEGER NOT NULL)")
        self.conn.execute("DELETE FROM remap")
        self.conn.executemany("INSERT INTO remap VALUES (?, ?)", zip(live.tolist(), range(len(live))))
        for table in ("items", "meta_kv"):
            self.conn.execute(f"UPDATE {table} SET fid = -1 - (SELECT new FROM remap WHERE old = {table}.fid)")
            self.conn.execute(f"UPDATE {table} SET fid = -1 - fid")
        self.conn.execute("DELETE FROM remap")
        self._changed("renumber")

    def delete_state(self, keys: list[str]) -> None:
        self.conn.executemany("DELETE FROM state WHERE key = ?", ((k,) for k in keys))

    # -- rows
    def max_fid(self) -> int:
        return self.conn.execute("SELECT coalesce(max(fid), -1) FROM items").fetchone()[0]

    def count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM items").fetchone()[0]

    def insert(self, fids: Iterable[int], ids: list[str], texts: list, metas: list[str | None],
               own: list[bool]) -> None:
        """Rows; ``own``: per row, whether the caller gave its vector (not embedded from its text)."""
        fids = [int(f) for f in fids]
        self.conn.executemany("INSERT INTO items (fid, id, text, metadata, own_vector) VALUES (?, ?, ?, ?, ?)",
                              zip(fids, ids, texts, metas, map(int, own)))
        kv = [(key, t, v, fid) for fid, m in zip(fids, metas) if m is not None
              for key, t, v in index_entries(json.loads(m))]
        self.conn.executemany("INSERT OR IGNORE INTO meta_kv (key, type, value, fid) VALUES (?, ?, ?, ?)", kv)
        self._changed("insert", np.array(fids, dtype=np.int64), list(ids))

    def delete(self, fids) -> None:
        rows = [(int(f),) for f in fids]
        self.conn.executemany("DELETE FROM items WHERE fid = ?", rows)
        self.conn.executemany("DELETE FROM meta_kv WHERE fid = ?", rows)
        self._changed("delete", np.array([r[0] for r in rows], dtype=np.int64))

    def _select_in(self, columns: str, key: str, values: list):
        """``SELECT columns FROM items WHERE key IN values``, the values bound as one JSON
        array (no placeholder-count limit, one statement however many)."""
        q = f"SELECT {columns} FROM items WHERE {key} IN (SELECT value FROM json_each(?))"
        return self.conn.execute(q, (json.dumps(values),))

    def fids_of(self, ids: list[str]) -> dict[str, int]:
        return dict(self._select_in("id, fid", "id", list(ids)))

    def refuse_existing(self, ids: list[str]) -> None:
        """``DuplicateId`` if any of ids is stored (add() does not replace)."""
        existing = self.fids_of(ids)
        if existing:
            some = ", ".join(repr(i) for i in list(existing)[:3])
            raise DuplicateId(f"{len(existing)} id(s) exist already ({some}): use upsert() to replace them")

    @staticmethod
    def lookup(ids, fetch) -> list:
        """(id, fetch(ids)[id]) for a str or a list of ids, in the order given, repeats kept;
        ``InvalidInput`` for anything but strings, ``IdNotFound`` if any is missing."""
        ids = id_list(ids)
        found = fetch(ids)
        missing = [i for i in ids if i not in found]
        if missing:
            raise IdNotFound(f"{len(missing)} id(s) not in the store: {', '.join(map(repr, missing[:3]))}")
        return [(i, found[i]) for i in ids]

    def id_map(self) -> IdMap:
        """The fid -> id map of the rows as this connection sees them, built on first use
        (the hot path of search with include=())."""
        m = self._id_map
        if m is None:
            # a block of rows at a time: 10M rows fetched at once are about 1.4 GB of Python tuples
            m = IdMap(np.zeros(0, np.int64), [])
            cursor = self.conn.execute("SELECT fid, id FROM items ORDER BY fid")
            while rows := cursor.fetchmany(ID_MAP_BLOCK):
                m.add(np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)), [r[1] for r in rows])
            m.shrink()
            trim_heap()
            self._id_map, self._id_map_version = m, self.data_version()
        return m

    def id_map_bytes(self) -> int:
        """RAM the id map holds (0 until a search has built it)."""
        return self._id_map.nbytes() if self._id_map is not None else 0

    def rows(self, fids: np.ndarray) -> dict[int, tuple[str, str | None, str | None]]:
        """fid -> (id, text, metadata JSON) for the given fids, in one query."""
        return {r[0]: r[1:] for r in self._select_in("fid, id, text, metadata", "fid", np.asarray(fids).tolist())}

    def rows_by_id(self, ids: list[str]) -> dict[str, tuple[int, str | None, str | None]]:
        """id -> (fid, text, metadata JSON)."""
        return {r[0]: r[1:] for r in self._select_in("id, fid, text, metadata", "id", list(ids))}

    def ids(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT id FROM items ORDER BY fid")]

    def ids_of(self, fids: np.ndarray) -> list[str]:
        """The ids of fids, in fid order."""
        return [r[1] for r in sorted(self._select_in("fid, id", "fid", np.asarray(fids).tolist()))]

    def all_fids(self) -> np.ndarray:
        return np.fromiter((r[0] for r in self.conn.execute("SELECT fid FROM items ORDER BY fid")), dtype=np.int64)

    def not_from_texts(self) -> str | None:
        """Why the rows' vectors cannot all be had again by embedding their texts, or None:
        rows without a text, or rows holding the vector the caller gave with their text (its
        text embedded again would silently take that vector's place)."""
        missing, own = self.conn.execute("SELECT count(*) FILTER (WHERE text IS NULL), count(*) FILTER "
                                         "(WHERE text IS NOT NULL AND own_vector = 1) FROM items").fetchone()
        if missing:
            return f"{missing} row(s) have no text to embed again"
        if own:
            return f"{own} row(s) hold the vectors they were added with, which their texts embedded again would replace"
        return None

    def texts(self, fids: np.ndarray) -> list[str | None]:
        """The stored texts of fids, in order."""
        found = dict(self._select_in("fid, text", "fid", np.asarray(fids).tolist()))
        return [found.get(int(f)) for f in fids]

    def where_fids(self, where: dict) -> np.ndarray:
        """Sorted unique fids matching ``where``."""
        return evaluate(where, self._select_fids)

    def _select_fids(self, sql: str, params: list) -> np.ndarray:
        """A SELECT's fids, sorted and unique (a list field can match one fid twice)."""
        # One string for all fids: 10K rows come back ~5x faster than row by row.
        (text,) = self.conn.execute(f"SELECT group_concat(fid) FROM ({sql})", params).fetchone()
        if not text:
            return np.zeros(0, dtype=np.int64)
        fids = np.fromstring(text, dtype=np.int64, sep=",")  # parsed in C: 5x faster than split() here
        if len(fids) > 1 and not (fids[1:] > fids[:-1]).all():  # one index range comes sorted
            fids = np.unique(fids)
        return fids

    # -- full text
    def has_fts(self) -> bool:
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'items_fts'").fetchone() is not None

    def create_fts(self) -> None:
        """The full-text index and its triggers, filled from the stored texts (in the caller's transaction)."""
        for stmt in _FTS:
            self.conn.execute(stmt)

    def keyword(self, match: str, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(BM25 scores, fids) of the k rows whose text best matches the FTS5 expression, best first."""
        sql = "SELECT rowid, -bm25(items_fts) FROM items_fts WHERE items_fts MATCH ?"
        params: list = [match]
        if allowed is not None:
            sql += " AND rowid IN (SELECT value FROM json_each(?))"
            params.append(json.dumps(np.asarray(allowed).tolist()))
        rows = self.conn.execute(sql + " ORDER BY bm25(items_fts) LIMIT ?", [*params, int(k)]).fetchall()
        return (np.array([r[1] for r in rows], np.float32), np.array([r[0] for r in rows], np.int64))

    # -- the vector log: what the saved index does not hold yet
    def log(self, op: str, fids, vectors: np.ndarray | None = None) -> None:
        if vectors is None:
            self.conn.executemany("INSERT INTO vector_log (op, fid) VALUES (?, ?)", ((op, int(f)) for f in fids))
        else:
            self.conn.executemany("INSERT INTO vector_log (op, fid, vector) VALUES (?, ?, ?)",
                                  ((op, int(f), v.tobytes()) for f, v in zip(fids, vectors)))

    def log_entries(self, after: int = 0) -> Iterator[tuple[int, str, int, bytes | None]]:
        return self.conn.execute("SELECT seq, op, fid, vector FROM vector_log WHERE seq > ? ORDER BY seq", (after,))

    def last_seq(self) -> int:
        return self.conn.execute("SELECT coalesce(max(seq), 0) FROM vector_log").fetchone()[0]

    def truncate_log(self, upto: int) -> None:
        self.conn.execute("DELETE FROM vector_log WHERE seq <= ?", (upto,))

    def reclaim(self) -> None:
        """Give the space of emptied log rows back: outside any transaction. Readers that
        hold older snapshots keep SQLite's WAL file alive: then it is left for later,
        without waiting for them."""
        # executescript steps the pragma to completion; execute() frees only one page.
        self.conn.executescript("PRAGMA incremental_vacuum;")
        self.conn.execute("PRAGMA busy_timeout = 0")
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            self.conn.execute("PRAGMA busy_timeout = 10000")

    # -- tombstones
    def add_tombstones(self, fids) -> None:
        self.conn.executemany("INSERT OR IGNORE INTO tombstones (fid) VALUES (?)", ((int(f),) for f in fids))

    def tombstones(self) -> set[int]:
        return {r[0] for r in self.conn.execute("SELECT fid FROM tombstones")}

    def clear_tombstones(self) -> None:
        self.conn.execute("DELETE FROM tombstones")

    def free_bytes(self) -> int:
        """Pages SQLite holds free for reuse (deleted rows' space not yet vacuumed)."""
        pages = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
        return pages * self.conn.execute("PRAGMA page_size").fetchone()[0]

    def file_bytes(self) -> int:
        return sum(os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.exists(p))
