"""Datasets as uint8 tensors: locate, download, verify, decode and cache them.

`load_dataset(name)` looks for a dataset in this order and stops at the first hit:

1. the decoded cache `<data_dir>/<name>/<name>-uint8.pt` (written atomically after the first decode);
2. the OS package folder (`/usr/share/datasets/fashion-mnist` from `apt-get install dataset-fashion-mnist`);
3. files already in `<data_dir>/<name>/` (IDX .gz files, a CIFAR archive or its extracted folder);
4. a download from the source's `base_url`, md5-checked (only when `download=True`).

`data_dir` is the argument, else `$CIFARLAB_DATA`, else `~/.cache/cifarlab`.

Where files come from is one table, `SOURCES`: name -> `Source` (base URL, file names with md5s, OS
folder). To use a mirror or a local test server, replace an entry, e.g. in a test
`monkeypatch.setitem(SOURCES, "cifar10", dataclasses.replace(SOURCES["cifar10"], base_url="http://127.0.0.1:8000/"))`.
"""
from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from cifarlab.atomic import atomic_write
from cifarlab.data.dataset import Dataset, Split, channel_stats  # noqa: F401 (re-exported)
from cifarlab.data.download import DownloadError, fetch, safe_extract, server_answers, verify_md5
from cifarlab.data.formats import (
    CIFAR10_LAYOUT,
    CIFAR100_LAYOUT,
    CifarLayout,
    read_cifar,
    read_idx_images,
    read_idx_labels,
)
from cifarlab.data.synthetic import make_synthetic, synthetic_settings
from cifarlab.errors import UserError

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: a fingerprint of the tensors is stored and checked on every read
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@dataclass(frozen=True)
class Source:
    """Where a dataset's files live: `base_url + file name`, each with its md5."""

    base_url: str
    files: tuple[tuple[str, str], ...]  # (file name, md5)
    shape: tuple[int, int, int]  # (channels, image size, classes), known without the files
    classes: tuple[str, ...] = ()  # fixed class names; CIFAR reads them from the archive
    cifar_layout: CifarLayout | None = None  # None: IDX files
    os_dir: Path | None = None
    os_package: str | None = None


