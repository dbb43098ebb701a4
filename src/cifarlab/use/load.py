"""The one way to load a model for use: `load_model(path, device=None, precision=None) -> LoadedModel`, an
`nn.Module`.

`cifarlab.load_model`, `cifarlab predict`, `eval`, `report`, `gradcam` and `export` all load through here
(reading and checking the file is run/model_file.read_model's), so they run a checkpoint alike: on `device`
(default: CUDA if there is one, else the CPU), under the precision the run trained with resolved for that
device (the README's "one accuracy per checkpoint"), with the run's TTA. Loading leaves the caller's
global RNGs (torch, NumPy, random) as they were.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from cifarlab.config import Config
from cifarlab.errors import UserError
from cifarlab.run.model_card import ModelCard  # the card every model file keeps; re-exported for callers of use.load
from cifarlab.run.model_file import read_model
from cifarlab.runtime import Precision, resolve_device, resolve_precision

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


class LoadedModel(nn.Module):
    """A stored model ready to use, as an ordinary `nn.Module`: calling it runs the network on normalised
    float input `(pixel / 255 - mean) / std`, shaped (N, C, H, W), and returns logits (N, num_classes);
    `.eval()`, `.to()`, `.parameters()` and `state_dict()` are the network's (under `module.`).

    What travels with it, as timm attaches `pretrained_cfg` to its models: the `card` (classes, mean/std,
    image size, TTA, architecture), the `precision` that `predict` and `eval` run it under, the run's
    `config`, the `epoch` its weights had trained, and whether it runs `channels_last`. `module` is the
    network itself (eval mode, EMA weights where the run kept them)."""

    def __init__(self, module: nn.Module, card: ModelCard, precision: Precision, config: Config,
                 epoch: Optional[int], channels_last: bool):
        super().__init__()
        self.module = module
        self.card, self.precision, self.config = card, precision, config
        self.epoch, self.channels_last = epoch, channels_last

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images)

    @property
    def device(self) -> torch.device:
        from cifarlab.models.inference import model_device

        return model_device(self.module)

    # The card's fields, read often enough to spell short: `model.classes`, `model.image_size`, ...
    classes = property(lambda self: self.card.classes)
    mean = property(lambda self: self.card.mean)
    std = property(lambda self: self.card.std)
    image_size = property(lambda self: self.card.image_size)
    in_channels = property(lambda self: self.card.in_channels)
    tta = property(lambda self: self.card.tta)


def load_model(path: Union[str, Path], device: Union[str, torch.device, None] = None,
               precision: Optional[str] = None, model_class: type[LoadedModel] = LoadedModel) -> LoadedModel:
    """`path`'s model (a checkpoint, or a model folder from `cifarlab export --format hf`) on `device`
    (None: auto) under `precision` (None: the run's own, resolved for the device; or auto, bf16, fp16,
    fp32). `model_class`: LoadedModel or a subclass of it with the same constructor."""
    if precision is not None and precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)} (or None: the run's own), got {precision!r}")
    target = resolve_device("auto" if device is None else str(device))
    stored = read_model(path)
    cfg, card = stored.config, stored.card
    if not card.image_size:
        raise UserError(f"{path} does not store its image size, and data.dataset={cfg.data.dataset!r} with "
                        f"data.dir={cfg.data.dir} cannot tell it (folder moved?); retrain with "
                        f"data.options.image_size set")
    chosen = resolve_precision(precision or card.precision, target)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    network = stored.network.to(target, memory_format=memory_format).eval()
    return model_class(network, card, chosen, cfg, stored.epoch, cfg.train.channels_last).eval()
