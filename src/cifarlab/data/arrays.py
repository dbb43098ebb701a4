"""In-memory arrays from Python -> the same `Dataset` every other source gives (`cifarlab.train(cfg, data=...)`).

    dataset_from_arrays(x_train, y_train, x_test, y_test, classes=["cat", "dog"])

Images: numpy arrays or torch tensors, (N, C, H, W) or (N, H, W, C) with C = 1 or 3, or (N, H, W) for grey;
square (H == W); uint8 in 0..255 or float in [0, 1] (rounded to uint8, as the other sources store them).
The layout is read from the shape: channels first when dim 1 is 1 or 3, else channels last.
Labels: 1-D integers (arrays, tensors or lists) in 0..K-1, K = len(classes), or max label + 1 when no names are given
(then the names are "0", "1", ...). Every mistake is one `UserError` line naming the argument and what is allowed.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Optional, Sequence

import numpy as np
import torch

from cifarlab.data.checks import MAX_CLASSES
from cifarlab.data.dataset import Dataset, Split, channel_stats
from cifarlab.errors import UserError

CHANNELS = (1, 3)


def _as_tensor(value, what: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise UserError(f"{what} must hold numbers, got a numpy array of Python objects")
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    raise UserError(f"{what} must be a numpy array or a torch tensor, got {type(value).__name__}")


def _to_nchw(images: torch.Tensor, what: str) -> torch.Tensor:
    shape = tuple(images.shape)
    if images.ndim == 3:
        images = images.unsqueeze(1)
    elif images.ndim != 4:
        raise UserError(f"{what} must be shaped (N, C, H, W), (N, H, W, C) or (N, H, W), got {shape}")
    elif images.shape[1] not in CHANNELS:
        if images.shape[3] not in CHANNELS:
            raise UserError(f"{what} must have 1 or 3 channels in dim 1 (N, C, H, W) or dim 3 (N, H, W, C), "
                            f"got {shape}")
        images = images.permute(0, 3, 1, 2)
    if images.shape[0] == 0:
        raise UserError(f"{what} holds no images, got shape {shape}")
    if images.shape[2] != images.shape[3]:
        raise UserError(f"{what} images must be square (H == W), got {images.shape[2]}x{images.shape[3]} "
                        f"from shape {shape}; crop or pad them first")
    return images


def _to_uint8(images: torch.Tensor, what: str) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images.contiguous()
    if not images.is_floating_point():
        raise UserError(f"{what} must be uint8 (0..255) or float (0..1), got {images.dtype}")
    if not torch.isfinite(images).all():
        raise UserError(f"{what} contains NaN or infinite values")
    low, high = images.min().item(), images.max().item()
    if low < 0 or high > 1:
        raise UserError(f"{what} float values must be in [0, 1], got {low:g}..{high:g}; divide uint8-range data by 255")
    return images.float().mul(255).round_().to(torch.uint8).contiguous()


def _labels(labels, count: int, what: str) -> torch.Tensor:
    if isinstance(labels, (list, tuple)):  # a plain list of ints is a natural way to give labels
        labels = np.asarray(labels)
    tensor = _as_tensor(labels, what)
    if tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
        raise UserError(f"{what} must hold integer class indices, got {tensor.dtype}")
    if tensor.ndim != 1 or len(tensor) != count:
        raise UserError(f"{what} must be 1-D with one label per image ({count}), got shape {tuple(tensor.shape)}")
    return tensor.to(torch.int64)


def _class_names(classes: Optional[Sequence[str]], labels: list[torch.Tensor]) -> tuple[str, ...]:
    top = max(int(t.max()) for t in labels)
    low = min(int(t.min()) for t in labels)
    if low < 0:
        raise UserError(f"labels must be class indices >= 0, got {low}")
    if classes is None:
        if top >= MAX_CLASSES:  # before allocating a name per index
            raise UserError(f"labels must be class indices 0..K-1 with K at most {MAX_CLASSES:,}, got a label {top:,}; "
                            f"pass classes=[...] or renumber the labels")
        return tuple(str(k) for k in range(max(top + 1, 2)))
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Iterable):  # "abc" would be classes a, b, c
        raise UserError(f"classes must be a list of class names, got {type(classes).__name__} {classes!r:.60}")
    names = tuple(str(name) for name in classes)
    if len(set(names)) != len(names) or len(names) < 2:
        raise UserError(f"classes must be at least 2 distinct names, got {list(names)}")
    if top >= len(names):
        raise UserError(f"labels must be in 0..{len(names) - 1} for {len(names)} classes, got {top}")
    return names


def dataset_from_arrays(x_train, y_train, x_test, y_test, classes: Optional[Sequence[str]] = None,
                        name: str = "arrays") -> Dataset:
    """A validated Dataset from in-memory images and labels (rules in the module doc); mean/std from x_train."""
    splits = {}
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        images = _to_uint8(_to_nchw(_as_tensor(x, f"x_{split}"), f"x_{split}"), f"x_{split}")
        splits[split] = (images, _labels(y, len(images), f"y_{split}"))
    train_shape, test_shape = (tuple(splits[s][0].shape[1:]) for s in ("train", "test"))
    if train_shape != test_shape:
        raise UserError(f"x_train and x_test images must have the same (C, H, W), got {train_shape} and {test_shape}")
    names = _class_names(classes, [splits["train"][1], splits["test"][1]])
    train, test = Split(*splits["train"]), Split(*splits["test"])
    mean, std = channel_stats(train.images)
    origin = f"arrays passed from Python ({len(train.labels)} train / {len(test.labels)} test, {train_shape})"
    return Dataset(name, train, test, names, mean, std, origin)


def as_dataset(data) -> Dataset:
    """What `cifarlab.train(cfg, data=...)` accepts, as a Dataset: a Dataset as it is, a tuple
    `(x_train, y_train, x_test, y_test)` with optional fifth item `classes`, a dict with those keys, or
    `(train, test[, classes])` of torch Datasets or DataLoaders (those go to data/torch_dataset.py first)."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, dict):
        keys = ("x_train", "y_train", "x_test", "y_test", "classes")
        unknown = sorted(set(data) - set(keys))
        missing = [key for key in keys[:4] if key not in data]
        if unknown or missing:
            raise UserError(f"data dict needs keys x_train, y_train, x_test, y_test (and optionally classes), "
                            f"got {sorted(data)}")
        return dataset_from_arrays(**data)
    if isinstance(data, (tuple, list)) and len(data) in (4, 5):
        return dataset_from_arrays(*data)
    raise UserError(f"data must be (x_train, y_train, x_test, y_test[, classes]), a dict of those, "
                    f"(train_dataset, test_dataset[, classes]) of torch Datasets or DataLoaders, or a Dataset, "
                    f"got {type(data).__name__}{f' of {len(data)} items' if isinstance(data, (tuple, list)) else ''}")
