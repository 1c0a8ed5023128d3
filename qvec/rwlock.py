"""Threads of one process sharing one Store: any number of readers, or one writer."""

from __future__ import annotations

import threading
from contextlib import contextmanager

__all__ = ["ReadWriteLock"]


class ReadWriteLock:
    """Threads of one process: any number of readers, or one writer. A waiting writer holds
    back new readers (no starvation); both sides are re-entrant in their own thread."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer: int | None = None
        self._depth = 0
        self._waiting = 0
        self._mine = threading.local()

    def shared(self) -> _Shared:
        """A context manager holding the lock shared (a class: the latency path takes it per query)."""
        return _Shared(self)

    @contextmanager
    def exclusive(self):
        me = threading.get_ident()
        with self._cond:
            if self._writer != me:
                self._waiting += 1
                self._cond.wait_for(lambda: self._writer is None and self._readers == 0)
                self._waiting -= 1
                self._writer = me
            self._depth += 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if not self._depth:
                    self._writer = None
                self._cond.notify_all()


class _Shared:
    __slots__ = ("_rw", "_held")

    def __init__(self, rw: ReadWriteLock):
        self._rw = rw

    def __enter__(self) -> None:
        rw = self._rw
        held = self._held = getattr(rw._mine, "reads", 0)
        with rw._cond:
            if rw._writer != threading.get_ident() and not held:
                rw._cond.wait_for(lambda: rw._writer is None and not rw._waiting)
            rw._readers += 1
        rw._mine.reads = held + 1

    def __exit__(self, *exc) -> None:
        rw = self._rw
        rw._mine.reads = self._held
        with rw._cond:
            rw._readers -= 1
            rw._cond.notify_all()
