"""PyTorch objects from Python: `cifarlab.train(model=..., data=(train_dataset, test_dataset))`. A module class
from an importable module is rebuilt by name (its module named, as for registered models); an instance of a
local class only with the module passed in; a torch Dataset is decoded once and validated item by item."""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _compare import assert_same_state
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import cifarlab
from cifarlab.data.torch_dataset import dataset_from_torch
from cifarlab.errors import UserError

MODULE = "cifarlab_test_torch_nets"  # a name nothing else on sys.path has
USER_MODULE = '''
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, width=8):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))
'''
RUN = ["train.epochs=1", "schedule.peak_epoch=0.5", "train.device=cpu", "train.precision=fp32",
       "output.tensorboard=false", "output.progress=none"]


class Pictures(torch.utils.data.Dataset):
    """A map-style dataset as users write them: `(image, label)` items, torchvision's `.classes`."""

    def __init__(self, images, labels, classes=("cat", "dog", "bird"), kind="tensor"):
        self.images, self.labels, self.classes, self.kind = images, labels, list(classes), kind

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = self.images[index]  # uint8 (C, H, W)
        if self.kind == "float":
            image = image.float() / 255
        elif self.kind == "hwc":
            image = image.permute(1, 2, 0).numpy()
        elif self.kind == "pil":
            from PIL import Image

            image = Image.fromarray(image.permute(1, 2, 0).numpy())
        return image, int(self.labels[index])


def _pictures(count=96, seed=0, size=8, **kw) -> Pictures:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 3
    images = torch.randint(0, 60, (count, 3, size, size), generator=generator, dtype=torch.uint8)
    images[:, 0] += (labels * 60).to(torch.uint8)[:, None, None]  # the label is in the red channel: learnable
    return Pictures(images, labels, **kw)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    folder = tmp_path / "usercode"
    folder.mkdir()
    (folder / f"{MODULE}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    sys.modules.pop(MODULE, None)


def _logits(loaded, images) -> torch.Tensor:
    mean = torch.tensor(loaded.mean)[:, None, None]
    std = torch.tensor(loaded.std)[:, None, None]
    with torch.no_grad():
        return loaded.module((images.float() / 255 - mean) / std)


@pytest.mark.slow  # two short runs: about 6 s
def test_a_module_class_from_an_importable_module_is_recorded_by_name_and_rebuilt_from_it(tmp_path, user_module):
    import importlib

    nets = importlib.import_module(MODULE)
    train, test = _pictures(), _pictures(48, seed=1)
    run = cifarlab.train("smoke", [f"output.dir={tmp_path}", *RUN], model=functools.partial(nets.TinyNet, width=6),
                         data=(DataLoader(train, batch_size=7), test))
    assert run.status == "completed"
    model_cfg = run.config.model
    assert (model_cfg.name, model_cfg.module, model_cfg.options) == (f"{MODULE}:TinyNet", MODULE, {"width": 6})
    best = run.run_dir / "checkpoints" / "best.pt"
    in_process = cifarlab.load_model(best)
    assert in_process.card.architecture == f"{MODULE}:TinyNet" and in_process.card.options["width"] == 6
    assert in_process.classes == ("cat", "dog", "bird")  # read from the dataset's .classes

    sys.modules.pop(MODULE)  # as in a fresh process: the checkpoint names the module, loading does not import it
    with pytest.raises(UserError, match=f"not imported: name it with --import {MODULE}"):
        cifarlab.load_model(best)
    assert MODULE not in sys.modules
    again = cifarlab.load_model(best, import_modules=[MODULE])
    assert type(again.module).__name__ == "TinyNet" and again.module.head.in_features == 6
    assert torch.equal(_logits(again, test.images), _logits(in_process, test.images))
    resumed = cifarlab.resume(run.run_dir, data=(train, test), epochs=2, import_modules=[MODULE])
    assert resumed.status == "completed" and [row.epoch for row in resumed.history] == [1, 2]


@pytest.mark.slow  # two short runs and two reports: about 16 s on a loaded 2-core machine
def test_an_instance_of_a_local_class_loads_only_into_a_module_passed_in(tmp_path, capsys):
    class LocalNet(nn.Module):  # defined in a function: no import can find it again
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                      nn.Linear(4, 3))

        def forward(self, x):
            return self.body(x)

    train, test = _pictures(), _pictures(48, seed=1)
    start = LocalNet()
    start_weights = {k: v.clone() for k, v in start.state_dict().items()}
    run = cifarlab.train("smoke", [f"output.dir={tmp_path}", "output.report=true", *RUN], model=start,
                         data=(train, test))
    assert run.config.model.name.startswith("state_dict:") and run.config.model.name.endswith("LocalNet")
    assert_same_state(start.state_dict(), start_weights)  # a copy trained
    assert (run.run_dir / "report.md").is_file()  # the report, made inside train, rebuilt the model
    best = run.run_dir / "checkpoints" / "best.pt"
    with pytest.raises(UserError, match="only load_state_dict can rebuild it: pass one") as refused:
        cifarlab.load_model(best)
    assert "\n" not in str(refused.value)
    from cifarlab.cli import main

    assert main(["eval", str(best)]) == 2  # the CLI: the same one line, exit code 2
    assert "only load_state_dict can rebuild" in capsys.readouterr().err
    with pytest.raises(UserError, match="does not match"):  # a module of another shape: load_state_dict refuses
        cifarlab.load_model(best, model=nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3)))
    loaded = cifarlab.load_model(best, model=LocalNet())
    predictions = cifarlab.predict(loaded, test.images[:4].permute(0, 2, 3, 1).numpy(), top=1)
    assert len(predictions) == 4 and predictions[0][0][0] in ("cat", "dog", "bird")
    from cifarlab.export import export_model

    out = export_model(loaded, "safetensors", tmp_path / "net.safetensors")
    assert Path(out).is_file()
    with cifarlab.rebuild_with(LocalNet()):  # any loader inside the block: here the report, again
        from cifarlab.analysis.run_report import report_from_run_dir

        assert report_from_run_dir(run.run_dir, dataset=dataset_from_torch(train, test), device="cpu").is_file()
    resumed = cifarlab.resume(run.run_dir, data=(train, test), epochs=2, model=LocalNet())
    assert resumed.status == "completed" and len(resumed.history) == 2


