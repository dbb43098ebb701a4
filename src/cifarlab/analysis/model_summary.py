"""The model summary table users pasted into their READMEs: layers, output shapes, params, mult-adds.

`model_summary` tabulates a module; `summarize_model` builds a registered model for a dataset first
(`cifarlab summary MODEL key=value ...`)."""
from __future__ import annotations

import copy
import re
from typing import Sequence

import torch
from torch import nn

from cifarlab.errors import UserError

COLUMNS = ("output_size", "num_params", "mult_adds")
DEPTH = 3
# torchinfo 1.8 on Python >= 3.11 prints its unit enum as "Units.GIGABYTES"; users expect "(G)".
_UNIT_NAMES = {"TERABYTES": "T", "GIGABYTES": "G", "MEGABYTES": "M", "KILOBYTES": "K", "NONE": ""}


def model_summary(model: nn.Module, input_shape: Sequence[int], batch_size: int) -> str:
    """torchinfo's table for `model` on a (batch_size, *input_shape) batch, as text.

    The forward pass runs on a copy of the model on the meta device: shapes, parameter counts,
    mult-adds and memory estimates come out the same, but a batch of 512 costs nothing and the
    real model (its BatchNorm statistics, its device) is left untouched.
    """
    import torchinfo

    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    input_size = (batch_size, *input_shape)
    options = dict(input_size=input_size, col_names=COLUMNS, depth=DEPTH, verbose=0, mode="eval")
    try:
        stats = torchinfo.summary(copy.deepcopy(model).to("meta"), device="meta", **options)
    except Exception:  # an op without a meta kernel: pay for one real forward pass instead
        device = next(model.parameters(), torch.empty(0)).device
        stats = torchinfo.summary(model, device=device, **options)
    return _fix_units(str(stats))


MAX_SUMMARY_BATCH = 1024
# `cifarlab summary` reads the config keys `train` and `show` take; the first spellings still work.
SUMMARY_ALIASES = {"dataset": "data.dataset", "batch_size": "train.batch_size"}
SUMMARY_MODEL_KEYS = ("model.norm", "model.dropout")  # model keyword arguments besides model.options


def summarize_model(name: str, settings: Sequence[str] = ()) -> str:
    """The summary table of the registered model `name` built for a dataset, from `key=value` settings:
    data.dataset (default cifar10), train.batch_size (default 1, at most MAX_SUMMARY_BATCH), model.norm,
    model.dropout and model.options.NAME (or the first spellings `dataset=`, `batch_size=`, `width=16`)."""
    from cifarlab.data.sources import dataset_shape
    from cifarlab.models.registry import MODELS, create_model

    MODELS.get(name)  # an unknown model name first, with the list of known ones
    dataset, batch_size, options = summary_settings(settings)
    channels, size, classes = dataset_shape(dataset)
    try:
        model = create_model(name, num_classes=classes, in_channels=channels, **options)
    except (TypeError, ValueError, RuntimeError) as err:
        if isinstance(err, UserError):
            raise
        given = " ".join(f"{key}={value!r}" for key, value in options.items())
        reason = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise UserError(f"model {name!r} cannot be built with {given}: {reason}") from None
    return model_summary(model, (channels, size, size), batch_size)


def summary_settings(pairs: Sequence[str]) -> tuple[str, int, dict]:
    """(data.dataset, train.batch_size, model keyword arguments) from `key=value` pairs: the config's dotted
    keys, or the older `dataset=`, `batch_size=` and bare model options (`width=16` = model.options.width)."""
    from cifarlab.config import parse_override

    dataset, batch_size, model = "cifar10", 1, {}
    for keys, value in map(parse_override, pairs):
        key = SUMMARY_ALIASES.get(".".join(keys), ".".join(keys) if len(keys) > 1 else f"model.options.{keys[0]}")
        if key == "data.dataset":
            dataset = value
        elif key == "train.batch_size":
            batch_size = value
        elif key in SUMMARY_MODEL_KEYS or (key.startswith("model.options.") and key.count(".") == 2):
            model[key.rsplit(".", 1)[1]] = value
        elif key == "model.options" and isinstance(value, dict):
            model.update(value)
        else:
            raise UserError(f"summary takes data.dataset, train.batch_size, {', '.join(SUMMARY_MODEL_KEYS)} and "
                            f"model.options.NAME (the model's own options), got {key}")
    if not isinstance(dataset, str):
        raise UserError(f"data.dataset={dataset!r} must be a dataset name, e.g. data.dataset=cifar10")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_SUMMARY_BATCH:
        raise UserError(f"train.batch_size={batch_size!r} must be a whole number in 1..{MAX_SUMMARY_BATCH}")
    for key in ("num_classes", "in_channels"):
        if key in model:
            raise UserError(f"{key} comes from the dataset; set data.dataset=<name> instead of "
                            f"model.options.{key}={model[key]!r}")
    return dataset, batch_size, model


def _fix_units(text: str) -> str:
    return re.sub(r"\(Units\.(\w+)\)", lambda m: f"({_UNIT_NAMES.get(m.group(1), m.group(1))})", text)
