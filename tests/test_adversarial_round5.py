"""Issue 27's second adversarial round (`bench/adversarial.py`, run on the code after round 4's fixes): each
case it found failing, and each low finding left from round 4, as a table row that failed before its fix."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cifarlab.config import load_config, validate, validate_recorded
from cifarlab.errors import UserError
from cifarlab.run.field_checks import FieldProblem
from cifarlab.run.model_card import check_card_fields
from cifarlab.trainer import precision_cache, step_race

# ------------------------------------------------------------------------ settings past the run's end

# (overrides on smoke (2 epochs), words of the one line; None: accepted). A milestone at or after the last epoch
# never lowers the lr and a warm-up as long as the plan never decays: both trained silently without them.
SCHEDULE_INSIDE_RUN = [
    (["schedule.name=multistep", "schedule.milestones=[1,5]"], ["schedule.milestones must be epochs in 1..1",
                                                               "[5] never act"]),
    (["schedule.name=multistep", "schedule.milestones=[2]"], ["schedule.milestones", "train.epochs=2"]),
    (["schedule.name=cosine", "schedule.warmup_epochs=2"], ["schedule.warmup_epochs must be less than the 2"]),
    (["schedule.name=cosine", "schedule.warmup_epochs=4", "train.epochs=5"], None),
    (["schedule.name=multistep", "schedule.milestones=[1]"], None),
    (["schedule.name=cosine", "schedule.warmup_epochs=1.5"], None),
    (["schedule.name=multistep", "schedule.milestones=[9]", "train.epochs=auto"], None),  # decided with the data
    (["model.name=fastnet", "model.options={whiten_bias_epochs: 3}"],
     ["model.options.whiten_bias_epochs must be at most train.epochs=2", "got 3"]),
    (["model.name=fastnet", "model.options={whiten_bias_epochs: 2}"], None),  # trained throughout
]


@pytest.mark.parametrize("overrides, words", SCHEDULE_INSIDE_RUN, ids=[" ".join(o) for o, _ in SCHEDULE_INSIDE_RUN])
def test_a_schedule_setting_past_the_last_epoch_is_refused_in_one_line(overrides, words):
    if words is None:
        load_config("smoke", overrides)
        return
    with pytest.raises(UserError) as refused:
        load_config("smoke", overrides)
    assert len(str(refused.value).splitlines()) == 1
    for word in words:
        assert word in str(refused.value), (word, str(refused.value))


def test_a_run_recorded_with_a_late_milestone_or_warm_up_still_loads():
    for section, change in (("schedule", {"name": "multistep", "milestones": [1, 5]}),
                            ("schedule", {"name": "cosine", "warmup_epochs": 3}),
                            ("model", {"name": "fastnet", "options": {"whiten_bias_epochs": 3}})):
        raw = load_config("smoke", []).to_dict()
        raw[section].update(change)
        assert getattr(validate_recorded(raw), section).name == change["name"]  # what it trained with, as it was
        with pytest.raises(UserError):
            validate(raw)


# ---------------------------------------------------------------------------------- a model card's lists

CARD = {"classes": ["a", "b", "c"], "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2], "in_channels": 3,
        "image_size": 16, "precision": "fp32"}


@pytest.mark.parametrize("change, blamed", [
    ({"mean": [0.5] * 4}, "mean must be 3 values, one per channel"),  # round 4: "std must be 4 values like mean"
    ({"mean": [0.5]}, "mean must be 3 values"),
    ({"std": [0.2] * 4}, "std must be 3 values"),
    ({"in_channels": 2, "mean": [0.5] * 2, "std": [0.2] * 2}, None),
    ({"in_channels": 5}, "in_channels must be a whole number in 1..4"),
    ({"in_channels": 1}, "in_channels must be 3, as many as mean and std hold"),
    ({"in_channels": None, "mean": [0.5] * 2}, "std must be 2 values like mean"),
])
def test_a_card_blames_the_list_that_does_not_fit_its_channels(change, blamed):
    card = {**CARD, **change}
    if blamed is None:
        check_card_fields(card)
        return
    with pytest.raises(FieldProblem) as refused:
        check_card_fields(card)
    assert str(refused.value).startswith(blamed), str(refused.value)


# -------------------------------------------------------------------------------- the precision cache

@pytest.mark.parametrize("reason", ["\x1b[31mHACKED\x1b[0m", "measured 1.20x fp32 on this CPU\nprecision: fp64",
                                    "measured " + "1.20x fp32 " * 60, 5, None, "fastest, trust me"])
def test_a_hand_edited_precision_reason_is_measured_again_not_printed(reason, tmp_path, monkeypatch):
    """Round 4: the cache's reason was printed and kept in summary.json as it stood in the file."""
    monkeypatch.setenv(precision_cache.CACHE_ENV, str(tmp_path))
    key = {"candidates": ["fp32", "bf16"], "model": "convnet"}
    precision_cache.write_cached(key, precision_cache.PrecisionChoice("bf16", "measured 1.25x fp32 on this CPU, 3.3 s"))
    assert precision_cache.read_cached(key).reason.startswith("measured 1.25x fp32 on this CPU, 3.3 s; cached in ")
    (path,) = (tmp_path / "autotune").glob("precision-*.json")
    path.write_text(json.dumps({**json.loads(path.read_text()), "reason": reason}))
    assert precision_cache.read_cached(key) is None


