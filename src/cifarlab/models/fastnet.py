"""fastnet: the airbench94 network (Jordan 2024, arXiv:2404.00498; airbench's `CifarNet`).

A frozen 2×2 patch-whitening conv (Page 2018, via hlb-CIFAR10) whose filters are the eigenvectors of the
training patches' covariance scaled by eigenvalue^-1/2, together with their negatives so that the GELU
after it keeps both signs; then three conv groups (3×3 conv, 2×2 max-pool, BN, GELU, 3×3 conv, BN, GELU),
a global max-pool and a bias-free linear layer whose logits are scaled by 1/9. BatchNorms train only their
biases (weights frozen at 1) and use airbench's fast running statistics (momentum 0.6, eps 1e-12).

Call `model.init_whitening(normalised_train_images)` once before training; until then the first layer
is a fixed random conv, which trains too, only slower.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cifarlab.errors import UserError
from cifarlab.models.norm import check_factory_args, maybe_dropout, norm_layer
from cifarlab.models.registry import register_model

WHITEN_PATCH = 2
LOGIT_SCALE = 1 / 9  # airbench's output scaling
MAX_WIDTH = 4096  # airbench's widest published variant uses 768; a typo should not allocate gigabytes


class BiasOnlyBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d with its weight frozen at 1, so only the bias trains (airbench)."""

    def __init__(self, channels: int, momentum: float = 0.6, eps: float = 1e-12):
        # airbench's momentum is the weight of the old running statistic; torch's is that of the new batch.
        super().__init__(channels, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad_(False)


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
    # Identity init of the first in_channels filters (airbench's dirac init): each group starts near a pass-through.
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:min(in_channels, out_channels)])
    return conv


class ConvGroup(nn.Module):
    """(N, C_in, H, W) -> (N, C_out, H/2, W/2): conv, max-pool, norm, GELU, conv, norm, GELU."""

    def __init__(self, in_channels: int, out_channels: int, norm: str):
        super().__init__()
        make_norm = BiasOnlyBatchNorm if norm == "batch" else (lambda channels: norm_layer(norm, channels))
        self.conv1 = conv3x3(in_channels, out_channels)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = make_norm(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.norm2 = make_norm(out_channels)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class FastNet(nn.Module):
    """(N, in_channels, H, W) normalised images, H, W >= 15 -> logits (N, num_classes)."""

    def __init__(self, num_classes: int, in_channels: int, norm: str, dropout: float, widths: Sequence[int],
                 whiten_bias_epochs: Optional[int] = None):
        super().__init__()
        self.whiten_bias_epochs = whiten_bias_epochs
        whiten_channels = 2 * in_channels * WHITEN_PATCH**2
        self.whiten = nn.Conv2d(in_channels, whiten_channels, WHITEN_PATCH, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)  # set by init_whitening, never trained; its bias trains
        self.act = nn.GELU()
        self.group1 = ConvGroup(whiten_channels, widths[0], norm)
        self.group2 = ConvGroup(widths[0], widths[1], norm)
        self.group3 = ConvGroup(widths[1], widths[2], norm)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.dropout = maybe_dropout(dropout)
        self.fc = nn.Linear(widths[2], num_classes, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.whiten(x))
        x = self.group3(self.group2(self.group1(x)))
        x = self.pool(x).flatten(1)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.fc(x) * LOGIT_SCALE

    def start_epoch(self, epoch: int) -> None:
        """Train the whitening layer's bias only in the first `whiten_bias_epochs` epochs (airbench94 uses
        3 of ~10): it adapts the fixed filters early, then stays put. Called before each epoch (0-based)."""
        if self.whiten_bias_epochs is not None:
            self.whiten.bias.requires_grad_(epoch < self.whiten_bias_epochs)

    @torch.no_grad()
    def init_whitening(self, train_pixels: Tensor, eps: float = 5e-4) -> None:
        """Set the first conv to whiten 2×2 patches of `train_pixels`: normalised float (N, C, H, W).

        A few thousand images are plenty. eps regularises the smallest eigenvalues (airbench uses 5e-4).
        """
        C = self.whiten.in_channels
        if train_pixels.ndim != 4 or train_pixels.shape[1] != C:
            raise ValueError(f"init_whitening needs (N, {C}, H, W) images, got shape {tuple(train_pixels.shape)}")
        patches = F.unfold(train_pixels.double(), WHITEN_PATCH)  # (N, C*2*2, L), ordered like conv weights
        patches = patches.transpose(1, 2).reshape(-1, C * WHITEN_PATCH**2)
        patches = patches - patches.mean(0)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]
        filters = filters.reshape(-1, C, WHITEN_PATCH, WHITEN_PATCH)
        weight = self.whiten.weight
        weight.copy_(torch.cat([filters, -filters]).to(dtype=weight.dtype, device=weight.device))


@register_model("fastnet", classifier="fc")
def fastnet(num_classes: int = 10, in_channels: int = 3, norm: str = "batch", dropout: float = 0.0,
            widths: Sequence[int] = (64, 256, 256), whiten_bias_epochs: Optional[int] = None, **options) -> nn.Module:
    """airbench94's network; options `widths`: the three conv-group widths (default 64, 256, 256), and
    `whiten_bias_epochs`: train the whitening bias for that many epochs only (default: always)."""
    check_factory_args("fastnet", norm, dropout, options)
    valid = isinstance(widths, (list, tuple)) and len(widths) == 3
    if not (valid and all(isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= MAX_WIDTH for w in widths)):
        raise UserError(f"model.options.widths must be 3 whole numbers in 1..{MAX_WIDTH}, got {widths!r}")
    if whiten_bias_epochs is not None and (isinstance(whiten_bias_epochs, bool)
                                           or not isinstance(whiten_bias_epochs, int)
                                           or whiten_bias_epochs < 0):
        raise UserError(f"model.options.whiten_bias_epochs must be a whole number of epochs >= 0, "
                        f"got {whiten_bias_epochs!r}")
    return FastNet(num_classes, in_channels, norm, dropout, widths, whiten_bias_epochs)
