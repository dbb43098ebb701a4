"""Batched augmentation ops: shapes kept, seeded, and each op doing exactly what it claims."""
import math

import pytest
import torch

from cifarlab.config import AugmentConfig, CropConfig, CutoutConfig, FlipConfig, RotateConfig
from cifarlab.data import augment as A
from cifarlab.errors import UserError
from cifarlab.trainer.syncs import SyncCounter

N, C, S = 8, 3, 16




def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(n: int = N, channels: int = C, size: int = S) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=gen(123))


RANDOM_OPS = {
    "crop_zero": lambda x, g: A.random_crop(x, g, padding=4),
    "crop_reflect": lambda x, g: A.random_crop(x, g, padding=4, pad_mode="reflect"),
    "crop_constant": lambda x, g: A.random_crop(x, g, padding=4, pad_mode="constant", fill=0.5),
    "flip": lambda x, g: A.horizontal_flip(x, g),
    "cutout": lambda x, g: A.cutout(x, g, holes=2, size=5),
    "rotate": lambda x, g: A.rotate(x, g, degrees=30),
}


@pytest.mark.parametrize("name", RANDOM_OPS)
def test_op_keeps_shape_dtype_device_and_is_seeded(name):
    op, images = RANDOM_OPS[name], batch()
    out = op(images, gen(1))
    assert out.shape == images.shape and out.dtype == images.dtype and out.device == images.device
    assert torch.equal(out, op(images, gen(1)))
    assert not torch.equal(out, op(images, gen(2)))


