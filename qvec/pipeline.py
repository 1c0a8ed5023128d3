"""A small bounded pipeline: read batches in one thread, prepare them in the caller's,
write them in a third, so that reading, embedding and writing overlap. At most ``depth``
batches wait between two stages; the first failure stops every stage, and batches
prepared before it are still written."""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

from .errors import DimensionMismatch, InvalidInput

__all__ = ["run", "batched", "ingest"]


def batched(rows: Iterable, size: int) -> Iterator[list]:
    """Ingest's rows ``size`` at a time, each checked to be an (id, text, metadata[, vector])
    tuple or list: a malformed row is an InvalidInput naming it, not an IndexError later."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InvalidInput(f"batch_size must be a positive integer, got {size!r}")
    try:
        it = iter(rows) if not isinstance(rows, (str, bytes, dict)) else None
    except TypeError:
        it = None
    if it is None:
        raise InvalidInput(f"rows must be an iterable of (id, text, metadata) tuples, got {type(rows).__name__}")
    first, size = 0, min(size, sys.maxsize)  # islice takes no larger stop: such a batch is everything anyway
    while batch := list(islice(it, size)):
        for n, row in enumerate(batch, first):
            if not isinstance(row, (tuple, list)) or len(row) not in (3, 4):
                got = f"{len(row)} values" if isinstance(row, (tuple, list)) else f"a {type(row).__name__}"
                raise InvalidInput(f"row {n} is {got}: ingest takes (id, text, metadata) or (id, text, metadata, "
                                   "vector) rows")
        first += len(batch)
        yield batch


def run(batches: Iterable[Any], prepare: Callable[[Any], Any], write: Callable[[Any], None], *,
        depth: int = 2) -> None:
    """``write(prepare(b))`` for each batch b, in order, with the three steps overlapping."""
    stop = threading.Event()
    read_q: queue.Queue = queue.Queue(maxsize=depth)
    write_q: queue.Queue = queue.Queue(maxsize=depth)
    failed: list[BaseException] = []
    end = object()

    def put(q, item) -> bool:  # gives up when another stage failed
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(q):  # `end` at the end, or when another stage failed
        while not stop.is_set():
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue
        return end

    def reader():
        try:
            for batch in batches:
                if not put(read_q, batch):
                    return
        except BaseException as e:  # noqa: BLE001 -- handed to the caller's thread
            failed.append(e)
        finally:
            put(read_q, end)

    def writer():
        try:
            while (item := write_q.get()) is not end:
                write(item)
        except BaseException as e:  # noqa: BLE001
            failed.append(e)
            stop.set()

    threads = [threading.Thread(target=reader, daemon=True), threading.Thread(target=writer, daemon=True)]
    for t in threads:
        t.start()
    try:
        while (batch := get(read_q)) is not end:
            if not put(write_q, prepare(batch)):
                break
    finally:
        put(write_q, end)  # the writer commits what is queued, even when this thread failed
        threads[1].join()
        stop.set()  # releases a reader blocked on a full queue
        threads[0].join()
    if failed:
        raise failed[0]


def ingest(rows: Iterable[tuple], *, batch_size: int, prepare: Callable[[list, Any, list, list, Any], Any],
           write: Callable[[Any], Any], embed: Callable[[list[str]], Any] | None = None,
           existing: Callable[[list[str]], set[str]] | None = None,
           on_batch: Callable[[int, int], None] | None = None) -> tuple[int, int]:
    """``(id, text, metadata)`` or ``(id, text, metadata, vector)`` rows in batches through
    ``prepare(texts, vectors, ids, metadatas, own)`` (check and embed; ``vectors`` None when no
    row has its own, else one per row, a batch's missing ones made by ``embed``; ``own`` which
    rows brought theirs, None when none did) and ``write`` (commit), pipelined. With
    ``existing``, rows whose id it reports stored, or that came earlier in the stream, are
    skipped. ``on_batch(read, added)`` follows each batch's write. Returns (added, skipped)."""
    queued: set[str] = set()  # ids read but maybe not yet written: a repeat is skipped, not re-added
    counts = [0, 0]  # added, skipped

    def prepare_batch(batch):
        n_read = len(batch)
        if existing is not None:
            stored = existing([r[0] for r in batch])
            kept = []
            for r in batch:
                if r[0] not in stored and r[0] not in queued:
                    kept.append(r)
                    queued.add(r[0])
            batch = kept
            counts[1] += n_read - len(batch)
        if not batch:
            return n_read, None
        texts = [r[1] for r in batch]
        vectors, own = own_vectors(batch, texts, embed)
        return n_read, prepare(texts, vectors, [r[0] for r in batch], [r[2] or {} for r in batch], own)

    def write_batch(item):
        n_read, batch = item
        n = len(batch[2]) if batch is not None else 0
        if batch is not None:
            write(batch)
            counts[0] += n
        if on_batch:
            on_batch(n_read, n)

    run(batched(rows, batch_size), prepare_batch, write_batch)
    return counts[0], counts[1]


def own_vectors(batch: list[tuple], texts: list[str], embed: Callable[[list[str]], Any] | None):
    """(a batch's vectors, which rows brought them) when some of its rows bring their own (the
    rest embedded, so that one record without a vector does not send the whole batch through
    the model), else (None, None)."""
    given = [r[3] if len(r) > 3 else None for r in batch]
    missing = [i for i, v in enumerate(given) if v is None]
    if len(missing) == len(given):
        return None, None
    own = [v is not None for v in given]
    if missing:
        if embed is None:
            raise TypeError("own_vectors: rows without vectors need an embed function")
        made = embed([texts[i] for i in missing])
        dim = len(next(v for v in given if v is not None))
        if made.shape[1] != dim:
            raise DimensionMismatch(f"the rows' own vectors are {dim}-dim and the model embeds the rest at "
                                    f"{made.shape[1]}-dim: give every row a vector from that model, or none")
        for i, v in zip(missing, made):
            given[i] = v
    return given, own
