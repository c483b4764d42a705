"""The embedded demo: a small memorizing text-to-video model, its training set and recipe."""

from pathlib import Path

# The shipped weights (a diffusers directory); defined here so that the CLI can name it without
# importing torch.
WEIGHTS = Path(__file__).parent / "weights"
