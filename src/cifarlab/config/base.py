"""What every config section shares: unknown keys refused, finite floats, no bool for a number, 64-bit ints."""
from __future__ import annotations

import math
import types
from typing import Annotated, Any, Optional, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, field_validator

PositiveFloat = Field(gt=0)
INT64 = (-2**63, 2**63 - 1)  # every integer in a config fits a C int64 (torch, numpy)


class ConfigSection(BaseModel):
    """Forbids unknown keys; every float is finite, a bool is never a number, every int fits 64 bits."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bools_for_numbers(cls, value: Any, info) -> Any:
        # Pydantic's lax mode reads `epochs: true` as 1 and `download: 1` as true; neither is meant.
        annotation = cls.model_fields[info.field_name].annotation
        if _misplaced_bool(annotation, value):
            raise ValueError("must be a number, not true/false")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and _leaves(annotation) == [bool]:
            raise ValueError("must be true or false")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _finite_and_64_bit(cls, value: Any) -> Any:
        problem = _number_problem(value)  # also inside free-form `options` dicts, which pydantic leaves alone
        if problem:
            raise ValueError(problem)
        return value


def _leaves(annotation) -> list:
    """The alternatives of a Union/Optional, with Annotated[...] unwrapped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _leaves(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [leaf for arg in get_args(annotation) for leaf in _leaves(arg)]
    return [annotation]


def _misplaced_bool(annotation, value: Any) -> bool:
    """True when `value` is, or holds, a bool where `annotation` wants an int or float."""
    leaves = _leaves(annotation)
    if isinstance(value, bool):
        return bool not in leaves and any(leaf in (int, float) for leaf in leaves)
    if not isinstance(value, (list, tuple)):
        return False
    for leaf in leaves:
        origin, args = get_origin(leaf), get_args(leaf)
        if origin in (list, tuple) and args:
            item_types = args if origin is tuple and args[-1] is not Ellipsis else [args[0]] * len(value)
            if any(_misplaced_bool(t, v) for t, v in zip(item_types, value)):
                return True
    return False


def _number_problem(value: Any, where: str = "", depth: int = 0) -> Optional[str]:
    """A non-finite float or an int beyond 64 bits anywhere in `value`, named by its place inside it."""
    if isinstance(value, BaseModel) or depth > 32:
        return None
    at = f"{where} " if where else ""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{at}must be a finite number" + (f", got {value}" if where else "")
    if isinstance(value, int) and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
        return f"{at}must be in {INT64[0]}..{INT64[1]} (64 bits)"
    if isinstance(value, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{where}[{i}]" if where else f"[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    return next((p for p in (_number_problem(v, w, depth + 1) for w, v in items) if p), None)
