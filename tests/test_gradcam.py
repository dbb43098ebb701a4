import functools

import pytest
import torch
from torch import nn

from cifarlab.analysis.gradcam import default_target_layer, gradcam
from cifarlab.errors import UserError

METHODS = ["gradcam", "gradcam++"]




class QuadrantHead(nn.Module):
    """Class c's score is the mean of feature channel c over the top-left quadrant only."""

    def forward(self, features):
        _, _, h, w = features.shape
        return features[:, :, : h // 2, : w // 2].mean(dim=(2, 3))


def bar_detector_model():
    """Fixed convolutions: channel 0 fires on vertical bars, channel 1 on horizontal bars."""
    conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    vertical = torch.tensor([[-1.0, 2.0, -1.0]] * 3)
    with torch.no_grad():
        conv.weight.copy_(torch.stack([vertical, vertical.T]).unsqueeze(1))
    return nn.Sequential(nn.Sequential(conv, nn.ReLU()), QuadrantHead())


def bars_image(top_left: str) -> torch.Tensor:
    """16x16: a bar of one orientation in the top-left quadrant, the other orientation bottom-right."""
    image = torch.zeros(1, 16, 16)
    vertical, horizontal = (slice(2, 7), 4), (12, slice(9, 14))
    first, second = (vertical, horizontal) if top_left == "vertical" else ((4, slice(2, 7)), (slice(9, 14), 12))
    image[(0, *first)] = 1.0
    image[(0, *second)] = 1.0
    return image


@pytest.mark.parametrize("method", METHODS)
def test_map_highlights_the_region_the_decision_reads(method):
    model = bar_detector_model()
    # One batch, two images, two different targets: class 0 (vertical) and class 1 (horizontal), each
    # decided by the top-left quadrant while the other orientation sits bottom-right as a distractor.
    inputs = torch.stack([bars_image("vertical"), bars_image("horizontal")])
    maps = gradcam(model, inputs, torch.tensor([0, 1]), layer="0", method=method)
    assert maps.shape == (2, 16, 16)
    assert maps.min() >= 0 and maps.max() <= 1
    for heat in maps:
        row, col = divmod(int(heat.argmax()), 16)
        assert row < 8 and col < 8
        # Grad-CAM weights whole channels, so the distractor's bar ends (which the detector partly
        # answers) keep a little heat; most of it must still be where the decision is read.
        assert heat[:8, :8].sum() > 0.75 * heat.sum()


def bar_images(n, gen):
    """16x16 noise; class 1 adds a horizontal and class 2 a vertical 5-px bar anywhere, class 0 none.
    The empty class makes both bar classes need positive evidence: with two classes a net may score one
    class only by the absence of the other's feature, and its map then rightly shows background."""
    images = 0.15 * torch.randn(n, 1, 16, 16, generator=gen)
    labels = torch.randint(0, 3, (n,), generator=gen)
    corners = torch.randint(1, 10, (n, 2), generator=gen)
    for image, label, (r, c) in zip(images, labels.tolist(), corners.tolist()):
        if label == 1:
            image[0, r + 2, c:c + 5] += 1.0
        elif label == 2:
            image[0, r:r + 5, c + 2] += 1.0
    return images, labels, corners


def bar_classifier():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )


@functools.lru_cache(maxsize=1)
def _trained_state(seed=0):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = bar_classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(60):
        images, labels, _ = bar_images(64, gen)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return model.state_dict()


def trained_bar_classifier(seed=0):
    """Trained once per session; each test gets a fresh copy."""
    model = bar_classifier()
    model.load_state_dict(_trained_state(seed))
    return model


@pytest.mark.parametrize("method", METHODS)
def test_trained_network_map_peaks_on_the_object(method):
    model = trained_bar_classifier()
    images, labels, corners = bar_images(48, torch.Generator().manual_seed(123))
    model.eval()
    with torch.no_grad():
        assert (model(images).argmax(1) == labels).float().mean() > 0.9
    model.train()
    has_bar = labels > 0
    maps = gradcam(model, images[has_bar], labels[has_bar], method=method)
    hits = 0
    for heat, (r, c) in zip(maps, corners[has_bar].tolist()):
        row, col = divmod(int(heat.argmax()), 16)
        hits += (r - 1 <= row <= r + 5) and (c - 1 <= col <= c + 5)  # the bar's 5x5 box, 1 px margin
    assert hits >= 0.9 * len(maps)
    assert model.training and all(m.training for m in model.modules())


def test_batched_equals_one_image_at_a_time_and_leaves_no_trace():
    model = trained_bar_classifier()
    images, labels, _ = bar_images(6, torch.Generator().manual_seed(1))
    model.train()
    nn.functional.cross_entropy(model(images), labels).backward()  # grads that must stay as they are
    model[1].eval()  # a per-module mode to keep
    modes = [m.training for m in model.modules()]
    grads = [p.grad.clone() for p in model.parameters()]
    batched = gradcam(model, images, labels, layer="3")
    single = torch.cat([gradcam(model, images[i:i + 1], labels[i:i + 1], layer="3") for i in range(6)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


def test_zero_map_stays_zero():
    model = bar_detector_model()
    maps = gradcam(model, torch.zeros(2, 1, 16, 16), torch.tensor([0, 1]), layer="0", method="gradcam++")
    assert torch.equal(maps, torch.zeros(2, 16, 16))


class Block(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return x + self.relu(self.conv(x))


def tiny_resnet():
    return nn.Sequential(*[
        nn.Conv2d(3, 8, 3, padding=1),  # 0: 16x16
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.MaxPool2d(2), Block(8)),  # 1: 8x8
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.MaxPool2d(2), Block(8)),  # 2: 4x4, the last >= 4x4
        nn.MaxPool2d(2),  # 3: 2x2
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    ])


def test_default_target_layer_is_the_last_stage_still_at_least_4x4():
    model = tiny_resnet().train()
    assert default_target_layer(model, (1, 3, 16, 16)) == "2"
    assert default_target_layer(model, (1, 3, 32, 32)) == "3"  # at 32 px the final pool still gives 4x4
    assert model.training and not any(m._forward_hooks for m in model.modules())
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    assert default_target_layer(plain, (1, 3, 8, 8)) == "1"
    with pytest.raises(UserError, match="at least 4x4"):
        default_target_layer(plain, (1, 3, 5, 5))
    maps = gradcam(model, torch.randn(3, 3, 16, 16), torch.tensor([1, 2, 3]))
    assert maps.shape == (3, 16, 16)


def test_unknown_layer_names_valid_ones():
    model = tiny_resnet()
    with pytest.raises(UserError, match=r"unknown Grad-CAM layer 'layer4'.*valid names include: .*2\.0"):
        gradcam(model, torch.randn(1, 3, 16, 16), torch.tensor([0]), layer="layer4")
    assert not any(m._forward_hooks for m in model.modules())
