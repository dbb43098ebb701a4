"""TrivialAugment and RandAugment on a whole batch: one op per image per layer, chosen on the device.

TrivialAugment (Müller & Hutter 2021, arXiv:2103.10158, torchvision's TrivialAugmentWide) applies to each
image one op drawn uniformly from OPS at a magnitude drawn uniformly from `bins` levels; RandAugment
(Cubuk et al. 2019, arXiv:1909.13719, torchvision's RandAugment) applies `num_ops` ops in turn, each drawn
per image, all at one fixed magnitude. The ops and magnitude ranges are torchvision's (its `_augmentation_space`
tables), on float images in [0, 1] instead of uint8 (solarize thresholds and posterize bits read accordingly).

Batched instead of per image: a layer draws an op index, a magnitude and a sign for every image; the
geometric ops (shear, translate, rotate) are one affine grid and one `grid_sample` (nearest, zero fill, as
torchvision) for the whole batch, and each colour op is computed for the whole batch and kept by `torch.where`
on the images that drew it. That costs every op's arithmetic on every image (a few dozen elementwise kernels
per layer) but has no data-dependent shapes and no host sync, which per-image subsets would need.
Differences from torchvision: shears turn about the image centre (torchvision's about the top-left corner
also shifts the image), and images are float throughout, so posterize and equalize round to 255 levels.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cifarlab.data.color import _luma

OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color", "contrast",
       "sharpness", "posterize", "solarize", "autocontrast", "equalize")
GEOMETRIC = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")
SIGNED = GEOMETRIC + ("brightness", "color", "contrast", "sharpness")  # magnitudes drawn with a random sign


@dataclass(frozen=True)
class Space:
    """The largest magnitude of each op (its range is 0..largest over `bins` levels) and posterize's bits."""
    shear: float  # tan of the shear angle
    translate: float  # in pixels
    rotate: float  # in degrees
    blend: float  # brightness, color, contrast, sharpness: factor 1 ± this
    posterize_low_bits: int  # bits kept at the largest magnitude (8 at the smallest)


def trivial_space(image_size: int) -> Space:
    """torchvision's TrivialAugmentWide: shear 0.99, translate 32 px, rotate 135°, blend 0.99, 8..2 bits."""
    return Space(shear=0.99, translate=32.0, rotate=135.0, blend=0.99, posterize_low_bits=2)


def rand_space(image_size: int) -> Space:
    """torchvision's RandAugment: shear 0.3, translate 150/331 of the image, rotate 30°, blend 0.9, 8..4 bits."""
    return Space(shear=0.3, translate=150.0 / 331.0 * image_size, rotate=30.0, blend=0.9, posterize_low_bits=4)


def trivial_augment(images: Tensor, generator: torch.Generator, bins: int = 31, p: float = 1.0) -> Tensor:
    """TrivialAugment: one op of OPS per image of (N, C, H, W) in [0, 1], at a uniform magnitude level of
    `bins`; an image not chosen (probability 1 - p) gets the identity."""
    N, device = images.shape[0], images.device
    ops = _draw_ops(N, generator, device, p)
    level = torch.randint(0, bins, (N,), generator=generator, device=device)
    return _apply_layer(images, generator, ops, level.to(images.dtype) / max(bins - 1, 1),
                        trivial_space(images.shape[-1]))


def rand_augment(images: Tensor, generator: torch.Generator, num_ops: int = 2, magnitude: int = 9, bins: int = 31,
                 p: float = 1.0) -> Tensor:
    """RandAugment: `num_ops` layers, each one op of OPS per image of (N, C, H, W) in [0, 1], at magnitude
    level `magnitude` of `bins` (torchvision's defaults 2, 9, 31); unchosen images (1 - p) are left alone."""
    N, device = images.shape[0], images.device
    chosen = torch.rand(N, generator=generator, device=device) < p
    strength = torch.full((N,), magnitude / max(bins - 1, 1), device=device, dtype=images.dtype)
    for _ in range(num_ops):
        ops = torch.where(chosen, _draw_ops(N, generator, device, 1.0), 0)
        images = _apply_layer(images, generator, ops, strength, rand_space(images.shape[-1]))
    return images


def _draw_ops(n: int, generator: torch.Generator, device: torch.device, p: float) -> Tensor:
    ops = torch.randint(0, len(OPS), (n,), generator=generator, device=device)
    if p < 1.0:
        ops = torch.where(torch.rand(n, generator=generator, device=device) < p, ops, 0)  # 0: identity
    return ops


def _apply_layer(images: Tensor, generator: torch.Generator, ops: Tensor, strength: Tensor, space: Space) -> Tensor:
    """Each image's op `ops[i]` at `strength[i]` in [0, 1] of its op's range, with a random sign where signed."""
    N = images.shape[0]
    sign = torch.where(torch.rand(N, generator=generator, device=images.device) < 0.5, -1.0, 1.0).to(images.dtype)
    signed = strength * sign
    out = _geometric(images, ops, signed, space)
    blend = 1.0 + signed * space.blend  # (N,) factors of the blend ops
    bits = (8 - (strength * (8 - space.posterize_low_bits)).round()).clamp(1, 8)
    colour = {
        "brightness": lambda: (images * blend[:, None, None, None]).clamp(0, 1),
        "color": lambda: _lerp(_grey(images), images, blend),
        "contrast": lambda: _lerp(_grey(images).mean((2, 3), keepdim=True), images, blend),
        "sharpness": lambda: _lerp(_smoothed(images), images, blend),
        "posterize": lambda: _posterize(images, bits),
        "solarize": lambda: torch.where(images >= (1.0 - strength)[:, None, None, None], 1.0 - images, images),
        "autocontrast": lambda: _autocontrast(images),
        "equalize": lambda: _equalize(images),
    }
    for name, make in colour.items():
        out = torch.where((ops == OPS.index(name))[:, None, None, None], make(), out)
    return out


