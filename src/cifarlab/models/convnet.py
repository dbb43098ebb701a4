"""`convnet`: a compact residual CNN for CPU-sized runs (Fashion-MNIST in minutes, smoke tests in seconds).

custom_resnet's 6.5M parameters cost about 1 GFLOP per 32x32 image forward and backward, too much for a
2-core CPU to finish a real run in minutes; this keeps its shape (conv-pool-norm blocks with a residual
block after the first and last) at a chosen width.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from cifarlab.errors import UserError
from cifarlab.models.norm import check_factory_args, norm_layer
from cifarlab.models.registry import register_model

MAX_WIDTH = 2048  # width's 256 times 8: the widest last stage `width` alone can make


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
    """prep(a) -> [b pool + residual] -> [c pool] -> [d pool + residual] -> global max pool -> linear, where
    (a, b, c, d) = `widths`, by default (w, 2w, 4w, 8w)."""

    def __init__(self, num_classes: int, in_channels: int, norm: str, dropout: float, widths: Sequence[int],
                 fp32_first: bool = False):
        super().__init__()
        a, b, c, d = widths
        self.fp32_first = fp32_first
        self.features = nn.Sequential(
            _block(in_channels, a, norm, False),
            _block(a, b, norm, True), Residual(b, norm),
            _block(b, c, norm, True),
            _block(c, d, norm, True), Residual(d, norm),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(d, num_classes)

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
            width: int = 16, widths: Optional[Sequence[int]] = None, fp32_first: bool = False,
            **options) -> nn.Module:
    """Options: `width` (channels of the first layer; the last has 8x that), default 16; `widths` (the four
    stages' channels, prep to last, in place of `width`'s w, 2w, 4w, 8w: a narrow start on the large
    maps and a wide end on the small ones); `fp32_first` (run the first convolution in float32 when training
    under bf16/fp16 autocast), default false."""
    check_factory_args("convnet", norm, dropout, options)
    if not 1 <= width <= 256:
        raise UserError(f"model.options.width must be in 1..256, got {width}")
    if widths is None:
        widths = (width, 2 * width, 4 * width, 8 * width)
    elif not (len(widths) == 4 and all(1 <= w <= MAX_WIDTH for w in widths)):
        raise UserError(f"model.options.widths must be 4 whole numbers in 1..{MAX_WIDTH} (prep, then the three "
                        f"stages), got {list(widths)!r}")
    return ConvNet(num_classes, in_channels, norm, dropout, tuple(widths), fp32_first)
