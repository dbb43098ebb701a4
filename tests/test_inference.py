"""The model after training: `cifarlab.load_model` and `cifarlab.predict` on the user's own images."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import cifarlab
from _folders import FASHION_NAMES, needs_fashion, train_fashion_folder
from cifarlab.data.images import read_image
from cifarlab.errors import UserError
from cifarlab.use.predict import predict_batch

pytestmark = needs_fashion


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint of the smoke convnet trained on 500 real Fashion-MNIST PNGs, and its test files."""
    run, written = train_fashion_folder(tmp_path_factory.mktemp("inference"), 50, 10, 4)
    return run.run_dir / "checkpoints" / "best.pt", written["test"]


@pytest.mark.slow
def test_load_model_carries_what_prediction_needs(trained):
    checkpoint, _ = trained
    model = cifarlab.load_model(checkpoint, device="cpu")
    assert not model.module.training and model.classes == tuple(sorted(FASHION_NAMES))
    assert model.image_size == 28 and model.in_channels == 1 and model.tta is None
    assert len(model.mean) == 1 and 0.2 < model.mean[0] < 0.4 and model.std[0] > 0.2
    with torch.no_grad():
        assert model.module(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert model.card.precision == model.precision.name == "fp32"  # the run's own, as `cifarlab predict` uses


def test_predict_on_files_matches_the_evaluated_model_and_beats_chance(trained):
    checkpoint, test_files = trained
    model = cifarlab.load_model(checkpoint)
    paths = [path for path, _, _ in test_files]
    results = cifarlab.predict(model, paths, top=3)
    assert len(results) == len(paths) and all(len(r) == 3 for r in results)
    assert all(r[0][1] >= r[1][1] >= r[2][1] > 0 and sum(p for _, p in r) <= 1 + 1e-6 for r in results)
    images = torch.stack([read_image(p, 1, 28) for p in paths])
    probs = predict_batch(model.module, images, torch.zeros(len(images), dtype=torch.long), model.mean, model.std).probs
    assert [r[0][0] for r in results] == [model.classes[k] for k in probs.argmax(1).tolist()]
    truth = [FASHION_NAMES[label] for _, label, _ in test_files]
    accuracy = np.mean([r[0][0] == name for r, name in zip(results, truth)])
    assert accuracy > 0.5  # chance is 0.1


def test_every_input_kind_gives_the_same_answer(trained):
    checkpoint, test_files = trained
    path, _, pixels = test_files[0]
    wide = np.random.default_rng(0).integers(0, 256, (28, 56), dtype=np.uint8)
    wide[:, 14:42] = pixels  # the centre crop of this 28x56 image is the original
    inputs = {"path": str(path), "PIL": Image.open(path), "uint8 HW numpy": pixels,
              "uint8 CHW tensor": torch.from_numpy(pixels)[None], "float HWC numpy": pixels[..., None] / 255.0,
              "RGB PIL": Image.fromarray(pixels).convert("RGB"), "wide PIL": Image.fromarray(wide),
              "batch of one": torch.from_numpy(pixels)[None, None]}
    expected = cifarlab.predict(checkpoint, path, top=10)[0]
    for what, image in inputs.items():
        got = cifarlab.predict(checkpoint, image, top=10)[0]
        assert [c for c, _ in got] == [c for c, _ in expected], what
        assert np.allclose([p for _, p in got], [p for _, p in expected], atol=1e-5), what


def test_tta_follows_the_run_unless_asked(trained):
    checkpoint, test_files = trained
    model = cifarlab.load_model(checkpoint)
    images = [pixels for _, _, pixels in test_files[:5]]
    plain, flipped = cifarlab.predict(model, images, top=1), cifarlab.predict(model, images, top=1, tta=True)
    assert plain == cifarlab.predict(model, images, top=1, tta=False)
    assert [p for r in plain for _, p in r] != [p for r in flipped for _, p in r]


def test_bad_input_gives_one_line(trained, tmp_path):
    checkpoint, _ = trained
    model = cifarlab.load_model(checkpoint)
    cases = [((model, tmp_path / "missing.png"), "image {tmp}/missing.png does not exist"),
             ((model, np.zeros((28, 28), np.int64)), "image 0 must be uint8 (0..255) or float (0..1), got int64"),
             ((model, np.full((28, 28), 2.0)), "image 0 float values must be finite and in [0, 1]"),
             ((model, [np.zeros((28, 28), np.uint8), 3]), "image 1 must be a path, a PIL image"),
             ((model, []), "predict needs at least one image"),
             ((torch.nn.Linear(2, 2), np.zeros((28, 28), np.uint8)),
              "predict needs a checkpoint path or a model from cifarlab.load_model"),
             ((tmp_path / "nope.pt", np.zeros((28, 28), np.uint8)), "checkpoint {tmp}/nope.pt does not exist")]
    for args, message in cases:
        with pytest.raises(UserError) as err:
            cifarlab.predict(*args)
        assert message.format(tmp=tmp_path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="top must be a positive integer, got 0"):
        cifarlab.predict(model, np.zeros((28, 28), np.uint8), top=0)


def test_a_folder_model_loads_without_its_folder(trained, tmp_path):
    """The checkpoint stores its image size and channels, so the image folder may be gone."""
    checkpoint, _ = trained
    data_dir = checkpoint.parents[4] / "fm"  # <tmp>/runs/smoke/<time>/checkpoints/best.pt
    moved = shutil.move(str(data_dir), str(tmp_path / "moved"))
    try:
        model = cifarlab.load_model(checkpoint)
        assert (model.image_size, model.in_channels) == (28, 1)
    finally:
        shutil.move(moved, str(data_dir))
