"""Random erasing (Zhong et al. 2017, arXiv:1708.04896; timm's RandomErasing) on a whole batch.

Each chosen image gets one rectangle of random area (a fraction of the image in `scale`) and aspect ratio
(log-uniform in `ratio`) at a random place, filled with per-pixel uniform noise (`value` "random", as timm's
mode "pixel") or a constant. torchvision and timm retry up to 10 draws until the rectangle fits; here every
image draws once and the sides are clipped to the image, so no image needs a second, data-dependent round.
"""
from __future__ import annotations

import math
from typing import Union

import torch
from torch import Tensor


def random_erasing(images: Tensor, generator: torch.Generator, p: float = 0.5,
                   scale: tuple[float, float] = (0.02, 0.33), ratio: tuple[float, float] = (0.3, 3.3),
                   value: Union[float, str] = "random") -> Tensor:
    """Erase one rectangle in each chosen image of (N, C, H, W) in [0, 1] (probability p per image)."""
    N, C, H, W = images.shape
    device, dtype = images.device, images.dtype
    draws = torch.rand(N, 5, generator=generator, device=device, dtype=dtype)
    area = (scale[0] + draws[:, 0] * (scale[1] - scale[0])) * (H * W)
    aspect = torch.exp(math.log(ratio[0]) + draws[:, 1] * (math.log(ratio[1]) - math.log(ratio[0])))
    height = (area * aspect).sqrt().round().clamp(1, H)
    width = (area / aspect).sqrt().round().clamp(1, W)
    top = (draws[:, 2] * (H - height + 1)).floor()
    left = (draws[:, 3] * (W - width + 1)).floor()
    rows = torch.arange(H, device=device, dtype=dtype)
    cols = torch.arange(W, device=device, dtype=dtype)
    in_rows = (rows >= top[:, None]) & (rows < (top + height)[:, None])  # (N, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + width)[:, None])  # (N, W)
    mask = in_rows[:, :, None] & in_cols[:, None, :] & (draws[:, 4] < p)[:, None, None]
    if value == "random":
        fill = torch.rand(images.shape, generator=generator, device=device, dtype=dtype)
        return torch.where(mask[:, None], fill, images)
    return images.masked_fill(mask[:, None], float(value))