def test_a_model_that_does_not_return_one_row_of_logits_per_class_is_refused_before_a_run_directory(tmp_path):
    data = (_pictures(), _pictures(48, seed=1))
    wrong = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))  # 5 outputs for 3 classes
    refused = r"shape \(\d, 5\) for \d images; it must return one floating-point tensor of logits of shape \(\d, 3\)"
    with pytest.raises(UserError, match=refused):
        cifarlab.train("smoke", [f"output.dir={tmp_path}", *RUN], model=wrong, data=data)
    with pytest.raises(UserError, match="returned a str, not a torch.nn.Module"):
        cifarlab.train("smoke", [f"output.dir={tmp_path}", *RUN], model=lambda: "net", data=data)
    with pytest.raises(UserError, match="model must be a torch.nn.Module"):
        cifarlab.train("smoke", [f"output.dir={tmp_path}", *RUN], model=42, data=data)
    assert not (tmp_path / "smoke").exists()


def test_every_image_form_decodes_to_the_same_store_and_a_dataloader_gives_its_dataset():
    reference = dataset_from_torch(_pictures(), _pictures(12, seed=1))
    assert reference.train.images.shape == (96, 3, 8, 8) and reference.classes == ("cat", "dog", "bird")
    assert torch.equal(reference.train.images, _pictures().images)
    assert "decoded once into memory" in reference.origin and "not streamed" in reference.origin
    for kind in ("float", "hwc", "pil"):
        got = dataset_from_torch(DataLoader(_pictures(kind=kind), batch_size=5, shuffle=True),
                                 _pictures(12, seed=1, kind=kind), classes=["a", "b", "c"])
        assert torch.equal(got.train.images, reference.train.images), kind
        assert torch.equal(got.train.labels, reference.train.labels) and got.classes == ("a", "b", "c")
    grey = TensorDataset(torch.zeros(6, 5, 5, dtype=torch.uint8) + torch.arange(6, dtype=torch.uint8)[:, None, None],
                         torch.tensor([0, 1] * 3))
    assert dataset_from_torch(grey, grey).train.images.shape == (6, 1, 5, 5)  # (H, W) tensors: one channel


