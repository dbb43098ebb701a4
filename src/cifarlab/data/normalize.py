"""uint8 images -> normalised float model input, the one conversion every path shares."""
from __future__ import annotations

from typing import Sequence

import torch


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 in [0, 1], same device."""
    return images.float().div_(255.0)


def normalize(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float], channels_last: bool = True) -> torch.Tensor:
    """float (N, C, H, W) in [0, 1] -> (x - mean) / std per channel, optionally channels_last."""
    C = pixels.shape[1]
    if len(mean) != C or len(std) != C:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} values for {C}-channel images")
    mean_t = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(1, C, 1, 1)
    inv_std = 1.0 / torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(1, C, 1, 1)
    out = (pixels - mean_t).mul_(inv_std)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def denormalize(inputs: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Inverse of `normalize`, clamped to [0, 1]: for showing model inputs as pictures."""
    C = inputs.shape[1]
    mean_t = torch.tensor(mean, dtype=inputs.dtype, device=inputs.device).view(1, C, 1, 1)
    std_t = torch.tensor(std, dtype=inputs.dtype, device=inputs.device).view(1, C, 1, 1)
    return (inputs * std_t + mean_t).clamp_(0, 1)
