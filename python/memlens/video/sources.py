"""Expand files and directories into the list of media items a build or scan works on."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from memlens.video.formats import MEDIA_EXTENSIONS, is_image, is_video, printable


@dataclass(frozen=True)
class MediaFile:
    """One input: ``item_id`` is its stable name in indexes and results, ``path`` the file."""

    item_id: str
    path: Path

    @property
    def kind(self) -> str:
        """ "video", "image", or "unknown" (an explicitly named file of another kind)."""
        if is_video(self.path):
            return "video"
        return "image" if is_image(self.path) else "unknown"


def list_media(sources: Sequence[str | os.PathLike[str]]) -> list[MediaFile]:
    """The media files named by ``sources``, in a deterministic order.

    A file argument is listed as given (whatever its extension: the user named it, so a
    wrong kind surfaces as a ``read_media`` error row rather than silently vanishing), with
    its file name as ``item_id``. A directory is walked recursively for files with a known
    extension (case-insensitive), skipping hidden files and hidden directories (names
    starting with "."; this also skips the ``.name.tmp`` files atomic writers leave while
    writing) and not following symlinked directories (no cycles); its items are
    ``<directory name>/<posix path inside it>``, sorted by that id. Sources keep their
    order. Raises ``FileNotFoundError`` for a missing source and ``ValueError`` when two
    items get the same id (e.g. ``a/x.mp4`` and ``b/x.mp4`` given as files).
    """
    if isinstance(sources, str | os.PathLike):
        raise TypeError(
            f"sources must be a sequence of paths; got a single path {os.fspath(sources)!r} "
            f"(wrap it in a list)"
        )
    out: list[MediaFile] = []
    seen: dict[str, Path] = {}
    for source in sources:
        root = Path(source)
        if root.is_dir():
            items = _walk(root)
        elif root.exists():
            items = [MediaFile(printable(root.name), root)]
        else:
            raise FileNotFoundError(f"media source '{root}' does not exist")
        for item in items:
            if item.item_id in seen:
                raise ValueError(
                    f"two media files have the same item id '{item.item_id}': "
                    f"'{seen[item.item_id]}' and '{item.path}'; rename one or pass their "
                    f"parent directories instead"
                )
            seen[item.item_id] = item.path
            out.append(item)
    return out


def _walk(root: Path) -> list[MediaFile]:
    # The prefix is the directory's own name, so ids do not depend on the working directory
    # or on how the path was spelled ("data", "./data/", "/abs/data"). The filesystem root
    # has no name: its items get no prefix.
    prefix = root.resolve().name
    items: list[MediaFile] = []
    # onerror: an unreadable subdirectory is an error, not a silently shorter list.
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in MEDIA_EXTENSIONS:
                continue
            rel = (rel_dir / name).as_posix()
            # ids are UTF-8 text (indexes, results); a non-UTF-8 name keeps its bytes escaped,
            # and reading the file reports it as an error row (video.decode)
            item_id = printable(f"{prefix}/{rel}" if prefix else rel)
            items.append(MediaFile(item_id, Path(dirpath) / name))
    # Sorted by id (code-point order), not by walk order, which depends on the filesystem.
    items.sort(key=lambda m: m.item_id)
    return items


def _raise(error: OSError) -> None:
    raise error
