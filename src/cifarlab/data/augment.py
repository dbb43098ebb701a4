"""Batched data augmentation: pure functions on float pixel batches, randomness passed in.

Every op takes float images (N, C, H, W) with pixels in [0, 1] (before normalisation), on any device, and
returns a new batch of the same shape, dtype and device. Randomness comes only from the `torch.Generator`
passed in (on the images' device), so a seed reproduces a batch exactly. Each random op has a per-image
probability `p`, like albumentations.

We write our own instead of using torchvision's transforms: torchvision has no CPU build in our
environment, and per-image pipelines (PIL, one Python call per image) are what bottlenecked the reference
experiments on a 2-core machine and starve a GPU. On a GPU each kernel launch also costs the host
~10-25 µs, so the ops are built from few launches and never read a value back to the host:
- crop and flip are one gather from the padded batch, through index grids made once per shape and
  device (`_grids`, `_crop_offsets`); `BatchAugment` does both in that single gather;
- cutout looks up which rows and columns each hole covers in a small table and fills the union in one
  masked_fill; the per-image probability is a mask, never a data-dependent subset;
- alternating flip reads a per-index bit table made once per dataset (`BatchAugment.prepare`).
airbench (Jordan 2024, airbench94.py `batch_crop`/`batch_flip_lr`) does crops and flips as masks and
gathers over the whole batch for the same reason.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from cifarlab.config import AugmentConfig
from cifarlab.data.auto_augment import rand_augment, trivial_augment
from cifarlab.data.color import color_jitter
from cifarlab.data.erasing import random_erasing
from cifarlab.errors import UserError


def _chosen(n: int, generator: torch.Generator, device: torch.device, p: float) -> Tensor:
    """Bool (n,): which images an op with probability p applies to."""
    return torch.rand(n, generator=generator, device=device) < p


# Constant index tables, cached per shape and device (a few KB each); callers never write to them.
@functools.lru_cache(maxsize=64)
def _grids(H: int, W: int, padding: int, device: torch.device) -> Tensor:
    """(2, H*W) int64: the flat position in the padded (H+2p, W+2p) image that each output pixel of a
    crop at offset (0, 0) reads; row 0 unflipped, row 1 mirrored left-right."""
    rows = torch.arange(H, device=device)[:, None] * (W + 2 * padding)
    cols = torch.arange(W, device=device)
    return torch.stack([(rows + cols).flatten(), (rows + cols.flip(0)).flatten()])


@functools.lru_cache(maxsize=64)
def _crop_offsets(W: int, padding: int, device: torch.device) -> Tensor:
    """((2p+1)**2,) int64: the flat offset in the padded image of crop position k = dy * (2p+1) + dx."""
    S = 2 * padding + 1
    k = torch.arange(S * S, device=device)
    return (k // S) * (W + 2 * padding) + k % S


@functools.lru_cache(maxsize=64)
def _hole_spans(size: int, length: int, device: torch.device) -> Tensor:
    """(length, length) bool: [c, i] is True where a hole of side `size` centred at c covers index i."""
    start = torch.arange(length, device=device)[:, None] - size // 2
    i = torch.arange(length, device=device)
    return (i >= start) & (i < start + size)


def _pad(images: Tensor, padding: int, pad_mode: str, fill: float) -> Tensor:
    if pad_mode == "reflect":
        return F.pad(images, (padding,) * 4, mode="reflect")
    return F.pad(images, (padding,) * 4, mode="constant", value=fill if pad_mode == "constant" else 0.0)


def _crop_draw(n: int, generator: torch.Generator, device: torch.device, W: int, padding: int, p: float) -> Tensor:
    """(n,) int64 flat offsets of each crop window in the padded image; the centre for unchosen images."""
    S = 2 * padding + 1
    k = torch.randint(0, S * S, (n,), generator=generator, device=device)
    if p < 1.0:
        k = torch.where(_chosen(n, generator, device, p), k, S * S // 2)  # the centre: the original image
    return _crop_offsets(W, padding, device).index_select(0, k)


def _crop_flip(images: Tensor, offsets: Tensor, flips: Optional[Tensor], padding: int, pad_mode: str,
               fill: float) -> Tensor:
    """Crop (N, C, H, W) at `offsets` (from `_crop_draw`) and mirror where `flips` (N,) bool: one gather."""
    N, C, H, W = images.shape
    padded = _pad(images, padding, pad_mode, fill).flatten(2)  # (N, C, Hp*Wp)
    grids = _grids(H, W, padding, images.device)
    start = grids[0] if flips is None else torch.where(flips[:, None], grids[1], grids[0])
    index = start + offsets[:, None]  # (N, H*W)
    return padded.gather(2, index[:, None, :].expand(N, C, H * W)).view(N, C, H, W)


def random_crop(images: Tensor, generator: torch.Generator, padding: int, pad_mode: str = "zero",
                fill: float = 0.0, p: float = 1.0) -> Tensor:
    """Pad by `padding` on each side, then crop back to H×W at a random offset per image.

    images: (N, C, H, W). pad_mode: "zero", "constant" (with `fill`) or "reflect" (needs padding < H, W).
    Content moves by at most `padding` pixels per axis; images not chosen (probability 1 - p) are unchanged.
    """
    if padding == 0:
        return images
    offsets = _crop_draw(images.shape[0], generator, images.device, images.shape[3], padding, p)
    return _crop_flip(images, offsets, None, padding, pad_mode, fill)


def horizontal_flip(images: Tensor, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """Mirror left-right each image of (N, C, H, W) with probability p."""
    chosen = _chosen(images.shape[0], generator, images.device, p)
    return torch.where(chosen[:, None, None, None], images.flip(3), images)


def _index_bit(indices: Tensor, seed: int) -> Tensor:
    """A pseudo-random bit per dataset index: a 32-bit integer hash, vectorised, the same on every device."""
    mask = 0xFFFFFFFF
    x = (indices.long() * 0x2C1B3C6D + (seed & mask) * 0x297A2D39 + 0x3C6EF372) & mask
    for multiplier in (0x7FEB352D, 0x1B873593):  # constants < 2**31 keep products inside int64
        x = ((x ^ (x >> 16)) * multiplier) & mask
    return ((x ^ (x >> 15)) >> 7) & 1


def _alternating_bits(indices: Tensor, epoch: int, seed: int, table: Optional[Tensor] = None) -> Tensor:
    """Bool (N,): flip these images in `epoch`; `table` holds `_index_bit` of every dataset index."""
    bits = _index_bit(indices, seed).bool() if table is None else table.index_select(0, indices)
    return ~bits if epoch % 2 else bits


def alternating_flip(images: Tensor, indices: Tensor, epoch: int, seed: int) -> Tensor:
    """Flip exactly the images that were not flipped in the previous epoch.

    images: (N, C, H, W); indices: (N,) integer dataset indices of the images. In epoch 0 a pseudo-random
    bit of (seed, index) picks about half the images; each later epoch flips the other ones, so every
    image is seen both ways in any two consecutive epochs.
    """
    # Alternate flips across epochs instead of i.i.d. flips (Jordan 2024, arXiv:2404.00498).
    flipped = _alternating_bits(indices.to(images.device), epoch, seed)
    return torch.where(flipped[:, None, None, None], images.flip(3), images)


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
    in_rows = _hole_spans(size, H, device)[centre_y]  # (N, holes, H)
    in_cols = _hole_spans(size, W, device)[centre_x]  # (N, holes, W)
    mask = in_rows[..., :, None] & in_cols[..., None, :]  # (N, holes, H, W)
    mask = mask.any(1) if holes > 1 else mask[:, 0]
    if p < 1.0:
        mask &= _chosen(N, generator, device, p)[:, None, None]
    return images.masked_fill(mask[:, None], fill)


def rotate(images: Tensor, generator: torch.Generator, degrees: float, fill: float = 0.0, p: float = 1.0) -> Tensor:
    """Rotate each chosen image of (N, C, H, W) by a uniform angle in [-degrees, degrees] about its centre.

    Bilinear sampling; pixels that come from outside the image get `fill`. Unchosen images are returned
    bit for bit.
    """
    N, C, H, W = images.shape
    device = images.device
    chosen = _chosen(N, generator, device, p)
    limit = math.radians(degrees)
    angles = torch.empty(N, device=device, dtype=images.dtype).uniform_(-limit, limit, generator=generator)
    # theta = cos * [[1, 0, 0], [0, 1, 0]] + sin * [[0, -H/W, 0], [W/H, 0, 0]]: the rotation in pixel units,
    # expressed in affine_grid's normalised coordinates ([-1, 1] on both axes), in four small kernels.
    basis_cos, basis_sin = _rotation_basis(H, W, device, images.dtype)
    theta = torch.addcmul(angles.cos()[:, None, None] * basis_cos, angles.sin()[:, None, None], basis_sin)
    grid = F.affine_grid(theta, [N, C, H, W], align_corners=False)
    # Sample (images - fill) with zero padding, so outside pixels come back as fill.
    shifted = images - fill if fill else images
    rotated = F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    rotated = rotated + fill if fill else rotated
    return torch.where(chosen[:, None, None, None], rotated, images)


@functools.lru_cache(maxsize=64)
def _rotation_basis(H: int, W: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    basis_cos = torch.eye(2, 3, dtype=dtype, device=device)  # fills on the device: no host->device copy
    basis_sin = torch.zeros(2, 3, dtype=dtype, device=device)
    basis_sin[0, 1].fill_(-H / W)  # fill_, not `= value`: item assignment copies a host scalar over
    basis_sin[1, 0].fill_(W / H)
    return basis_cos, basis_sin


class BatchAugment:
    """The configured ops in order crop, flip, rotate, color, randaugment/trivialaugment, cutout, erase:
    `aug(images, generator, indices=None, epoch=0)`.

    images: float (N, C, H, W) in [0, 1]; indices: (N,) dataset indices, needed by alternating flip.
    The result equals applying `random_crop`, `horizontal_flip`/`alternating_flip`, `rotate`,
    `color.color_jitter` and `cutout` in turn with the same generator (the same draws in the same
    order), with crop and flip done as one gather. Built by `build_augment`, which validates the settings.
    """

    def __init__(self, cfg: AugmentConfig, channels: int, image_size: int, seed: int, lines: list[str]):
        self.cfg, self.channels, self.image_size, self.seed, self.lines = cfg, channels, image_size, seed, lines
        self._bits: Optional[Tensor] = None  # alternating-flip bit of each dataset index, see prepare()

    def prepare(self, num_images: int, device: torch.device) -> "BatchAugment":
        """Tabulate alternating flip's per-index bits for a dataset of `num_images` on `device` (one
        lookup per batch instead of a 16-op hash). Optional; the bits are the same either way. Indices
        passed later must be below the largest `num_images` prepared (DeviceLoader calls this)."""
        flip = self.cfg.flip
        if flip is not None and flip.alternate and (self._bits is None or len(self._bits) < num_images):
            self._bits = _index_bit(torch.arange(num_images, device=device), self.seed).bool()
        return self

    def __call__(self, images: Tensor, generator: torch.Generator, indices: Optional[Tensor] = None,
                 epoch: int = 0) -> Tensor:
        if not self.lines:
            return images
        expected = (self.channels, self.image_size, self.image_size)
        if tuple(images.shape[1:]) != expected:
            raise ValueError(f"augment built for (N, {', '.join(map(str, expected))}) images, "
                             f"got {tuple(images.shape)}")
        crop, flip, rot, color, cut = self.cfg.crop, self.cfg.flip, self.cfg.rotate, self.cfg.color, self.cfg.cutout
        N, device = images.shape[0], images.device
        offsets = flips = None
        if crop is not None and crop.padding > 0:
            offsets = _crop_draw(N, generator, device, images.shape[3], crop.padding, crop.p)
        if flip is not None:
            flips = self._flips(N, generator, device, indices, epoch)
        if offsets is not None:
            images = _crop_flip(images, offsets, flips, crop.padding, crop.pad_mode, crop.fill)
        elif flips is not None:
            images = torch.where(flips[:, None, None, None], images.flip(3), images)
        if rot is not None:
            images = rotate(images, generator, rot.degrees, rot.fill, rot.p)
        if color is not None:
            images = color_jitter(images, generator, color.brightness, color.contrast, color.saturation, color.p)
        if (rand := self.cfg.randaugment) is not None:
            images = rand_augment(images, generator, rand.num_ops, rand.magnitude, rand.bins, rand.p)
        if (trivial := self.cfg.trivialaugment) is not None:
            images = trivial_augment(images, generator, trivial.bins, trivial.p)
        if cut is not None:
            images = cutout(images, generator, cut.holes, cut.size, cut.fill, cut.p)
        if (erase := self.cfg.erase) is not None:
            images = random_erasing(images, generator, erase.p, erase.scale, erase.ratio, erase.value)
        return images

    def _flips(self, n: int, generator: torch.Generator, device: torch.device, indices: Optional[Tensor],
               epoch: int) -> Tensor:
        if not self.cfg.flip.alternate:
            return _chosen(n, generator, device, self.cfg.flip.p)
        if indices is None:
            raise ValueError("alternating flip needs the batch's dataset indices: "
                             "aug(images, g, indices=..., epoch=...)")
        table = self._bits if self._bits is not None and self._bits.device == device else None
        indices = indices if indices.device == device else indices.to(device)
        return _alternating_bits(indices, epoch, self.seed, table)

    def describe(self) -> list[str]:
        """One human-readable line per active op, in the order applied."""
        return list(self.lines)


def _check(key: str, value, low: int, high: int) -> None:
    if not low <= value <= high:
        raise UserError(f"augment.{key} must be in {low}..{high}, got {value}")


def build_augment(cfg: AugmentConfig, image_size: int, channels: int, seed: int = 0) -> BatchAugment:
    """Validate `cfg` against (channels, image_size, image_size) images; ops run crop, flip, rotate, color,
    randaugment/trivialaugment, cutout, erase. (MixUp and CutMix change the labels too: `data.mix.build_mix`.)

    `seed` feeds alternating flip's per-index bits (use the run's seed).
    """
    cfg = cfg.model_copy(deep=True)  # the ops below keep their settings even if the caller edits cfg later
    lines: list[str] = []
    if (crop := cfg.crop) is not None:
        _check("crop.padding", crop.padding, 0, image_size - 1)
        fill = f" (fill {crop.fill:g})" if crop.pad_mode == "constant" else ""
        lines.append(f"random crop {image_size}×{image_size} after {crop.padding} px {crop.pad_mode} "
                     f"padding{fill}, p={crop.p:g}")
    if (flip := cfg.flip) is not None:
        if flip.alternate and flip.p != 0.5:
            raise UserError(f"augment.flip.p must be 0.5 with augment.flip.alternate=true "
                            f"(alternating flip flips half of the images every epoch), got {flip.p}")
        lines.append("horizontal flip, alternating across epochs (Jordan 2024)" if flip.alternate
                     else f"horizontal flip, p={flip.p:g}")
    if (rot := cfg.rotate) is not None:
        lines.append(f"rotation by up to ±{rot.degrees:g}°, bilinear, fill {rot.fill:g}, p={rot.p:g}")
    if (color := cfg.color) is not None:
        lines.append(_color_line(color, channels))
    if (rand := cfg.randaugment) is not None:
        lines.append(f"RandAugment: {rand.num_ops} ops per image at magnitude {rand.magnitude}/{rand.bins - 1}, "
                     f"p={rand.p:g}")
    if (trivial := cfg.trivialaugment) is not None:
        lines.append(f"TrivialAugment (wide): one op per image at a random magnitude level of {trivial.bins}, "
                     f"p={trivial.p:g}")
    if (cut := cfg.cutout) is not None:
        _check("cutout.size", cut.size, 1, image_size)
        holes = f"{cut.holes} hole{'s' if cut.holes > 1 else ''}"
        lines.append(f"cutout {holes} of {cut.size}×{cut.size} px, fill {cut.fill:g}, p={cut.p:g}")
    if (erase := cfg.erase) is not None:
        fill = "noise" if erase.value == "random" else f"{erase.value:g}"
        lines.append(f"random erasing of {erase.scale[0]:g}-{erase.scale[1]:g} of the image, aspect "
                     f"{erase.ratio[0]:g}-{erase.ratio[1]:g}, fill {fill}, p={erase.p:g}")
    return BatchAugment(cfg, channels, image_size, seed, lines)


def _color_line(color, channels: int) -> str:
    # A grey image has no saturation to jitter: on 1-channel data the default 0.4 does nothing (color.py).
    saturation = color.saturation if channels == 3 else 0.0
    strengths = {"brightness": color.brightness, "contrast": color.contrast, "saturation": saturation}
    if color.saturation and channels not in (1, 3):
        raise UserError(f"augment.color.saturation needs RGB images, these have {channels} channels; set it to 0")
    if not any(strengths.values()):
        grey = " (saturation does nothing on grey images)" if color.saturation else ""
        raise UserError(f"augment.color needs brightness, contrast or saturation above 0, got all 0{grey}")
    jitter = ", ".join(f"{name} ×[{1 - x:g}, {1 + x:g}]" for name, x in strengths.items() if x)
    return f"colour jitter: {jitter}, p={color.p:g}"
