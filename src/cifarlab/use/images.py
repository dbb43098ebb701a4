"""Any image a user has -> the uint8 (C, H, W) tensor a model takes, by the training resize rule.

Images of any size are brought to the model's input as training brought them: the shorter side is
resized to the model's image size and the centre square is cropped (the aspect ratio is kept, nothing is
squashed); colour images become grey for a 1-channel model and vice versa; alpha is composited over black.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cifarlab.errors import UserError


def as_batch(images, channels: int, size: int) -> torch.Tensor:
    """One image or a collection (a 4-D array is a batch) -> uint8 (N, channels, size, size)."""
    items = _as_items(images)
    if not items:
        raise UserError("predict needs at least one image, got none")
    return torch.stack([_to_model_input(item, channels, size, f"image {i}") for i, item in enumerate(items)])


def _as_items(images) -> list:
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:
        return list(images)
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


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
