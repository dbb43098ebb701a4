"""MixUp, CutMix and colour jitter: each does what it claims, on the targets too, seeded and sync-free."""
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.config import AugmentConfig, ColorConfig, CutmixConfig, MixupConfig, load_config
from cifarlab.data.augment import build_augment
from cifarlab.data.color import LUMA, color_jitter
from cifarlab.data.loader import DeviceLoader
from cifarlab.data.mix import build_mix, dominant_labels, one_hot
from cifarlab.errors import UserError
from cifarlab.trainer.metrics import StepMetrics
from cifarlab.trainer.syncs import SyncCounter

N, C, S, CLASSES = 16, 3, 12, 10


def images(low: float = 0.0, high: float = 1.0, channels: int = C) -> torch.Tensor:
    return low + (high - low) * torch.rand(N, channels, S, S, generator=torch.Generator().manual_seed(7))


def labels() -> torch.Tensor:
    return torch.arange(N) % CLASSES  # image i and its partner N-1-i never share a class


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- MixUp and CutMix

def own_weight(targets: torch.Tensor) -> torch.Tensor:
    """(N,) the weight each image's own label has in its target row."""
    return targets.gather(1, labels()[:, None])[:, 0]


def test_mixup_blends_each_image_with_its_partner_and_the_targets_alike():
    x = images()
    mix = build_mix(MixupConfig(alpha=1.0), None, CLASSES)
    mixed, targets = mix(x, labels(), random.Random(3))
    lam = own_weight(targets)
    assert torch.all(lam == lam[0]) and 0 < lam[0] < 1  # one lambda per batch
    assert torch.allclose(mixed, lam[0] * x + (1 - lam[0]) * x.flip(0), atol=1e-6)
    expected = lam[0] * one_hot(labels(), CLASSES) + (1 - lam[0]) * one_hot(labels().flip(0), CLASSES)
    assert torch.allclose(targets, expected, atol=1e-6)
    assert torch.allclose(targets.sum(1), torch.ones(N))


def test_cutmix_pastes_one_box_of_the_partner_and_weights_targets_by_area():
    x = images()
    mix = build_mix(None, CutmixConfig(alpha=1.0), CLASSES)
    for seed in range(20):
        mixed, targets = mix(x, labels(), random.Random(seed))
        from_partner = (mixed != x).any(1)  # (N, H, W): pixels taken from the partner image
        box = from_partner[0]
        assert torch.equal(from_partner, box.expand_as(from_partner))  # the same box in every image
        rows, cols = box.any(1).nonzero()[:, 0], box.any(0).nonzero()[:, 0]
        if len(rows):  # a rectangle: every pixel inside its row and column span
            assert box[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
            assert box.sum() == len(rows) * len(cols)
        assert torch.equal(mixed[:, :, box], x.flip(0)[:, :, box])
        assert torch.allclose(own_weight(targets), torch.full((N,), 1 - box.sum().item() / (S * S)))


def test_mixed_targets_give_timms_soft_target_loss_with_label_smoothing():
    """timm: mixup_target (smoothed one-hots, then mixed) fed to SoftTargetCrossEntropy, written out here."""
    smoothing, x = 0.1, images()
    _, targets = build_mix(MixupConfig(alpha=0.4), None, CLASSES)(x, labels(), random.Random(1))
    lam = own_weight(targets)[0]
    logits = torch.randn(N, CLASSES, generator=gen(2))
    off = smoothing / CLASSES
    smooth = lambda y: torch.full((N, CLASSES), off).scatter_(1, y[:, None], 1 - smoothing + off)  # noqa: E731
    timm_target = smooth(labels()) * lam + smooth(labels().flip(0)) * (1 - lam)
    timm_loss = torch.sum(-timm_target * F.log_softmax(logits, dim=-1), dim=-1).mean()
    ours = nn.CrossEntropyLoss(label_smoothing=smoothing)(logits, targets)
    assert torch.allclose(ours, timm_loss, atol=1e-6)
    unmixed = one_hot(labels(), CLASSES)  # an unmixed batch: the same loss as its class indices
    assert torch.allclose(nn.CrossEntropyLoss(label_smoothing=smoothing)(logits, unmixed),
                          nn.CrossEntropyLoss(label_smoothing=smoothing)(logits, labels()), atol=1e-6)


def mix_kinds(mix, batches: int = 400) -> dict[str, int]:
    """How many of `batches` seeded batches `mix` left alone, mixed up or cut and mixed."""
    x = images()
    kinds = {"mixup": 0, "cutmix": 0, "none": 0}
    for seed in range(batches):
        mixed, targets = mix(x, labels(), random.Random(seed))
        if torch.equal(mixed, x):
            kinds["none"] += 1
        elif torch.equal(mixed[:, :, 0, 0], x[:, :, 0, 0]) or torch.equal(mixed[:, :, -1, -1], x[:, :, -1, -1]):
            kinds["cutmix"] += 1  # mixup changes every pixel; a cutmix box never covers two opposite corners
        else:
            kinds["mixup"] += 1
    return kinds


def test_mixup_and_cutmix_share_the_batches_by_their_p():
    kinds = mix_kinds(build_mix(MixupConfig(p=0.3), CutmixConfig(p=0.5), CLASSES))
    # Expected 120 / 200 / 80 of 400; the bounds are over 4 binomial standard deviations wide.
    assert 80 < kinds["mixup"] < 160 and 160 < kinds["cutmix"] < 240 and 50 < kinds["none"] < 115, kinds


def test_mixup_and_cutmix_both_at_default_p_alternate_half_and_half_as_timms_switch_prob():
    cfg = load_config(None, ["augment.mixup={alpha: 1.0}", "augment.cutmix={alpha: 1.0}"])  # p=1 each
    kinds = mix_kinds(build_mix(cfg.augment.mixup, cfg.augment.cutmix, CLASSES))
    # Every batch mixed, expected 200 / 200 (timm's mix_prob=1, switch_prob=0.5); bounds over 4 sd wide.
    # "none" here is a cut whose box rounds to nothing on these 12x12 images (lam > 35/36, ~3% of cuts), so
    # cuts are counted with it; a batch left alone would be ~80 of 400 at shares 0.3 + 0.5 (test above).
    assert kinds["none"] <= 20 and 155 < kinds["mixup"] < 245 and 155 < kinds["cutmix"] + kinds["none"] < 245, kinds
    # Shares over 1 in all are scaled to add up to 1: 0.9 and 0.3 -> 3/4 mixup, 1/4 cutmix.
    kinds = mix_kinds(build_mix(MixupConfig(p=0.9, alpha=1.0), CutmixConfig(p=0.3), CLASSES))
    assert kinds["none"] <= 20 and 255 < kinds["mixup"] < 345 and 55 < kinds["cutmix"] + kinds["none"] < 145, kinds


def test_a_batch_is_mixed_the_same_from_the_same_seed_and_differently_from_another():
    mix = build_mix(MixupConfig(alpha=1.0), CutmixConfig(p=0.5), CLASSES)
    first, again, other = (mix(images(), labels(), random.Random(seed)) for seed in (5, 5, 6))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])


