"""ResNet-18/34 for small images, the CIFAR variant (He et al. 2016, as in kuangliu/pytorch-cifar).

Unlike the ImageNet ResNet, the stem is one 3×3 stride-1 conv with no max-pool, so a 32×32 input keeps
32×32 feature maps in the first stage and 4×4 in the last. Global average pooling makes any input size
work (28×28 Fashion-MNIST gives 4×4 too). resnet18 has 11,173,962 parameters for 10 classes.
"""
from __future__ import annotations

from torch import Tensor, nn

from cifarlab.models.norm import check_factory_args, maybe_dropout, norm_layer
from cifarlab.models.registry import register_model


class BasicBlock(nn.Module):
    """Two 3×3 convs with a residual: (N, C_in, H, W) -> (N, C_out, H/stride, W/stride)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(norm, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm_layer(norm, out_channels)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            # Projection shortcut (option B of He et al.) where the shape changes.
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                norm_layer(norm, out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """(N, in_channels, H, W) -> logits (N, num_classes); four stages of widths 64, 128, 256, 512."""

    def __init__(self, blocks_per_stage: list[int], num_classes: int, in_channels: int, norm: str, dropout: float):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = norm_layer(norm, 64)
        self.relu = nn.ReLU()
        stages, width_in = [], 64
        for stage, num_blocks in enumerate(blocks_per_stage):
            width = 64 * 2**stage
            blocks = []
            for block in range(num_blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(BasicBlock(width_in, width, stride, norm))
                width_in = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = maybe_dropout(dropout)
        self.fc = nn.Linear(width_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.pool(x).flatten(1)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.fc(x)


@register_model("resnet18", classifier="fc")
def resnet18(num_classes: int = 10, in_channels: int = 3, norm: str = "batch", dropout: float = 0.0,
             **options) -> nn.Module:
    """CIFAR ResNet-18, BasicBlocks [2, 2, 2, 2]; takes no options."""
    check_factory_args("resnet18", norm, dropout, options)
    return ResNet([2, 2, 2, 2], num_classes, in_channels, norm, dropout)


@register_model("resnet34", classifier="fc")
def resnet34(num_classes: int = 10, in_channels: int = 3, norm: str = "batch", dropout: float = 0.0,
             **options) -> nn.Module:
    """CIFAR ResNet-34, BasicBlocks [3, 4, 6, 3]; takes no options."""
    check_factory_args("resnet34", norm, dropout, options)
    return ResNet([3, 4, 6, 3], num_classes, in_channels, norm, dropout)