@pytest.mark.parametrize("seconds, chosen, where", [
    ({"fp32": 1.0, "bf16": 0.8}, "bf16", "this CPU"),
    ({"fp32": 1.0, "bf16": None}, "fp32", "NVIDIA H100 80GB HBM3"),
    ({"fp32": 1.0, "bf16": 1.2, "fp16": 0.5}, "fp32", "NVIDIA A100-SXM4-40GB"),
    ({"fp32": 1.0, "bf16": 0.5, "fp16": None}, "bf16", "Tesla T4"),
])
def test_every_reason_the_probe_writes_reads_back_as_a_measurement(seconds, chosen, where):
    detail = ("3.3 s, timing 64 of the batch's 512 images a step, while other processes used 35% of the CPU: "
              "measured again once the machine is quiet")  # the longest detail choose_precision writes
    reason = step_race.measured_reason(seconds, chosen, list(seconds), where, detail)
    assert precision_cache.is_measured_reason(reason), reason


# -------------------------------------------------------------------------------------- the Python API

class SmallNet(nn.Module):
    def __init__(self, num_classes=3, in_channels=3):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                               nn.Linear(4, num_classes))

    def forward(self, x):
        return self.f(x)


def _arrays(count=48):
    images, labels = torch.randint(0, 255, (count, 3, 8, 8), dtype=torch.uint8), torch.arange(count) % 3
    return images, labels, images, labels


@pytest.mark.parametrize("override", ["model.name=resnet18", "model.module=mypkg.nets", "model.options.width=16",
                                      "model.options={width: 16}", "model={name: resnet18}"])
def test_a_model_object_with_an_override_naming_another_model_is_refused(override, tmp_path):
    """Round 4: `cifarlab.train(..., ["model.name=resnet18"], model=Net)` trained Net and dropped the override."""
    import cifarlab

    with pytest.raises(UserError) as refused:
        cifarlab.train("smoke", [f"output.dir={tmp_path / 'runs'}", "train.threads=1", override], model=SmallNet,
                       data=_arrays())
    assert str(refused.value) == (f"model= passes the network, and the override {override!r} names another: give one "
                                  f"of the two (model.norm, model.dropout and the other model keys may still be set)")
    assert not (tmp_path / "runs").exists()


def test_a_batch_larger_than_the_data_is_refused_before_any_folder_is_made(tmp_path):
    """Round 5: the line came after the run directory (removed again) and left runs/smoke/ behind."""
    import cifarlab

    with pytest.raises(UserError, match="train.batch_size=64 is larger than the 48 training images"):
        cifarlab.train("smoke", [f"output.dir={tmp_path / 'runs'}", "train.threads=1", "data.val_split=null"],
                       model=SmallNet, data=_arrays(48))
    assert not (tmp_path / "runs").exists()


def test_a_validation_metric_without_a_validation_split_is_refused_before_any_folder_is_made(tmp_path):
    """Round 5: `checkpoint.monitor=val_acc` with no split was refused once the run directory existed."""
    import cifarlab

    with pytest.raises(UserError, match="checkpoint.monitor=val_acc needs a validation split"):
        cifarlab.train("smoke", [f"output.dir={tmp_path / 'runs'}", "train.threads=1", "data.val_split=null",
                                 "train.batch_size=16", "checkpoint.monitor=val_acc"], model=SmallNet, data=_arrays())
    assert not (tmp_path / "runs").exists()


def test_a_refused_run_removes_the_folders_made_for_it_but_no_other(tmp_path, monkeypatch):
    """A run refused once its directory exists (here: when its state is built) removes the directory and the
    empty folders made for it, never a folder that was there before."""
    import cifarlab
    import cifarlab.experiment as experiment

    def refuse(*args, **kwargs):
        raise UserError("refused while preparing")

    monkeypatch.setattr(experiment, "prepare_state", refuse)
    (tmp_path / "mine").mkdir()
    for output in (tmp_path / "runs" / "deep", tmp_path / "mine"):
        with pytest.raises(UserError, match="refused while preparing"):
            cifarlab.train("smoke", [f"output.dir={output}", "train.threads=1", "train.batch_size=16"],
                           model=SmallNet, data=_arrays())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"] and not list((tmp_path / "mine").iterdir())