class _Broken(Pictures):
    """Item `index` of `_pictures()` replaced by `item`."""

    def __init__(self, index, item):
        base = _pictures(12)
        super().__init__(base.images, base.labels)
        self.index, self.item = index, item

    def __getitem__(self, index):
        return self.item if index == self.index else super().__getitem__(index)


class _Raising(_Broken):
    """Item `index` raises `error` (a bug in the user's __getitem__; IndexError: a len() larger than the data)."""

    def __getitem__(self, index):
        if index == self.index:
            raise self.item
        return super().__getitem__(index)


class _Stream(IterableDataset):
    def __iter__(self):
        yield torch.zeros(3, 8, 8), 0


@pytest.mark.parametrize("train, message", [
    (_Broken(3, (torch.zeros(3, 8, 8, dtype=torch.uint8), 7)), r"labels must be in 0..2 for 3 classes, got 7"),
    (_Broken(3, (torch.zeros(3, 6, 6, dtype=torch.uint8), 1)), r"train item 3: image is \(C, H, W\) = \(3, 6, 6\)"),
    (_Broken(2, (torch.full((3, 8, 8), 2.0), 1)), r"train item 2: float image values must be in \[0, 1\], got 2..2"),
    (_Broken(2, (torch.zeros(3, 8, 8, dtype=torch.int32), 1)), r"train item 2: image must be uint8 .* got torch.int32"),
    (_Broken(1, (torch.zeros(3, 8, 8, dtype=torch.uint8), 1.0)), r"train item 1: label must be an integer"),
    (_Broken(1, torch.zeros(3, 8, 8)), r"train item 1 must be \(image, label\), got Tensor"),
    (_Broken(4, (np.zeros((8, 8, 4), np.uint8), 1)), r"train item 4: an array or PIL image must be \(H, W, C\)"),
    (_Broken(4, (np.zeros((8, 8, 3), np.float32), 1)), r"train item 4: a ndarray image must hold uint8"),
    (TensorDataset(torch.zeros(0, 3, 8, 8), torch.zeros(0)), r"the train dataset holds no items"),
    (_Stream(), r"the train dataset is an IterableDataset"),
    (np.zeros((4, 3, 8, 8)), r"the train data must be a torch Dataset or DataLoader, got ndarray"),
    # round 4: the user's own exception escaped bare
    (_Raising(5, KeyError("no such file")), r"train item 5: the dataset raised KeyError \('no such file'\) reading it"),
    (_Raising(11, IndexError("11")),
     r"train item 11: the dataset raised IndexError .* its len\(\) is 12, so items 0..11"),
])
def test_each_bad_dataset_is_one_line_naming_the_item(train, message):
    with pytest.raises(UserError, match=message) as refused:
        dataset_from_torch(train, _pictures(12, seed=1))
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("classes", ["abc", 3])
def test_classes_that_are_not_a_list_of_names_are_refused(classes):
    """Round 4: classes="abc" trained three classes named a, b and c."""
    with pytest.raises(UserError, match="classes must be a list of class names"):
        dataset_from_torch(_pictures(12), _pictures(12, seed=1), classes)


def test_a_dataset_too_large_to_decode_is_refused_before_it_is_read(monkeypatch):
    read = []

    class Huge(Pictures):
        def __len__(self):
            return 10**9

        def __getitem__(self, index):
            read.append(index)
            return torch.zeros(3, 32, 32, dtype=torch.uint8), 0

    with pytest.raises(UserError, match=r"would take 2861.0 GiB decoded, more than half .* does not stream"):
        dataset_from_torch(Huge(None, []), _pictures(12))
    assert read == [0]  # only the first item, for its shape


def test_a_random_transform_frozen_by_the_one_read_is_named(capsys):
    class Jittered(Pictures):
        def __getitem__(self, index):
            image, label = super().__getitem__(index)
            return image.roll(int(torch.randint(0, 8, ())), dims=2), label

    dataset_from_torch(Jittered(_pictures().images, _pictures().labels), _pictures(12))
    assert "its transform is random" in capsys.readouterr().err
    dataset_from_torch(_pictures(), _pictures(12))
    assert capsys.readouterr().err == ""
