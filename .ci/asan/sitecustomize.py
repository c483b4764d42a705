"""Loaded first by ``make test-asan`` (PYTHONPATH=.ci/asan): ``memlens._C`` comes from the
AddressSanitizer/UBSan build named by ``MEMLENS_ASAN_CORE`` instead of the editable install.

Only that one module is redirected; the rest of memlens still comes from the source tree
through the editable install's finder, which a finder placed ahead of it overrides here.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

_CORE = os.environ.get("MEMLENS_ASAN_CORE")


class _AsanCore(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        if fullname != "memlens._C" or not _CORE:
            return None
        return importlib.util.spec_from_file_location(fullname, _CORE)


if _CORE:
    if not os.path.isfile(_CORE):
        raise SystemExit(f"MEMLENS_ASAN_CORE={_CORE!r} does not exist (run make test-asan)")
    sys.meta_path.insert(0, _AsanCore())
