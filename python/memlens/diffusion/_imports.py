"""Lazy access to the optional diffusers/transformers stack.

``import memlens`` must not import diffusers or transformers (they take seconds and are an
optional extra), so every module under ``memlens.diffusion`` that needs them calls
:func:`require_diffusers` first and imports inside functions.
"""

from __future__ import annotations

import importlib.util

from memlens.errors import ModelUnavailableError

_INSTALL_HINT = "install them with `pip install 'memlens[diffusion]'`"


def require_diffusers() -> None:
    """Raise :class:`ModelUnavailableError` unless diffusers and transformers are importable."""
    missing = [m for m in ("diffusers", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelUnavailableError(
            f"memlens.diffusion needs {' and '.join(missing)}: {_INSTALL_HINT}"
        )
