"""`data.dataset: folder`: your own images in torchvision's ImageFolder layout, as uint8 tensors.

    <data.dir>/train/<class>/*.png|jpg|jpeg|webp|...    required
    <data.dir>/test/<class>/*                           required, the same class folders
    <data.dir>/val/<class>/*                            optional, the same class folders

Class names are the folder names sorted like torchvision's `ImageFolder` (plain string sort); label k is
the k-th name. Within a class files are in sorted path order, and the classes are interleaved (first image
of each class, then the second of each...), so that `data.train_subset=N` keeps every class. Images may sit in
nested folders under their class; other files and hidden entries (`.ipynb_checkpoints`, `.DS_Store`) are ignored.

Every image goes through one rule (`cifarlab.data.images.fit_square`): alpha composited over black, the
shorter side resized to `image_size`, the centre square cropped, so the aspect ratio is kept. Options
(`data.options`):
- `image_size`: default the most common shorter side of the train images, capped at 64;
- `channels`: 1 or 3, default what most train images are (grey modes count as 1, all others as 3).

The images are decoded once, in parallel threads (PIL releases the GIL while decoding), into
`<cache>/folder/<root hash>-<content hash>.pt` under `$CIFARLAB_DATA` (default ~/.cache/cifarlab). The
content hash covers every image's path, byte size and mtime and the options, so adding, removing or
editing an image decodes again; the superseded cache file of the same folder and options is deleted.

An image that cannot be read stops the load with one line naming it (nothing is skipped silently: a
model trained on quietly fewer images is worse than a clear error); move or fix the file and rerun.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from cifarlab.data.cache import CACHE_VERSION, read_cache, write_cache
from cifarlab.data.dataset import Dataset, Split, channel_stats
from cifarlab.data.images import fit_square, open_checked
from cifarlab.errors import UserError
from cifarlab.progress import PhaseProgress

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff")
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")
DEFAULT_SIZE_CAP = 64
SIZE_RANGE = (8, 512)
OPTIONS = ("image_size", "channels")


@dataclass(frozen=True)
class FileSplit:
    """One split before decoding: image paths and their labels, in a fixed order."""

    files: tuple[Path, ...]
    labels: tuple[int, ...]


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _class_files(split_dir: Path) -> dict[str, list[Path]]:
    """Class folder name -> its image files (recursively, sorted); hidden entries skipped."""
    found = {}
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and _visible(p)):
        files = [p for p in class_dir.rglob("*")
                 if p.suffix.lower() in IMAGE_EXTENSIONS and (p.is_file() or (p.is_symlink() and not p.exists()))
                 and all(_visible(part) for part in p.relative_to(class_dir).parents if part.name)
                 and _visible(p)]
        found[class_dir.name] = sorted(files)
    return found


def scan(root: Path) -> tuple[tuple[str, ...], dict[str, FileSplit]]:
    """(class names, split name -> FileSplit) for train, test and, when present, val."""
    if not root.is_dir():
        raise UserError(f"data.dir {root} is not a folder; give one holding train/<class>/ and test/<class>/")
    missing = [name for name in ("train", "test") if not (root / name).is_dir()]
    if missing:
        raise UserError(f"{root} has no {' and no '.join(m + '/' for m in missing)} folder; "
                        f"expected {root}/train/<class>/*.png and {root}/test/<class>/*.png")
    names = [name for name in ("train", "val", "test") if (root / name).is_dir()]
    per_split = {name: _class_files(root / name) for name in names}
    classes = tuple(per_split["train"])
    for name, found in per_split.items():
        if not found:
            raise UserError(f"{root / name} has no class folders; put images in {root / name}/<class>/")
        empty = [c for c, files in found.items() if not files]
        if empty:
            raise UserError(f"class folder {root / name / empty[0]} has no images "
                            f"({', '.join(IMAGE_EXTENSIONS)}); add some or remove the folder")
        if tuple(found) != classes:
            lacks, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
            raise UserError(f"{name}/ and train/ must hold the same class folders in {root}: {name}/ "
                            f"lacks {lacks or 'none'}, has extra {extra or 'none'}")
    return classes, {name: _interleaved(classes, found) for name, found in per_split.items()}


def _interleaved(classes: tuple[str, ...], found: dict[str, list[Path]]) -> FileSplit:
    """Round-robin over the classes (a0 b0 c0 a1 b1 ...): a `data.train_subset` prefix holds every class."""
    order = sorted((i, k) for k, c in enumerate(classes) for i in range(len(found[c])))
    return FileSplit(tuple(found[classes[k]][i] for i, k in order), tuple(k for _, k in order))


def _settings(options: dict) -> dict:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise UserError(f"unknown option {unknown[0]!r} for dataset 'folder'; choose from: {', '.join(OPTIONS)}")
    size, channels = options.get("image_size"), options.get("channels")
    low, high = SIZE_RANGE
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not low <= size <= high):
        raise UserError(f"folder option image_size must be an integer in {low}..{high}, got {size!r}")
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise UserError(f"folder option channels must be 1 or 3, got {channels!r}")
    return {"image_size": size, "channels": channels}


def content_key(root: Path, splits: dict[str, FileSplit], settings: dict) -> str:
    """sha256 over the options and every image's relative path, byte size and mtime (ns)."""
    digest = hashlib.sha256(f"{CACHE_VERSION}|{settings['image_size']}|{settings['channels']}".encode())
    for name, split in splits.items():
        for path, label in zip(split.files, split.labels):
            try:
                stat = path.stat()
            except OSError as err:  # a dangling link: the decode names it
                raise _unreadable(path, err) from None
            relative = os.fsencode(path.relative_to(root))  # bytes: a file name need not be valid UTF-8
            digest.update(f"\n{name}|{label}|".encode() + relative + f"|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _unreadable(path: Path, err: Exception) -> UserError:
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return UserError(f"cannot read image {path} ({reason}); fix, move or delete it and rerun "
                     f"(a folder dataset stops at an unreadable image rather than skip it)")


def _probe(path: Path) -> tuple[int, bool]:
    """(shorter side, is grey) from the file header only."""
    try:
        with open_checked(path) as image:
            return min(image.size), image.mode in GREY_MODES
    except Exception as err:  # PIL raises many types for a bad file; every one means "unreadable"
        raise _unreadable(path, err) from None


def resolve_settings(train: FileSplit, settings: dict) -> tuple[int, int]:
    """(image_size, channels): the options, or the defaults read from the train images' headers."""
    size, channels = settings["image_size"], settings["channels"]
    if size is None or channels is None:
        with ThreadPoolExecutor() as pool:
            probes = list(pool.map(_probe, train.files))
        sides = Counter(side for side, _ in probes)
        # Most common shorter side; a tie goes to the larger size, so the default does not depend on order.
        common = max(sides.items(), key=lambda item: (item[1], item[0]))[0]
        size = size if size is not None else min(common, DEFAULT_SIZE_CAP)
        grey = sum(is_grey for _, is_grey in probes)
        channels = channels if channels is not None else (1 if grey > len(probes) - grey else 3)
    return size, channels


def decode(split: FileSplit, size: int, channels: int, progress: Optional[PhaseProgress] = None) -> Split:
    """All images of a split -> uint8 (N, channels, size, size), decoded in parallel threads; `progress`
    counts the images."""
    pixels = np.empty((len(split.files), size, size, channels), dtype=np.uint8)

    def load(index: int) -> None:
        path = split.files[index]
        try:
            with open_checked(path) as image:  # a regular file within MAX_PIXELS, as for a single image
                pixels[index] = fit_square(image, channels, size).reshape(size, size, channels)
        except Exception as err:  # truncated data, bad codec...: name the file (see module doc)
            raise _unreadable(path, err) from None

    with ThreadPoolExecutor() as pool:
        for _ in pool.map(load, range(len(split.files))):
            if progress is not None:
                progress.update()
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    return Split(images, torch.tensor(split.labels, dtype=torch.int64))


def _cache_path(cache_root: Path, root: Path, settings: dict, key: str) -> Path:
    """`<root and options hash>-<content hash>.pt`: a new file replaces only its own folder and options' cache."""
    prefix = hashlib.sha256(f"{root}|{settings['image_size']}|{settings['channels']}".encode()).hexdigest()[:12]
    return cache_root / "folder" / f"{prefix}-{key[:16]}.pt"


def _check_labels(splits: dict[str, FileSplit]):
    """A cache's labels must be those the folder scan gives, split by split (data/cache.py verifies the rest)."""
    def check(name: str, cached: Optional[Split]) -> None:
        scanned = splits.get(name)
        expected = None if scanned is None else torch.tensor(scanned.labels, dtype=torch.int64)
        if (cached is None) != (expected is None) or (cached is not None and not torch.equal(cached.labels, expected)):
            raise ValueError(f"its {name} labels are not the folder's")
    return check


def _write_cache(dataset: Dataset, path: Path) -> None:
    if write_cache(dataset, path):
        for stale in path.parent.glob(path.name.split("-")[0] + "-*.pt"):
            if stale != path:  # the same folder and options' cache from before its files changed
                stale.unlink(missing_ok=True)


def load_folder(data_dir: str | Path | None, cache_root: Path, **options) -> Dataset:
    """The image folder `data_dir` (layout and rules in the module doc) as a Dataset, cached."""
    if data_dir in (None, ""):
        raise UserError("data.dataset=folder needs data.dir=<folder holding train/<class>/ and test/<class>/>")
    root = Path(data_dir).expanduser().resolve()
    settings = _settings(options)
    classes, splits = scan(root)
    cache = _cache_path(cache_root, root, settings, content_key(root, splits, settings))
    if cache.is_file() and (dataset := read_cache(cache, "folder", classes, _check_labels(splits))) is not None:
        return dataset
    size, channels = resolve_settings(splits["train"], settings)
    count = sum(len(split.files) for split in splits.values())
    # No line up front (announce=False): a folder refused for a bad file says only that, in one line.
    with PhaseProgress(f"decoding {root}", count, "images", announce=False) as progress:
        decoded = {name: decode(split, size, channels, progress) for name, split in splits.items()}
    mean, std = channel_stats(decoded["train"].images)
    origin = f"{root} (image folder, {count} files, shorter side resized to {size} + centre crop, {channels}-channel)"
    dataset = Dataset("folder", decoded["train"], decoded["test"], classes, mean, std, origin, val=decoded.get("val"))
    _write_cache(dataset, cache)
    return dataset


def resolved_shape(data_dir: str | Path, **options) -> tuple[int, int]:
    """(image_size, channels) that loading `data_dir` with `options` uses, read from file headers only."""
    settings = _settings(options)
    _, splits = scan(Path(data_dir).expanduser().resolve())
    return resolve_settings(splits["train"], settings)
