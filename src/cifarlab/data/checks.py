"""The rules every dataset meets before a run directory exists, whatever it came from: a built-in source,
an image folder, arrays or a `Dataset` from Python, or a decoded cache read back from disk.

- at least 2 distinct class names, each a non-empty string, at most MAX_CLASSES of them;
- uint8 images of one (C, H, W) in every split, C in 1 or 3, labels in 0..K-1;
- every class has at least one training image (refused when a validation split took its last ones,
  a warning otherwise: a subset or arrays that skip a label may be meant);
- a validation split made by data.val_split measures every class that trains, or a warning says which
  it leaves out and why (a class of one image, a split smaller than the classes);
- finite normalisation statistics, and no channel with std 0 (it would divide by zero: NaN inputs).

A check that fails is one UserError line naming the split, the class or the channel, and what to set.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Optional

import torch

from cifarlab.data.dataset import Dataset
from cifarlab.errors import UserError
from cifarlab.messages import warn

MAX_CLASSES = 100_000  # ImageNet-21k has 21,841; a label of 10**9 must not allocate a billion names
CHANNELS = (1, 3)


def check_dataset(dataset: Dataset, std_given: bool = False, val_split: Optional[float] = None) -> None:
    """Raise one UserError line for the first rule (module doc) `dataset` breaks. `std_given`: the user set
    data.std, so the images' own std may be 0; `val_split`: the data.val_split that made `dataset.val`."""
    where = f"{dataset.name} ({dataset.origin})"
    _check_classes(dataset.classes, where)
    K = len(dataset.classes)
    shape = tuple(dataset.train.images.shape[1:])
    if shape[0] not in CHANNELS or shape[1] != shape[2] or shape[1] < 1:
        raise UserError(f"{where}: images must be (C, H, W) with C in 1 or 3 and H == W, got {shape}")
    for name in ("train", "val", "test"):
        split = getattr(dataset, name)
        if split is None:
            continue
        if len(split.labels) == 0:
            raise UserError(f"{where}: the {name} split holds no images")
        if tuple(split.images.shape[1:]) != shape:
            raise UserError(f"{where}: {name} images are {tuple(split.images.shape[1:])}, train images {shape}; "
                            f"every split must have the same (C, H, W)")
        low, high = int(split.labels.min()), int(split.labels.max())
        if low < 0 or high >= K:
            raise UserError(f"{where}: {name} labels must be in 0..{K - 1} ({K} classes), got {low}..{high}")
    _check_every_class_trains(dataset, val_split, where)
    warn_unmeasured_classes(dataset, val_split)
    _check_statistics(dataset, std_given, where)


def _check_classes(classes, where: str) -> None:
    if not isinstance(classes, (tuple, list)) or not all(isinstance(c, str) and c for c in classes):
        raise UserError(f"{where}: class names must be non-empty strings, got {_short(classes)}")
    if len(classes) > MAX_CLASSES:
        raise UserError(f"{where}: {len(classes):,} classes, more than the {MAX_CLASSES:,} cifarlab trains; "
                        f"are the labels class indices 0..K-1?")
    if len(set(classes)) != len(classes):
        twice = sorted(name for name, count in Counter(classes).items() if count > 1)[:3]
        raise UserError(f"{where}: class names must be distinct, got {', '.join(map(repr, twice))} twice")
    if len(classes) < 2:
        raise UserError(f"{where}: a classifier needs at least 2 classes, got {_short(classes)}; "
                        f"add a second class (folder)")


def _check_every_class_trains(dataset: Dataset, val_split, where: str) -> None:
    counts = torch.bincount(dataset.train.labels, minlength=len(dataset.classes))
    empty = (counts == 0).nonzero().flatten().tolist()
    if not empty:
        return
    names = ", ".join(repr(dataset.classes[k]) for k in empty[:5]) + (" ..." if len(empty) > 5 else "")
    text = f"{where}: {len(empty)} class(es) have no training image ({names})"
    if val_split is not None and dataset.val is not None and bool(torch.isin(dataset.val.labels,
                                                                             torch.tensor(empty)).any()):
        raise UserError(f"{text} once data.val_split={val_split} took its share; use a smaller data.val_split, "
                        f"or add images of those classes")
    if int((counts > 0).sum()) < 2:
        only = dataset.classes[int(counts.argmax())]
        raise UserError(f"{where}: only class {only!r} has training images; a classifier needs images of at least "
                        f"2 classes")
    # Not made by us (a subset, or arrays whose labels skip a class): the user may mean it, but must know.
    warn(f"warning: {text}; the model cannot learn them")


