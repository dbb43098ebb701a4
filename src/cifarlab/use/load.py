"""The one way to load a checkpoint for use: `load_model(path, device=None, precision=None) -> LoadedModel`.

`cifarlab.load_model`, `cifarlab predict`, `eval`, `report`, `gradcam` and `export` all load through here,
so they run a checkpoint alike: on `device` (default: CUDA if there is one, else the CPU), under the
precision the run trained with resolved for that device (the README's "one accuracy per checkpoint"),
with the run's TTA. Loading leaves the caller's global RNGs (torch, NumPy, random) as they were.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from cifarlab.config import Config
from cifarlab.errors import UserError
from cifarlab.run.records import ModelCard  # the card checkpoints keep; re-exported for callers of use.load
from cifarlab.runtime import Precision, resolve_device, resolve_precision

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass
class LoadedModel:
    """A checkpoint ready to use: `module` (eval mode, EMA weights where the run kept them, on its device;
    takes normalised float input), its `card`, the `precision` predictions run under, the run's `config`."""
    module: nn.Module
    card: ModelCard
    precision: Precision
    config: Config
    epoch: int  # epochs the weights had trained when saved
    channels_last: bool

    @property
    def device(self) -> torch.device:
        from cifarlab.training.evaluate import model_device

        return model_device(self.module)

    # The card's fields, read often enough to spell short: `model.classes`, `model.image_size`, ...
    classes = property(lambda self: self.card.classes)
    mean = property(lambda self: self.card.mean)
    std = property(lambda self: self.card.std)
    image_size = property(lambda self: self.card.image_size)
    in_channels = property(lambda self: self.card.in_channels)
    tta = property(lambda self: self.card.tta)


def load_model(path: Union[str, Path], device: Union[str, torch.device, None] = None,
               precision: Optional[str] = None) -> LoadedModel:
    """`path`'s model on `device` (None: auto) under `precision` (None: the run's own, resolved for the
    device; or auto, bf16, fp16, fp32)."""
    from cifarlab.training.checkpoint import load_model as read_checkpoint
    from cifarlab.use.hf_folder import is_model_folder, load_model_folder

    if precision is not None and precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)} (or None: the run's own), got {precision!r}")
    target = resolve_device("auto" if device is None else str(device))
    # Building the network draws its initial weights from torch's global RNG; the checkpoint's weights
    # replace them, and the caller's RNG must not notice.
    with torch.random.fork_rng(devices=[]):
        # a model folder from `cifarlab export --format hf` loads like a checkpoint (use/hf_folder.py)
        module, cfg, meta = (load_model_folder if is_model_folder(path) else read_checkpoint)(Path(path))
    options = {"norm": cfg.model.norm, "dropout": cfg.model.dropout, **cfg.model.options}
    card = ModelCard(
        architecture=cfg.model.name, options=options,
        classes=tuple(meta["classes"]), in_channels=len(meta["mean"]), image_size=image_size_of(meta, cfg.data),
        mean=tuple(meta["mean"]), std=tuple(meta["std"]),
        precision=meta.get("precision") or cfg.train.precision, tta=cfg.train.tta,
        data_fingerprint=meta.get("data_fingerprint"))
    chosen = resolve_precision(precision or card.precision, target)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    module = module.to(target, memory_format=memory_format).eval()
    return LoadedModel(module, card, chosen, cfg, int(meta["epoch"]), cfg.train.channels_last)


def image_size_of(meta: dict, data_cfg) -> int:
    """The side of the square images the model was trained on.

    Where the checkpoint stores it (`image_size`), that; else `data.options.image_size`; else the built-in
    source's size; for an image folder trained at its default size, the same default read again from the
    folder's file headers (which needs the folder)."""
    if meta.get("image_size"):
        return int(meta["image_size"])
    if "image_size" in data_cfg.options:
        return int(data_cfg.options["image_size"])
    if data_cfg.dataset not in ("folder", "arrays"):
        from cifarlab.data.sources import dataset_shape

        return dataset_shape(data_cfg.dataset, **data_cfg.options)[1]
    if data_cfg.dataset == "folder" and data_cfg.dir and Path(data_cfg.dir).expanduser().is_dir():
        from cifarlab.data.folder import resolved_shape

        return resolved_shape(data_cfg.dir, **data_cfg.options)[0]
    raise UserError(f"the checkpoint does not store its image size, and data.dataset={data_cfg.dataset!r} with "
                    f"data.dir={data_cfg.dir} cannot tell it (folder moved?); retrain with data.options.image_size set")
