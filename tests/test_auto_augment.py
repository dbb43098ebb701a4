"""TrivialAugment, RandAugment and random erasing on whole batches: each colour op against PIL's own
(ImageOps / ImageEnhance, the reference torchvision follows), the geometric ones by where pixels land, the
policies' op choice uniform, seeded, no host sync, and wired into the config and the loader's augment."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from cifarlab.config import AugmentConfig
from cifarlab.data import auto_augment as AA
from cifarlab.data.augment import build_augment
from cifarlab.data.erasing import random_erasing
from cifarlab.errors import UserError
from cifarlab.trainer.syncs import SyncCounter


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def pictures(n=6, size=16, seed=3):
    """uint8 (n, 3, size, size) with structure (gradients, a block) so every op has something to change."""
    g = gen(seed)
    base = torch.randint(40, 200, (n, 3, 1, 1), generator=g).float()
    ramp = torch.linspace(-40, 40, size)[None, None, None, :]
    images = (base + ramp + torch.randint(-15, 16, (n, 3, size, size), generator=g)).clamp(0, 255)
    images[:, :, 4:9, 4:9] = 250
    return images.round().to(torch.uint8)


def apply(op: str, images_u8: torch.Tensor, strength: float, sign: float = 1.0) -> torch.Tensor:
    """One op on every image at `strength` (a fraction of TrivialAugment's range) with `sign`, as 0..255 values."""
    import unittest.mock

    n = images_u8.shape[0]
    ops, strengths = torch.full((n,), AA.OPS.index(op)), torch.full((n,), strength)
    x = images_u8.float() / 255
    # The layer's one random draw is the sign (rand < 0.5: negative); fixed here.
    with unittest.mock.patch.object(torch, "rand", lambda count, **kw: torch.full((count,), 0.0 if sign < 0 else 0.9)):
        out = AA._apply_layer(x, gen(), ops, strengths, AA.trivial_space(x.shape[-1]))
    return (out * 255).round()


def pil(images_u8: torch.Tensor, transform) -> torch.Tensor:
    out = [np.asarray(transform(Image.fromarray(image.permute(1, 2, 0).numpy()))) for image in images_u8]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("op, strength, reference, tolerance", [
    ("equalize", 0.0, ImageOps.equalize, 0),
    ("autocontrast", 0.0, ImageOps.autocontrast, 1),
    ("posterize", 1.0, lambda im: ImageOps.posterize(im, 2), 0),  # TrivialAugment's most: 2 bits
    ("posterize", 0.5, lambda im: ImageOps.posterize(im, 5), 0),
    ("solarize", 0.4, lambda im: ImageOps.solarize(im, 153), 0),  # threshold 1 - 0.4 = 0.6 = 153/255
    ("brightness", 0.5, lambda im: ImageEnhance.Brightness(im).enhance(1 + 0.5 * 0.99), 1),
    ("color", 0.5, lambda im: ImageEnhance.Color(im).enhance(1 + 0.5 * 0.99), 1),
    ("sharpness", 0.8, lambda im: ImageEnhance.Sharpness(im).enhance(1 + 0.8 * 0.99), 1),
    ("contrast", 0.5, lambda im: ImageEnhance.Contrast(im).enhance(1 + 0.5 * 0.99), 2),  # PIL rounds its mean
])
def test_each_colour_op_matches_pil(op, strength, reference, tolerance):
    images = pictures(size=32)  # 1,024 pixels a channel: equalize leaves a 256-pixel one as it is
    ours = apply(op, images, strength)
    diff = (ours - pil(images, reference)).abs().max().item()
    assert diff <= tolerance, (op, diff)
    assert not torch.equal(ours, images.float())


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_translate_moves_every_pixel_by_its_magnitude_and_fills_with_zero(sign):
    images = pictures(size=32)
    shifted = apply("translate_x", images, 4 / 32, sign)  # TrivialAugment's range is 32 px: 4 px
    step = -4 if sign > 0 else 4  # affine_grid maps output to input: +shift reads from the right
    expected = torch.roll(images.float(), step, dims=3)
    if step > 0:
        expected[..., :step] = 0
    else:
        expected[..., step:] = 0
    assert torch.equal(shifted, expected)


def test_rotate_by_a_quarter_turn_is_a_transpose_and_flip():
    images = pictures(size=16)
    turned = apply("rotate", images, 90 / 135)  # TrivialAugment's range is 135°
    candidates = (images.float().rot90(1, (2, 3)), images.float().rot90(-1, (2, 3)))
    assert any(torch.equal(turned, c) for c in candidates)


def test_each_image_draws_its_own_op_uniformly_and_unchosen_images_are_left_alone():
    n = 2800
    g = gen(5)
    ops = AA._draw_ops(n, g, torch.device("cpu"), 1.0)
    counts = torch.bincount(ops, minlength=len(AA.OPS))
    assert counts.min() > 150 and counts.max() < 250, counts  # 200 expected each of 14
    images = torch.rand(64, 3, 16, 16, generator=gen(1))
    out = AA.trivial_augment(images, gen(2), p=0.3)
    untouched = (out == images).flatten(1).all(1)
    assert 0.55 < untouched.float().mean() < 0.95  # 70% unchosen, plus a few identity draws
    assert torch.equal(out, AA.trivial_augment(images, gen(2), p=0.3))  # seeded
    assert torch.equal(AA.rand_augment(images, gen(2), p=0.0), images)


@pytest.mark.parametrize("name", ["trivial", "rand", "erase"])
def test_ops_keep_range_shape_and_make_no_host_sync(name):
    section = {"trivial": {"trivialaugment": {}}, "rand": {"randaugment": {"num_ops": 3}},
               "erase": {"erase": {"p": 1.0}}}[name]
    aug = build_augment(AugmentConfig.model_validate(section), image_size=16, channels=3)
    images = torch.rand(32, 3, 16, 16, generator=gen(1))
    AA._smooth_kernel.cache_clear()
    AA._border.cache_clear()
    with SyncCounter() as syncs:
        out = aug(images, gen())
    assert syncs.total == 0, syncs.report()
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, images) and len(aug.describe()) == 1


def test_random_erasing_blanks_one_rectangle_of_the_asked_area_per_image():
    images = torch.full((400, 1, 20, 20), 0.5)
    out = random_erasing(images, gen(), p=1.0, scale=(0.1, 0.2), ratio=(1.0, 1.0), value=0.0)
    erased = (out == 0).flatten(1)
    area = erased.float().mean(1)
    assert area.min() >= 0.08 and area.max() <= 0.23  # sides rounded to whole pixels
    rows, cols = (out == 0).any(3).squeeze(1), (out == 0).any(2).squeeze(1)
    assert torch.equal(erased.sum(1), rows.sum(1) * cols.sum(1))  # one filled rectangle
    none = random_erasing(images, gen(), p=0.0)
    assert torch.equal(none, images)


def test_config_refuses_two_policies_and_an_out_of_range_magnitude():
    from cifarlab.config import load_config

    with pytest.raises(UserError, match="randaugment and augment.trivialaugment"):
        load_config("smoke", ["augment.randaugment={}", "augment.trivialaugment={}"])
    with pytest.raises(UserError, match=r"magnitude must be in 0..30"):
        load_config("smoke", ["augment.randaugment={magnitude: 31}"])
    with pytest.raises(UserError, match=r"erase.scale must be \[least, most\]"):
        load_config("smoke", ["augment.erase={scale: [0.5, 0.1]}"])
