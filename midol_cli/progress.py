"""One progress and logging interface for every stage (bottom layer).

A stage reports through a ``Reporter``: ``start(label, total, completed)`` once, ``advance(completed,
info)`` per unit of work, ``line(msg)`` for messages, ``stop()`` at the end. This base class prints
one plain line to stderr per message and, when ``every`` > 0, one progress line per ``every`` units:
what a log file or a non-terminal wants. The CLI hands a rich progress bar instead on a terminal
(``cli._common.progress_reporter``), on rank 0 only; other ranks get ``Silent``.
"""

from __future__ import annotations

import sys


class Reporter:
    """Plain lines on stderr. ``bar`` is True for reporters that draw a bar (progress updates are cheap
    there); a plain reporter turns progress into a line now and then (``every`` units, 0 = only at
    the end)."""

    bar = False

    def __init__(self, every: int = 0) -> None:
        self.every = every
        self.label, self.total, self._last = "", 0, 0

    def start(self, label: str, total: int, completed: int = 0) -> None:
        self.label, self.total, self._last = label, total, completed

    def advance(self, completed: int, info: str = "") -> None:
        if self.every and (completed - self._last >= self.every or completed >= self.total):
            self._last = completed
            self.line(f"{self.label} {completed}/{self.total}  {info}".rstrip())

    def line(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def stop(self) -> None:
        pass

    # Adapters for the callback shapes lower layers take (they must not import this module's users).
    def callback(self, label: str):
        """``fn(done, total)`` for readers that count work themselves (ingest, shard, embed): starts
        on the first call, advances on every call."""
        state = {"started": False}

        def fn(done: int, total: int) -> None:
            if not state["started"]:
                self.start(label, total, 0)
                state["started"] = True
            self.advance(done)
            if done >= total:
                self.stop()

        return fn


class Silent(Reporter):
    """Nothing at all: ranks other than 0, and callers that want quiet."""

    def line(self, msg: str) -> None:
        pass

    def advance(self, completed: int, info: str = "") -> None:
        pass
