"""Every format a model comes in (a checkpoint, a model folder from `export --format hf`) is read by one reader
(run/model_file.read_model) with one set of checks, and what `cifarlab.load_model` gives back is an
ordinary `nn.Module` that `predict` agrees with; the model folder loads as the Hub's users load models."""
from __future__ import annotations

import json
import math
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

import cifarlab
from _runs import assert_refused, finished_and_open_runs, tampered_copy
from cifarlab.cli import main
from cifarlab.errors import UserError

QUIET = ["train.device=cpu", "output.tensorboard=false", "output.progress=none", "train.threads=1"]


@pytest.fixture(scope="module")
def made(tmp_path_factory, shared_runs):
    """A one-epoch smoke run (a 10-class convnet on 16x16 images), its model folder, and an image."""
    root = tmp_path_factory.mktemp("model-files")
    run_dir = finished_and_open_runs(root / "runs", shared_runs)["done"]
    folder = root / "folder"
    assert main(["export", str(run_dir / "checkpoints" / "best.pt"), "--format", "hf", "--out", str(folder)]) == 0
    image = root / "image.png"
    Image.new("RGB", (20, 24), (200, 30, 90)).save(image)
    return {"run": run_dir, "folder": folder, "image": image, "root": root}


# ---------------------------------------------------------------- one set of checks, every format

def _nan_first_weight(weights: dict) -> None:
    name = next(key for key, value in weights.items() if value.is_floating_point())
    weights[name] = torch.full_like(weights[name], math.nan)


def _integer_weights(weights: dict) -> None:
    """Every float weight as int64: loaded as they were, they would be copied in, rounded, silently."""
    weights.update({key: value.round().long() for key, value in weights.items() if value.is_floating_point()})


def _checkpoint_fault(fault: str):
    def change(payload: dict) -> None:
        payload["ema"] = None  # the weights evaluated are then `model`'s
        if fault == "nan-weights":
            _nan_first_weight(payload["model"])
        elif fault == "integer-weights":
            _integer_weights(payload["model"])
        elif fault == "std-zero":
            payload["std"] = [0.0] + list(payload["std"][1:])
        elif fault == "no-classes":
            del payload["classes"]
        elif fault == "duplicate-classes":
            payload["classes"][1] = payload["classes"][0]
        elif fault == "wrong-class-count":
            payload["classes"] = payload["classes"][:-1]
    return change


def _folder_fault(folder: Path, fault: str) -> None:
    from safetensors.torch import load_file, save_file

    if fault in ("nan-weights", "integer-weights"):
        weights = load_file(str(folder / "model.safetensors"))
        (_nan_first_weight if fault == "nan-weights" else _integer_weights)(weights)
        save_file(weights, str(folder / "model.safetensors"))
        return
    config = json.loads((folder / "config.json").read_text())
    if fault == "std-zero":
        config["std"][0] = 0.0
    elif fault == "no-classes":
        del config["classes"]
    elif fault == "duplicate-classes":
        config["classes"][1] = config["classes"][0]
    elif fault == "wrong-class-count":
        config["classes"] = config["classes"][:-1]
    (folder / "config.json").write_text(json.dumps(config))


FAULTS = {  # fault -> words the one line must hold, for a checkpoint and for a model folder
    "nan-weights": (["is not usable", "non-finite (NaN or inf) values"],) * 2,
    "integer-weights": (["is not usable", "not a floating-point tensor"],) * 2,  # round 4: predicted silently
    "std-zero": (["is not usable", "std must be positive"],) * 2,
    "no-classes": (["is not usable", "no classes"],
                   ["is not usable", "classes must be a list of distinct class names"]),
    "duplicate-classes": (["classes must be a list of distinct class names"],) * 2,
    "wrong-class-count": (["one per"],) * 2,
}
COMMANDS = {  # command -> argv after the model path; OUT is where an export would write
    "predict": lambda model, made, out: ["predict", model, str(made["image"])],
    "eval": lambda model, made, out: ["eval", model],
    "export-safetensors": lambda model, made, out: ["export", model, "--format", "safetensors", "--out",
                                                    str(out / "net.safetensors")],
    "export-hf": lambda model, made, out: ["export", model, "--format", "hf", "--out", str(out / "hf")],
}


