"""A new run started from a trained checkpoint's weights (`model.init_from`): the model's weights only;
optimizer, schedule, epochs and history start fresh, as in any new run.

The weights are the ones the checkpoint evaluates with (its EMA when the run kept one). The checkpoint
must hold the same model (`model.name`, options, norm) and input channels. Its classes must be the new
data's, in order; for other classes, `model.init_head=false` loads everything but the classifier head
(the submodule the model's factory declared, `register_model(name, classifier=...)`), which starts fresh.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from torch import nn

from cifarlab.errors import UserError
from cifarlab.models.registry import classifier_of
from cifarlab.run.model_file import read_model


def classifier_head(model: nn.Module, name: str) -> str:
    """The name of the submodule producing the logits of `model` (registered as `name`), as its factory
    declared it."""
    head = classifier_of(name)
    if head is None or head not in dict(model.named_modules()):
        declared = f"declares {head!r}, which it does not have" if head else "declares no classifier"
        raise UserError(f"model {name!r} {declared}; model.init_head=false needs the submodule that produces the "
                        f"logits: register it with @register_model({name!r}, classifier='<submodule name>')")
    return head


def init_from_checkpoint(model: nn.Module, model_cfg, classes: Sequence[str], in_channels: int) -> str:
    """Load `model_cfg.init_from`'s weights into `model` (built from `model_cfg` for `classes`); returns one
    line saying what was loaded (from where, how many tensors, the head kept or started fresh)."""
    path = Path(model_cfg.init_from)
    try:
        stored = read_model(path)
    except UserError as err:
        raise UserError(f"model.init_from: {err}") from None
    source, source_cfg, card = stored.network, stored.config, stored.card
    where = f"model.init_from={path}"
    if source_cfg.model.name != model_cfg.name:
        raise UserError(f"{where} holds a {source_cfg.model.name!r} model but model.name is {model_cfg.name!r}; "
                        f"set model.name={source_cfg.model.name}")
    if card.in_channels != in_channels:
        raise UserError(f"{where} was trained on {card.in_channels}-channel images, "
                        f"this data has {in_channels} channels")
    old, new = list(card.classes), list(classes)
    if model_cfg.init_head and old != new:
        raise UserError(f"{where} was trained on {len(old)} classes ({_preview(old)}), this data has {len(new)} "
                        f"({_preview(new)}); set model.init_head=false to start a fresh classifier head")
    weights = source.state_dict()
    head = None if model_cfg.init_head else classifier_head(model, model_cfg.name)
    if head is not None:
        weights = {key: value for key, value in weights.items() if not key.startswith(head + ".")}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:
        raise UserError(f"{where} does not fit model {model_cfg.name!r} with norm={model_cfg.norm!r}, options "
                        f"{model_cfg.options} (it has norm={source_cfg.model.norm!r}, options "
                        f"{source_cfg.model.options}): {_first_line(err)}") from None
    stray = [key for key in missing if head is None or not key.startswith(head + ".")] + list(unexpected)
    if stray:
        raise UserError(f"{where} does not fit model {model_cfg.name!r} with norm={model_cfg.norm!r}, options "
                        f"{model_cfg.options}: parameters {', '.join(stray[:3])} do not match")
    values = sum(tensor.numel() for tensor in weights.values())
    kind = "EMA weights" if source_cfg.train.ema is not None else "weights"
    head_text = (f"classifier head '{head}' started fresh for {len(new)} classes" if head is not None
                 else "classifier head kept")
    return (f"model.init_from: loaded {len(weights)} of {len(model.state_dict())} tensors ({values:,} values) "
            f"from {path}, its {kind} of epoch {stored.epoch}; {head_text}")


def _preview(classes: list[str]) -> str:
    return ", ".join(map(str, classes[:4])) + (", ..." if len(classes) > 4 else "")


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return " ".join(lines[1:3] if len(lines) > 1 else lines)[:240]
