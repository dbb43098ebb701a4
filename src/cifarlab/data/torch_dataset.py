"""A `torch.utils.data.Dataset` (or a `DataLoader`'s dataset) from Python -> the same `Dataset` arrays give.

    cifarlab.train("smoke", data=(train_dataset, test_dataset))          # classes from `.classes`
    cifarlab.train("smoke", data=(train_loader, test_loader, ["cat", "dog"]))

Map-style datasets only (`len` and `[i]`), each item `(image, label)`: the image a CHW tensor (uint8, or
float in [0, 1]), an HWC/HW uint8 NumPy array or anything `np.asarray` reads that way (a PIL image in mode L
or RGB); the label an integer. Every image is read once, in index order, into one uint8 tensor: training then
gathers, augments and normalises batches on the device as for every other source. There is no streaming: a
dataset whose uint8 copy would take more than half of this machine's memory is refused in one line (pass a
`torch.utils.data.Subset`, or save it as an image folder). A DataLoader gives its `.dataset`; its batch size,
sampler and workers are not used. A random transform in the dataset would be frozen by the one read: it is
noticed (item 0 read twice differs) and named in a warning; use `augment.*` for per-epoch augmentation.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from cifarlab.data.arrays import dataset_from_arrays
from cifarlab.data.dataset import Dataset
from cifarlab.errors import UserError
from cifarlab.messages import warn

CHANNELS = (1, 3)


def is_torch_data(value) -> bool:
    """A torch Dataset or DataLoader (or any object with `len` and `[i]` that is not an array)."""
    if isinstance(value, (DataLoader, torch.utils.data.Dataset)):
        return True
    return hasattr(value, "__getitem__") and hasattr(value, "__len__") and \
        not isinstance(value, (np.ndarray, torch.Tensor, list, tuple, str, dict))


def dataset_from_torch(train, test, classes: Optional[Sequence[str]] = None, name: str = "torch") -> Dataset:
    """A validated Dataset from two map-style torch datasets or DataLoaders (rules in the module doc)."""
    train, test = _map_style(train, "train"), _map_style(test, "test")
    x_train, y_train = decode(train, "train")
    x_test, y_test = decode(test, "test")
    classes = classes if classes is not None else _dataset_classes(train)
    dataset = dataset_from_arrays(x_train, y_train, x_test, y_test, classes, name=name)
    origin = f"torch datasets {type(train).__name__} / {type(test).__name__}, decoded once into memory (not streamed)"
    return Dataset(dataset.name, dataset.train, dataset.test, dataset.classes, dataset.mean, dataset.std, origin)


def _map_style(data, split: str):
    if isinstance(data, DataLoader):
        data = data.dataset
    if isinstance(data, IterableDataset):
        raise UserError(f"the {split} dataset is an IterableDataset; cifarlab reads map-style datasets (len and [i]) "
                        f"once into memory: wrap it in one, or pass arrays")
    if not is_torch_data(data):
        raise UserError(f"the {split} data must be a torch Dataset or DataLoader, got {type(data).__name__}")
    if len(data) == 0:
        raise UserError(f"the {split} dataset holds no items")
    return data


def _dataset_classes(dataset) -> Optional[list[str]]:
    """`.classes` as torchvision datasets have it, looked for through Subset-like wrappers (`.dataset`)."""
    while dataset is not None:
        classes = getattr(dataset, "classes", None)
        if classes is not None:
            return list(classes)
        dataset = getattr(dataset, "dataset", None)
    return None


def memory_budget_bytes() -> int:
    """Half of this machine's physical memory: the most a decoded copy may take."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def decode(dataset, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (N, C, H, W), int64 labels (N,)) read from `dataset[0]` ... `dataset[N - 1]`."""
    count = len(dataset)
    first = _image(_item(dataset, 0, split)[0], split, 0)
    needed = count * first.numel()
    if needed > memory_budget_bytes():
        raise UserError(f"the {split} dataset ({count:,} images of {tuple(first.shape)}) would take "
                        f"{needed / 2**30:.1f} GiB decoded, more than half this machine's memory "
                        f"({memory_budget_bytes() / 2**30:.1f} GiB); cifarlab decodes a torch Dataset once and "
                        f"does not stream it: pass a torch.utils.data.Subset or save the images as a folder")
    images = torch.empty((count, *first.shape), dtype=torch.uint8)
    labels = torch.empty(count, dtype=torch.int64)
    for index in range(count):
        image, label = _item(dataset, index, split)
        image = first if index == 0 else _image(image, split, index)
        if image.shape != first.shape:
            raise UserError(f"{split} item {index}: image is (C, H, W) = {tuple(image.shape)}, item 0 was "
                            f"{tuple(first.shape)}; every image must have one shape (resize them in the dataset)")
        images[index] = image
        labels[index] = _label(label, split, index)
    _warn_if_random(dataset, first, split)
    return images, labels


