"""Self-contained HTML reports of run directories (they only read result files)."""
