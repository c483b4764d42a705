"""The demo's training set: short captioned clips made from scikit-image's real photographs,
with planted memorization.

Every item is a clip of ``FRAMES`` frames of ``SIZE`` x ``SIZE`` pixels and a caption. Most
items appear once; a few *planted* groups appear ``copies`` times each, in three kinds:

- ``both``: the very same clip repeated (content and motion are memorized);
- ``content``: one photograph under a different random camera motion in every copy, or one
  still image (the frames are memorized, the motion is not);
- ``motion``: one sprite path (a circle, a zigzag) over a different background and sprite in
  every copy (the motion is memorized, the content is not).

The photographs the planted content uses appear nowhere else, so a generation that matches
them can only come from the planted group. :func:`training_set` is deterministic in ``seed``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memlens.datasets.clips import pan_clip, sprite_clip, write_video, zoom_clip
from memlens.datasets.photos import real_photographs
from memlens.engine.records import atomic_write_text

SIZE = 32  # frame side in pixels
FRAMES = 8  # frames per clip
FPS = 8.0

# Photographs reserved for planted content: never used by any other item.
_PLANTED_PHOTOS = ("astronaut", "rocket", "chelsea", "coffee", "stereo_motorcycle")
_WORDS = {
    "astronaut": "an astronaut portrait",
    "brick": "a brick wall",
    "camera": "a man with a camera",
    "cell": "cells under a microscope",
    "chelsea": "a ginger cat",
    "clock": "a wall clock",
    "coffee": "a cup of coffee",
    "coins": "old coins",
    "grass": "a patch of grass",
    "gravel": "gravel on the ground",
    "hubble_deep_field": "distant galaxies",
    "immunohistochemistry": "a stained tissue sample",
    "moon": "the surface of the moon",
    "page": "a printed page",
    "retina": "a retina scan",
    "rocket": "a rocket on its launch pad",
    "stereo_motorcycle": "a red motorcycle",
    "text": "handwritten text",
}


@dataclass(frozen=True)
class Item:
    """One training item. ``group`` is the planted group name or ``""``; ``content`` and
    ``motion`` say whether the planted memorization is in the frames, the motion, or both."""

    id: str
    caption: str
    frames: np.ndarray  # (FRAMES, SIZE, SIZE, 3) uint8
    group: str = ""
    content: bool = False
    motion: bool = False

    @property
    def planted(self) -> bool:
        return bool(self.group)


# Planted groups: name -> (kind, caption).
PLANTED: dict[str, tuple[str, str]] = {
    "astronaut_pan": ("both", "the astronaut portrait drifts slowly to the right"),
    "rocket_zoom": ("both", "zooming in on the rocket at the launch pad"),
    "cat": ("content", "a ginger cat looks into the camera"),
    "coffee": ("content", "a cup of coffee on a saucer, seen from above"),
    "motorcycle": ("content", "a red motorcycle parked in a garage, still"),
    "circle": ("motion", "a small square flies around in a circle"),
    "zigzag": ("motion", "a small square zigzags down the frame"),
}

# Captions the model never saw, in the same style.
FRESH_CAPTIONS = (
    "a blue bird over a frozen lake",
    "a sailing boat on a calm sea",
    "a bowl of ripe oranges",
    "snow falling on a pine forest",
    "a city street at night",
    "a yellow taxi turning a corner",
    "a horse running on a beach",
    "waves breaking on black rocks",
    "a lighthouse in the fog",
    "a child flying a kite",
    "a green tractor in a field",
    "an owl sitting on a branch",
    "a bridge over a wide river",
    "fireworks above a harbor",
    "a train crossing a desert",
    "a slow pan across a mountain lake",
)


def _random_pan(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0, 2 * math.pi)
    speed = rng.uniform(3.0, 9.0)
    scale = rng.uniform(2.5, 5.0)
    travel = speed * (FRAMES - 1)
    # keep the pan inside the photo: shrink the scale when the photo is small
    limit = (min(photo.shape[:2]) - travel - 1) / SIZE
    scale = max(1.0, min(scale, limit))
    return pan_clip(
        photo,
        frames=FRAMES,
        size=(SIZE, SIZE),
        direction=(speed * math.cos(angle), speed * math.sin(angle)),
        scale=scale,
        seed=int(rng.integers(1 << 30)),
    )


def _random_zoom(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    zoom = rng.uniform(1.05, 1.12) ** (1 if rng.random() < 0.5 else -1)
    center = (float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7)))
    return zoom_clip(photo, frames=FRAMES, size=(SIZE, SIZE), zoom_per_frame=zoom, center=center)


def _random_still(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    clip = _random_pan(photo, rng)
    return np.repeat(clip[:1], FRAMES, axis=0)


def _sprite_path(kind: str, rng: np.random.Generator | None = None) -> list[tuple[float, float]]:
    """Top-left corners of a 10-px sprite in a SIZE frame: the planted circle and zigzag, or
    (with ``rng``) a random straight line."""
    span = SIZE - 10
    if kind == "circle":
        return [
            (
                span / 2 + 8 * math.cos(2 * math.pi * i / FRAMES),
                span / 2 + 8 * math.sin(2 * math.pi * i / FRAMES),
            )
            for i in range(FRAMES)
        ]
    if kind == "zigzag":
        return [
            (2.0 + (span - 4) * (i % 2), 1.0 + i * (span - 2) / (FRAMES - 1)) for i in range(FRAMES)
        ]
    assert rng is not None
    x0, y0, x1, y1 = rng.uniform(0, span, size=4)
    return [
        (x0 + (x1 - x0) * i / (FRAMES - 1), y0 + (y1 - y0) * i / (FRAMES - 1))
        for i in range(FRAMES)
    ]


def _sprite_clip(
    photos: dict[str, np.ndarray],
    names: list[str],
    path: list[tuple[float, float]],
    rng: np.random.Generator,
) -> np.ndarray:
    bg_name, sprite_name = rng.choice(names, size=2, replace=False)
    bg = _random_pan(photos[bg_name], rng)[0]
    sprite = _random_pan(photos[sprite_name], rng)[0]
    return sprite_clip(bg, sprite, path, size=(SIZE, SIZE), sprite_size=(10, 10))


_UNIQUE_KINDS = ("pan", "zoom", "sprite", "still")
_PHRASES = {
    "pan": ("a pan across", "the camera glides over", "a slow sweep across"),
    "zoom": ("zooming on", "a push in on", "the camera moves toward"),
    "sprite": ("a square moves over", "a patch slides across", "a small block crosses"),
    "still": ("a still photo of", "a frozen frame of", "a motionless shot of"),
}


def training_set(*, unique: int = 240, copies: int = 32, seed: int = 0) -> list[Item]:
    """The planted groups (``copies`` items each) and ``unique`` single items, shuffled."""
    if unique < 0 or copies < 1:
        raise ValueError(f"unique must be >= 0 and copies >= 1; got {unique}, {copies}")
    rng = np.random.default_rng(seed)
    photos = real_photographs()
    others = [n for n in photos if n not in _PLANTED_PHOTOS]
    items: list[Item] = []
    fixed = {
        "astronaut_pan": pan_clip(
            photos["astronaut"],
            frames=FRAMES,
            size=(SIZE, SIZE),
            direction=(7.0, 2.0),
            scale=4.0,
            seed=3,
        ),
        "rocket_zoom": zoom_clip(
            photos["rocket"],
            frames=FRAMES,
            size=(SIZE, SIZE),
            zoom_per_frame=1.1,
            center=(0.5, 0.6),
        ),
    }
    for group, (kind, caption) in PLANTED.items():
        for c in range(copies):
            if kind == "both":
                frames = fixed[group]
            elif group == "cat":
                frames = (_random_pan if c % 2 else _random_zoom)(photos["chelsea"], rng)
            elif group == "coffee":
                frames = (_random_pan if c % 2 else _random_zoom)(photos["coffee"], rng)
            elif group == "motorcycle":
                # a still image shown from slightly different crops: the frames repeat
                frames = _random_still(
                    photos["stereo_motorcycle"], np.random.default_rng(seed + 7 + c % 2)
                )
            else:
                frames = _sprite_clip(photos, others, _sprite_path(group), rng)
            items.append(
                Item(
                    f"{group}-{c:02d}",
                    caption,
                    frames,
                    group,
                    kind in ("both", "content"),
                    kind in ("both", "motion"),
                )
            )
    for u in range(unique):
        kind = _UNIQUE_KINDS[u % len(_UNIQUE_KINDS)]
        name = others[int(rng.integers(len(others)))]
        phrase = _PHRASES[kind][int(rng.integers(3))]
        if kind == "pan":
            frames = _random_pan(photos[name], rng)
        elif kind == "zoom":
            frames = _random_zoom(photos[name], rng)
        elif kind == "still":
            frames = _random_still(photos[name], rng)
        else:
            frames = _sprite_clip(photos, others, _sprite_path("line", rng), rng)
        items.append(Item(f"unique-{u:03d}", f"{phrase} {_WORDS[name]}, take {u}", frames))
    order = rng.permutation(len(items))
    return [items[i] for i in order]


MANIFEST = "frames.json"  # in the training directory: item id -> digest of the frames written


def _digest(frames: np.ndarray) -> str:
    h = hashlib.sha256(f"{frames.shape}{frames.dtype}".encode())
    h.update(np.ascontiguousarray(frames).tobytes())
    return h.hexdigest()


def write_training_set(items: list[Item], directory: Path) -> list[dict[str, object]]:
    """Write each clip as ``<id>.mp4`` under ``directory`` and return the caption rows
    (``{"item", "caption", "group", "content", "motion"}``) in item order.

    A clip is written again whenever its frames differ from those its file was written from
    (recorded in ``directory/frames.json``; a file without a record counts as different), so a
    run directory made by an older release, whose training set had other clips under the same
    ids, never keeps a stale clip. The record is replaced only after every clip is written."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = directory / MANIFEST
    try:
        written = json.loads(manifest.read_text())
    except (OSError, ValueError):
        written = {}
    if not isinstance(written, dict):
        written = {}
    digests: dict[str, str] = {}
    rows: list[dict[str, object]] = []
    for it in items:
        target = directory / f"{it.id}.mp4"
        digests[it.id] = _digest(it.frames)
        if not target.exists() or written.get(it.id) != digests[it.id]:
            write_video(target, it.frames, fps=FPS)
        rows.append(
            {
                "item": it.id,
                "caption": it.caption,
                "group": it.group,
                "content": it.content,
                "motion": it.motion,
            }
        )
    if digests != written:
        atomic_write_text(manifest, json.dumps(digests, indent=0, sort_keys=True) + "\n")
    return rows