def single_pixel(n: int, size: int) -> torch.Tensor:
    images = torch.zeros(n, 1, size, size)
    images[:, :, size // 2, size // 2 + 1] = 1.0
    return images


def bright_position(images: torch.Tensor) -> torch.Tensor:
    """(N, 2) row, column of each image's brightest pixel."""
    flat = images[:, 0].flatten(1).argmax(1)
    return torch.stack([flat // images.shape[3], flat % images.shape[3]], 1)


@pytest.mark.parametrize("pad_mode", ["zero", "reflect", "constant"])
def test_crop_moves_content_by_at_most_padding(pad_mode):
    images, padding = single_pixel(64, 16), 3
    out = A.random_crop(images, gen(), padding, pad_mode=pad_mode)
    shift = bright_position(out) - bright_position(images)
    assert shift.abs().max() <= padding
    assert len(set(map(tuple, shift.tolist()))) > 10  # offsets really vary
    assert torch.equal(out.amax((1, 2, 3)), torch.ones(64))  # the pixel stays inside (never cropped out here)


def test_crop_with_p0_is_identity():
    images = batch()
    assert torch.equal(A.random_crop(images, gen(), 4, pad_mode="reflect", p=0.0), images)


def test_crop_padding_fill_by_mode():
    images = torch.full((256, 1, 8, 8), 0.7)
    zero = A.random_crop(images, gen(), 2, pad_mode="zero")
    constant = A.random_crop(images, gen(), 2, pad_mode="constant", fill=0.25)
    reflect = A.random_crop(images, gen(), 2, pad_mode="reflect")
    assert torch.equal(zero.unique(), torch.tensor([0.0, 0.7]))
    assert torch.equal(constant.unique(), torch.tensor([0.25, 0.7]))
    assert torch.equal(reflect, images)  # reflecting a constant image only ever shows the image


def test_flip_mirrors_exactly():
    images = batch(64)
    assert torch.equal(A.horizontal_flip(images, gen(), p=1.0), images.flip(3))
    assert torch.equal(A.horizontal_flip(images, gen(), p=0.0), images)
    out = A.horizontal_flip(images, gen(), p=0.5)
    flipped = (out == images.flip(3)).flatten(1).all(1)
    kept = (out == images).flatten(1).all(1)
    assert torch.all(flipped | kept)
    assert 16 <= int(flipped.sum()) <= 48


def test_alternating_flip_alternates_per_image():
    images, indices = batch(64), torch.arange(1000, 1064)
    was_flipped = []
    for epoch in range(4):
        out = A.alternating_flip(images, indices, epoch, seed=7)
        was_flipped.append((out == images.flip(3)).flatten(1).all(1))
        assert torch.all(was_flipped[-1] | (out == images).flatten(1).all(1))
    for before, after in zip(was_flipped, was_flipped[1:]):
        assert torch.equal(before, ~after)
    assert 16 <= int(was_flipped[0].sum()) <= 48
    other_seed = A.alternating_flip(images, indices, 0, seed=8)
    assert not torch.equal((other_seed == images.flip(3)).flatten(1).all(1), was_flipped[0])


def test_alternating_flip_is_a_function_of_the_index_not_the_batch():
    images = batch(8)
    indices = torch.arange(8)
    out = A.alternating_flip(images, indices, 3, seed=0)
    perm = torch.randperm(8, generator=gen())
    assert torch.equal(A.alternating_flip(images[perm], indices[perm], 3, seed=0), out[perm])


@pytest.mark.parametrize("size", [1, 4, 7])
def test_cutout_blanks_one_square(size):
    images = torch.rand(128, 2, 20, 20, generator=gen(5)) + 1.0  # never equal to the fill
    out = A.cutout(images, gen(), holes=1, size=size, fill=0.0)
    blanked = out == 0.0
    assert torch.equal(blanked[:, 0], blanked[:, 1])  # all channels
    assert torch.equal(out[~blanked], images[~blanked])  # the rest untouched
    counts = blanked[:, 0].flatten(1).sum(1)
    assert counts.max() <= size * size and counts.min() >= 1
    # Each hole is a rectangle: a full size×size square unless clipped by the border it touches.
    rows, cols = blanked[:, 0].any(2), blanked[:, 0].any(1)  # (N, H), (N, W)
    height, width = rows.sum(1), cols.sum(1)
    assert torch.equal(counts, height * width)
    assert torch.all((height == size) | rows[:, 0] | rows[:, -1])
    assert torch.all((width == size) | cols[:, 0] | cols[:, -1])
    inside = ~(rows[:, 0] | rows[:, -1] | cols[:, 0] | cols[:, -1])
    assert inside.sum() > 32 and torch.all(counts[inside] == size * size)
    assert size == 1 or counts.min() < size * size  # some holes are clipped at the border


def test_cutout_p0_and_multiple_holes():
    images = batch() + 1.0
    assert torch.equal(A.cutout(images, gen(), holes=3, size=4, p=0.0), images)
    counts = (A.cutout(images, gen(), holes=3, size=4, fill=0.0) == 0)[:, 0].flatten(1).sum(1)
    assert counts.max() <= 3 * 16 and counts.min() >= 1


def test_rotate_p0_is_identity_and_fill_used():
    images = batch()
    assert torch.equal(A.rotate(images, gen(), degrees=5, p=0.0), images)
    out = A.rotate(torch.zeros(4, 1, 16, 16) + 0.5, gen(), degrees=45, fill=1.0)
    corners = out[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert torch.all(corners > 0.5)  # corners rotated in from outside take the fill
    assert torch.allclose(out[:, 0, 6:10, 6:10], torch.tensor(0.5))  # the centre stays


def test_rotate_preserves_a_centred_symmetric_blob():
    size = 31
    coords = torch.arange(size) - (size - 1) / 2
    radius2 = coords[:, None] ** 2 + coords[None, :] ** 2
    blob = torch.exp(-radius2 / (2 * 4.0**2)).expand(6, 1, size, size)
    out = A.rotate(blob, gen(), degrees=180)
    assert (out - blob).abs().max() < 0.02


def test_rotate_moves_a_pixel_by_the_expected_angle():
    size = 21
    images = torch.zeros(64, 1, size, size)
    images[:, 0, size // 2, size // 2 + 6] = 1.0  # 6 px right of the centre
    out = A.rotate(images, gen(), degrees=40)
    ys, xs = torch.meshgrid(torch.arange(size) - size // 2, torch.arange(size) - size // 2, indexing="ij")
    mass = out[:, 0].flatten(1).sum(1)
    cy = (out[:, 0] * ys).flatten(1).sum(1) / mass
    cx = (out[:, 0] * xs).flatten(1).sum(1) / mass
    radius = (cx**2 + cy**2).sqrt()
    angle = torch.atan2(cy, cx).abs()
    assert torch.allclose(radius, torch.tensor(6.0), atol=0.6)  # moves on a circle, not out of it
    assert angle.max() <= math.radians(40) + 0.1 and angle.max() > math.radians(20)


def test_build_augment_applies_ops_in_order_and_describes_them():
    cfg = AugmentConfig(crop=CropConfig(padding=2), flip=FlipConfig(), rotate=RotateConfig(degrees=10),
                        cutout=CutoutConfig(size=4))
    aug = A.build_augment(cfg, image_size=S, channels=C)
    lines = aug.describe()
    assert len(lines) == 4
    for line, word in zip(lines, ["crop", "flip", "rotation", "cutout"]):
        assert word in line
    images = batch()
    out = aug(images, gen(3))
    assert out.shape == images.shape and torch.equal(out, aug(images, gen(3)))
    g = gen(3)  # the same draws by hand, in the documented order
    expected = A.random_crop(images, g, 2)
    expected = A.horizontal_flip(expected, g, 0.5)
    expected = A.rotate(expected, g, 10.0)
    expected = A.cutout(expected, g, 1, 4)
    assert torch.equal(out, expected)


FUSED_CASES = {
    "zero-crop+flip": AugmentConfig(crop=CropConfig(padding=3), flip=FlipConfig()),
    "reflect-crop-p+flip-p": AugmentConfig(crop=CropConfig(padding=2, pad_mode="reflect", p=0.5),
                                           flip=FlipConfig(p=0.3)),
    "constant-crop+alternate": AugmentConfig(crop=CropConfig(padding=2, pad_mode="constant", fill=0.25),
                                             flip=FlipConfig(alternate=True)),
    "crop-only": AugmentConfig(crop=CropConfig(padding=1)),
    "flip-only": AugmentConfig(flip=FlipConfig(p=0.7)),
    "alternate+cutout-holes-p": AugmentConfig(flip=FlipConfig(alternate=True),
                                              cutout=CutoutConfig(holes=3, size=5, p=0.5, fill=0.5)),
    "all-p": AugmentConfig(crop=CropConfig(padding=4, p=0.5), flip=FlipConfig(), cutout=CutoutConfig(size=6, p=0.5),
                           rotate=RotateConfig(degrees=20, fill=0.5, p=0.5)),
}


def sequential(cfg: AugmentConfig, images, g, indices, epoch, seed):
    """The documented meaning of BatchAugment: each op in turn with the same generator."""
    if cfg.crop:
        images = A.random_crop(images, g, cfg.crop.padding, cfg.crop.pad_mode, cfg.crop.fill, cfg.crop.p)
    if cfg.flip:
        images = (A.alternating_flip(images, indices, epoch, seed) if cfg.flip.alternate
                  else A.horizontal_flip(images, g, cfg.flip.p))
    if cfg.rotate:
        images = A.rotate(images, g, cfg.rotate.degrees, cfg.rotate.fill, cfg.rotate.p)
    if cfg.cutout:
        images = A.cutout(images, g, cfg.cutout.holes, cfg.cutout.size, cfg.cutout.fill, cfg.cutout.p)
    return images


@pytest.mark.parametrize("name", FUSED_CASES)
@pytest.mark.parametrize("prepared", [False, True], ids=["hashed-bits", "tabulated-bits"])
def test_fused_batch_augment_equals_the_ops_in_turn(name, prepared):
    cfg, images, indices = FUSED_CASES[name], batch(64), torch.randperm(200, generator=gen(4))[:64]
    aug = A.build_augment(cfg, image_size=S, channels=C, seed=11)
    if prepared:
        aug.prepare(200, images.device)
    for epoch in (0, 1):
        out = aug(images, gen(epoch), indices, epoch)
        assert torch.equal(out, sequential(cfg, images, gen(epoch), indices, epoch, seed=11))
        assert not torch.equal(out, images)


def test_crop_positions_are_uniform_over_the_window():
    images, padding = single_pixel(1800, 16), 1
    shift = bright_position(A.random_crop(images, gen(), padding)) - bright_position(images)
    counts = torch.tensor([int(((shift[:, 0] == dy) & (shift[:, 1] == dx)).sum())
                           for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    assert counts.min() > 140 and counts.max() < 260, counts  # 200 expected each of the 9 positions


def test_batch_augment_makes_no_host_sync():
    cfg = FUSED_CASES["all-p"].model_copy(update={"flip": FlipConfig(alternate=True)})
    aug = A.build_augment(cfg, image_size=S, channels=C).prepare(100, torch.device("cpu"))
    images, indices = batch(32), torch.arange(32)
    for table in (A._grids, A._crop_offsets, A._hole_spans, A._rotation_basis):
        table.cache_clear()  # building the constant tables must not sync either
    with SyncCounter() as syncs:
        aug(images, gen(), indices, epoch=1)
    assert syncs.total == 0, syncs.report()


def test_build_augment_empty_is_identity():
    aug = A.build_augment(AugmentConfig(), image_size=S, channels=C)
    images = batch()
    assert aug(images, gen()) is images and aug.describe() == []


def test_build_augment_alternating_flip_needs_indices():
    aug = A.build_augment(AugmentConfig(flip=FlipConfig(alternate=True)), image_size=S, channels=C)
    images, indices = batch(), torch.arange(N)
    assert "alternating" in aug.describe()[0]
    assert torch.equal(aug(images, gen(), indices, epoch=0).flip(3), aug(images, gen(), indices, epoch=1))
    with pytest.raises(ValueError, match="indices"):
        aug(images, gen())


@pytest.mark.parametrize("cfg, key", [
    (AugmentConfig(cutout=CutoutConfig(size=40)), "augment.cutout.size must be in 1..32, got 40"),
    (AugmentConfig(crop=CropConfig(padding=32)), "augment.crop.padding must be in 0..31, got 32"),
    (AugmentConfig(flip=FlipConfig(p=0.3, alternate=True)), "augment.flip.p"),
])
def test_build_augment_rejects_bad_values_naming_the_key(cfg, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        A.build_augment(cfg, image_size=32, channels=3)


def test_build_augment_rejects_wrong_image_shape():
    aug = A.build_augment(AugmentConfig(cutout=CutoutConfig(size=4)), image_size=32, channels=3)
    with pytest.raises(ValueError, match="32"):
        aug(torch.rand(2, 1, 28, 28), gen())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", RANDOM_OPS)
def test_op_runs_on_cuda_with_a_cuda_generator(name):
    images = batch().cuda()
    g = torch.Generator(device="cuda").manual_seed(1)
    out = RANDOM_OPS[name](images, g)
    assert out.device == images.device and out.shape == images.shape
