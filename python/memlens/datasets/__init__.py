"""Real and synthetic data built in-process (no downloads): photographs bundled with
scikit-image, copy-detection pairs, and short clips made from them."""
