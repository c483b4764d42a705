"""Execution of index builds and scans: batching, progress, resumable result files."""
