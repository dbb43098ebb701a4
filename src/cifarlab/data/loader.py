"""The whole split on the training device as uint8, batches made there in a few vectorised ops.

No DataLoader workers, no PIL, no per-image Python: gather -> float -> augment -> normalise ->
channels_last. Randomness is counter-based: the permutation of epoch `e` and the augmentation of batch
`k` come from generators seeded by (seed, e) and (seed, e, k) (MixUp/CutMix's per-batch draws from a
host `random.Random` seeded the same way), so any batch can be rebuilt exactly from its position.
That makes a mid-epoch resume reproduce the uninterrupted run bit for bit, with no generator state to
carry, and lets each distributed rank take its shard of the same permutation.
"""
from __future__ import annotations

import random
from typing import Callable, Iterator, Optional, Sequence

import torch

from cifarlab.data.augment import BatchAugment
from cifarlab.data.mix import BatchMix
from cifarlab.data.normalize import Normalize, to_float

# `aug(pixels, generator, indices=..., epoch=...) -> pixels`, e.g. augment.BatchAugment.
AugmentFn = Callable[..., torch.Tensor]
MIX_STREAM = 0x6D6978  # keeps MixUp/CutMix's host draws apart from the augmentation generator's seeds


def _mix(*parts: int) -> int:
    """A stable 63-bit seed from integers (splitmix-style), so nearby epochs/batches get unrelated streams."""
    x = 0x9E3779B97F4A7C15
    for part in parts:
        x = (x ^ (part + 0x9E3779B97F4A7C15 + (x << 6) + (x >> 2))) & 0xFFFFFFFFFFFFFFFF
        x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


class DeviceLoader:
    """Iterates (inputs, labels) batches of one split that lives on `device`.

    inputs: float (B, C, H, W) normalised, channels_last if asked; labels: int64 (B,), or with `mix`
    (MixUp/CutMix, training only) float (B, num_classes) mixed targets.
    With `world_size > 1`, global batch k is `perm[k*B:(k+1)*B]` and rank r takes every world_size-th
    image of it, so the ranks together see exactly what one process would.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        device: torch.device,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        augment: Optional[AugmentFn] = None,
        mix: Optional[BatchMix] = None,
        seed: int = 0,
        channels_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        self.images = images.to(device, non_blocking=True)
        self.labels = labels.to(device, non_blocking=True)
        self.batch_size, self.device, self.train = batch_size, device, train
        self.mean, self.std, self.augment, self.mix = tuple(mean), tuple(std), augment, mix
        self.normalize = Normalize(self.mean, self.std, device)  # constants on the device once, not per batch
        if isinstance(augment, BatchAugment):
            augment.prepare(self.num_images, device)  # per-index tables made once, not per batch
        self.seed, self.channels_last = seed, channels_last
        self.rank, self.world_size = rank, world_size
        self.drop_last = drop_last  # every training batch full: static shapes for a compiled or captured step

    @property
    def num_images(self) -> int:
        return self.images.shape[0]

    def __len__(self) -> int:
        full, rest = divmod(self.num_images, self.batch_size)
        # A training batch of fewer than 2 images per rank breaks BatchNorm; drop such a remainder.
        keep_rest = (rest >= 2 * self.world_size and not self.drop_last) or (not self.train and rest > 0)
        return full + int(keep_rest)

    def permutation(self, epoch: int) -> torch.Tensor:
        if not self.train:
            return torch.arange(self.num_images, device=self.device)
        generator = torch.Generator().manual_seed(_mix(self.seed, epoch))
        return torch.randperm(self.num_images, generator=generator).to(self.device, non_blocking=True)

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches `start..len-1` of `epoch`; batch k is the same whichever `start` it was reached from."""
        order = self.permutation(epoch)
        for k in range(start, len(self)):
            indices = order[k * self.batch_size:(k + 1) * self.batch_size][self.rank::self.world_size]
            yield self.make_batch(indices, epoch, k)

    __iter__ = batches

    def make_batch(self, indices: torch.Tensor, epoch: int = 0, batch_index: int = 0):
        pixels = to_float(self.images.index_select(0, indices))
        if self.train and self.augment is not None:
            generator = torch.Generator(device=self.device).manual_seed(_mix(self.seed, epoch, batch_index, self.rank))
            pixels = self.augment(pixels, generator, indices=indices, epoch=epoch)
        labels = self.labels.index_select(0, indices)
        if self.train and self.mix is not None:
            # Not the rank: every rank mixes its shard of global batch k with the same lam (and box).
            pixels, labels = self.mix(pixels, labels, random.Random(_mix(self.seed, epoch, batch_index, MIX_STREAM)))
        inputs = self.normalize(pixels, self.channels_last)
        return inputs, labels