def warn_unmeasured_classes(dataset: Dataset, val_split) -> None:
    """One warning line when the validation split `data.val_split` made leaves out classes that train: its
    val_acc picks the best checkpoint, and a class it never sees cannot count (cifarlab.data.split gives each class with
    2 or more images one validation image whenever the split is large enough)."""
    if val_split is None or dataset.val is None:
        return
    K = len(dataset.classes)
    train, val = (torch.bincount(split.labels, minlength=K) for split in (dataset.train, dataset.val))
    unmeasured = ((train > 0) & (val == 0)).nonzero().flatten().tolist()
    if not unmeasured:
        return
    names = ", ".join(repr(dataset.classes[k]) for k in unmeasured[:5]) + (" ..." if len(unmeasured) > 5 else "")
    eligible = int(((train + val) >= 2).sum())
    if all(int(train[k]) == 1 for k in unmeasured):
        why = "they have a single image, kept for training"
    else:
        why = (f"data.val_split={val_split} made {len(dataset.val.labels)} validation images for {eligible} classes "
               f"with 2 or more images; use a count of at least {eligible} to measure each")
    warn(f"warning: {len(unmeasured)} class(es) have no validation image ({names}): {why}; the best checkpoint is "
         f"picked on the other classes' val_acc")


def _check_statistics(dataset: Dataset, std_given: bool, where: str) -> None:
    values = list(dataset.mean) + list(dataset.std)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise UserError(f"{where}: its mean/std are not finite numbers (mean {list(dataset.mean)}, "
                        f"std {list(dataset.std)}); set data.mean and data.std")
    if std_given:
        return
    flat = [c for c, s in enumerate(dataset.std) if s <= 0]
    if flat:
        suggested = ",".join("1.0" if s <= 0 else f"{s:.4f}" for s in dataset.std)
        raise UserError(f"{where}: channel {flat[0]} of the training images is constant (std 0), so normalising "
                        f"would divide by zero; set data.std=[{suggested}] (any positive values)")


def _short(value) -> str:
    text = repr(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_same_data(classes, fingerprint: Optional[dict], dataset: Dataset, splits: tuple[str, ...],
                    doing: str) -> None:
    """Is `dataset` the data a checkpoint (its `classes`, its `data_fingerprint`) was trained on?

    Other class names, or the same ones in another order (a renamed class folder), would score every label
    against the wrong name: refused. Other images in `splits` under the same names: refused for a resume
    (`doing` "resumed": it would train on with other data), a warning for an evaluation (the number is right
    for the data given, which may be the user's point: new test images). Checkpoints from before the
    fingerprint was stored are compared by class names only."""
    if list(classes) != list(dataset.classes):
        if len(classes) != len(dataset.classes):
            diff = f"the checkpoint has {len(classes)} classes, the data {len(dataset.classes)}"
        else:
            k = next(i for i, (a, b) in enumerate(zip(classes, dataset.classes)) if a != b)
            diff = f"class {k} is {classes[k]!r} in the checkpoint but {dataset.classes[k]!r} in the data"
        raise UserError(f"{dataset.name} ({dataset.origin}) is not the data this checkpoint was trained on: {diff}; "
                        f"it can only be {doing} on data with the same class names in the same order")
    changed = [name for name in splits if fingerprint and fingerprint.get(name) != dataset.fingerprint[name]]
    if not changed:
        return
    text = (f"the {' and '.join(changed)} images of {dataset.name} ({dataset.origin}) differ from those this "
            f"checkpoint was trained with")
    if doing == "resumed":
        raise UserError(f"{text}; a run can only be resumed on its own data: start a new run "
                        f"(model.init_from=<this checkpoint> to start from its weights)")
    warn(f"warning: {text}; the accuracy is for the data given now")
