"""The ``triton`` backend of the inversion step (memlens.kernels.inversion); imports triton when
loaded. Runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1``."""

from memlens.kernels.inversion import grads, loss, sample, update

__all__ = ["grads", "loss", "sample", "update"]