def _item(dataset, index: int, split: str):
    try:
        item = dataset[index]
    except Exception as err:  # the user's own __getitem__ (kept as the cause, for its traceback)
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise UserError(f"{split} item {index}: the dataset raised {type(err).__name__} ({reason}) reading it; "
                        f"its len() is {len(dataset)}, so items 0..{len(dataset) - 1} must each give (image, label)"
                        ) from err
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise UserError(f"{split} item {index} must be (image, label), got {type(item).__name__}"
                        f"{f' of {len(item)}' if isinstance(item, (tuple, list)) else ''}")
    return item[0], item[1]


def _image(image, split: str, index: int) -> torch.Tensor:
    """One image as a uint8 CHW tensor (a float one checked to be in [0, 1] and rounded)."""
    where = f"{split} item {index}"
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.ndim == 2:
            tensor = tensor.unsqueeze(0)
        if tensor.ndim != 3 or tensor.shape[0] not in CHANNELS:
            raise UserError(f"{where}: a tensor image must be (C, H, W) with C in 1 or 3, or (H, W), "
                            f"got {tuple(tensor.shape)}")
    else:
        from PIL import Image

        if not isinstance(image, (np.ndarray, Image.Image)):  # np.asarray of a tuple or a list raised a ValueError
            raise UserError(f"{where}: image must be a torch tensor, a numpy array or a PIL image, got "
                            f"{type(image).__name__}")
        array = np.asarray(image)
        if array.dtype != np.uint8:
            raise UserError(f"{where}: a {type(image).__name__} image must hold uint8 (0..255) values, got "
                            f"{array.dtype}; use a float CHW tensor in [0, 1] for floats")
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3 or array.shape[2] not in CHANNELS:
            raise UserError(f"{where}: an array or PIL image must be (H, W, C) with C in 1 or 3, or (H, W) "
                            f"(PIL modes L and RGB), got {array.shape}; convert it (e.g. image.convert('RGB'))")
        tensor = torch.from_numpy(np.require(array, requirements=["C", "W"])).permute(2, 0, 1)  # PIL: read-only
    if tensor.dtype == torch.uint8:
        return tensor
    if not tensor.is_floating_point():
        raise UserError(f"{where}: image must be uint8 (0..255) or float (0..1), got {tensor.dtype}")
    if not torch.isfinite(tensor).all():
        raise UserError(f"{where}: image contains NaN or infinite values")
    low, high = tensor.min().item(), tensor.max().item()
    if low < 0 or high > 1:
        raise UserError(f"{where}: float image values must be in [0, 1], got {low:g}..{high:g} (normalised "
                        f"already? cifarlab normalises itself: drop the dataset's Normalize)")
    return tensor.float().mul(255).round_().to(torch.uint8)  # stored as every source stores images


def _label(label, split: str, index: int) -> int:
    if isinstance(label, (torch.Tensor, np.ndarray)) and label.ndim == 0:
        label = label.item()
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
        raise UserError(f"{split} item {index}: label must be an integer class index, got {label!r}")
    return int(label)


def _warn_if_random(dataset, first: torch.Tensor, split: str) -> None:
    again = _image(_item(dataset, 0, split)[0], split, 0)
    if not torch.equal(again, first):
        warn(f"warning: the {split} dataset gave two different images for item 0: its transform is random, and "
             f"reading it once freezes one draw; move augmentation to augment.* (it runs per epoch, on the device)")
