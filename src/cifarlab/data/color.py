"""Colour jitter on a whole batch: brightness, contrast and saturation, per-image factors, on the device.

The arithmetic is torchvision's `adjust_brightness`, `adjust_contrast` and `adjust_saturation` (a blend
with black, with the image's mean grey, with each pixel's grey; clamped to [0, 1] after each), done for
the whole batch with one factor per image in a few kernels: one draw for all factors, then per
adjustment a multiply or a lerp and a clamp (plus the grey it blends with). torchvision's ColorJitter
also shuffles the order per image; here it is fixed (brightness, contrast, saturation), which keeps the
batch one pass. An image that is not chosen gets factor 1, which every step returns bit for bit
(x * 1 = x, lerp(grey, x, 1) = x), so no masked copy is needed.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

# ITU-R 601-2 luma, as torchvision's rgb_to_grayscale.
LUMA = (0.2989, 0.587, 0.114)


@functools.lru_cache(maxsize=64)
def _luma(channels: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(C,) weights of each channel in the grey image: luma for RGB, else the plain channel mean."""
    weights = torch.empty(channels, device=device, dtype=dtype)  # filled on the device: no host copy
    for c, weight in enumerate(LUMA if channels == 3 else (1.0 / channels,) * channels):
        weights[c].fill_(weight)
    return weights


@functools.lru_cache(maxsize=64)
def _strengths(brightness: float, contrast: float, saturation: float, device: torch.device,
               dtype: torch.dtype) -> Tensor:
    table = torch.empty(3, device=device, dtype=dtype)
    for i, value in enumerate((brightness, contrast, saturation)):
        table[i].fill_(value)
    return table


def _factors(n: int, generator: torch.Generator, device: torch.device, dtype: torch.dtype,
             strengths: tuple[float, float, float], p: float) -> Tensor:
    """(n, 3) factors uniform in [1 - x, 1 + x] per column's strength x; rows of unchosen images all 1."""
    draws = torch.empty(n, 3, device=device, dtype=dtype).uniform_(-1.0, 1.0, generator=generator)
    factors = torch.addcmul(torch.ones((), device=device, dtype=dtype), draws, _strengths(*strengths, device, dtype))
    if p < 1.0:
        chosen = torch.rand(n, 1, generator=generator, device=device) < p
        factors = torch.where(chosen, factors, 1.0)
    return factors


def color_jitter(images: Tensor, generator: torch.Generator, brightness: float = 0.0, contrast: float = 0.0,
                 saturation: float = 0.0, p: float = 1.0) -> Tensor:
    """Jitter brightness, contrast and saturation of each chosen image of (N, C, H, W) in [0, 1].

    Each factor is uniform in [1 - x, 1 + x] for its strength x; a strength of 0 skips that step.
    Saturation needs C = 3 (RGB) and is skipped for C = 1: a grey image is its own grey, so blending
    with it changes nothing. Contrast blends with the mean of the grey image (of the image itself for
    C = 1). Draws three factors per image (and a choice when p < 1) whatever is skipped.
    """
    N, C, H, W = images.shape
    if saturation and C not in (1, 3):
        raise ValueError(f"saturation jitter needs RGB (C = 3) or grey (C = 1) images, got C = {C}")
    saturation = saturation if C == 3 else 0.0
    device, dtype = images.device, images.dtype
    factors = _factors(N, generator, device, dtype, (brightness, contrast, saturation), p)[:, :, None, None, None]
    if brightness:
        images = (images * factors[:, 0]).clamp_(0.0, 1.0)
    luma = _luma(C, device, dtype)
    if contrast:
        # The mean grey of each image: luma-weighted channel means, two small kernels instead of a grey image.
        mean_grey = (images.mean((2, 3)) @ luma)[:, None, None, None]
        images = torch.lerp(mean_grey, images, factors[:, 1]).clamp_(0.0, 1.0)
    if saturation:
        grey = torch.einsum("nchw,c->nhw", images, luma)[:, None]
        images = torch.lerp(grey, images, factors[:, 2]).clamp_(0.0, 1.0)
    return images