@pytest.fixture(scope="module")
def faulty(made):
    """(format, fault) -> the path of a model file with that fault, made once."""
    made_paths = {}
    for fault in FAULTS:
        run = tampered_copy(made["run"], made["root"] / f"run-{fault}", _checkpoint_fault(fault))
        made_paths["checkpoint", fault] = run / "checkpoints" / "best.pt"
        folder = made["root"] / f"folder-{fault}"
        shutil.copytree(made["folder"], folder)
        _folder_fault(folder, fault)
        made_paths["folder", fault] = folder
    return made_paths


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("kind", ["checkpoint", "folder"])
def test_a_bad_model_file_is_one_line_and_exit_2_in_every_format_and_command(made, faulty, kind, fault, command,
                                                                            tmp_path, capsys):
    model = faulty[kind, fault]
    out = tmp_path / "out"
    out.mkdir()
    words = FAULTS[fault][kind == "folder"]
    assert_refused(COMMANDS[command](str(model), made, out), words, {"model": model.parent, "out": out}, capsys,
                   tmp_path)
    assert not any(out.iterdir())


@pytest.mark.parametrize("kind", ["checkpoint", "folder"])
def test_load_model_refuses_the_same_files_in_python(faulty, kind):
    for fault in FAULTS:
        with pytest.raises(UserError, match="not usable|distinct class names|one per"):
            cifarlab.load_model(faulty[kind, fault], device="cpu")


def test_a_folder_without_run_config_is_one_line(made, tmp_path, capsys):
    folder = tmp_path / "folder"
    shutil.copytree(made["folder"], folder)
    config = json.loads((folder / "config.json").read_text())
    del config["run_config"]
    (folder / "config.json").write_text(json.dumps(config))
    assert_refused(["predict", str(folder), str(made["image"])], ["run_config must be the run's config"],
                   {"model": folder}, capsys, tmp_path)


