"""The course's custom ResNet: David Page's ResNet-9 ("How to train your ResNet", 2018) as specified.

Layer order follows the reference torchinfo table (6,573,130 parameters for 10 classes, 3 channels):
prep conv 64 -> layer1 (conv 128, max-pool, BN, ReLU) + res1 -> layer2 (256) -> layer3 (512) + res3 ->
global max-pool -> linear. The reference pooled with MaxPool2d(4); we pool adaptively to 1×1, which is the
same for 32×32 inputs (4×4 maps there) and also accepts 28×28 ones (3×3 maps).
"""
from __future__ import annotations

from torch import Tensor, nn

from cifarlab.models.norm import check_factory_args, maybe_dropout, norm_layer
from cifarlab.models.registry import register_model


def conv_norm_relu(in_channels: int, out_channels: int, norm: str, pool: bool = False) -> nn.Sequential:
    """3×3 conv (no bias), [2×2 max-pool], norm, ReLU: (N, C_in, H, W) -> (N, C_out, H or H/2, ...)."""
    layers = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [norm_layer(norm, out_channels), nn.ReLU()]
    return nn.Sequential(*layers)


def residual_block(channels: int, norm: str) -> nn.Sequential:
    """(conv-norm-ReLU) × 2 at constant width; the caller adds its output to its input."""
    return nn.Sequential(*conv_norm_relu(channels, channels, norm), *conv_norm_relu(channels, channels, norm))


class CustomResNet(nn.Module):
    """(N, in_channels, H, W) -> logits (N, num_classes); H, W >= 8 (three halvings)."""

    def __init__(self, num_classes: int, in_channels: int, norm: str, dropout: float):
        super().__init__()
        self.prep = conv_norm_relu(in_channels, 64, norm)
        self.layer1 = conv_norm_relu(64, 128, norm, pool=True)
        self.res1 = residual_block(128, norm)
        self.layer2 = conv_norm_relu(128, 256, norm, pool=True)
        self.layer3 = conv_norm_relu(256, 512, norm, pool=True)
        self.res3 = residual_block(512, norm)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.dropout = maybe_dropout(dropout)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer1(self.prep(x))
        x = x + self.res1(x)
        x = self.layer3(self.layer2(x))
        x = x + self.res3(x)
        x = self.pool(x).flatten(1)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.fc(x)


@register_model("custom_resnet", classifier="fc")
def custom_resnet(num_classes: int = 10, in_channels: int = 3, norm: str = "batch", dropout: float = 0.0,
                  **options) -> nn.Module:
    """Page's ResNet-9 as the course specified it (6,573,130 parameters); takes no options."""
    check_factory_args("custom_resnet", norm, dropout, options)
    return CustomResNet(num_classes, in_channels, norm, dropout)
