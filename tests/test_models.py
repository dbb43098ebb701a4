"""Every registered model: shapes, gradients, determinism; plus each model's own promises."""
import re

import pytest
import torch
from torch import nn

from cifarlab.errors import UserError
from cifarlab.models.norm import norm_layer
from cifarlab.models.registry import create_model, list_models

INPUTS = [(3, 32), (1, 28)]  # CIFAR, Fashion-MNIST
NUM_CLASSES = 7




def images(channels: int, size: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(0))


def test_registry_lists_the_models():
    assert {"resnet18", "resnet34", "custom_resnet", "fastnet"} <= set(list_models())


@pytest.mark.parametrize("channels, size", INPUTS)
@pytest.mark.parametrize("name", list_models())
def test_forward_backward_and_eval_determinism(name, channels, size):
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES, in_channels=channels)
    x = images(channels, size)
    logits = model(x)
    assert logits.shape == (2, NUM_CLASSES)
    logits.logsumexp(1).sum().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert trainable and not missing
    assert any(p.grad.abs().sum() > 0 for _, p in trainable)
    model.eval()
    with torch.inference_mode():
        assert torch.equal(model(x[:1]), model(x[:1]))


@pytest.mark.parametrize("norm", ["batch", "group", "layer", "instance"])
@pytest.mark.parametrize("name", ["resnet18", "custom_resnet"])
def test_norm_choice_replaces_every_batchnorm(name, norm):
    model = create_model(name, norm=norm)
    has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert has_batchnorm == (norm == "batch")
    assert model(images(3, 16)).shape == (2, 10)  # small images keep this fast; any size >= 8 works


@pytest.mark.parametrize("kind, channels, groups", [
    ("group", 64, 32), ("group", 48, 24), ("group", 24, 24), ("group", 3, 3), ("layer", 128, 1), ("instance", 16, 16),
])
def test_norm_layer_groups(kind, channels, groups):
    layer = norm_layer(kind, channels)
    assert isinstance(layer, nn.GroupNorm) and layer.num_groups == groups and layer.num_channels == channels


