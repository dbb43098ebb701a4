"""How a record's value is shown to people (the report, `compare`, the closing line): one formatter per kind
of value, named on each field of the records (run/metrics.EpochRow, run/summary.Summary), so "an accuracy is a
percentage with 2 decimals" is said once. `run/summary.display` picks a field's formatter by its name."""
from __future__ import annotations

from typing import Any


def percent(value: Any) -> str:
    return f"{100 * float(value):.2f}%"


def percent_1(value: Any) -> str:  # a fraction of a device's peak (MFU)
    return f"{100 * float(value):.1f}%"


def learning_rate(value: Any) -> str:
    return f"{float(value):.2E}"


def loss(value: Any) -> str:
    return f"{float(value):.4f}"


def duration(value: Any) -> str:
    minutes, secs = divmod(int(round(float(value))), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def per_second(value: Any) -> str:
    return f"{float(value):,.0f}"


def count(value: Any) -> str:
    return f"{int(value):,}"
