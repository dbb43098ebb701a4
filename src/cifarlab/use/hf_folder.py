"""Loading a model folder written by `cifarlab export --format hf` (see cifarlab/use/export_hf.py for its contents).

`training.checkpoint.load_model` hands such a folder here, so every loader (load_model, predict, eval)
takes it like a checkpoint. Plain safetensors and JSON: no huggingface_hub needed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import torch

from cifarlab.errors import UserError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def is_model_folder(path: Union[str, Path]) -> bool:
    path = Path(path)
    return path.is_dir() and (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def load_model_folder(path: Union[str, Path], device: Union[str, torch.device] = "cpu"):
    """(model in eval mode, Config, meta) from a model folder, as `training.checkpoint.load_model` gives them."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from cifarlab.config import validate
    from cifarlab.models.registry import build_model

    path = Path(path)
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
        cfg = validate(config["run_config"])
        model = build_model(cfg.model, num_classes=config["num_labels"], in_channels=config["num_channels"])
        model.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as err:
        if isinstance(err, UserError):
            raise
        raise UserError(f"{path} is not a readable cifarlab model folder: {str(err).splitlines()[0][:200]}") from None
    meta = {"classes": config["classes"], "mean": config["mean"], "std": config["std"], "epoch": config.get("epoch"),
            "step": None, "history": [], "status": "completed", "precision": config.get("precision"),
            "image_size": config["image_size"], "lr_peak": None, "lr_peak_source": None, "early_stop": None}
    return model.to(device).eval(), cfg, meta
