"""A tiny progress bar for the command line, on stderr.

Shown only when stderr is a terminal, or when forced (``force=True``), so
pipes and logs stay clean. Redraws at most ten times a second.
"""
from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """Progress(label, total=None, *, force=False, stream=sys.stderr)

    ``update(done, total=None, note="")`` redraws ``label [#####-----] 52% 1,234/2,345 note``
    (without a total: ``label 1,234 note``); ``close()`` ends the line. Usable
    as a ``progress(done, total)`` callback and as a context manager.
    """

    def __init__(self, label: str, total: int | None = None, *, force: bool = False,
                 stream=None, width: int = 30):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = force or (hasattr(self.stream, "isatty") and self.stream.isatty())
        self.label = label
        self.total = total
        self.width = width
        self._last = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int | None = None) -> None:
        self.update(done, total)

    def update(self, done: int, total: int | None = None, note: str = "", *, force: bool = False) -> None:
        if not self.enabled:
            return
        if total is not None:
            self.total = total
        now = time.monotonic()
        if not force and now - self._last < 0.1 and (self.total is None or done < self.total):
            return
        self._last = now
        if self.total:
            frac = min(max(done / self.total, 0.0), 1.0)
            fill = int(frac * self.width)
            bar = "#" * fill + "-" * (self.width - fill)
            line = f"{self.label} [{bar}] {frac * 100:3.0f}% {done:,}/{self.total:,}"
        else:
            line = f"{self.label} {done:,}"
        if note:
            line += f" {note}"
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
