"""Decoders for the two on-disk formats the sources ship in: IDX (MNIST family) and CIFAR python pickles.

Both return plain CPU tensors: images uint8 (N, C, H, W), labels int64 (N,). Every defect a user can
fix (truncated file, wrong magic number, not gzip, missing pickle key) is a one-line `UserError`
naming the file and what was expected.
"""
from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cifarlab.errors import UserError

IDX_LABELS_MAGIC = 0x0801  # unsigned byte, 1 dimension
IDX_IMAGES_MAGIC = 0x0803  # unsigned byte, 3 dimensions


def _read_gzip(path: Path) -> bytes:
    try:
        return gzip.decompress(path.read_bytes())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise UserError(f"{path} is not a valid gzip file ({e}); delete it to download again") from None


def _read_idx(path: Path, magic: int, what: str) -> np.ndarray:
    """The array stored in a gzipped IDX file whose magic number must be `magic`."""
    raw = _read_gzip(path)
    if len(raw) < 4:
        raise UserError(f"{path} is truncated: expected an IDX header, got {len(raw)} bytes")
    (found,) = struct.unpack(">I", raw[:4])
    if found != magic:
        raise UserError(f"{path} is not an IDX {what} file: expected magic number 0x{magic:08x}, got 0x{found:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path} is truncated: expected a {header}-byte IDX header, got {len(raw)} bytes")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected, got = int(np.prod(dims)), len(raw) - header
    if got < expected:
        raise UserError(f"{path} is truncated: expected {expected} bytes of {what} data, got {got} "
                        f"(delete it to download again)")
    if got > expected:
        raise UserError(f"{path} has {got - expected} bytes after the {expected} bytes of {what} data "
                        f"its header announces")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_images(path: str | Path) -> torch.Tensor:
    """Gzipped IDX3 images -> uint8 (N, 1, H, W)."""
    array = _read_idx(Path(path), IDX_IMAGES_MAGIC, "image")
    return torch.from_numpy(array.copy()).unsqueeze(1)


def read_idx_labels(path: str | Path) -> torch.Tensor:
    """Gzipped IDX1 labels -> int64 (N,)."""
    array = _read_idx(Path(path), IDX_LABELS_MAGIC, "label")
    return torch.from_numpy(array.astype(np.int64))


@dataclass(frozen=True)
class CifarLayout:
    """Where the pieces sit inside an extracted CIFAR python archive."""

    folder: str  # top-level directory in the archive
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str


CIFAR10_LAYOUT = CifarLayout(
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
)
CIFAR100_LAYOUT = CifarLayout(
    folder="cifar-100-python",
    train_files=("train",),
    test_file="test",
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
)

# The CIFAR batches hold only dicts, lists, bytes, ints and numpy arrays; refuse any other global so
# that a tampered pickle cannot run code. Python-2-era files name `numpy.core`, numpy 2 `numpy._core`;
# protocol-2 pickles written by Python 3 spell bytes as `_codecs.encode(text, "latin1")`.
_ALLOWED_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        canonical = "numpy._core" + module[len("numpy.core"):] if module.startswith("numpy.core") else module
        if (canonical, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        # numpy < 2 has no `numpy._core`: import the module under the name the pickle used.
        return super().find_class(canonical if hasattr(np, "_core") else module, name)


def _unpickle(path: Path) -> dict[str, object]:
    """A CIFAR batch as a dict with str keys (the files use bytes keys; py2 files need latin1)."""
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: the extracted CIFAR archive is incomplete "
                        f"(delete its folder to extract again)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise UserError(f"{path} is not a valid CIFAR batch ({e}); delete it to extract again") from None
    if not isinstance(batch, dict):
        raise UserError(f"{path} is not a valid CIFAR batch: expected a pickled dict, got {type(batch).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _field(batch: dict[str, object], key: str, path: Path):
    if key not in batch:
        raise UserError(f"{path} has no {key!r} entry; keys found: {', '.join(sorted(batch))}")
    return batch[key]


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    data = np.asarray(_field(batch, "data", path), dtype=np.uint8)
    labels = np.asarray(_field(batch, label_key, path), dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(f"{path}: expected 'data' of shape (N, 3072), got {data.shape}")
    if labels.shape != (data.shape[0],):
        raise UserError(f"{path}: expected {data.shape[0]} labels, got {labels.shape[0]}")
    return data, labels


def _batches_to_tensors(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    # Each row is the red plane, then green, then blue; each plane 32x32 row-major: (N, 3, 32, 32).
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(data.reshape(-1, 3, 32, 32)), torch.from_numpy(labels)


def read_cifar(root: str | Path, layout: CifarLayout) -> dict[str, object]:
    """An extracted CIFAR folder (`root/layout.folder`) -> train/test tensors and class names."""
    folder = Path(root) / layout.folder
    train = _batches_to_tensors([_read_batch(folder / f, layout.label_key) for f in layout.train_files])
    test = _batches_to_tensors([_read_batch(folder / layout.test_file, layout.label_key)])
    meta_path = folder / layout.meta_file
    names = _field(_unpickle(meta_path), layout.names_key, meta_path)
    classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return {"train": train, "test": test, "classes": classes}