def test_train_accuracy_under_mixing_counts_the_dominant_label():
    targets = torch.tensor([[0.7, 0.3, 0.0], [0.2, 0.0, 0.8], [0.5, 0.5, 0.0]])
    assert dominant_labels(targets).tolist() == [0, 2, 0]  # a tie goes to the lower class index
    logits = torch.tensor([[2.0, 1.0, 0.0], [2.0, 0.0, 1.0], [0.0, 3.0, 0.0]])
    metrics = StepMetrics(torch.device("cpu"))
    metrics.record(torch.tensor(1.0), logits, targets, lr=0.1, step=1)
    assert metrics.read_window() == (1.0, 1 / 3)


def loader(mix, batch_size: int = 8) -> DeviceLoader:
    data = torch.randint(0, 256, (32, C, S, S), dtype=torch.uint8, generator=gen(0))
    return DeviceLoader(data, torch.arange(32) % CLASSES, batch_size=batch_size, device=torch.device("cpu"),
                        mean=(0.5,) * C, std=(0.25,) * C, train=True, mix=mix, seed=3)


def test_loader_gives_mixed_targets_rebuilt_exactly_from_any_start():
    mixing = loader(build_mix(MixupConfig(), CutmixConfig(p=0.5), CLASSES))
    batches = list(mixing.batches(epoch=1))
    assert all(y.shape == (8, CLASSES) and y.dtype == torch.float32 for _, y in batches)
    for (x, y), (x2, y2) in zip(batches[2:], mixing.batches(epoch=1, start=2)):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    plain = list(loader(None).batches(epoch=1))
    assert all(y.dtype == torch.int64 and y.dim() == 1 for _, y in plain)
    assert any(not torch.equal(x, p) for (x, _), (p, _) in zip(batches, plain))


def test_mixing_makes_no_host_sync():
    mix = build_mix(MixupConfig(), CutmixConfig(p=0.5), CLASSES)
    x, y = images(), labels()
    with SyncCounter() as syncs:
        for seed in range(8):
            mix(x, y, random.Random(seed))
    assert syncs.total == 0, syncs.report()


def test_config_checks_the_mix_sections():
    with pytest.raises(UserError, match="augment.mixup.alpha"):
        load_config(None, ["augment.mixup={alpha: 0}"])
    cfg = load_config(None, ["augment.mixup={p: 0.5}", "augment.cutmix={p: 0.5}"])
    assert cfg.augment.mixup.alpha == 0.2 and cfg.augment.cutmix.alpha == 1.0


