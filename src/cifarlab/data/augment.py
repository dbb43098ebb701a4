"""Batched data augmentation: pure functions on float pixel batches, randomness passed in.

Every op takes float images (N, C, H, W) with pixels in [0, 1] (before normalisation), on any device, and
returns a new batch of the same shape, dtype and device. Randomness comes only from the `torch.Generator`
passed in (on the images' device), so a seed reproduces a batch exactly. Each random op has a per-image
probability `p`, like albumentations.

We write our own instead of using torchvision's transforms: torchvision has no CPU build in our
environment, and per-image pipelines (PIL, one Python call per image) are what bottlenecked the reference
experiments on a 2-core machine and starve a GPU. These ops are a handful of vectorised tensor ops per
batch, running on the training device.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from cifarlab.config import AugmentConfig
from cifarlab.errors import UserError


def _chosen(images: Tensor, generator: torch.Generator, p: float) -> Tensor:
    """Bool (N,): which images an op with probability p applies to."""
    return torch.rand(images.shape[0], generator=generator, device=images.device) < p


def random_crop(images: Tensor, generator: torch.Generator, padding: int, pad_mode: str = "zero",
                fill: float = 0.0, p: float = 1.0) -> Tensor:
    """Pad by `padding` on each side, then crop back to H×W at a random offset per image.

    images: (N, C, H, W). pad_mode: "zero", "constant" (with `fill`) or "reflect" (needs padding < H, W).
    Content moves by at most `padding` pixels per axis; images not chosen (probability 1 - p) are unchanged.
    """
    if padding == 0:
        return images
    N, C, H, W = images.shape
    if pad_mode == "reflect":
        padded = F.pad(images, (padding,) * 4, mode="reflect")
    else:
        padded = F.pad(images, (padding,) * 4, mode="constant", value=fill if pad_mode == "constant" else 0.0)
    offsets = torch.randint(0, 2 * padding + 1, (2, N), generator=generator, device=images.device)
    offsets = torch.where(_chosen(images, generator, p), offsets, padding)  # offset=padding: the original
    rows = offsets[0, :, None] + torch.arange(H, device=images.device)  # (N, H) rows of `padded` to keep
    cols = offsets[1, :, None] + torch.arange(W, device=images.device)  # (N, W)
    Wp = W + 2 * padding
    padded = padded.gather(2, rows[:, None, :, None].expand(N, C, H, Wp))
    return padded.gather(3, cols[:, None, None, :].expand(N, C, H, W))


def horizontal_flip(images: Tensor, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """Mirror left-right each image of (N, C, H, W) with probability p."""
    chosen = _chosen(images, generator, p)
    return torch.where(chosen[:, None, None, None], images.flip(3), images)


def _index_bit(indices: Tensor, seed: int) -> Tensor:
    """A pseudo-random bit per dataset index: a 32-bit integer hash, vectorised, the same on every device."""
    mask = 0xFFFFFFFF
    x = (indices.long() * 0x2C1B3C6D + (seed & mask) * 0x297A2D39 + 0x3C6EF372) & mask
    for multiplier in (0x7FEB352D, 0x1B873593):  # constants < 2**31 keep products inside int64
        x = ((x ^ (x >> 16)) * multiplier) & mask
    return ((x ^ (x >> 15)) >> 7) & 1


def alternating_flip(images: Tensor, indices: Tensor, epoch: int, seed: int) -> Tensor:
    """Flip exactly the images that were not flipped in the previous epoch.

    images: (N, C, H, W); indices: (N,) integer dataset indices of the images. In epoch 0 a pseudo-random
    bit of (seed, index) picks about half the images; each later epoch flips the other ones, so every
    image is seen both ways in any two consecutive epochs.
    """
    # Alternate flips across epochs instead of i.i.d. flips (Jordan 2024, arXiv:2404.00498).
    flipped = _index_bit(indices.to(images.device), seed) ^ (epoch % 2)
    return torch.where(flipped.bool()[:, None, None, None], images.flip(3), images)


def cutout(images: Tensor, generator: torch.Generator, holes: int = 1, size: int = 16, fill: float = 0.0,
           p: float = 1.0) -> Tensor:
    """Fill `holes` squares of side `size` with `fill` in each chosen image of (N, C, H, W).

    Centres are uniform over the image, so holes may be clipped at the borders (DeVries & Taylor 2017,
    arXiv:1708.04552); all channels are blanked.
    """
    N, C, H, W = images.shape
    device = images.device
    centre_y = torch.randint(0, H, (N, holes), generator=generator, device=device)
    centre_x = torch.randint(0, W, (N, holes), generator=generator, device=device)
    top, left = centre_y - size // 2, centre_x - size // 2
    ys, xs = torch.arange(H, device=device), torch.arange(W, device=device)
    in_rows = (ys >= top[..., None]) & (ys < top[..., None] + size)  # (N, holes, H)
    in_cols = (xs >= left[..., None]) & (xs < left[..., None] + size)  # (N, holes, W)
    mask = (in_rows[..., :, None] & in_cols[..., None, :]).any(1)  # (N, H, W)
    mask &= _chosen(images, generator, p)[:, None, None]
    return images.masked_fill(mask[:, None], fill)


def rotate(images: Tensor, generator: torch.Generator, degrees: float, fill: float = 0.0, p: float = 1.0) -> Tensor:
    """Rotate each chosen image of (N, C, H, W) by a uniform angle in [-degrees, degrees] about its centre.

    Bilinear sampling; pixels that come from outside the image get `fill`. Unchosen images are returned
    bit for bit.
    """
    N, C, H, W = images.shape
    chosen = _chosen(images, generator, p)
    angles = (torch.rand(N, generator=generator, device=images.device) * 2 - 1) * math.radians(degrees)
    cos, sin = angles.cos(), angles.sin()
    # Rotation in pixel units, expressed in affine_grid's normalised coordinates ([-1, 1] on both axes).
    theta = torch.stack([
        torch.stack([cos, -sin * (H / W), torch.zeros_like(cos)], 1),
        torch.stack([sin * (W / H), cos, torch.zeros_like(cos)], 1),
    ], 1).to(images.dtype)  # (N, 2, 3)
    grid = F.affine_grid(theta, [N, C, H, W], align_corners=False)
    # Sample (images - fill) with zero padding, so outside pixels come back as fill.
    rotated = F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    return torch.where(chosen[:, None, None, None], rotated, images)


Op = Callable[[Tensor, torch.Generator, Optional[Tensor], int], Tensor]


class BatchAugment:
    """The configured ops in order: `aug(images, generator, indices=None, epoch=0) -> images`.

    images: float (N, C, H, W) in [0, 1]; indices: (N,) dataset indices, needed by alternating flip.
    """

    def __init__(self, ops: list[tuple[str, Op]], channels: int, image_size: int):
        self.ops = ops
        self.channels = channels
        self.image_size = image_size

    def __call__(self, images: Tensor, generator: torch.Generator, indices: Optional[Tensor] = None,
                 epoch: int = 0) -> Tensor:
        if not self.ops:
            return images
        expected = (self.channels, self.image_size, self.image_size)
        if tuple(images.shape[1:]) != expected:
            raise ValueError(f"augment built for (N, {', '.join(map(str, expected))}) images, "
                             f"got {tuple(images.shape)}")
        for _, op in self.ops:
            images = op(images, generator, indices, epoch)
        return images

    def describe(self) -> list[str]:
        """One human-readable line per active op, in the order applied."""
        return [line for line, _ in self.ops]


def _check(key: str, value, low: int, high: int) -> None:
    if not low <= value <= high:
        raise UserError(f"augment.{key} must be in {low}..{high}, got {value}")


def build_augment(cfg: AugmentConfig, image_size: int, channels: int, seed: int = 0) -> BatchAugment:
    """Validate `cfg` against (channels, image_size, image_size) images; ops run crop, flip, rotate, cutout.

    `seed` feeds alternating flip's per-index bits (use the run's seed).
    """
    cfg = cfg.model_copy(deep=True)  # the ops below keep their settings even if the caller edits cfg later
    ops: list[tuple[str, Op]] = []
    if (crop := cfg.crop) is not None:
        _check("crop.padding", crop.padding, 0, image_size - 1)
        fill = f" (fill {crop.fill:g})" if crop.pad_mode == "constant" else ""
        padding = f"{crop.padding} px {crop.pad_mode} padding{fill}"
        ops.append((f"random crop {image_size}×{image_size} after {padding}, p={crop.p:g}",
                    lambda x, g, i, e: random_crop(x, g, crop.padding, crop.pad_mode, crop.fill, crop.p)))
    if (flip := cfg.flip) is not None:
        if flip.alternate:
            if flip.p != 0.5:
                raise UserError(f"augment.flip.p must be 0.5 with augment.flip.alternate=true "
                                f"(alternating flip flips half of the images every epoch), got {flip.p}")
            ops.append(("horizontal flip, alternating across epochs (Jordan 2024)", _alternating_op(seed)))
        else:
            ops.append((f"horizontal flip, p={flip.p:g}", lambda x, g, i, e: horizontal_flip(x, g, flip.p)))
    if (rot := cfg.rotate) is not None:
        ops.append((f"rotation by up to ±{rot.degrees:g}°, bilinear, fill {rot.fill:g}, p={rot.p:g}",
                    lambda x, g, i, e: rotate(x, g, rot.degrees, rot.fill, rot.p)))
    if (cut := cfg.cutout) is not None:
        _check("cutout.size", cut.size, 1, image_size)
        holes = f"{cut.holes} hole{'s' if cut.holes > 1 else ''}"
        ops.append((f"cutout {holes} of {cut.size}×{cut.size} px, fill {cut.fill:g}, p={cut.p:g}",
                    lambda x, g, i, e: cutout(x, g, cut.holes, cut.size, cut.fill, cut.p)))
    return BatchAugment(ops, channels, image_size)


def _alternating_op(seed: int) -> Op:
    def op(images: Tensor, generator: torch.Generator, indices: Optional[Tensor], epoch: int) -> Tensor:
        if indices is None:
            raise ValueError("alternating flip needs the batch's dataset indices: "
                             "aug(images, g, indices=..., epoch=...)")
        return alternating_flip(images, indices, epoch, seed)

    return op
