"""Test helpers: image folders in the ImageFolder layout, made from real Fashion-MNIST test images."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").exists(),
    reason=f"Fashion-MNIST OS package not installed at {FASHION_DIR} (apt-get install dataset-fashion-mnist)")
# Folder names, so that the sorted order (ImageFolder's label order) differs from Fashion-MNIST's own.
FASHION_NAMES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


@lru_cache(maxsize=1)
def fashion_test_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The real Fashion-MNIST test split: uint8 (10000, 28, 28) images and int64 labels."""
    from cifarlab.data.formats import read_idx_images, read_idx_labels

    images = read_idx_images(FASHION_DIR / "t10k-images-idx3-ubyte.gz")[:, 0].numpy()
    return images, read_idx_labels(FASHION_DIR / "t10k-labels-idx1-ubyte.gz").numpy()


def write_fashion_folder(root: Path, train_per_class: int, test_per_class: int) -> dict[str, list]:
    """PNG files root/{train,test}/<name>/<index>.png from disjoint Fashion-MNIST test images.

    Returns split -> [(path, original label, pixels)] in the order written."""
    from PIL import Image

    images, labels = fashion_test_arrays()
    written: dict[str, list] = {"train": [], "test": []}
    for label, name in enumerate(FASHION_NAMES):
        indices = np.flatnonzero(labels == label)
        chosen = {"train": indices[:train_per_class], "test": indices[train_per_class:train_per_class + test_per_class]}
        for split, picked in chosen.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in picked:
                path = folder / f"{index:05d}.png"
                Image.fromarray(images[index]).save(path)
                written[split].append((path, label, images[index]))
    return written


def train_fashion_folder(tmp: Path, train_per_class: int, test_per_class: int, epochs: int, *overrides: str):
    """(Run, written files): the smoke recipe trained in fp32 (unless `overrides` say otherwise) on a fresh
    Fashion-MNIST PNG folder under `tmp`.

    The folder's decoded cache goes to `tmp/cache`, never the user's."""
    import cifarlab

    written = write_fashion_folder(tmp / "fm", train_per_class, test_per_class)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIFARLAB_DATA", str(tmp / "cache"))
        run = cifarlab.train("smoke", [f"data.dir={tmp / 'fm'}", "data.dataset=folder", "data.options={}",
                                       f"train.epochs={epochs}", "train.batch_size=32", f"output.dir={tmp / 'runs'}",
                                       "output.tensorboard=false", "output.progress=none", "train.precision=fp32",
                                       *overrides])
    return run, written