# ---------------------------------------------------------------- colour jitter

def per_image_ratio(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (out / x).flatten(1)


def test_brightness_scales_each_image_by_one_factor_in_range():
    x = images(0.2, 0.5)  # far enough from 1 that a factor up to 1.5 does not clip
    out = color_jitter(x, gen(), brightness=0.5)
    ratio = per_image_ratio(out, x)
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-5)
    assert ratio.min() >= 0.5 - 1e-6 and ratio.max() <= 1.5 + 1e-6 and ratio[:, 0].std() > 0.05


def grey(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("nchw,c->nhw", x, torch.tensor(LUMA))


def test_contrast_scales_the_distance_from_the_mean_grey():
    x = images(0.4, 0.6)
    out = color_jitter(x, gen(), contrast=0.4)
    mean_grey = grey(x).mean((1, 2))[:, None, None, None]
    factor = ((out - mean_grey) / (x - mean_grey)).flatten(1)
    assert torch.allclose(factor, factor[:, :1].expand_as(factor), atol=1e-3)
    assert factor.min() >= 0.6 - 1e-3 and factor.max() <= 1.4 + 1e-3


def test_saturation_keeps_each_pixels_grey_and_leaves_grey_images_alone():
    x = images(0.4, 0.6)
    out = color_jitter(x, gen(), saturation=0.4)
    assert torch.allclose(grey(out), grey(x), atol=1e-3) and not torch.allclose(out, x, atol=1e-3)
    grey_images = x[:, :1].expand(-1, 3, -1, -1).contiguous()
    assert torch.allclose(color_jitter(grey_images, gen(), saturation=0.4), grey_images, atol=1e-3)


def test_color_jitter_stays_in_range_is_seeded_and_leaves_unchosen_images_bit_for_bit():
    x = images()
    jitter = dict(brightness=0.8, contrast=0.8, saturation=0.8)
    out = color_jitter(x, gen(1), **jitter)
    assert out.min() >= 0 and out.max() <= 1 and out.shape == x.shape
    assert torch.equal(out, color_jitter(x, gen(1), **jitter))
    assert not torch.equal(out, color_jitter(x, gen(2), **jitter))
    assert torch.equal(color_jitter(x, gen(1), **jitter, p=0.0), x)
    half = color_jitter(x, gen(1), **jitter, p=0.5)
    unchanged = (half == x).flatten(1).all(1)
    assert 0 < unchanged.sum() < N
    assert not (half[~unchanged] == x[~unchanged]).flatten(1).all(1).any()


def test_batch_augment_runs_color_before_cutout_and_refuses_what_cannot_work():
    cfg = AugmentConfig(color=ColorConfig(brightness=0.5, contrast=0, saturation=0))
    aug = build_augment(cfg, S, C)
    assert aug.describe() == ["colour jitter: brightness ×[0.5, 1.5], p=1"]
    assert torch.equal(aug(images(), gen(4)), color_jitter(images(), gen(4), brightness=0.5))
    with pytest.raises(UserError, match="augment.color.saturation needs RGB images, these have 2 channels"):
        build_augment(AugmentConfig(color=ColorConfig()), S, 2)
    with pytest.raises(UserError, match="augment.color needs brightness, contrast or saturation above 0"):
        build_augment(AugmentConfig(color=ColorConfig(brightness=0, contrast=0, saturation=0)), S, C)


def test_color_jitter_with_its_default_saturation_works_on_grey_images_and_leaves_saturation_out():
    """Fashion-MNIST with `augment.color={}`: the default saturation 0.4 needs no `saturation: 0` spelled out."""
    aug = build_augment(AugmentConfig(color=ColorConfig()), S, 1)
    assert aug.describe() == ["colour jitter: brightness ×[0.6, 1.4], contrast ×[0.6, 1.4], p=1"]
    x = images(0.3, 0.6, channels=1)
    assert torch.equal(aug(x, gen(4)), color_jitter(x, gen(4), brightness=0.4, contrast=0.4))
    assert torch.equal(color_jitter(x, gen(4), saturation=0.4), x)  # a grey image is its own grey
    with pytest.raises(UserError, match=r"all 0 \(saturation does nothing on grey images\)"):
        build_augment(AugmentConfig(color=ColorConfig(brightness=0, contrast=0)), S, 1)


def test_color_jitter_makes_no_host_sync():
    aug = build_augment(AugmentConfig(color=ColorConfig(p=0.5)), S, C)
    with SyncCounter() as syncs:
        aug(images(), gen(0))
    assert syncs.total == 0, syncs.report()
