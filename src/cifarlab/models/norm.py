"""What every model factory shares: the norm-layer factory and the checks on factory arguments.

`norm_layer(kind, channels)` is how a model says "a normalisation over these channels here", so one
`model.norm=layer` swaps every BatchNorm of a network (the `resnet18-layernorm-plateau` recipe).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from cifarlab.errors import UserError

NORMS = ("batch", "group", "layer", "instance")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """A normalisation layer over `channels` feature maps (N, channels, H, W) -> same shape.

    batch: BatchNorm2d. group: GroupNorm with the largest group count <= 32 that divides `channels`.
    layer: GroupNorm(1, channels), i.e. LayerNorm over (C, H, W) with per-channel affine, the usual conv
    equivalent of LayerNorm. instance: GroupNorm(channels, channels), i.e. InstanceNorm2d(affine=True)
    without running statistics, so train and eval behave alike.
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        groups = max(g for g in range(1, min(32, channels) + 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    if kind == "instance":
        return nn.GroupNorm(channels, channels)
    raise UserError(f"model.norm must be one of {', '.join(NORMS)}, got {kind!r}")


def check_factory_args(model: str, norm: str, dropout: float, options: dict[str, Any]) -> None:
    """Fail early on arguments a factory cannot use; `options` are the leftover keyword arguments."""
    if options:
        raise UserError(f"model {model!r} has no option(s) {', '.join(sorted(options))}; "
                        f"check model.options")
    if norm not in NORMS:
        raise UserError(f"model.norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"model.dropout must be in [0, 1), got {dropout}")



def maybe_dropout(dropout: float) -> nn.Module | None:
    """Dropout before the final linear layer when `dropout` > 0; None keeps the summary free of no-ops."""
    return nn.Dropout(dropout) if dropout > 0 else None
