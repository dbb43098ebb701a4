"""`cifarlab export --format hf`: a model folder (model.safetensors, config.json, README.md) that rebuilds
without cifarlab's loader and without huggingface_hub, and that load_model / predict accept with the same
probabilities as the checkpoint."""
from __future__ import annotations

import json
import sys

import pytest
import torch

import cifarlab
from _runs import flip_run
from cifarlab.cli import main


@pytest.fixture(scope="module")
def best(tmp_path_factory, shared_runs):
    """best.pt of a finished 1-epoch smoke run evaluated with flip TTA."""
    run_dir, _ = flip_run(tmp_path_factory.mktemp("runs"), shared_runs)
    return run_dir / "checkpoints" / "best.pt"


@pytest.fixture
def no_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # any import of it now fails


def test_the_folder_holds_weights_config_and_a_card_with_the_runs_results(best, tmp_path, no_hub, capsys):
    out = tmp_path / "smoke-model"
    assert main(["export", str(best), "--format", "hf", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    model = cifarlab.load_model(best, device="cpu")
    assert config["classes"] == list(model.classes) and config["id2label"]["3"] == model.classes[3]
    assert config["input_shape"] == [3, 16, 16] and config["mean"] == list(model.mean)
    assert config["std"] == list(model.std) and config["tta"] == "flip"
    assert config["model"] == {"name": "convnet", "num_classes": 10, "in_channels": 3, "norm": "batch",
                               "dropout": 0.0, "width": 8}
    card = (out / "README.md").read_text()
    summary = json.loads((best.parent.parent / "summary.json").read_text())
    assert card.startswith("---\nlibrary_name: cifarlab\n") and "pipeline_tag: image-classification" in card
    assert f"| test accuracy | {100 * summary['final_test_acc']:.2f}% |" in card
    assert f"value: {summary['final_test_acc']:.6f}" in card


def test_plain_safetensors_and_json_rebuild_the_network(best, tmp_path, no_hub):
    from safetensors.torch import load_file

    from cifarlab.models.registry import create_model

    out = tmp_path / "plain"
    assert main(["export", str(best), "--format", "hf", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    rebuilt = create_model(**config["model"])
    rebuilt.load_state_dict(load_file(str(out / "model.safetensors")))
    images = torch.randn(4, *config["input_shape"])
    with torch.no_grad():
        expected = cifarlab.load_model(best, device="cpu", precision="fp32").module(images)
        # fp32 and the same weights; the loader keeps the run's channels_last layout, whose convolutions
        # round in another order: equal to float32 rounding, not bit for bit
        assert torch.allclose(rebuilt.eval()(images), expected, rtol=1e-5, atol=1e-6)


def test_load_model_and_predict_accept_the_folder_with_the_checkpoints_probabilities(best, tmp_path, no_hub, capsys):
    from PIL import Image

    out = tmp_path / "folder"
    assert main(["export", str(best), "--format", "hf", "--out", str(out)]) == 0
    images = [Image.new("RGB", (30, 20), (i * 60, 100, 200 - i * 50)) for i in range(4)]
    folder, checkpoint = cifarlab.load_model(out, device="cpu"), cifarlab.load_model(best, device="cpu")
    for key in ("classes", "mean", "std", "image_size", "in_channels", "tta", "card"):
        assert getattr(folder, key) == getattr(checkpoint, key), key
    assert cifarlab.predict(folder, images, top=10) == cifarlab.predict(checkpoint, images, top=10)  # flip TTA too
    paths = []
    for i, image in enumerate(images[:2]):
        paths.append(str(tmp_path / f"img{i}.png"))
        image.save(paths[-1])
    capsys.readouterr()
    assert main(["predict", str(out), *paths]) == 0
    from_folder = capsys.readouterr().out
    assert main(["predict", str(best), *paths]) == 0
    assert from_folder == capsys.readouterr().out and from_folder.count("%") == 6


def test_an_existing_folder_with_files_is_refused_in_one_line(best, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", str(best), "--format", "hf", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists and is not an empty folder" in err[0]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
