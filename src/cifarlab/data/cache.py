"""The decoded-dataset cache that image folders and Hugging Face datasets share.

One file per source and decoding options: the uint8 splits, the class names, where they were decoded
from and the fingerprint of every split. Written through `cifarlab.atomic` (a kill leaves the old file or
the new one), and verified on every read, never trusted: anyone can edit the file, so its pixels and labels
must hash to the stored fingerprint, its class names must be the ones the source gives now, and mean/std
are recomputed from the pixels rather than read. Anything off means: decode again.
"""
from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Callable, Optional

import torch

from cifarlab.atomic import atomic_write
from cifarlab.data.dataset import Dataset, Split, channel_stats
from cifarlab.errors import UserError

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: the pixels' fingerprint is stored and checked on every read
SPLITS = ("train", "val", "test")


def write_cache(dataset: Dataset, path: Path) -> bool:
    """Write `dataset` to `path`; False (with a warning) where it cannot be written: a read-only cache
    folder only costs a slower next load."""
    blob = {"version": CACHE_VERSION, "classes": list(dataset.classes), "origin": dataset.origin,
            "fingerprint": dataset.fingerprint}
    for name in SPLITS:
        split = getattr(dataset, name)
        blob[name] = (split.images, split.labels) if split is not None else None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda handle: torch.save(blob, handle))
        return True
    except (OSError, UserError) as err:
        log.warning("could not write the dataset cache %s (%s); the next load decodes again", path, err)
        return False


def read_cache(path: Path, name: str, classes: tuple[str, ...],
               check_labels: Optional[Callable[[str, Optional[Split]], None]] = None) -> Optional[Dataset]:
    """The Dataset `name` cached at `path` if it verifies (see the module doc), else None: decode again.
    `classes` are the names the source gives now; `check_labels(split_name, split)` may raise ValueError
    where a split's labels are not the source's."""
    try:
        blob = torch.load(path, weights_only=True)
        if blob["version"] != CACHE_VERSION:
            raise ValueError(f"cache version {blob['version']}, expected {CACHE_VERSION}")
        cached = {split: Split(*blob[split]) if blob[split] is not None else None for split in SPLITS}
        if tuple(blob["classes"]) != tuple(classes):
            raise ValueError("its class names are not the source's")
        for split in SPLITS if check_labels else ():
            check_labels(split, cached[split])
        mean, std = channel_stats(cached["train"].images)
        dataset = Dataset(name, cached["train"], cached["test"], tuple(classes), mean, std,
                          f"cache {path}, decoded from {blob['origin']}", val=cached["val"])
        if dataset.fingerprint != blob["fingerprint"]:
            raise ValueError("its pixels or labels do not match the fingerprint stored with them")
        return dataset
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, KeyError, ValueError, TypeError) as err:
        log.warning("ignoring %s cache %s (%s); decoding again", name, path, err)
        return None
