"""One writer per index directory: an exclusive ``flock`` on the directory itself.

The kernel drops the lock when the process dies, so a killed build never leaves a stale lock
behind (a lock *file* would). Where ``fcntl`` does not exist (Windows) locking is skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]


class DirLock:
    """Held from construction until :meth:`release` (or process exit)."""

    def __init__(self, root: Path) -> None:
        self._fd: int | None = None
        if fcntl is None:  # pragma: no cover - non-POSIX
            return
        fd = os.open(root, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BlockingIOError(
                f"index {str(root)!r} is already open for writing (mode='a') by another "
                "process or ReferenceIndex object; close that one first"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
