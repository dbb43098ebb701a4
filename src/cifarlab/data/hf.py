"""`data.dataset: hf`: an image-classification dataset in Hugging Face `datasets` form, as uint8 tensors.

`data.dir` is one of
- a folder written by `DatasetDict.save_to_disk` (it holds `dataset_dict.json`),
- a folder of parquet files named by split (`train-*.parquet`, `data/test-00000-of-00001.parquet`, ...:
  the split names `datasets` infers from file names),
- a dataset name on the Hugging Face Hub, e.g. `uoft-cs/cifar10` (downloads unless `data.download=false`): its
  parquet files (or the Hub's parquet conversion of it), read as a local parquet folder is: each file with its own
  features, not the ones the repository publishes, and with every check below.

Options (`data.options`): `image_column` (default: the split's one `Image` feature) and `label_column`
(default: its one `ClassLabel` feature); class names are the train split's ClassLabel names, label k the k-th
name. Every split (every parquet file) must carry both columns, and its ClassLabel may list only train class
names, in any order: its numbers are mapped by name to the train split's.
`train_split` / `test_split` (default `train` / `test`) and `val_split_name` (default `validation` when the
dataset has one, else none) name the splits; `image_size` and `channels` as for an image folder (default:
the most common shorter side capped at 64, and what most images are).

A dataset that `datasets` cannot read (a truncated arrow file, a broken parquet file or JSON metadata file)
is one line naming it, as every other bad input.

Every image goes through the image-folder rule (`cifarlab.data.images.fit_square`) once, decoded in parallel
threads from the dataset's encoded bytes, into `<cache>/hf/<key>.pt` ($CIFARLAB_DATA, default
~/.cache/cifarlab). The key covers the datasets' fingerprints (which change when their contents do) and
the options. Training then reads that cache like any other source, so training speed is that of CIFAR-10.
Needs `pip install 'cifarlab[hf]'`.
"""
from __future__ import annotations

import hashlib
import io
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import torch

from cifarlab.data.cache import CACHE_VERSION, read_cache, write_cache
from cifarlab.data.dataset import Dataset, Split, channel_stats
from cifarlab.data.hf_sources import datasets_module, open_hf, quiet, reading
from cifarlab.data.images import MAX_PIXELS, fit_square, to_chw
from cifarlab.errors import UserError

log = logging.getLogger(__name__)

OPTIONS = ("image_column", "label_column", "train_split", "test_split", "val_split_name", "image_size", "channels")
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")
DEFAULT_SIZE_CAP = 64


def _settings(options: dict) -> dict:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise UserError(f"unknown option {unknown[0]!r} for dataset 'hf'; choose from: {', '.join(OPTIONS)}")
    size, channels = options.get("image_size"), options.get("channels")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 512):
        raise UserError(f"hf option image_size must be an integer in 8..512, got {size!r}")
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise UserError(f"hf option channels must be 1 or 3, got {channels!r}")
    return {key: options.get(key) for key in OPTIONS}


CAST_TO = {"Image": "datasets.Image()", "ClassLabel": "datasets.ClassLabel(names=[...])"}


def _column(split, given: Optional[str], feature_type, option: str) -> str:
    """The column `given`, else the split's only column of `feature_type`; checked to be of that type."""
    features, kind = split.features, feature_type.__name__
    if given is None:
        found = [name for name, feature in features.items() if isinstance(feature, feature_type)]
        if not found:  # e.g. labels as plain integers: no class names to read, so naming the column cannot help
            plain = [name for name, feature in features.items()
                     if str(getattr(feature, "dtype", "")).startswith(("int", "uint", "string", "large_string"))]
            encoded = [name for name, feature in features.items()  # images as plain {bytes, path} structs
                       if isinstance(feature, dict) and {"bytes", "path"} <= set(feature)]
            example = ((plain if kind == "ClassLabel" else encoded) or ["<column>"])[0]
            raise UserError(f"the dataset has no {kind} column (its columns: {', '.join(features)}); cast one and "
                            f"save the dataset again, e.g. dataset = dataset.cast_column({example!r}, "
                            f"{CAST_TO[kind]})")
        if len(found) > 1:
            raise UserError(f"the dataset has {len(found)} {kind} columns ({', '.join(found)}); name one with "
                            f"data.options.{option}")
        return found[0]
    if given not in features:
        raise UserError(f"data.options.{option}={given!r} is not a column; the columns are {', '.join(features)}")
    if not isinstance(features[given], feature_type):
        right = [name for name, feature in features.items() if isinstance(feature, feature_type)]
        fix = (f"name {'one of ' if len(right) > 1 else ''}{', '.join(right)} instead" if right else
               f"cast it, e.g. dataset.cast_column({given!r}, {CAST_TO[kind]})")
        article = "an" if kind[0] in "AEIOU" else "a"
        raise UserError(f"data.options.{option}={given!r} names a {type(features[given]).__name__} column, not "
                        f"{article} {kind} one; {fix}")
    return given