def test_layer_norm_normalises_each_image_over_chw():
    layer = norm_layer("layer", 8)
    out = layer(torch.randn(2, 8, 5, 5) * 3 + 1)
    assert torch.allclose(out.mean((1, 2, 3)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(out.var((1, 2, 3), unbiased=False), torch.ones(2), atol=1e-3)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_exact_parameter_counts():
    assert count(create_model("resnet18")) == 11_173_962  # kuangliu's CIFAR ResNet-18
    assert count(create_model("custom_resnet")) == 6_573_130  # the course's torchinfo table


def test_custom_resnet_layer_order_matches_the_reference_table():
    kinds = [type(m).__name__ for m in create_model("custom_resnet").modules()
             if not isinstance(m, nn.Sequential) and len(list(m.children())) == 0]
    block = ["Conv2d", "BatchNorm2d", "ReLU"]
    pooled = ["Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"]
    assert kinds == block + pooled + block * 2 + pooled + pooled + block * 2 + ["AdaptiveMaxPool2d", "Linear"]


def test_dropout_sits_before_the_classifier():
    model = create_model("custom_resnet", dropout=0.5)
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == 0.5
    assert list(dict(model.named_children()))[-2:] == ["dropout", "fc"]
    model.eval()  # dropout off: deterministic
    x = images(3, 16, n=1)
    assert torch.equal(model(x), model(x))
    assert create_model("custom_resnet").dropout is None


def test_fastnet_whitening_is_frozen_and_whitens():
    model = create_model("fastnet")
    whiten = model.whiten
    assert whiten.out_channels == 24 and whiten.kernel_size == (2, 2) and whiten.padding == (0, 0)
    assert not whiten.weight.requires_grad
    batchnorms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert batchnorms and all(not m.weight.requires_grad and torch.all(m.weight == 1) for m in batchnorms)
    assert all(m.eps == 1e-12 and m.momentum == pytest.approx(0.4) for m in batchnorms)
    # Correlated pixels: neighbours and channels share a component, as in real images.
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 1, 17, 17, generator=g)
    smooth = (base[..., 1:, 1:] + base[..., :-1, :-1]) / 2
    offsets = torch.tensor([0.3, -0.2, 0.1]).view(1, 3, 1, 1)
    pixels = 0.8 * smooth + 0.5 * torch.randn(64, 3, 16, 16, generator=g) + offsets
    model.init_whitening(pixels)
    with torch.no_grad():
        out = whiten(pixels) - whiten.bias.view(1, -1, 1, 1)
    flat = out.transpose(0, 1).flatten(1)  # (24, N*H*W)
    half = flat[:12] - flat[:12].mean(1, keepdim=True)
    covariance = half @ half.T / half.shape[1]
    assert torch.allclose(covariance, torch.eye(12), atol=0.02)
    assert torch.allclose(flat[12:], -flat[:12], atol=1e-5)  # the negated filters


def test_fastnet_widths_option():
    model = create_model("fastnet", widths=[16, 32, 32], num_classes=5)
    assert model.fc.in_features == 32 and model.fc.bias is None
    assert model(images(3, 32)).shape == (2, 5)
    with pytest.raises(UserError, match="widths"):
        create_model("fastnet", widths=[16, 32])
    with pytest.raises(UserError, match=r"widths must be 3 whole numbers in 1\.\.4096"):  # refused, not allocated
        create_model("fastnet", widths=[100_000, 2, 2])


def test_convnet_widths_option_sets_each_stage():
    """`widths` gives each stage its own channels (a narrow start on the 28x28 maps, a wide end); `width` alone
    is the same network as widths (w, 2w, 4w, 8w), parameter for parameter."""
    model = create_model("convnet", num_classes=10, in_channels=1, widths=[4, 6, 10, 24])
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 6, 6, 6, 10, 24, 24, 24]
    assert model.classifier.in_features == 24 and model(images(1, 28)).shape == (2, 10)
    plain, spelled = (create_model("convnet", num_classes=10, in_channels=1, **options)
                      for options in ({"width": 4}, {"widths": [4, 8, 16, 32]}))
    assert [p.shape for p in plain.state_dict().values()] == [p.shape for p in spelled.state_dict().values()]
    for bad, said in (([4, 8, 16], "4 whole numbers in 1..2048"), ([4, 8, 0, 32], "4 whole numbers"),
                      ([4, 8, 16, 4096], "got [4, 8, 16, 4096]"),  # refused, not allocated
                      ([4, 8.5, 16, 32], "a list of whole numbers"), ([4, True, 16, 32], "a list of whole numbers")):
        with pytest.raises(UserError, match=re.escape(said)):
            create_model("convnet", num_classes=10, widths=bad)


@pytest.mark.parametrize("name", list_models())
def test_unknown_option_names_it(name):
    with pytest.raises(UserError, match="depht"):
        create_model(name, depht=3)


def test_unknown_model_and_norm_are_user_errors():
    with pytest.raises(UserError, match="resnet19"):
        create_model("resnet19")
    with pytest.raises(UserError, match="model.norm"):
        create_model("resnet18", norm="batchnorm")


def test_convnet_fp32_first_runs_only_the_first_convolution_in_float32_under_autocast():
    """`fp32_first`: the first convolution's output is float32 inside a bf16 autocast and the next one's bf16;
    the parameters (so checkpoints) are the default's, and without autocast the forward is the default's."""
    torch.manual_seed(0)
    plain = create_model("convnet", num_classes=10, in_channels=1, width=4)
    first = create_model("convnet", num_classes=10, in_channels=1, width=4, fp32_first=True)
    first.load_state_dict(plain.state_dict())
    dtypes = {}
    for name in ("features.0.0", "features.1.0"):
        first.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: dtypes.__setitem__(name, o.dtype))
    x = torch.randn(4, 1, 28, 28)
    plain.eval(), first.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first(x).float().sum().backward()
    assert dtypes == {"features.0.0": torch.float32, "features.1.0": torch.bfloat16}
    assert first.features[0][0].weight.grad is not None and first.features[0][0].weight.grad.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(first(x), plain(x))
    with pytest.raises(UserError, match="fp32_first"):
        create_model("convnet", num_classes=10, fp32_first="yes")