def _lerp(start: Tensor, end: Tensor, factor: Tensor) -> Tensor:
    """torchvision's `_blend`: start + factor * (end - start), clamped to [0, 1]; factor per image."""
    return torch.lerp(start, end, factor[:, None, None, None]).clamp(0, 1)


def _grey(images: Tensor) -> Tensor:
    """(N, 1, H, W) luma of RGB images (the image itself for one channel)."""
    C = images.shape[1]
    return torch.einsum("nchw,c->nhw", images, _luma(C, images.device, images.dtype))[:, None]


@functools.lru_cache(maxsize=16)
def _smooth_kernel(channels: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    kernel = torch.ones(3, 3, device=device, dtype=dtype)
    kernel[1, 1].fill_(5.0)
    return (kernel / 13).expand(channels, 1, 3, 3).contiguous()


def _smoothed(images: Tensor) -> Tensor:
    """PIL's SMOOTH filter (torchvision's adjust_sharpness): the 3x3 [1 1 1; 1 5 1; 1 1 1] / 13 mean inside,
    the border pixels as they were."""
    C = images.shape[1]
    inner = F.conv2d(images, _smooth_kernel(C, images.device, images.dtype), groups=C)
    return F.pad(inner, (1, 1, 1, 1)).lerp(images, _border(images.shape[-2], images.shape[-1], images.device,
                                                           images.dtype))


@functools.lru_cache(maxsize=16)
def _border(H: int, W: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    mask = torch.ones(H, W, device=device, dtype=dtype)
    mask[1:-1, 1:-1].fill_(0.0)
    return mask


def _posterize(images: Tensor, bits: Tensor) -> Tensor:
    """Keep the top `bits` (per image) of each 8-bit pixel value."""
    step = torch.exp2(8 - bits)[:, None, None, None]
    return (torch.floor((images * 255).round() / step) * step) / 255


def _autocontrast(images: Tensor) -> Tensor:
    """Stretch each channel of each image to span [0, 1]; a constant channel is left as it is."""
    low = images.amin((2, 3), keepdim=True)
    high = images.amax((2, 3), keepdim=True)
    span = high - low
    return torch.where(span > 0, (images - low) / span.clamp_min(1e-12), images)


def _equalize(images: Tensor) -> Tensor:
    """Histogram equalisation per image and channel, torchvision's uint8 algorithm (PIL's ImageOps.equalize):
    a lookup table from the cumulative histogram; a channel whose values are nearly all one level is left as it is.
    Histograms by scatter_add into one (N*C, 256) table: no bincount, which syncs with the host on CUDA."""
    N, C, H, W = images.shape
    values = (images * 255).round().long().clamp(0, 255).view(N * C, H * W)
    hist = torch.zeros(N * C, 256, device=images.device, dtype=images.dtype)
    hist.scatter_add_(1, values, torch.ones_like(values, dtype=images.dtype))
    last = hist.gather(1, values.amax(1, keepdim=True))  # count of the highest level present
    step = torch.div(hist.sum(1, keepdim=True) - last, 255, rounding_mode="floor")
    lut = torch.div(hist.cumsum(1) + torch.div(step, 2, rounding_mode="floor"), step.clamp_min(1),
                    rounding_mode="floor")
    lut = F.pad(lut[:, :-1], (1, 0)).clamp(0, 255)  # level k maps to the count below it
    equalized = lut.gather(1, values) / 255
    return torch.where(step > 0, equalized, values.to(images.dtype) / 255).view(N, C, H, W)


def _geometric(images: Tensor, ops: Tensor, signed: Tensor, space: Space) -> Tensor:
    """Shear, translate and rotate as one affine grid + nearest `grid_sample` (zero fill) over the batch; the
    other images are returned as they were. affine_grid maps output to input coordinates in [-1, 1]; the
    images are square, so one scale serves both axes."""
    N, C, H, W = images.shape
    dtype, device = images.dtype, images.device
    is_op = {name: (ops == OPS.index(name)).to(dtype) for name in GEOMETRIC}
    angle = torch.deg2rad(signed * space.rotate) * is_op["rotate"]
    shear, shift = signed * space.shear, signed * space.translate * 2 / W
    theta = torch.zeros(N, 2, 3, device=device, dtype=dtype)
    theta[:, 0, 0] = angle.cos()
    theta[:, 0, 1] = -angle.sin() + shear * is_op["shear_x"]
    theta[:, 0, 2] = shift * is_op["translate_x"]
    theta[:, 1, 0] = angle.sin() + shear * is_op["shear_y"]
    theta[:, 1, 1] = angle.cos()
    theta[:, 1, 2] = shift * is_op["translate_y"]
    grid = F.affine_grid(theta, [N, C, H, W], align_corners=False)
    moved = F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    geometric = sum(is_op.values()) > 0
    return torch.where(geometric[:, None, None, None], moved, images)
