"""Benchmarks that also ship with the package (``memlens bench ...``)."""
