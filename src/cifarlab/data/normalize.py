"""uint8 images -> normalised float model input, the one conversion every path shares.

`Normalize` holds the per-channel constants as tensors on the device, made once: building them from
Python lists for every batch costs two host->device copies per step on a GPU (measured on an H100: bench/gpu_speed.py).
The function `normalize` is the same arithmetic for one-off callers (evaluation, predict, reports).
"""
from __future__ import annotations

from typing import Sequence

import torch


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 in [0, 1], same device; one kernel (cast and divide together)."""
    return torch.div(images, 255.0)  # bit-identical to images.float() / 255


class Normalize:
    """float (N, C, H, W) in [0, 1] -> (x - mean) * (1 / std) per channel, optionally channels_last.

    The constants live on `device` (as `dtype`) from construction on, so a call launches two kernels
    (subtract into the output layout, multiply in place) and copies nothing from the host.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        if len(mean) != len(std):
            raise ValueError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}")
        self.channels, self.dtype = len(mean), dtype
        self.mean = torch.tensor(mean, dtype=dtype, device=device).view(1, -1, 1, 1)
        self.inv_std = 1.0 / torch.tensor(std, dtype=dtype, device=device).view(1, -1, 1, 1)

    def __call__(self, pixels: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
        C = pixels.shape[1]
        if C != self.channels:
            raise ValueError(f"mean/std have {self.channels} values for {C}-channel images")
        if pixels.dtype != self.dtype:
            raise ValueError(f"Normalize was built for {self.dtype} pixels, got {pixels.dtype}")
        layout = torch.channels_last if channels_last else torch.contiguous_format
        # Writing the subtraction straight into the output layout saves a separate .contiguous() copy.
        out = torch.empty_like(pixels, memory_format=layout)
        torch.sub(pixels, self.mean, out=out)
        return out.mul_(self.inv_std)


def normalize(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float],
              channels_last: bool = True) -> torch.Tensor:
    """float (N, C, H, W) in [0, 1] -> (x - mean) / std per channel, optionally channels_last.

    For one-off calls; a loop should build a `Normalize` once instead (this copies mean/std to the device).
    """
    C = pixels.shape[1]
    if len(mean) != C or len(std) != C:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} values for {C}-channel images")
    return Normalize(mean, std, pixels.device, pixels.dtype)(pixels, channels_last)
