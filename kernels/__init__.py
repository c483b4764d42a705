"""Triton kernels of memlens, installed as ``memlens.kernels``.

Nothing is imported here: importing this package must stay cheap and must not import
triton or initialize CUDA. Import the submodules explicitly, e.g.
``from memlens.kernels import topk``.
"""