def _weights_a_folder(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").mkdir()


def _head_not_a_matrix(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    weights["classifier.weight"] = torch.zeros(1)
    save_file(weights, str(folder / "model.safetensors"))


HALF_FOLDERS = [  # (id, change to a copy of the folder, words); round 4: each said "give a .pt file"
    ("no-weights", lambda f: (f / "model.safetensors").unlink(),
     ["has no model.safetensors file beside its config.json"]),
    ("no-config", lambda f: (f / "config.json").unlink(), ["has no config.json file beside its model.safetensors"]),
    ("weights-a-folder", _weights_a_folder, ["has no model.safetensors file", "cifarlab export --format hf"]),
    # round 4: said "classes must be 1 names", blaming the classes for a damaged weight
    ("head-not-a-matrix", _head_not_a_matrix, ["does not match its own config", "size mismatch for classifier.weight"]),
]


@pytest.mark.parametrize("case", HALF_FOLDERS, ids=[case[0] for case in HALF_FOLDERS])
def test_half_a_model_folder_says_what_it_lacks(made, case, tmp_path, capsys):
    _, change, words = case
    folder = tmp_path / "folder"
    shutil.copytree(made["folder"], folder)
    change(folder)
    assert_refused(["predict", str(folder), str(made["image"])], words, {"model": folder}, capsys, tmp_path)


# ---------------------------------------------------------------- load_model gives an nn.Module

@pytest.mark.parametrize("kind", ["checkpoint", "folder"])
def test_load_model_is_a_callable_module_that_predict_agrees_with(made, kind):
    from cifarlab.data.normalize import normalize, to_float
    from cifarlab.use.images import as_batch

    path = made["run"] / "checkpoints" / "best.pt" if kind == "checkpoint" else made["folder"]
    model = cifarlab.load_model(path, device="cpu", precision="fp32")  # fp32: the comparison names its precision
    assert isinstance(model, nn.Module) and not model.training
    assert model.eval() is model and model.to("cpu") is model
    assert model.card.classes == model.classes and model.card.classifier == "classifier"
    assert model.card.architecture == "convnet" and model.card.options == {"norm": "batch", "dropout": 0.0,
                                                                           "width": 8}
    images = as_batch([str(made["image"])] * 3, model.in_channels, model.image_size)
    with torch.no_grad():
        logits = model(normalize(to_float(images), model.mean, model.std, channels_last=False))
    assert logits.shape == (3, 10)
    expected = cifarlab.predict(model, [str(made["image"])], top=10, tta=False)[0]
    probs = logits.softmax(dim=1)[0]
    got = {name: float(p) for name, p in zip(model.classes, probs)}
    # fp32 with the same weights; predict runs channels_last, whose convolutions round in another order
    assert all(math.isclose(got[name], p, rel_tol=1e-5, abs_tol=1e-6) for name, p in expected)


def test_a_checkpoint_and_its_folder_give_the_same_card(made):
    checkpoint = cifarlab.load_model(made["run"] / "checkpoints" / "best.pt", device="cpu")
    folder = cifarlab.load_model(made["folder"], device="cpu")
    assert folder.card == checkpoint.card
    config = json.loads((made["folder"] / "config.json").read_text())
    assert {key: config[key] for key in checkpoint.card.to_dict()} == checkpoint.card.to_dict()
    assert type(checkpoint.card).from_dict(config) == checkpoint.card


def test_every_sidecar_is_the_card_plus_its_formats_extras(made, tmp_path):
    best = made["run"] / "checkpoints" / "best.pt"
    card = cifarlab.load_model(best, device="cpu").card.to_dict()
    assert main(["export", str(best), "--format", "safetensors", "--out", str(tmp_path / "n.safetensors")]) == 0
    sidecar = json.loads((tmp_path / "n.safetensors.json").read_text())
    assert {key: sidecar[key] for key in card} == card
    assert json.loads((made["folder"] / "config.json").read_text())["model_type"] == "cifarlab"


# ---------------------------------------------------------------- the Hub's way of loading the folder

def test_the_folder_loads_with_from_pretrained_offline_and_saves_back(made, tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    from cifarlab.use.hf_folder import CifarlabModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = made["folder"]
    hub = CifarlabModel.from_pretrained(folder, precision="fp32")
    ours = cifarlab.load_model(folder, device="cpu", precision="fp32")
    assert isinstance(hub, CifarlabModel) and hub.card == ours.card and callable(hub.push_to_hub)
    images = torch.randn(4, ours.in_channels, ours.image_size, ours.image_size)
    with torch.no_grad():
        assert torch.equal(hub(images), ours(images))
    assert cifarlab.predict(hub, [str(made["image"])], top=10) == cifarlab.predict(ours, [str(made["image"])], top=10)

    saved = tmp_path / "saved"
    hub.save_pretrained(saved)
    again = CifarlabModel.from_pretrained(saved, precision="fp32")
    assert again.card == hub.card
    with torch.no_grad():
        assert torch.equal(again(images), ours(images))


def test_the_folders_weights_are_readable_by_everyone_like_every_export(made, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "hf"
        assert main(["export", str(made["run"] / "checkpoints" / "best.pt"), "--format", "hf",
                                  "--out", str(out)]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o644


# ---------------------------------------------------------------- each factory declares its classifier

def test_a_model_that_declares_no_classifier_is_told_how_when_its_head_must_start_fresh(monkeypatch):
    from cifarlab.models.registry import MODELS
    from cifarlab.trainer.warmstart import classifier_head

    def factory(num_classes=10, in_channels=3, norm="batch", dropout=0.0):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 4, num_classes))

    for name, classifier in (("undeclared_head", None), ("misnamed_head", "fc")):
        monkeypatch.setitem(MODELS._entries, name, factory)
        monkeypatch.setitem(MODELS._facts, name, {"classifier": classifier})
        with pytest.raises(UserError, match=f"@register_model\\('{name}', classifier="):
            classifier_head(factory(), name)
    monkeypatch.setitem(MODELS._facts, "misnamed_head", {"classifier": "1"})
    assert classifier_head(factory(), "misnamed_head") == "1"


def test_an_exported_file_is_named_as_one_not_as_a_broken_checkpoint(made, tmp_path, capsys):
    """Round 4: `predict best.safetensors` said "truncated or not a cifarlab checkpoint (no checksum trailer)"."""
    from cifarlab.export import FORMATS
    from cifarlab.run.model_file import EXPORTED

    assert set(EXPORTED) == set(FORMATS.values())  # every format export writes is recognised
    exported = tmp_path / "net.safetensors"
    assert main(["export", str(made["run"] / "checkpoints" / "best.pt"), "--format", "safetensors",
                 "--out", str(exported)]) == 0
    capsys.readouterr()
    assert_refused(["predict", str(exported), str(made["image"])],
                   ["is an exported model (safetensors", "checkpoints/best.pt", "--format hf"], {"out": tmp_path},
                   capsys, tmp_path)
