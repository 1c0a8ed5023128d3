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

    @contextmanager
    def shared(self):
        me = threading.get_ident()
        held = getattr(self._mine, "reads", 0)
        with self._cond:
            if self._writer != me and not held:
                self._cond.wait_for(lambda: self._writer is None and not self._waiting)
            self._readers += 1
        self._mine.reads = held + 1
        try:
            yield
        finally:
            self._mine.reads = held
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

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
