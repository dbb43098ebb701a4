"""Arrays from Python become the same Dataset as every source; each mistake is one clear line."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _folders import fashion_test_arrays, needs_fashion
from cifarlab.data.arrays import as_dataset, dataset_from_arrays
from cifarlab.errors import UserError


@needs_fashion
def test_every_layout_and_dtype_gives_the_same_real_images():
    images, labels = fashion_test_arrays()
    x_train, y_train, x_test, y_test = images[:600], labels[:600], images[600:800], labels[600:800]
    reference = dataset_from_arrays(x_train, y_train, x_test, y_test)  # (N, H, W) grey, numpy
    assert reference.train.images.shape == (600, 1, 28, 28) and reference.image_size == 28
    assert reference.classes == tuple(str(k) for k in range(10)) and reference.in_channels == 1
    assert torch.equal(reference.train.images[:, 0], torch.from_numpy(x_train))
    assert reference.mean[0] == pytest.approx(x_train.mean() / 255, abs=1e-9)
    variants = {
        "NHWC numpy": (x_train[..., None], x_test[..., None]),
        "NCHW tensor": (torch.from_numpy(x_train)[:, None], torch.from_numpy(x_test)[:, None]),
        "float [0, 1]": (x_train[:, None] / 255.0, torch.from_numpy(x_test[:, None]).float() / 255),
    }
    for what, (train, test) in variants.items():
        got = dataset_from_arrays(train, torch.from_numpy(y_train).int(), test, y_test,
                                  classes=[f"c{k}" for k in range(10)])
        assert torch.equal(got.train.images, reference.train.images), what
        assert torch.equal(got.test.images, reference.test.images)
        assert torch.equal(got.test.labels, reference.test.labels)
        assert got.classes[3] == "c3" and got.train.labels.dtype == torch.int64


def test_rgb_channels_last_is_transposed_not_reinterpreted():
    x = np.zeros((4, 5, 5, 3), np.uint8)
    x[..., 0], x[..., 1], x[..., 2] = 10, 20, 30
    ds = dataset_from_arrays(x, [0, 1, 0, 1], x, np.array([1, 0, 1, 0]))
    assert ds.train.images.shape == (4, 3, 5, 5) and ds.train.images[:, 1].unique().tolist() == [20]
    assert ds.mean == pytest.approx((10 / 255, 20 / 255, 30 / 255))


@pytest.mark.parametrize("change, message", [
    (dict(x_train=[[1, 2]]), "x_train must be a numpy array or a torch tensor, got list"),
    (dict(x_train=np.zeros((8, 3, 6, 6), np.int32)), "x_train must be uint8 (0..255) or float (0..1), got torch.int32"),
    (dict(x_test=np.full((4, 3, 6, 6), np.nan, np.float32)), "x_test contains NaN or infinite values"),
    (dict(x_train=np.full((8, 3, 6, 6), 255.0)), "x_train float values must be in [0, 1], got 255..255"),
    (dict(x_train=np.zeros((8, 3, 6, 7), np.uint8)), "x_train images must be square (H == W), got 6x7"),
    (dict(x_train=np.zeros((8, 4, 6, 6), np.uint8)), "x_train must have 1 or 3 channels"),
    (dict(x_train=np.zeros((8, 6), np.uint8)),
     "x_train must be shaped (N, C, H, W), (N, H, W, C) or (N, H, W), got (8, 6)"),
    (dict(x_test=np.zeros((4, 1, 6, 6), np.uint8)),
     "x_train and x_test images must have the same (C, H, W), got (3, 6, 6) and (1, 6, 6)"),
    (dict(y_train=np.arange(7)), "y_train must be 1-D with one label per image (8), got shape (7,)"),
    (dict(y_train=np.zeros(8, np.float32)), "y_train must hold integer class indices, got torch.float32"),
    (dict(y_test=np.array([0, 1, 2, 3])), "labels must be in 0..2 for 3 classes, got 3"),
    (dict(y_test=np.array([0, -1, 2, 1])), "labels must be class indices >= 0, got -1"),
    (dict(classes=["a", "a", "b"]), "classes must be at least 2 distinct names, got ['a', 'a', 'b']"),
])
def test_bad_arrays_give_one_line(change, message):
    rng = np.random.default_rng(0)
    args = dict(x_train=rng.integers(0, 256, (8, 3, 6, 6), dtype=np.uint8), y_train=np.arange(8) % 3,
                x_test=rng.integers(0, 256, (4, 3, 6, 6), dtype=np.uint8), y_test=np.array([0, 1, 2, 0]),
                classes=["a", "b", "c"])
    args.update(change)
    with pytest.raises(UserError) as err:
        dataset_from_arrays(**args)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_as_dataset_accepts_the_forms_train_takes():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8), np.array([0, 1, 2, 0, 1, 2])
    from_tuple = as_dataset((x, y, x, y, ["a", "b", "c"]))
    from_dict = as_dataset({"x_train": x, "y_train": y, "x_test": x, "y_test": y, "classes": ["a", "b", "c"]})
    assert torch.equal(from_tuple.train.images, from_dict.train.images) and from_dict.classes == ("a", "b", "c")
    assert as_dataset(from_tuple) is from_tuple
    with pytest.raises(UserError, match=r"data dict needs keys .* got \['x_train', 'y'\]"):
        as_dataset({"x_train": x, "y": y})
    with pytest.raises(UserError, match="data must be .*, got tuple of 2 items"):
        as_dataset((x, y))
