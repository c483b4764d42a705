"""Backend implementations of the ops, loaded lazily through ``memlens._dispatch``.

Each top-k backend module provides ``exact(q, refs, k, normalize)`` and, except the torch
reference, ``candidates(q, refs, kc, normalize, precision)`` and ``rerank(q, refs, idx,
normalize)``. ``q`` is a float32 contiguous torch tensor of already normalized queries on the
device of the call; ``refs`` is a validated ``memlens._arrays.Matrix`` read in place.
"""
