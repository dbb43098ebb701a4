"""The model summary table users pasted into their READMEs: layers, output shapes, params, mult-adds."""
from __future__ import annotations

import copy
import re
from typing import Sequence

import torch
from torch import nn

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


def _fix_units(text: str) -> str:
    return re.sub(r"\(Units\.(\w+)\)", lambda m: f"({_UNIT_NAMES.get(m.group(1), m.group(1))})", text)