class LoadedStub:
    """Stands for a LoadedModel: predict refuses a folder before it uses the model."""


def test_python_predict_of_a_folder_names_predict_files(tmp_path, monkeypatch):
    """`cifarlab predict` reads folders; `cifarlab.predict` answers one row per item given, so a folder is one
    line pointing to `cifarlab.predict_files`, which reads them as the CLI does (round 4: "is a directory")."""
    import cifarlab.use.predict as predicting

    monkeypatch.setattr(predicting, "LoadedModel", LoadedStub)  # no checkpoint needed to reach the refusal
    with pytest.raises(UserError) as refused:
        predicting.predict(LoadedStub(), [tmp_path])
    assert str(refused.value).startswith(f"{tmp_path} is a folder; predict returns one row per image given")
    assert "cifarlab.predict_files(model, [folder])" in str(refused.value)


# ------------------------------------------------------------------------------------------------ sweeps

@pytest.mark.parametrize("name", ["", "   "])
def test_an_empty_study_name_is_refused_not_replaced_by_the_default(name, tmp_path):
    pytest.importorskip("optuna")
    from cifarlab.sweep import define_sweep

    with pytest.raises(UserError, match="--name must name the study"):
        define_sweep("smoke", ["data.val_split=64"], grid=["optim.lr=0.05"], name=name, sweep_dir=str(tmp_path / "s"))
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------------------------ the user's module

@pytest.mark.parametrize("source, words", [
    ("import os\nraise RuntimeError('my module has a bug')\n", ["RuntimeError: my module has a bug", ".py:2)"]),
    ("def broken(:\n", ["SyntaxError: invalid syntax", ".py:1)"]),
    ("import round5_no_such_dependency\n", ["ModuleNotFoundError: No module named 'round5_no_such_dependency'",
                                            ".py:1)"]),
], ids=["raises", "syntax", "missing-dependency"])
def test_a_model_module_that_fails_on_import_is_one_line_naming_its_error_and_line(source, words, tmp_path,
                                                                                     monkeypatch, capsys):
    """Round 5: `model.module=` naming a module that raised on import was a traceback (exit 1)."""
    import sys

    from cifarlab.cli import main

    module = f"round5_module_{abs(hash(source)) % 10**8}"
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert main(["train", "smoke", f"output.dir={tmp_path / 'runs'}", f"model.module={module}"]) == 2
    finally:
        sys.modules.pop(module, None)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"cifarlab train: error: model module {module!r} failed to import: ")
    for word in words:
        assert word in line, (word, line)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("run_dir", ["", "  "])
def test_an_empty_run_dir_is_refused_not_read_as_the_current_folder(run_dir, tmp_path, monkeypatch, capsys):
    """Round 5: `train smoke --run-dir ""` (an unset shell variable) trained into the current folder."""
    from cifarlab.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "smoke", "train.threads=1", "--run-dir", run_dir]) == 2
    assert capsys.readouterr().err.strip() == (f"cifarlab train: error: --run-dir must name a folder (new, empty, or "
                                               f"a run to continue), got {run_dir!r}")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------- model folders

@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, shared_runs):
    """A model folder exported from a one-epoch smoke run (10 classes, convnet width 8)."""
    from _runs import finished_and_open_runs
    from cifarlab.cli import main

    root = tmp_path_factory.mktemp("round5-folder")
    run_dir = finished_and_open_runs(root / "runs", shared_runs)["done"]
    assert main(["export", str(run_dir / "checkpoints" / "best.pt"), "--format", "hf", "--out", str(root / "m")]) == 0
    return root / "m"


def _renamed_first(config):
    config["id2label"]["0"] = "renamed"


# (edit of config.json, words of the one line); round 5: each was ignored and the folder predicted with exit 0
FOLDER_EDITS = [
    (_renamed_first, ["config.json disagrees with itself: id2label must be"]),
    (lambda c: c.update(architecture="resnet18"), ["architecture must be \"convnet\""]),
    (lambda c: c["options"].update(width=16), ["options must be"]),
    (lambda c: c["label2id"].update(extra=10), ["label2id must be"]),
    (lambda c: c.update(num_channels=1), ["num_channels must be 3"]),
    (lambda c: c.update(input_shape=[3, 32, 32]), ["input_shape must be [3, 16, 16]"]),
    (lambda c: c["classes"].__setitem__(0, ""), ["classes must be a list of distinct class names (non-empty"]),
    (lambda c: c.update(classes=["a", "b", "c"]), ["classes must be 10 names (one per output"]),  # not num_labels
    (lambda c: None, None),
]


