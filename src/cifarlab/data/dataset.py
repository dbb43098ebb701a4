"""The in-memory form every data source produces: uint8 image splits with int64 labels, class names and
the per-channel normalisation statistics. Sources, folders, arrays and the validation split all build it."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Optional

import torch


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8, (N, C, H, W), contiguous, CPU
    labels: torch.Tensor  # int64, (N,)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"labels must be int64 ({self.images.shape[0]},), "
                             f"got {self.labels.dtype} {tuple(self.labels.shape)}")


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, of the train images scaled to [0, 1]
    std: tuple[float, ...]
    origin: str  # one line: where the tensors came from
    val: Optional[Split] = None  # a validation split: an image folder's val/, or one `data.val_split` made

    @cached_property
    def fingerprint(self) -> dict[str, Optional[str]]:
        """split name -> sha256 of its labels and pixels (None for no split): checkpoints keep it, so that
        evaluating or resuming on other data than a run trained on is noticed. Computed once per Dataset."""
        return {name: split_fingerprint(getattr(self, name)) for name in ("train", "val", "test")}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.images.shape[2]



def split_fingerprint(split: Optional[Split]) -> Optional[str]:
    """sha256 over a split's shape, labels and pixels (a full pass: ~0.1 s for CIFAR-10's 150 MB)."""
    if split is None:
        return None
    digest = hashlib.sha256(repr(tuple(split.images.shape)).encode())
    digest.update(split.labels.contiguous().numpy().tobytes())
    digest.update(memoryview(split.images.contiguous().numpy()).cast("B"))
    return digest.hexdigest()


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (population) of uint8 (N, C, H, W) images scaled to [0, 1].

    Exact float64 moments from one 256-bin histogram per channel: no float copy of the dataset."""
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        total = counts.sum()
        mean = (counts * values).sum() / total
        var = (counts * values.square()).sum() / total - mean.square()
        means.append(mean.item())
        stds.append(var.clamp_min(0).sqrt().item())
    return tuple(means), tuple(stds)
