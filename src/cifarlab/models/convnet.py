"""`convnet`: a compact residual CNN for CPU-sized runs (Fashion-MNIST in minutes, smoke tests in seconds).

custom_resnet's 6.5M parameters cost about 1 GFLOP per 32x32 image forward and backward, too much for a
2-core CPU to finish a real run in minutes; this keeps its shape (conv-pool-norm blocks with a residual
block after the first and last) at a chosen width.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from cifarlab.errors import UserError
from cifarlab.models.norm import check_factory_args, norm_layer
from cifarlab.models.registry import register_model


def _block(in_channels: int, out_channels: int, norm: str, pool: bool) -> nn.Sequential:
    layers = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, norm_layer(norm, out_channels), nn.ReLU(inplace=True))


class Residual(nn.Module):
    def __init__(self, channels: int, norm: str):
        super().__init__()
        self.body = nn.Sequential(_block(channels, channels, norm, False), _block(channels, channels, norm, False))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ConvNet(nn.Module):
    """prep(w) -> [2w pool + residual] -> [4w pool] -> [8w pool + residual] -> global max pool -> linear."""

    def __init__(self, num_classes: int, in_channels: int, norm: str, dropout: float, width: int,
                 fp32_first: bool = False):
        super().__init__()
        w = width
        self.fp32_first = fp32_first
        self.features = nn.Sequential(
            _block(in_channels, w, norm, False),
            _block(w, 2 * w, norm, True), Residual(2 * w, norm),
            _block(2 * w, 4 * w, norm, True),
            _block(4 * w, 8 * w, norm, True), Residual(8 * w, norm),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(8 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if self.fp32_first and torch.is_autocast_enabled(x.device.type):
            # The first convolution outside autocast: under bf16 its rounded output reaches every later layer's
            # gradient (bench/README.md, session 12), and with 1-3 input channels it is under 1% of the FLOPs.
            first = self.features[0][0]
            with torch.autocast(x.device.type, enabled=False):
                x = first(x.to(first.weight.dtype))
            x = self.features[1:](self.features[0][1:](x))
        else:
            x = self.features(x)
        return self.classifier(self.dropout(x))


@register_model("convnet", classifier="classifier")
def convnet(num_classes: int = 10, in_channels: int = 3, norm: str = "batch", dropout: float = 0.0,
            width: int = 16, fp32_first: bool = False, **options) -> nn.Module:
    """Options: `width` (channels of the first layer; the last has 8x that), default 16; `fp32_first` (run the
    first convolution in float32 when training under bf16/fp16 autocast), default false."""
    check_factory_args("convnet", norm, dropout, options)
    if not 1 <= width <= 256:
        raise UserError(f"model.options.width must be in 1..256, got {width}")
    return ConvNet(num_classes, in_channels, norm, dropout, width, fp32_first)