SOURCES: dict[str, Source] = {
    "cifar10": Source(
        base_url="https://www.cs.toronto.edu/~kriz/",
        files=(("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
        shape=(3, 32, 10),
        cifar_layout=CIFAR10_LAYOUT,
    ),
    "cifar100": Source(
        base_url="https://www.cs.toronto.edu/~kriz/",
        files=(("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),),
        shape=(3, 32, 100),
        cifar_layout=CIFAR100_LAYOUT,
    ),
    "fashion_mnist": Source(
        base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        files=tuple(zip(IDX_FILES, ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                                    "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"))),
        shape=(1, 28, 10),
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"),
        os_dir=Path("/usr/share/datasets/fashion-mnist"),
        os_package="dataset-fashion-mnist",
    ),
    "mnist": Source(
        base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        files=tuple(zip(IDX_FILES, ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                                    "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"))),
        shape=(1, 28, 10),
        classes=tuple(str(digit) for digit in range(10)),
        os_dir=Path("/usr/share/datasets/mnist"),
    ),
}


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """`data_dir`, else $CIFARLAB_DATA, else ~/.cache/cifarlab (with `~` expanded)."""
    chosen = data_dir if data_dir not in (None, "") else os.environ.get("CIFARLAB_DATA") or "~/.cache/cifarlab"
    path = Path(chosen).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"data directory {path} is a file, expected a directory")
    existing = next(p for p in path.absolute().parents if p.exists())  # `file/sub`: mkdir would fail later
    if not path.exists() and not existing.is_dir():
        raise UserError(f"data directory {path} cannot be created: {existing} is a file, not a directory")
    return path


def list_datasets() -> list[str]:
    return sorted([*SOURCES, "folder", "hf", "synthetic"])


def dataset_notes(data_dir: str | Path | None = None) -> dict[str, str]:
    """Dataset name -> where its images come from, for `cifarlab datasets`: cached (available offline) or
    downloaded on first use, or how to point at your own."""
    own = {"folder": "your own images: cifarlab train folder data.dir=PATH (train/<class>/*, test/<class>/*)",
           "hf": "a Hugging Face dataset: data.dataset=hf data.dir=SAVED_FOLDER|PARQUET_FOLDER|HUB_NAME"}
    return {name: own.get(name) or ("available offline" if dataset_available(name, data_dir)
                                    else "not cached: downloads on first use") for name in list_datasets()}


def dataset_shape(name: str, **options) -> tuple[int, int, int]:
    """(channels, image size, classes) of a dataset, without reading its files."""
    if name == "synthetic":
        settings = synthetic_settings(options)
        return settings["channels"], settings["image_size"], settings["num_classes"]
    if name in ("folder", "hf"):
        fixed = ", ".join(n for n in list_datasets() if n not in ("folder", "hf"))
        raise UserError(f"the shape of dataset {name!r} depends on its files; name a dataset with a fixed shape "
                        f"({fixed})")
    return _source(name).shape


def _source(name: str) -> Source:
    if name not in SOURCES:
        raise UserError(f"unknown dataset {name!r}; choose from: {', '.join(list_datasets())}")
    return SOURCES[name]


def _cache_path(root: Path, name: str) -> Path:
    return root / f"{name}-uint8.pt"


def _idx_dir(source: Source, root: Path) -> Path | None:
    """The first folder holding all four IDX files, if any."""
    for folder in (source.os_dir, root):
        if folder is not None and all((folder / f).is_file() for f, _ in source.files):
            return folder
    return None


def _cifar_extracted(source: Source, root: Path) -> bool:
    layout = source.cifar_layout
    names = (*layout.train_files, layout.test_file, layout.meta_file)
    return all((root / layout.folder / f).is_file() for f in names)


def dataset_available(name: str, data_dir: str | Path | None = None) -> bool:
    """True when `load_dataset(name, data_dir, download=False)` needs no network."""
    if name in ("synthetic", "folder", "hf"):
        return True
    source, root = _source(name), resolve_data_dir(data_dir) / name
    if _cache_path(root, name).is_file():
        return True
    if source.cifar_layout is None:
        return _idx_dir(source, root) is not None
    return _cifar_extracted(source, root) or (root / source.files[0][0]).is_file()


def download_server_answers(name: str, seconds: float = 5.0) -> bool:
    """Whether the server `name` downloads from accepts a connection within `seconds` (see download.py)."""
    return server_answers(_source(name).base_url, seconds)


def _obtain(name: str, source: Source, root: Path, file_name: str, md5: str, download: bool) -> Path:
    """Download one missing file into `root`, or explain where it was looked for and how to get it."""
    url = source.base_url.rstrip("/") + "/" + file_name
    places = " or ".join(str(p) for p in (source.os_dir, root) if p is not None)
    how = f"download it from {url} into {root}"
    if source.os_package:
        how = f"run `apt-get install {source.os_package}`, or {how}"
    if not download:
        raise UserError(f"{name}: {file_name} not found in {places} and download=False; {how}")
    try:
        return fetch(url, root / file_name, md5)
    except DownloadError as e:
        raise UserError(f"{name}: {file_name} not found in {places}, and {e}; {how}") from None


def _decode_idx(name: str, source: Source, root: Path, download: bool) -> tuple[dict, str]:
    folder = _idx_dir(source, root)
    if folder is None:
        for file_name, md5 in source.files:
            if not (root / file_name).is_file():
                _obtain(name, source, root, file_name, md5, download)
        folder, origin = root, f"downloaded from {source.base_url} to {root}"
    elif folder == source.os_dir:
        origin = f"{folder} (OS package {source.os_package})" if source.os_package else f"{folder} (OS folder)"
    else:
        origin = f"{folder} (local IDX files)"
    train_images, train_labels, test_images, test_labels = (folder / f for f, _ in source.files)
    tensors = {
        "train": (read_idx_images(train_images), read_idx_labels(train_labels)),
        "test": (read_idx_images(test_images), read_idx_labels(test_labels)),
        "classes": source.classes,
    }
    return tensors, origin


def _decode_cifar(name: str, source: Source, root: Path, download: bool) -> tuple[dict, str]:
    if _cifar_extracted(source, root):
        origin = f"{root / source.cifar_layout.folder} (extracted archive)"
    else:
        file_name, md5 = source.files[0]
        archive = root / file_name
        if archive.is_file():
            verify_md5(archive, md5)
            origin = f"{archive} (local archive)"
        else:
            _obtain(name, source, root, file_name, md5, download)
            origin = f"downloaded from {source.base_url.rstrip('/')}/{file_name}"
        safe_extract(archive, root)
    return read_cifar(root, source.cifar_layout), origin


def _labels_in_range(name: str, split: Split, num_classes: int, origin: str) -> None:
    if split.labels.numel() and not 0 <= int(split.labels.min()) <= int(split.labels.max()) < num_classes:
        raise UserError(f"{name} from {origin}: labels must be in 0..{num_classes - 1}, "
                        f"got {int(split.labels.min())}..{int(split.labels.max())}")


def _build(name: str, tensors: dict, origin: str, stats=None) -> Dataset:
    for key in ("train", "test"):
        images, labels = tensors[key]
        if len(images) != len(labels):
            raise UserError(f"{name} from {origin}: the {key} split has {len(images)} images but {len(labels)} labels")
    train, test = (Split(*(t.contiguous() for t in tensors[key])) for key in ("train", "test"))
    classes = tuple(tensors["classes"])
    for split in (train, test):
        _labels_in_range(name, split, len(classes), origin)
    mean, std = stats if stats is not None else channel_stats(train.images)
    return Dataset(name, train, test, classes, tuple(mean), tuple(std), origin)


def _write_cache(dataset: Dataset, path: Path) -> None:
    blob = {
        "version": CACHE_VERSION,
        "train": (dataset.train.images, dataset.train.labels),
        "test": (dataset.test.images, dataset.test.labels),
        "classes": list(dataset.classes),
        "mean": list(dataset.mean),
        "std": list(dataset.std),
        "origin": dataset.origin,
        "fingerprint": dataset.fingerprint,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda handle: torch.save(blob, handle))
    except (OSError, UserError) as e:  # a read-only data dir only costs a slower next load
        log.warning("could not write the dataset cache %s (%s); the next load decodes again", path, e)


def _read_cache(name: str, path: Path) -> Dataset | None:
    """The cached dataset, or None (with a warning) when the cache is unreadable or stale: it is rebuilt."""
    try:
        blob = torch.load(path, weights_only=True)
        if blob["version"] != CACHE_VERSION:
            raise ValueError(f"cache version {blob['version']}, expected {CACHE_VERSION}")
        origin = f"cache {path}, decoded from {blob['origin']}"
        # Verified, never trusted (anyone can edit the file): the pixels must hash to the fingerprint stored
        # with them, fixed class names must be the source's, and mean/std are recomputed, not read.
        dataset = _build(name, blob, origin)
        if dataset.fingerprint != blob["fingerprint"]:
            raise ValueError("its images or labels do not match the fingerprint stored with them")
        fixed = SOURCES[name].classes if name in SOURCES else ()
        if fixed and dataset.classes != tuple(fixed):
            raise ValueError(f"its class names are not {name}'s")
        return dataset
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, KeyError, ValueError, TypeError,
            UserError) as e:
        log.warning("ignoring unreadable dataset cache %s (%s); decoding again", path, e)
        return None


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = True, **options) -> Dataset:
    """The dataset `name` (see `list_datasets()`) as uint8 tensors on the CPU; `options` only for synthetic
    and folder. For `folder`, `data_dir` is the image folder itself (see `cifarlab.data.folder`)."""
    if name == "folder":
        from cifarlab.data.folder import load_folder

        return load_folder(data_dir, resolve_data_dir(None), **options)
    if name == "hf":
        from cifarlab.data.hf import load_hf

        return load_hf(data_dir, resolve_data_dir(None), download=download, **options)
    if name == "synthetic":
        settings = synthetic_settings(options)
        return _build(name, make_synthetic(**settings), f"synthetic (seed {settings['seed']}, generated in memory)")
    source = _source(name)
    if options:
        raise UserError(f"dataset {name!r} takes no options, got {', '.join(sorted(options))}; "
                        "options are for 'synthetic' and 'folder' only")
    root = resolve_data_dir(data_dir) / name
    cache = _cache_path(root, name)
    if cache.is_file() and (dataset := _read_cache(name, cache)) is not None:
        return dataset
    decode = _decode_idx if source.cifar_layout is None else _decode_cifar
    tensors, origin = decode(name, source, root, download)
    dataset = _build(name, tensors, origin)
    _write_cache(dataset, cache)
    return dataset
