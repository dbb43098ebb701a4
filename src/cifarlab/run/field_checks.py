"""Checks of a stored field (the model card's, a checkpoint's, a model file's): `need` raises a `FieldProblem`
naming the field, what it must be and what it was; `whole` and `finite` are the usual tests."""
from __future__ import annotations

import math
from typing import Any, Optional


class FieldProblem(ValueError):
    """A stored field that is not what it must be: the file's reader prefixes where it came from
    (`checkpoint x.pt is not usable: classes must be ..., got ...`)."""

    def __init__(self, field: str, expected: str, value: Any):
        text = repr(value)
        super().__init__(f"{field} must be {expected}, got {text if len(text) <= 60 else text[:57] + '...'}")


def need(ok: bool, field: str, expected: str, value: Any) -> None:
    """Raise a FieldProblem for `field` unless `ok`."""
    if not ok:
        raise FieldProblem(field, expected, value)


def whole(value: Any, low: int = 0, high: Optional[int] = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value and (high is None or value <= high)


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

