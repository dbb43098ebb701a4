"""`synthetic`: small class-patterned images generated in memory, deterministic in a seed — for tests,
CI and throughput runs where no real dataset is at hand. Each class is a smooth periodic colour pattern;
images are that pattern randomly shifted plus pixel noise, so a convnet can learn it in seconds."""
from __future__ import annotations

import math

import torch

from cifarlab.errors import UserError

SYNTHETIC_DEFAULTS = {"num_train": 2000, "num_test": 500, "num_classes": 10, "image_size": 32, "channels": 3, "seed": 0}
_SYNTHETIC_RANGES = {"num_train": (1, 10**6), "num_test": (1, 10**6), "num_classes": (2, 1000),
                     "image_size": (8, 256), "channels": (1, 4), "seed": (0, 2**63 - 1)}


def synthetic_settings(options: dict) -> dict[str, int]:
    unknown = sorted(set(options) - set(SYNTHETIC_DEFAULTS))
    if unknown:
        raise UserError(f"unknown option {unknown[0]!r} for dataset 'synthetic'; "
                        f"choose from: {', '.join(SYNTHETIC_DEFAULTS)}")
    settings = {**SYNTHETIC_DEFAULTS, **options}
    for key, value in settings.items():
        low, high = _SYNTHETIC_RANGES[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise UserError(f"synthetic option {key} must be an integer in {low}..{high}, got {value!r}")
    return settings


def _class_patterns(num_classes: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """(K, C, S, S): per class a smooth colour pattern, a random mix of low-frequency waves that is
    periodic in S, so shifting it (with wrap-around) leaves no seam."""
    freqs = torch.tensor([(0, 1), (1, 0), (1, 1), (1, -1), (0, 2), (2, 0)], dtype=torch.float32)
    coords = torch.arange(size, dtype=torch.float32) * (2 * math.pi / size)
    angle = freqs[:, 0, None, None] * coords[:, None] + freqs[:, 1, None, None] * coords[None, :]  # (F, S, S)
    shape = (num_classes, channels, len(freqs), 1, 1)
    amplitude = torch.randn(shape, generator=generator)
    phase = torch.rand(shape, generator=generator) * (2 * math.pi)
    waves = (amplitude * torch.cos(angle + phase)).sum(2) / math.sqrt(len(freqs))
    return waves + 0.3 * torch.randn(num_classes, channels, 1, 1, generator=generator)


def _synthetic_split(patterns: torch.Tensor, count: int,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` balanced images: class pattern, randomly shifted by up to S/8 pixels, plus pixel noise."""
    K, C, S, _ = patterns.shape
    labels = (torch.arange(count) % K)[torch.randperm(count, generator=generator)]
    max_shift = max(1, S // 8)
    shift = torch.randint(-max_shift, max_shift + 1, (count, 2), generator=generator)
    rows = (torch.arange(S) + shift[:, :1]) % S  # (N, S)
    cols = (torch.arange(S) + shift[:, 1:]) % S
    shifted = torch.gather(patterns[labels], 2, rows[:, None, :, None].expand(count, C, S, S))
    shifted = torch.gather(shifted, 3, cols[:, None, None, :].expand(count, C, S, S))
    pixels = 128 + 40 * shifted + 25 * torch.randn(count, C, S, S, generator=generator)
    return pixels.round_().clamp_(0, 255).to(torch.uint8), labels


def make_synthetic(num_train: int, num_test: int, num_classes: int, image_size: int, channels: int, seed: int) -> dict:
    """Deterministic in `seed`: train and test share the class patterns, not the noise or shifts."""
    generator = torch.Generator().manual_seed(seed)
    patterns = _class_patterns(num_classes, channels, image_size, generator)
    return {
        "train": _synthetic_split(patterns, num_train, generator),
        "test": _synthetic_split(patterns, num_test, generator),
        "classes": tuple(f"class{k}" for k in range(num_classes)),
    }
