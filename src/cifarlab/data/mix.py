"""MixUp and CutMix of a whole batch, with the targets mixed alike, on the batch's device.

`mix(images, labels, rng) -> (images, targets)`: images float (N, C, H, W) in [0, 1], labels int64 (N,),
targets float (N, num_classes) = lam * one_hot(labels) + (1 - lam) * one_hot(labels.flip(0)). Image i is
mixed with image N-1-i of the same batch (timm's `Mixup`: the batch is already in random order, so its
reverse is a random partner and costs one flip instead of a permutation).

One mixing weight `lam` per batch, as in both papers and timm's default mode "batch": it is drawn on the
host from `rng`, a `random.Random` the loader seeds from (seed, epoch, batch), so no value is read back
from the device and the draw costs no kernel; the device sees a Python scalar (MixUp) or a box given by
Python slices (CutMix). CutMix's lam is the area actually kept after the box is clipped at the border
(timm's `correct_lam`). With both on, each batch gets CutMix with probability cutmix.p, else MixUp with
probability mixup.p (shares of all batches); shares adding up to more than 1 are scaled to add up to 1, so
every batch is mixed and CutMix takes cutmix.p / (mixup.p + cutmix.p) of them: both at their default p=1
alternate half and half, timm's `Mixup(mix_prob=1, switch_prob=0.5)`.

The loss on the targets is `nn.CrossEntropyLoss(label_smoothing=s)` with probability targets: torch smooths
them as target * (1 - s) + s / C, which is timm's `mixup_target` (smoothed one-hots, then mixed) fed to
its `SoftTargetCrossEntropy`. A batch that is not mixed gets plain one-hot targets, the same loss as its
labels would give.
"""
from __future__ import annotations

import math
import random
from typing import Optional

import torch
from torch import Tensor

from cifarlab.config import CutmixConfig, MixupConfig


def one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(N,) int64 -> (N, num_classes) one-hot in `dtype`: one fill and one scatter."""
    targets = torch.zeros(labels.shape[0], num_classes, device=labels.device, dtype=dtype)
    return targets.scatter_(1, labels[:, None], 1.0)


def mixup(images: Tensor, targets: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """lam * each image + (1 - lam) * its partner (the reversed batch); targets (N, K) alike."""
    return images.lerp(images.flip(0), 1.0 - lam), targets.lerp(targets.flip(0), 1.0 - lam)


def cutmix_box(lam: float, H: int, W: int, rng: random.Random) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a box of about (1 - lam) of the image at a uniform centre, clipped at
    the border (Yun et al. 2019; timm's `rand_bbox`)."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(H * ratio), int(W * ratio)
    centre_y, centre_x = rng.randrange(H), rng.randrange(W)
    top, bottom = max(centre_y - cut_h // 2, 0), min(centre_y + cut_h // 2, H)
    left, right = max(centre_x - cut_w // 2, 0), min(centre_x + cut_w // 2, W)
    return top, bottom, left, right


def cutmix(images: Tensor, targets: Tensor, box: tuple[int, int, int, int]) -> tuple[Tensor, Tensor]:
    """Paste the partner's `box` (top, bottom, left, right) into each image; targets weighted by area."""
    top, bottom, left, right = box
    H, W = images.shape[2:]
    kept = 1.0 - (bottom - top) * (right - left) / (H * W)
    mixed = images.clone()
    mixed[:, :, top:bottom, left:right] = images[:, :, top:bottom, left:right].flip(0)
    return mixed, targets.lerp(targets.flip(0), 1.0 - kept)


class BatchMix:
    """The configured MixUp and/or CutMix: `mix(images, labels, rng) -> (images, targets)`, see the module."""

    def __init__(self, mixup_cfg: Optional[MixupConfig], cutmix_cfg: Optional[CutmixConfig], num_classes: int):
        self.mixup_cfg, self.cutmix_cfg, self.num_classes = mixup_cfg, cutmix_cfg, num_classes
        mix_p, cut_p = (mixup_cfg.p if mixup_cfg else 0.0), (cutmix_cfg.p if cutmix_cfg else 0.0)
        scale = max(1.0, mix_p + cut_p)  # shares over 1 in all are scaled to add up to 1 (see the module)
        self.cut_share, self.mix_share = cut_p / scale, mix_p / scale

    def __call__(self, images: Tensor, labels: Tensor, rng: random.Random) -> tuple[Tensor, Tensor]:
        targets = one_hot(labels, self.num_classes, images.dtype)
        chance = rng.random()  # which of the two (or neither) mixes this batch
        if chance < self.cut_share:
            lam = rng.betavariate(self.cutmix_cfg.alpha, self.cutmix_cfg.alpha)
            return cutmix(images, targets, cutmix_box(lam, images.shape[2], images.shape[3], rng))
        if chance < self.cut_share + self.mix_share:
            return mixup(images, targets, rng.betavariate(self.mixup_cfg.alpha, self.mixup_cfg.alpha))
        return images, targets

    def describe(self) -> list[str]:
        lines = []
        if self.mixup_cfg is not None:
            lines.append(f"mixup with the reversed batch, lambda ~ Beta({self.mixup_cfg.alpha:g}, "
                         f"{self.mixup_cfg.alpha:g}) per batch, p={self.mix_share:g}")
        if self.cutmix_cfg is not None:
            lines.append(f"cutmix with the reversed batch, box area 1 - lambda, lambda ~ Beta("
                         f"{self.cutmix_cfg.alpha:g}, {self.cutmix_cfg.alpha:g}) per batch, p={self.cut_share:g}")
        return lines


def build_mix(mixup_cfg: Optional[MixupConfig], cutmix_cfg: Optional[CutmixConfig],
              num_classes: int) -> Optional[BatchMix]:
    """A `BatchMix`, or None when neither is configured (labels then stay int64 class indices)."""
    if mixup_cfg is None and cutmix_cfg is None:
        return None
    return BatchMix(mixup_cfg.model_copy() if mixup_cfg else None, cutmix_cfg.model_copy() if cutmix_cfg else None,
                    num_classes)


def dominant_labels(targets: Tensor) -> Tensor:
    """(N,) the class each row of targets weighs most, what train accuracy is measured against under
    mixing; class indices (N,) pass through. A tie (lam exactly 0.5) goes to the lower class index."""
    return targets if targets.dim() == 1 else targets.argmax(1)