def _splits(parts: dict, settings: dict) -> dict:
    """{role: (split name, its parts)} for train, test and (if any) val."""
    names = {"train": settings["train_split"] or "train", "test": settings["test_split"] or "test"}
    val = settings["val_split_name"] or ("validation" if "validation" in parts and "validation" not in names.values()
                                         else None)
    if val is not None:
        names["val"] = val
    roles = {}
    for role, name in names.items():  # the same split in two roles: tested or selected on the training data
        if name in roles:
            raise UserError(f"the split {name!r} is named for both {roles[name]} and {role}; train, test and "
                            f"validation must be three different splits (set data.options.train_split, test_split, "
                            f"val_split_name)")
        roles[name] = role
    for role, name in names.items():
        if name not in parts:
            raise UserError(f"the dataset has no split {name!r} for {role}; its splits are "
                            f"{', '.join(parts)} (set data.options.{role}_split{'_name' * (role == 'val')})")
    return {role: (name, parts[name]) for role, name in names.items()}


def _label_order(where: str, part, image_column: str, label_column: str, classes: tuple[str, ...]) -> list[int]:
    """For each label number of `part` (a split or one of its files), the train class of the same name.
    Every split must carry the train split's columns, and its ClassLabel only names of train classes: the
    numbers of a test split that lists the names in another order mean other classes."""
    datasets, features = datasets_module(), part.features
    for column, kind in ((image_column, datasets.Image), (label_column, datasets.ClassLabel)):
        if column not in features:
            raise UserError(f"{where} has no column {column!r} (its columns: {', '.join(features)}); every split "
                            f"needs the train split's image and label columns")
        if not isinstance(features[column], kind):
            raise UserError(f"column {column!r} of {where} is {type(features[column]).__name__}, not "
                            f"{kind.__name__} as in the train split; cast it, e.g. dataset.cast_column("
                            f"{column!r}, {CAST_TO[kind.__name__]})")
    names = list(features[label_column].names)
    unknown = [name for name in names if name not in classes]
    if unknown or len(set(names)) != len(names):
        raise UserError(f"the class names of {where} ({names}) are not the train split's {list(classes)}"
                        f"{f': {unknown[0]!r} is not a train class' if unknown else ''}; every split's "
                        f"{label_column!r} ClassLabel must list the train split's names (in any order)")
    return [classes.index(name) for name in names]


def _open_image(encoded: dict, where: str):
    """A PIL image from `datasets`' undecoded Image value ({"bytes", "path"}); one line if unreadable."""
    from PIL import Image

    if not isinstance(encoded, dict) or not (encoded.get("bytes") or encoded.get("path")):
        raise UserError(f"{where} has no image (its image value is {encoded!r:.60}); every row needs one")
    try:
        image = Image.open(io.BytesIO(encoded["bytes"]) if encoded.get("bytes") else encoded["path"])
    except Exception as err:  # PIL raises many types for a bad image; each means "unreadable"
        reason = ("its bytes are not an image file PIL can read" if isinstance(err, Image.UnidentifiedImageError)
                  else (str(err).splitlines() or [type(err).__name__])[0][:200])
        raise UserError(f"cannot read the image of {where}: {reason}") from None
    if image.size[0] * image.size[1] > MAX_PIXELS:
        raise UserError(f"the image of {where} is {image.size[0]}x{image.size[1]} pixels, more than cifarlab decodes")
    return image


def _encoded(split, column: str) -> list[dict]:
    datasets = datasets_module()
    return list(split.cast_column(column, datasets.Image(decode=False))[column])