@pytest.mark.parametrize("edit, words", FOLDER_EDITS, ids=[str(i) for i in range(len(FOLDER_EDITS))])
def test_a_model_folder_whose_config_disagrees_with_itself_is_one_line(edit, words, model_folder, tmp_path):
    import shutil

    from cifarlab.run.model_file import read_model

    folder = shutil.copytree(model_folder, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    if words is None:
        assert read_model(folder).card.num_classes == 10
        return
    with pytest.raises(UserError) as refused:
        read_model(folder)
    assert len(str(refused.value).splitlines()) == 1
    for word in words:
        assert word in str(refused.value), (word, str(refused.value))


@pytest.mark.parametrize("name, damage", [("config.json", b"{oops"), ("model.safetensors", b"\x00" * 40)])
def test_an_unreadable_model_folder_file_is_named(name, damage, model_folder, tmp_path):
    """Round 5: "hf is not a readable cifarlab model folder: Expecting property name ..." named no file."""
    import shutil

    from cifarlab.run.model_file import read_model

    folder = shutil.copytree(model_folder, tmp_path / "m")
    (folder / name).write_bytes(damage)
    with pytest.raises(UserError, match=f"is not a readable cifarlab model folder: its {name} cannot be read: "):
        read_model(folder)


# ------------------------------------------------------------------------------------------------ resume

@pytest.mark.parametrize("blocked", ["metrics.csv", "summary.json", "checkpoints/best.pt", "checkpoints/last.prev.pt"])
def test_a_folder_in_place_of_a_run_file_is_refused_before_anything_is_written(blocked, tmp_path, shared_runs,
                                                                                capsys):
    """Round 5: with a folder at checkpoints/last.pt or metrics.csv, `resume --more 1` trained an epoch, moved
    best.pt, metrics.csv and config.yaml on, and then failed (a traceback for metrics.csv)."""
    from _runs import assert_refused, finished_and_open_runs

    run_dir = finished_and_open_runs(tmp_path / "runs", shared_runs)["done"]
    path = run_dir / blocked
    path.unlink(missing_ok=True)
    path.mkdir()
    capsys.readouterr()  # what training the shared run printed, if this test trained it
    assert_refused(["resume", str(run_dir), "--more", "1"], [f"{blocked} is a directory, where the run writes a file"],
                   {"run": run_dir}, capsys, tmp_path)


@pytest.mark.parametrize("top", ["3", 2.5, True, 0])
def test_predict_files_from_python_refuses_a_top_that_is_not_a_whole_number(top, tmp_path):
    """Round 5: `cifarlab.predict_files(model, paths, top="3")` was a TypeError traceback."""
    import cifarlab

    with pytest.raises(UserError) as refused:
        cifarlab.predict_files(tmp_path / "no.pt", [tmp_path], top=top)
    assert str(refused.value) == f"--top must be at least 1 (a whole number), got {top!r}"


# ----------------------------------------------------------------------------------- Hugging Face data

@pytest.mark.slow  # imports `datasets` and writes a dataset with it
def test_an_image_column_option_naming_the_label_column_blames_the_option(tmp_path, monkeypatch):
    """Round 5: `data.options={image_column: label}` said "cast it, e.g. dataset.cast_column('label',
    datasets.Image())": it told the user to turn their labels into images."""
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    from cifarlab.data.sources import load_dataset

    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    rows = {"img": [Image.new("RGB", (8, 8), (k * 40, 0, 0)) for k in range(6)], "label": [0, 1, 2, 0, 1, 2]}
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    part = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": part, "test": part}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(UserError) as refused:
        load_dataset("hf", tmp_path / "saved", image_column="label")
    assert str(refused.value) == ("data.options.image_column='label' names a ClassLabel column, not an Image one; "
                                  "name img instead")


@pytest.mark.slow  # imports `datasets` and writes a dataset with it
@pytest.mark.parametrize("file, text", [("dataset_dict.json", "{"), ("test/dataset_info.json", "nope"),
                                        ("train/state.json", "[]")])
def test_a_broken_save_to_disk_json_file_is_named(file, text, tmp_path, monkeypatch):
    """Round 5: "cannot read the save_to_disk folder hf: JSONDecodeError: Expecting value ..." named no file."""
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    from cifarlab.data.sources import load_dataset

    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    rows = {"img": [Image.new("RGB", (8, 8), (k * 40, 0, 0)) for k in range(6)], "label": [0, 1, 2, 0, 1, 2]}
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    part = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": part, "test": part}).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "saved" / file).write_text(text)
    with pytest.raises(UserError, match=f"cannot read the save_to_disk folder .*saved: its {file} is broken"):
        load_dataset("hf", tmp_path / "saved")



class HalfBatch(SmallNet):
    def forward(self, x):
        return self.f(x)[: max(1, x.shape[0] // 2)]


def test_a_network_that_returns_fewer_rows_than_images_is_one_line_before_anything_is_written(tmp_path):
    """Round 5: a network returning (N // 2, num_classes) passed the output check and crashed in the loss
    (ValueError: Expected input batch_size (32) to match target batch_size (64)) once the run directory existed."""
    import cifarlab

    with pytest.raises(UserError) as refused:
        cifarlab.train("smoke", [f"output.dir={tmp_path / 'runs'}", "train.threads=1", "train.batch_size=16"],
                       model=HalfBatch, data=_arrays())
    assert "returns a torch.float32 tensor of shape (1, 3) for 2 images; it must return one floating-point tensor " \
           "of logits of shape (2, 3)" in str(refused.value)
    assert not (tmp_path / "runs").exists()


class Items(torch.utils.data.Dataset):
    def __init__(self, item, count=48):
        self.item, self.count = item, count

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        return self.item(index)


@pytest.mark.parametrize("image, kind", [(lambda i: (torch.rand(3, 8, 8), i % 3), "tuple"),
                                         (lambda i: [[0, 1], [2, 3]], "list"), (lambda i: "img.png", "str")])
def test_a_dataset_item_whose_image_is_no_image_is_one_line(image, kind, tmp_path):
    """Round 5: an item ((image, label), label) (a dataset wrapped twice) was a numpy ValueError traceback."""
    import cifarlab

    good = Items(lambda i: (torch.rand(3, 8, 8), i % 3))
    with pytest.raises(UserError) as refused:
        cifarlab.train("smoke", [f"output.dir={tmp_path / 'runs'}", "train.threads=1", "train.batch_size=16"],
                       model=SmallNet, data=(Items(lambda i: (image(i), i % 3)), good, ["a", "b", "c"]))
    assert str(refused.value) == f"train item 0: image must be a torch tensor, a numpy array or a PIL image, got {kind}"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("text, value", [("5e-2", 0.05), ("1E3", 1000.0), ("-2.5e-3", -0.0025), ("10", 10),
                                         ("5e", "5e"), ("e5", "e5")])
def test_yaml_reads_an_exponent_without_a_dot_as_a_float(text, value):
    """YAML 1.2's float: PyYAML gave the string "5e-2", so `--grid optim.lr=5e-2,0.05` trained the same lr twice."""
    from cifarlab.strict_yaml import load_yaml

    assert load_yaml(text) == value and type(load_yaml(text)) is type(value)


def test_a_grid_listing_one_value_in_two_spellings_is_refused(tmp_path):
    pytest.importorskip("optuna")
    from cifarlab.sweep import define_sweep

    with pytest.raises(UserError, match="space key 'optim.lr' lists 0.05 twice"):
        define_sweep("smoke", ["data.val_split=64"], grid=["optim.lr=5e-2,0.05"], sweep_dir=str(tmp_path / "s"))
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("name", ["a/b", "..", "x\\y"])
def test_a_study_name_that_is_no_folder_name_blames_name(name, tmp_path, monkeypatch):
    """Round 5: `--name a/b` was refused as `name='a/b' must be one folder name ...`, the config's key."""
    pytest.importorskip("optuna")
    from cifarlab.sweep import define_sweep

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"^--name .* names the sweep's folder \(sweeps/NAME\)"):
        define_sweep("smoke", ["data.val_split=64"], grid=["optim.lr=0.05"], name=name)
    assert not list(tmp_path.iterdir())


def test_a_space_step_larger_than_its_range_is_refused(tmp_path):
    """Round 5: `{low: 16, high: 32, step: 64}` swept 16 alone, silently (Optuna trims high to the last step)."""
    pytest.importorskip("optuna")
    from cifarlab.sweep import define_sweep

    space = tmp_path / "space.yaml"
    space.write_text("train.batch_size: {low: 16, high: 32, step: 64}\n")
    with pytest.raises(UserError, match="step 64 is larger than the range 16..32, so only 16 would be tried"):
        define_sweep("smoke", ["data.val_split=64"], space_file=str(space), trials=2, sweep_dir=str(tmp_path / "s"))
    assert not (tmp_path / "s").exists()
