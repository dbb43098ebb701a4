"""The analysis subcommands: lr-find, summary, report, gradcam, compare, predict."""
from __future__ import annotations

from pathlib import Path


def add_analysis_commands(sub) -> None:
    pass