def _shape(train_images: list[dict], settings: dict) -> tuple[int, int]:
    """(image_size, channels): the options, or the defaults read from the train images' headers."""
    size, channels = settings["image_size"], settings["channels"]
    if size is None or channels is None:
        with ThreadPoolExecutor() as pool:
            probes = list(pool.map(lambda item: _probe(*item), enumerate(train_images)))
        sides = Counter(side for side, _ in probes)
        common = max(sides.items(), key=lambda item: (item[1], item[0]))[0]  # a tie goes to the larger
        size = size if size is not None else min(common, DEFAULT_SIZE_CAP)
        grey = sum(is_grey for _, is_grey in probes)
        channels = channels if channels is not None else (1 if grey > len(probes) - grey else 3)
    return size, channels


def _probe(index: int, encoded: dict) -> tuple[int, bool]:
    with _open_image(encoded, f"train row {index}") as image:
        return min(image.size), image.mode in GREY_MODES


def _decode(role: str, images: list[dict], labels: list[int], size: int, channels: int, num_classes: int) -> Split:
    bad = next((i for i, label in enumerate(labels) if label is None or not 0 <= label < num_classes), None)
    if bad is not None:  # e.g. -1: a split published without its labels
        raise UserError(f"{role} row {bad} has label {labels[bad]!r}, outside the {num_classes} classes; "
                        f"every row of the train, test and validation splits needs a label")
    out = torch.empty(len(images), channels, size, size, dtype=torch.uint8)

    def load(index: int) -> None:  # PIL releases the GIL while decoding: threads decode in parallel
        with _open_image(images[index], f"{role} row {index}") as image:
            out[index] = to_chw(fit_square(image, channels, size))

    with ThreadPoolExecutor() as pool:
        list(pool.map(load, range(len(images))))
    return Split(out, torch.tensor(labels, dtype=torch.int64))


def load_hf(data_dir: Optional[str], cache_root: Path, download: bool = True, **options) -> Dataset:
    """The Hugging Face dataset `data_dir` (see the module doc) as a Dataset, decoded once and cached."""
    if data_dir in (None, ""):
        raise UserError("data.dataset=hf needs data.dir=<a save_to_disk folder, a folder of parquet files or a "
                        "Hub dataset name>")
    settings = _settings(options)
    splits = _splits(open_hf(str(data_dir), cache_root, download), settings)
    first = splits["train"][1][0][1]
    image_column = _column(first, settings["image_column"], datasets_module().Image, "image_column")
    label_column = _column(first, settings["label_column"], datasets_module().ClassLabel, "label_column")
    classes = tuple(first.features[label_column].names)
    orders = {role: [_label_order(where, part, image_column, label_column, classes) for where, part in parts]
              for role, (_, parts) in splits.items()}
    # "labels by name": caches written before labels were mapped by name may hold a reordered split's numbers
    key = hashlib.sha256(repr((CACHE_VERSION, "labels by name", sorted(settings.items()), image_column, label_column,
                               [(role, [part._fingerprint for _, part in parts]) for role, (_, parts) in splits.items()]
                               )).encode())
    cache = cache_root / "hf" / f"{key.hexdigest()[:24]}.pt"
    if cache.is_file() and (dataset := read_cache(cache, "hf", classes)) is not None:
        return dataset
    images, labels = {}, {}
    with quiet():
        for role, (name, parts) in splits.items():
            with reading(f"the {name!r} split of {data_dir}"):
                images[role] = [row for _, part in parts for row in _encoded(part, image_column)]
                numbers = [list(part[label_column]) for _, part in parts]
            labels[role] = [_mapped(order, number) for order, part_numbers in zip(orders[role], numbers)
                            for number in part_numbers]
    size, channels = _shape(images["train"], settings)
    decoded = {role: _decode(role, images[role], labels[role], size, channels, len(classes)) for role in splits}
    mean, std = channel_stats(decoded["train"].images)
    origin = (f"{data_dir} (Hugging Face dataset, columns {image_column}/{label_column}, shorter side resized to "
              f"{size} + centre crop, {channels}-channel)")
    dataset = Dataset("hf", decoded["train"], decoded["test"], classes, mean, std, origin, val=decoded.get("val"))
    write_cache(dataset, cache)
    return dataset


def _mapped(order: list[int], number):
    """Label `number` of a split as a train class number; out-of-range numbers (-1: no label) stay as they are,
    for _decode to name."""
    return order[number] if isinstance(number, int) and 0 <= number < len(order) else number
