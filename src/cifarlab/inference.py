"""The trained model in the user's hands: `load_model(checkpoint)` and `predict(model, images)`.

    model = cifarlab.load_model("runs/fmnist-quick/<time>/checkpoints/best.pt")
    model.classes, model.mean, model.std, model.image_size, model.in_channels, model.tta
    cifarlab.predict(model, ["shoe.jpg", pil_image, uint8_tensor], top=3)
    # -> [[("Sneaker", 0.91), ("Sandal", 0.06), ("Ankle boot", 0.02)], ...]

Images of any size are brought to the model's input by the training rule: the shorter side is resized to
`model.image_size` and the centre square is cropped (the aspect ratio is kept, nothing is squashed);
colour images become grey for a 1-channel model and vice versa; alpha is composited over black.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import nn

from cifarlab.errors import UserError

METADATA = ("classes", "mean", "std", "image_size", "in_channels", "tta")


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


def load_model(checkpoint: Union[str, Path], device: Union[str, torch.device] = "cpu") -> nn.Module:
    """An eval-mode model (EMA weights where the run kept them) with its metadata as attributes:
    `classes`, `mean`, `std` (per channel, of [0, 1] pixels), `image_size`, `in_channels`, `tta`
    (the run's test-time augmentation: None, "flip" or "flip_translate"; `predict` follows it) and
    `config` (the run's Config)."""
    from cifarlab.training.checkpoint import load_model as load_checkpoint_model

    model, cfg, meta = load_checkpoint_model(Path(checkpoint), device)
    values = {"classes": tuple(meta["classes"]), "mean": tuple(meta["mean"]), "std": tuple(meta["std"]),
              "image_size": image_size_of(meta, cfg.data), "in_channels": len(meta["mean"]),
              "tta": cfg.train.tta, "config": cfg}
    for key, value in values.items():
        if hasattr(model, key):  # a model attribute of the same name would be silently replaced
            raise RuntimeError(f"model {cfg.model.name} already has an attribute {key!r}")
        setattr(model, key, value)
    return model


def _check_model(model) -> nn.Module:
    if isinstance(model, (str, Path)):
        return load_model(model)
    missing = [key for key in METADATA if not hasattr(model, key)]
    if not isinstance(model, nn.Module) or missing:
        raise UserError(f"predict needs a checkpoint path or a model from cifarlab.load_model, got "
                        f"{type(model).__name__}{' without ' + ', '.join(missing) if missing else ''}")
    return model


def _array_to_hwc(array: np.ndarray, what: str) -> np.ndarray:
    """One image (H, W), (H, W, C) or (C, H, W), uint8 or float in [0, 1] -> uint8 (H, W) or (H, W, C)."""
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[2] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise UserError(f"{what} must be shaped (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4, got {array.shape}")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise UserError(f"{what} must be uint8 (0..255) or float (0..1), got {array.dtype}")
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise UserError(f"{what} float values must be finite and in [0, 1]")
        array = np.rint(array * 255).astype(np.uint8)
    return array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array


def _to_model_input(item, channels: int, size: int, what: str) -> torch.Tensor:
    """Any one image -> uint8 (channels, size, size) by the module's resize rule."""
    from PIL import Image

    from cifarlab.data.images import fit_square, read_image, to_chw

    if isinstance(item, (str, Path)):
        return read_image(item, channels, size)
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().numpy()
    if isinstance(item, np.ndarray):
        item = Image.fromarray(_array_to_hwc(item, what))
    if not isinstance(item, Image.Image):
        raise UserError(f"{what} must be a path, a PIL image, a numpy array or a torch tensor, "
                        f"got {type(item).__name__}")
    return to_chw(fit_square(item, channels, size))


def _as_items(images) -> list:
    """A single image or a collection -> a list of single images (a 4-D array is a batch)."""
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:
        return list(images)
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


def predict(model_or_checkpoint, images, top: int = 3, tta: Union[str, bool, None] = None,
            batch_size: int = 256) -> list[list[tuple[str, float]]]:
    """Top-`top` (class name, probability) per image, most likely first, one list per image.

    `images`: one image or a list of them, each a file path, a PIL image, or a numpy array / torch
    tensor (H, W), (H, W, C) or (C, H, W), uint8 or float in [0, 1]; a 4-D array is a batch. Each is
    resized by the rule in the module doc (shorter side to `model.image_size`, centre crop). `tta`
    defaults to the run's own setting (`model.tta`); False turns it off, "flip"/"flip_translate" choose."""
    from cifarlab.analysis.predict import predict as predict_split

    model = _check_model(model_or_checkpoint)
    items = _as_items(images)
    if not items:
        raise UserError("predict needs at least one image, got none")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise UserError(f"top must be a positive integer, got {top!r}")
    batch = torch.stack([_to_model_input(item, model.in_channels, model.image_size, f"image {i}")
                         for i, item in enumerate(items)])
    probs = predict_split(model, batch, torch.zeros(len(batch), dtype=torch.long), model.mean, model.std,
                          batch_size=batch_size, tta=model.tta if tta is None else (tta or None)).probs
    values, indices = probs.topk(min(top, probs.shape[1]), dim=1)
    return [[(model.classes[k], float(p)) for p, k in zip(row_p.tolist(), row_k.tolist())]
            for row_p, row_k in zip(values, indices)]

