"""A small progress line on stderr: redrawn in place on a terminal, a line every few seconds
otherwise (so logs of long CI or batch jobs still show it moving)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(
        self, total: int, label: str, *, enabled: bool = True, stream: TextIO | None = None
    ):
        self.total, self.label, self.enabled = total, label, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.frames = 0
        self.errors = 0
        self._start = time.perf_counter()
        self._last = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, items: int = 1, frames: int = 0, errors: int = 0) -> None:
        self.done += items
        self.frames += frames
        self.errors += errors
        now = time.perf_counter()
        if self.enabled and (
            now - self._last >= (0.2 if self._tty else 5.0) or self.done == self.total
        ):
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-9)
        width = 24
        filled = int(width * self.done / self.total) if self.total else width
        line = (
            f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} items"
            f", {self.frames} frames, {self.frames / elapsed:.1f} frames/s, {self.errors} errors"
        )
        if self._tty:
            self.stream.write("\r" + line + ("\n" if self.done == self.total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start
