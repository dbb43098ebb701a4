"""The cases of bench/adversarial.py, by surface, and the files they start from (`build_fixtures`).

Each case gets its own folder (the working directory of its command); what it copies there from the fixtures
is hashed before the command and checked after. Settings every training case takes: one thread, fp32 (no
precision probe) unless the case is about the probe, no TensorBoard, no progress bars."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from adversarial import CLI, HIGH, LOW, MEDIUM, Case, Context, Result, accept, either, refuse, snapshot

FAST = ["train.threads=1", "train.precision=fp32", "output.tensorboard=false", "output.progress=none"]
CASES: list[Case] = []


def case(name: str, surface: str, expect):
    """Registers the decorated `(ctx, folder) -> Result` as a case."""
    def register(run: Callable[[Context, Path], Result]):
        CASES.append(Case(name, surface, run, expect))
        return run
    return register


def cli_case(name: str, surface: str, expect, *argv, setup: Optional[Callable[[Context, Path], None]] = None,
             env: Optional[dict] = None):
    """A case that runs `cifarlab *argv` in its folder after `setup(ctx, folder)`; `{run}`, `{fx}`, `{folder}` in
    an argument stand for the case's copy of the trained run, the fixtures folder and the case folder."""
    def run(ctx: Context, folder: Path) -> Result:
        if setup is not None:
            setup(ctx, folder)
        words = [str(arg).replace("{run}", str(folder / "run")).replace("{fx}", str(ctx.root / "fx"))
                 .replace("{folder}", str(folder)) for arg in argv]
        return snapshot(lambda: ctx.cli(folder, *words, env=env), folder)
    CASES.append(Case(name, surface, run, expect))


def py_case(name: str, surface: str, expect, body: str, setup: Optional[Callable[[Context, Path], None]] = None):
    """A case that runs the Python `body` (with `run`, `fx`, `folder` as Paths) in its folder."""
    def run(ctx: Context, folder: Path) -> Result:
        if setup is not None:
            setup(ctx, folder)
        head = (f"from pathlib import Path\nrun, fx, folder = Path({str(folder / 'run')!r}), "
                f"Path({str(ctx.root / 'fx')!r}), Path({str(folder)!r})\n")
        return snapshot(lambda: ctx.python(folder, head + body), folder)
    CASES.append(Case(name, surface, run, expect))


# ------------------------------------------------------------------------------------------------ fixtures

MODULES = {
    "mynets.py": """
import torch
from torch import nn
import cifarlab

class Tiny(nn.Module):
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, num_classes))
    def forward(self, x):
        return self.net(x)

@cifarlab.register_model("tinynet")
def tinynet(num_classes=10, in_channels=3, norm="batch", dropout=0.0):
    return Tiny(num_classes, in_channels)
""",
    "badimport.py": "raise RuntimeError('this module fails on import')\n",
    "badsyntax.py": "def broken(:\n",
    "registersnothing.py": "X = 1\n",
    "clash.py": "import cifarlab\n\n@cifarlab.register_model('convnet')\ndef convnet(**options):\n    return None\n",
    "writesmarker.py": "import pathlib\npathlib.Path('MARKER-imported').write_text('ran')\n",
}


def _png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _class_images(rng, label: int, size: int = 16) -> np.ndarray:
    """A 3-channel image whose class a tiny network tells apart: dark, bright or striped."""
    pixels = rng.integers(0, 60, (size, size, 3)).astype(np.uint8) + (150 if label == 1 else 0)
    if label == 2:
        pixels[::4] = 255
    return pixels.astype(np.uint8)


HF_CLASSES = ["dark", "bright", "striped"]


def hf_dataset_dict(test_names=HF_CLASSES, counts=(96, 48), label_column="label", plain_labels=False):
    """train and test splits of `_class_images`; the test split's ClassLabel lists `test_names`, each label written
    under its own name (a class missing from `test_names` keeps its number)."""
    import datasets
    from PIL import Image

    splits = {}
    for split, count, seed, names in (("train", counts[0], 0, HF_CLASSES), ("test", counts[1], 1, list(test_names))):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 3, count).tolist()
        rows = {"img": [Image.fromarray(_class_images(rng, k, 20)) for k in labels],
                label_column: [names.index(HF_CLASSES[k]) if HF_CLASSES[k] in names else k for k in labels]}
        label_feature = datasets.Value("int64") if plain_labels else datasets.ClassLabel(names=list(names))
        features = datasets.Features({"img": datasets.Image(), label_column: label_feature})
        splits[split] = datasets.Dataset.from_dict(rows, features=features)
    return datasets.DatasetDict(splits)


def write_parquet(dataset_dict, folder: Path) -> Path:
    (folder / "data").mkdir(parents=True)
    for split, part in dataset_dict.items():
        part.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def build_fixtures(ctx: Context, surfaces: set[str]) -> None:
    fx = ctx.root / "fx"
    (ctx.root / "modules").mkdir()
    for name, text in MODULES.items():
        (ctx.root / "modules" / name).write_text(text.lstrip())
    rng = np.random.default_rng(0)
    for index in range(4):
        _png(fx / "images" / f"img{index}.png", rng.integers(0, 255, (16, 16, 3)).astype(np.uint8))
    _png(fx / "images" / "sub" / "deep.png", rng.integers(0, 255, (20, 12, 3)).astype(np.uint8))
    for split, count in (("train", 10), ("test", 4)):
        for label, name in enumerate(HF_CLASSES):
            for index in range(count):
                _png(fx / "folder" / split / name / f"{index}.png", _class_images(rng, label, 12))
    fx.mkdir(exist_ok=True)
    done = ctx.cli(fx, "train", "smoke", "output.dir=runs", "checkpoint.every_steps=4", *FAST)
    assert done.rc == 0, done.err[-500:]
    (run_dir,) = (fx / "runs" / "smoke").iterdir()
    shutil.move(str(run_dir), fx / "run")
    shutil.rmtree(fx / "runs")
    for fmt, out in (("hf", "hf"), ("safetensors", "model.safetensors"), ("torchscript", "model.torchscript.pt")):
        made = ctx.cli(fx, "export", fx / "run" / "checkpoints" / "best.pt", "--format", fmt, "--out", fx / out)
        assert made.rc == 0, made.err[-500:]
    if "resume" in surfaces:  # a run that logged to W&B (offline) and MLflow: its wandb.json and mlflow.json
        tracked = ctx.cli(fx, "train", "smoke", "output.dir=tracked", "output.wandb=true", "output.mlflow=true",
                          *FAST)
        assert tracked.rc == 0, tracked.err[-500:]
        (run_dir,) = (fx / "tracked" / "smoke").iterdir()
        shutil.move(str(run_dir), fx / "run-tracked")
    if surfaces & {"hf-data"}:
        hf_dataset_dict().save_to_disk(str(fx / "hf_saved"))
        write_parquet(hf_dataset_dict(), fx / "hf_parquet")
    if "precision" in surfaces:
        probed = ctx.cli(fx, "train", "smoke", "output.dir=probe", "train.threads=1", "train.epochs=1",
                         "schedule.peak_epoch=0.5", "output.tensorboard=false", "output.progress=none")
        assert probed.rc == 0, probed.err[-500:]


def copy_run(ctx: Context, folder: Path) -> Path:
    shutil.copytree(ctx.root / "fx" / "run", folder / "run")
    return folder / "run"


def copy_tracked(ctx: Context, folder: Path) -> Path:
    shutil.copytree(ctx.root / "fx" / "run-tracked", folder / "run")
    return folder / "run"


def copy_fx(name: str, dest: Optional[str] = None) -> Callable[[Context, Path], None]:
    def setup(ctx: Context, folder: Path) -> None:
        source, target = ctx.root / "fx" / name, folder / (dest or name)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
    return setup


def chain(*setups):
    def setup(ctx: Context, folder: Path) -> None:
        for step in setups:
            step(ctx, folder)
    return setup


def summary_of(result: Result, pattern: str = "runs/*/*/summary.json") -> dict:
    found = sorted(result.folder.glob(pattern))
    return json.loads(found[-1].read_text()) if found else {}


def finished(result: Result) -> Optional[str]:
    status = summary_of(result).get("status")
    return None if status == "completed" else f"the run's summary.json says status {status!r}, not completed"


# ------------------------------------------------------------------------------------ config and train

TRAIN = ["train", "smoke", *FAST, "train.epochs=1", "schedule.peak_epoch=0.5"]
for name, overrides, words in [
    ("milestone-past-end", ["schedule.name=multistep", "schedule.milestones=[1,5]"], ["schedule.milestones", "5"]),
    ("milestone-at-end", ["schedule.name=multistep", "schedule.milestones=[1]"], ["schedule.milestones"]),
    ("warmup-past-end", ["schedule.name=cosine", "schedule.warmup_epochs=3"], ["schedule.warmup_epochs", "3"]),
    ("warmup-equals-run", ["schedule.name=cosine", "schedule.warmup_epochs=1"], ["schedule.warmup_epochs"]),
    ("lookahead-after-end", ["train.lookahead={start_epoch: 4}"], ["train.lookahead.start_epoch"]),
    ("peak-after-end", ["schedule.peak_epoch=3"], ["schedule.peak_epoch"]),
    ("mean-too-long", ["data.mean=[0.5,0.5,0.5,0.5]"], ["data.mean", "3 values"]),
    ("std-too-long", ["data.std=[0.2,0.2,0.2,0.2]"], ["data.std", "3 values"]),
    ("mean-too-short", ["data.mean=[0.5]"], ["data.mean"]),
    ("std-zero", ["data.std=[0.2,0,0.2]"], ["data.std"]),
    ("std-negative", ["data.std=[0.2,-1,0.2]"], ["data.std"]),
    ("mean-nan", ["data.mean=[.nan,0.5,0.5]"], ["data.mean"]),
    ("mean-string", ["data.mean=abc"], ["data.mean"]),
    ("val-split-zero", ["data.val_split=0"], ["data.val_split"]),
    ("val-split-one", ["data.val_split=1.0"], ["data.val_split"]),
    ("val-split-all", ["data.val_split=512"], ["data.val_split"]),
    ("batch-zero", ["train.batch_size=0"], ["train.batch_size"]),
    ("epochs-bool", ["train.epochs=true"], ["train.epochs"]),
    ("lr-inf", ["optim.lr=.inf"], ["optim.lr"]),
    ("keep-zero", ["output.keep=0"], ["output.keep"]),
    ("keep-huge", ["output.keep=5000"], ["output.keep"]),
    ("keep-string", ["output.keep=best"], ["output.keep"]),
    ("name-empty", ["name="], ["name"]),
    ("name-dotdot", ["name=../escape"], ["name"]),
    ("name-slash", ["name=a/b"], ["name"]),
    ("unknown-key", ["optim.lrr=0.1"], ["optim.lrr", "allowed"]),
    ("override-no-equals", ["optim.lr"], ["key=value"]),
    ("model-unknown", ["model.name=nosuchnet"], ["nosuchnet"]),
    ("module-missing", ["model.module=nosuchmodule"], ["nosuchmodule"]),
    ("module-raises", ["model.module=badimport"], ["badimport"]),
    ("module-syntax", ["model.module=badsyntax"], ["badsyntax"]),
    ("module-registers-nothing", ["model.module=registersnothing", "model.name=tinynet"], ["tinynet"]),
    ("module-path", ["model.module=../modules/mynets"], ["model.module"]),
    ("module-clash", ["model.module=clash"], ["convnet"]),
    ("every-steps-zero", ["checkpoint.every_steps=0"], ["checkpoint.every_steps"]),
    ("threads-zero", ["train.threads=0"], ["train.threads"]),
    ("subset-zero", ["data.train_subset=0"], ["data.train_subset"]),
    ("whiten-bias-past-end", ["model.name=fastnet", "model.options={whiten_bias_epochs: 5}"],
     ["whiten_bias_epochs"]),
    ("monitor-val-without-split", ["checkpoint.monitor=val_acc"], ["val_acc"]),
    ("init-from-missing", ["model.init_from=nothere.pt"], ["nothere.pt"]),
    ("init-from-folder", ["model.init_from=."], ["model.init_from"]),
    ("early-stop-zero", ["train.early_stop_patience=0"], ["early_stop_patience"]),
    ("data-options-unknown", ["data.options={num_train: 64, nosuch: 1}"], ["nosuch"]),
    ("model-options-unknown", ["model.options={depth: 3}"], ["depth"]),
    ("dataset-unknown", ["data.dataset=imagenet"], ["imagenet"]),
]:
    known_low = name.startswith(("milestone", "warmup", "mean-too-long"))  # issue 27's known low findings
    cli_case(name, "config", refuse(*words, silent=LOW if known_low else HIGH), *TRAIN, *overrides)

cli_case("output-dir-is-a-file", "config", refuse("output.dir"), *TRAIN, "output.dir=afile",
         setup=lambda ctx, folder: (folder / "afile").write_text("mine\n"))
cli_case("recipe-missing", "config", refuse("nosuch.yaml"), "train", "nosuch.yaml")
cli_case("recipe-a-list", "config", refuse("mapping"), "train", "list.yaml",
         setup=lambda ctx, folder: (folder / "list.yaml").write_text("- 1\n- 2\n"))
cli_case("recipe-duplicate-key", "config", refuse("duplicate"), "train", "dup.yaml",
         setup=lambda ctx, folder: (folder / "dup.yaml").write_text("seed: 1\nseed: 2\n"))
cli_case("recipe-python-tag", "config", refuse("dup.yaml"), "train", "dup.yaml",
         setup=lambda ctx, folder: (folder / "dup.yaml").write_text(
             "seed: !!python/object/apply:os.system ['touch MARKER']\n"))
cli_case("model-module-runs-on-show", "config", either(check=lambda r: "MARKER-imported ran on show" if
                                                          (r.folder / "MARKER-imported").exists() else None),
         "show", "smoke", "model.module=writesmarker")
cli_case("show-milestone-inside", "config", accept(lambda r: None if "milestones:\n  - 1" in r.out else
                                                      "milestones not shown", wrong=LOW),
         "show", "smoke", "schedule.name=multistep", "schedule.milestones=[1]")


def _kept_best_epoch(result: Result) -> Optional[str]:
    kept = sorted(p.name for p in result.folder.glob("runs/*/*/checkpoints/epoch-*.pt"))
    best = summary_of(result).get("best_epoch")
    return None if kept == [f"epoch-{best:04d}.pt"] else f"output.keep=1 kept {kept}, best epoch {best}"


cli_case("train-keep-1", "config", accept(_kept_best_epoch), "train", "smoke", *FAST, "output.keep=1",
         "output.dir=runs")


def _run_dir_other(ctx, folder):
    (folder / "mine").mkdir()
    (folder / "mine" / "notes.txt").write_text("mine\n")


cli_case("run-dir-not-empty", "run-dir", refuse("mine"), *TRAIN, "--run-dir", "mine", setup=_run_dir_other)
cli_case("run-dir-is-file", "run-dir", refuse("afile"), *TRAIN, "--run-dir", "afile",
         setup=lambda ctx, folder: (folder / "afile").write_text("x\n"))
cli_case("run-dir-other-config", "run-dir", refuse("run"), "train", "smoke", *FAST, "train.epochs=1",
         "schedule.peak_epoch=0.5", "optim.lr=0.2", "--run-dir", "run", setup=copy_run)
cli_case("run-dir-same-config-finished", "run-dir", accept(keep=True), "train", "smoke", "output.dir=runs",
         "checkpoint.every_steps=4", *FAST, "--run-dir", "run", setup=copy_run)
cli_case("run-dir-inside-run", "run-dir", refuse(), *TRAIN, "--run-dir", "run/checkpoints", setup=copy_run)
cli_case("run-dir-empty-string", "run-dir", refuse("--run-dir"), *TRAIN, "--run-dir", "")


# ------------------------------------------------------------------------------------------------ resume

def _write(relative: str, text: str):
    def setup(ctx, folder):
        path = folder / relative
        if path.is_dir():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return setup


def _truncate(relative: str, keep: int):
    def setup(ctx, folder):
        path = folder / relative
        path.write_bytes(path.read_bytes()[:keep])
    return setup


RESUME = ["resume", "run"]
for name, setup, argv, words in [
    ("resume-finished", copy_run, [], ["finished"]),
    ("resume-epochs-less", copy_run, ["--epochs", "1"], ["--epochs"]),
    ("resume-epochs-equal", copy_run, ["--epochs", "2"], ["--epochs"]),
    ("resume-more-zero", copy_run, ["--more", "0"], ["--more"]),
    ("resume-more-negative", copy_run, ["--more", "-3"], ["--more"]),
    ("resume-both", copy_run, ["--more", "1", "--epochs", "4"], ["--epochs"]),
    ("resume-missing", None, [], ["run"]),
    ("resume-a-file", _write("run", "x"), [], ["run"]),
    ("resume-wandb-not-json", chain(copy_tracked, _write("run/wandb.json", "{not json")), ["--more", "1"],
     ["wandb.json"]),
    ("resume-wandb-list", chain(copy_tracked, _write("run/wandb.json", "[1, 2]")), ["--more", "1"], ["wandb.json"]),
    ("resume-wandb-no-id", chain(copy_tracked, _write("run/wandb.json", '{"project": "p"}')), ["--more", "1"],
     ["wandb.json"]),
    ("resume-wandb-id-int", chain(copy_tracked, _write("run/wandb.json", '{"run_id": 5, "project": "p"}')),
     ["--more", "1"], ["wandb.json"]),
    ("resume-wandb-folder", chain(copy_tracked, lambda c, f: (f / "run" / "wandb.json").unlink()
                                  or (f / "run" / "wandb.json").mkdir()), ["--more", "1"],
     ["wandb.json"]),
    ("resume-mlflow-not-json", chain(copy_tracked, _write("run/mlflow.json", "nope")), ["--more", "1"],
     ["mlflow.json"]),
    ("resume-mlflow-no-id", chain(copy_tracked, _write("run/mlflow.json", '{"tracking_uri": "x"}')), ["--more", "1"],
     ["mlflow.json"]),
    ("resume-mlflow-null", chain(copy_tracked, _write("run/mlflow.json", "null")), ["--more", "1"], ["mlflow.json"]),
    ("resume-both-checkpoints-cut", chain(copy_run, _truncate("run/checkpoints/last.pt", 100),
                                          _truncate("run/checkpoints/last.prev.pt", 100)), ["--more", "1"],
     ["last"]),
    ("resume-last-is-folder", chain(copy_run, lambda c, f: (f / "run/checkpoints/last.pt").unlink()
                                    or (f / "run/checkpoints/last.pt").mkdir()), ["--more", "1"], ["last.pt"]),
    ("resume-metrics-is-folder", chain(copy_run, lambda c, f: (f / "run/metrics.csv").unlink()
                                       or (f / "run/metrics.csv").mkdir()), ["--more", "1"], ["metrics.csv"]),
    ("resume-import-missing", copy_run, ["--more", "1", "--import", "nosuchmodule"], ["nosuchmodule"]),
]:
    cli_case(name, "resume", refuse(*words), *RESUME, *argv, setup=setup)


def _more_grew(result: Result) -> Optional[str]:
    summary = json.loads((result.folder / "run" / "summary.json").read_text())
    rows = (result.folder / "run" / "metrics.csv").read_text().splitlines()
    epochs = [line.split(",")[0] for line in rows[1:]]
    return None if summary.get("epochs_completed") == 3 else f"summary says {summary.get('epochs_completed')} epochs" \
        + f" ({len(epochs)} metric rows)"


cli_case("resume-more-one", "resume", accept(_more_grew), *RESUME, "--more", "1", setup=copy_run)
cli_case("resume-config-yaml-garbage", "resume", accept(_more_grew), *RESUME,
         "--more", "1", setup=chain(copy_run, _write("run/config.yaml", "train: [unclosed\n")))  # last.pt decides
cli_case("resume-summary-garbage-finished", "resume",  # documented: last.pt is the truth, the summary is rebuilt
         accept(lambda r: None if json.loads((r.folder / "run" / "summary.json").read_text()).get("status")
                == "completed" else "summary.json not rebuilt"),
         *RESUME, setup=chain(copy_run, _write("run/summary.json", "][")))
cli_case("resume-tracked-more-one", "resume", accept(_more_grew), *RESUME, "--more", "1", setup=copy_tracked)
cli_case("resume-last-cut-falls-back", "resume", accept(_more_grew), *RESUME, "--more", "1",
         setup=chain(copy_run, _truncate("run/checkpoints/last.pt", 1000)))
cli_case("resume-metrics-torn-line", "resume", accept(_more_grew), *RESUME, "--more", "1",
         setup=chain(copy_run, lambda c, f: (f / "run/metrics.csv").open("a").write("3,0.5,0.")))


# ------------------------------------------------------------------------------------------- model files

def _edit_config(change: Callable[[dict], None]):
    def setup(ctx, folder):
        shutil.copytree(ctx.root / "fx" / "hf", folder / "hf")
        path = folder / "hf" / "config.json"
        config = json.loads(path.read_text())
        change(config)
        path.write_text(json.dumps(config))
    return setup


def _set(key, value):
    def change(config):
        config[key] = value
    return change


def _drop(key):
    def change(config):
        config.pop(key)
    return change


def _edit_weights(change: Callable[[dict], dict], source: str = "hf/model.safetensors"):
    def setup(ctx, folder):
        from safetensors.torch import load_file, save_file

        shutil.copytree(ctx.root / "fx" / "hf", folder / "hf")
        if source != "hf/model.safetensors":
            shutil.copy(ctx.root / "fx" / source, folder / source)
        path = folder / source
        save_file(change(load_file(str(path))), str(path))
    return setup


def _poison(value):
    def change(weights):
        name = next(key for key in weights if key.endswith("weight") and weights[key].is_floating_point())
        weights[name] = weights[name].detach().clone().contiguous()
        weights[name].view(-1)[0] = value
        return weights
    return change


def _as_integers(weights):
    return {key: value.round().to(__import__("torch").int32) if value.is_floating_point() else value
            for key, value in weights.items()}


def _drop_key(weights):
    weights.pop(sorted(weights)[0])
    return weights


def _extra_key(weights):
    import torch

    weights["extra.weight"] = torch.zeros(3)
    return weights


def _wrong_shape(weights):
    name = sorted(key for key in weights if key.endswith("weight"))[-1]
    weights[name] = weights[name][:-1].clone()
    return weights


FOLDER_FAULTS = [
    ("no-classes", _edit_config(_drop("classes")), ["classes"]),
    ("classes-duplicated", _edit_config(_set("classes", ["a"] * 10)), ["classes"]),
    ("classes-integers", _edit_config(_set("classes", list(range(10)))), ["classes"]),
    ("classes-too-few", _edit_config(_set("classes", ["a", "b", "c"])), ["classes"]),
    ("classes-empty-name", _edit_config(_set("classes", [""] + [f"c{k}" for k in range(9)])), ["classes"]),
    ("mean-nan", _edit_config(_set("mean", [float("nan")] * 3)), ["mean"]),
    ("std-zero", _edit_config(_set("std", [0.0, 0.2, 0.2])), ["std"]),
    ("std-negative", _edit_config(_set("std", [-0.2, 0.2, 0.2])), ["std"]),
    ("std-short", _edit_config(_set("std", [0.2])), ["std"]),
    ("mean-long", _edit_config(_set("mean", [0.5] * 5)), ["mean"]),
    ("mean-strings", _edit_config(_set("mean", ["a", "b", "c"])), ["mean"]),
    ("image-size-zero", _edit_config(_set("image_size", 0)), ["image_size"]),
    ("image-size-float", _edit_config(_set("image_size", 16.5)), ["image_size"]),
    ("channels-two", _edit_config(_set("in_channels", 2)), ["channels"]),
    ("no-run-config", _edit_config(_drop("run_config")), ["run_config"]),
    ("architecture-other", _edit_config(_set("architecture", "resnet18")), ["config"]),
    ("options-width-other", _edit_config(lambda c: c["options"].update(width=16)), ["config"]),
    ("id2label-disagrees", _edit_config(_set("id2label", {str(k): f"other{k}" for k in range(10)})), ["label"]),
    ("config-not-json", lambda ctx, folder: (shutil.copytree(ctx.root / "fx" / "hf", folder / "hf"),
                                             (folder / "hf" / "config.json").write_text("{oops")), ["config.json"]),
    ("config-a-list", _edit_config(lambda c: c.clear()), ["config"]),
    ("config-missing", lambda ctx, folder: (shutil.copytree(ctx.root / "fx" / "hf", folder / "hf"),
                                            (folder / "hf" / "config.json").unlink()), ["config.json"]),
    ("weights-missing", lambda ctx, folder: (shutil.copytree(ctx.root / "fx" / "hf", folder / "hf"),
                                             (folder / "hf" / "model.safetensors").unlink()), ["model.safetensors"]),
    ("weights-truncated", lambda ctx, folder: (shutil.copytree(ctx.root / "fx" / "hf", folder / "hf"),
                                               _truncate("hf/model.safetensors", 300)(ctx, folder)),
     ["model.safetensors"]),
    ("weights-nan", _edit_weights(_poison(float("nan"))), ["non-finite"]),
    ("weights-inf", _edit_weights(_poison(float("inf"))), ["non-finite"]),
    ("weights-integer", _edit_weights(_as_integers), ["int"]),
    ("weights-key-missing", _edit_weights(_drop_key), ["config"]),
    ("weights-key-extra", _edit_weights(_extra_key), ["extra.weight"]),
    ("weights-wrong-shape", _edit_weights(_wrong_shape), ["config"]),
]
for fault, setup, words in FOLDER_FAULTS:
    cli_case(f"predict-folder-{fault}", "model-file", refuse(*words), "predict", "hf", "{fx}/images/img0.png",
             setup=setup)
for fault, setup, words in FOLDER_FAULTS[:: 3]:
    cli_case(f"eval-folder-{fault}", "model-file", refuse(*words), "eval", "hf", setup=setup)
for fault, setup, words in FOLDER_FAULTS[1:: 4]:
    cli_case(f"export-folder-{fault}", "model-file", refuse(*words), "export", "hf", "--format", "safetensors",
             "--out", "out.safetensors", setup=setup)
if True:  # a model folder's config.json naming a module never imports it
    cli_case("predict-folder-module-not-imported", "model-file",
             either(check=lambda r: "imported a module the folder names" if (r.folder / "MARKER-imported").exists()
                    else None),
             "predict", "hf", "{fx}/images/img0.png",
             setup=_edit_config(lambda c: c.update(module="writesmarker")))


def _same_as_checkpoint(result: Result) -> Optional[str]:
    lines = result.out.strip().splitlines()
    want = result.folder / "want.txt"
    return None if want.exists() and lines == want.read_text().splitlines() else \
        f"folder predicts {lines[:1]}, the checkpoint {want.read_text().splitlines()[:1] if want.exists() else '?'}"


def _predict_from_checkpoint(ctx: Context, folder: Path) -> None:
    done = ctx.cli(ctx.root / "fx", "predict", ctx.root / "fx" / "run" / "checkpoints" / "best.pt",
                   ctx.root / "fx" / "images", "--json")
    (folder / "want.txt").write_text(done.out)


cli_case("predict-folder-equals-checkpoint", "model-file", accept(_same_as_checkpoint), "predict", "{fx}/hf",
         "{fx}/images", "--json", setup=_predict_from_checkpoint)
cli_case("predict-safetensors-file", "model-file", refuse("safetensors"), "predict", "{fx}/model.safetensors",
         "{fx}/images/img0.png")
cli_case("predict-torchscript-file", "model-file", refuse("torchscript"), "predict", "{fx}/model.torchscript.pt",
         "{fx}/images/img0.png")
cli_case("eval-safetensors-file", "model-file", refuse("safetensors"), "eval", "{fx}/model.safetensors")
cli_case("export-torchscript-file", "model-file", refuse("torchscript"), "export", "{fx}/model.torchscript.pt",
         "--format", "onnx")
cli_case("predict-pt-truncated", "model-file", refuse("best.pt"), "predict", "best.pt", "{fx}/images/img0.png",
         setup=lambda ctx, folder: (folder / "best.pt").write_bytes(
             (ctx.root / "fx" / "run/checkpoints/best.pt").read_bytes()[:5000]))
cli_case("predict-pt-garbage", "model-file", refuse("best.pt"), "predict", "best.pt", "{fx}/images/img0.png",
         setup=lambda ctx, folder: (folder / "best.pt").write_bytes(os.urandom(4096)))
cli_case("predict-pt-empty", "model-file", refuse("best.pt"), "predict", "best.pt", "{fx}/images/img0.png",
         setup=lambda ctx, folder: (folder / "best.pt").write_bytes(b""))


def _pickle_payload(ctx, folder):
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {folder / 'MARKER-pickle'}",))

    (folder / "evil.pt").write_bytes(pickle.dumps({"model": Payload()}))


cli_case("predict-pt-pickle-payload", "model-file", refuse("evil.pt"), "predict", "evil.pt", "{fx}/images/img0.png",
         setup=_pickle_payload)


def _checkpoint_edit(change: Callable[[dict], None], name: str = "best.pt"):
    def setup(ctx, folder):
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
        from cifarlab.run.checkpoint import load_checkpoint, save_checkpoint

        payload = load_checkpoint(ctx.root / "fx" / "run" / "checkpoints" / "best.pt")
        change(payload)
        save_checkpoint(payload, folder / name)
    return setup


def _poison_state(payload):
    state = payload["model"]
    name = next(key for key in state if key.endswith("weight"))
    state[name] = state[name].detach().clone().contiguous()
    state[name].view(-1)[0] = float("nan")


def _classes(value):
    def change(payload):
        payload["classes"] = value
    return change


def _mean(key, value):
    def change(payload):
        payload[key] = value
    return change


for fault, change, words in [
    ("nan-weights", _poison_state, ["non-finite"]),
    ("classes-short", _classes(["a", "b"]), ["classes"]),
    ("classes-ints", _classes(list(range(10))), ["classes"]),
    ("std-zero", _mean("std", [0.0, 0.1, 0.1]), ["std"]),
    ("mean-long", _mean("mean", [0.5] * 4), ["mean"]),
    ("epoch-negative", _mean("epoch", -1), ["epoch"]),
    ("config-bad", lambda p: p["config"]["train"].update(epochs="many"), ["epochs"]),
]:
    for command in ("predict", "eval", "export"):
        argv = {"predict": ["predict", "best.pt", "{fx}/images/img0.png"], "eval": ["eval", "best.pt"],
                "export": ["export", "best.pt", "--format", "safetensors"]}[command]
        cli_case(f"{command}-pt-{fault}", "model-file", refuse(*words), *argv, setup=_checkpoint_edit(change))


# ------------------------------------------------------------------------------------------------ predict

PREDICT = ["predict", "{fx}/run/checkpoints/best.pt"]
cli_case("predict-empty-folder", "predict", refuse("empty"), *PREDICT, "empty",
         setup=lambda ctx, folder: (folder / "empty").mkdir())
cli_case("predict-missing-file", "predict", refuse("nothere.png"), *PREDICT, "nothere.png")
cli_case("predict-not-an-image", "predict", refuse("fake.png"), *PREDICT, "fake.png",
         setup=lambda ctx, folder: (folder / "fake.png").write_text("not a png"))
cli_case("predict-top-zero", "predict", refuse("--top"), *PREDICT, "{fx}/images", "--top", "0")
cli_case("predict-top-over-classes", "predict", either(check=lambda r: None if r.out.count("%") == 10 * 5 else
                                                       f"{r.out.count('%')} probabilities for 5 images"),
         *PREDICT, "{fx}/images", "--top", "50")
cli_case("predict-csv-exists", "predict", refuse("mine.csv"), *PREDICT, "{fx}/images", "--csv", "mine.csv",
         setup=lambda ctx, folder: (folder / "mine.csv").write_text("my data\n"))
cli_case("predict-csv-in-missing-folder", "predict", refuse("out.csv"), *PREDICT, "{fx}/images", "--csv",
         "nowhere/out.csv")
cli_case("predict-csv-ok", "predict", accept(lambda r: None if len((r.folder / "p.csv").read_text().splitlines())
                                             == 6 else "csv rows"), *PREDICT, "{fx}/images", "--csv", "p.csv")
cli_case("predict-grey-image", "predict", accept(), *PREDICT, "grey.png",
         setup=lambda ctx, folder: _png(folder / "grey.png", np.full((9, 9), 128, np.uint8)))
cli_case("predict-16bit-image", "predict", accept(), *PREDICT, "deep.png",
         setup=lambda ctx, folder: __import__("PIL.Image").Image.fromarray(
             np.full((8, 8), 40000, np.uint16)).save(folder / "deep.png"))
cli_case("predict-one-pixel", "predict", accept(), *PREDICT, "dot.png",
         setup=lambda ctx, folder: _png(folder / "dot.png", np.zeros((1, 1, 3), np.uint8)))
cli_case("predict-fifo", "predict", refuse("fifo.png"), *PREDICT, "fifo.png",
         setup=lambda ctx, folder: os.mkfifo(folder / "fifo.png"))
cli_case("predict-dangling-link", "predict", refuse("link.png"), *PREDICT, "link.png",
         setup=lambda ctx, folder: os.symlink(folder / "gone.png", folder / "link.png"))
cli_case("predict-symlink-loop", "predict", either(), *PREDICT, "loop",
         setup=lambda ctx, folder: ((folder / "loop").mkdir(), _png(folder / "loop" / "a.png",
                                    np.zeros((4, 4, 3), np.uint8)), os.symlink(folder / "loop",
                                                                               folder / "loop" / "again")))
cli_case("predict-hidden-only", "predict", refuse("hidden"), *PREDICT, "hidden",
         setup=lambda ctx, folder: _png(folder / "hidden" / ".secret.png", np.zeros((4, 4, 3), np.uint8)))
py_case("api-predict-folder", "predict", either("predict_files"),
        "print(cifarlab.predict(fx / 'run/checkpoints/best.pt', [fx / 'images']))")
py_case("api-predict-files-folder", "predict", accept(lambda r: None if r.out.count("png") == 5 else r.out[-200:]),
        "print([str(p) for p, _ in cifarlab.predict_files(fx / 'run/checkpoints/best.pt', [fx / 'images'])])")
py_case("api-predict-float-out-of-range", "predict", refuse("[0, 1]"),
        "import numpy as np\nprint(cifarlab.predict(fx / 'run/checkpoints/best.pt', [np.full((8, 8, 3), 2.0)]))")
py_case("api-predict-top-string", "predict", refuse("top"),
        "print(cifarlab.predict(fx / 'run/checkpoints/best.pt', [fx / 'images/img0.png'], top='3'))")
py_case("api-predict-files-top-string", "predict", refuse("top"),
        "print(cifarlab.predict_files(fx / 'run/checkpoints/best.pt', [fx / 'images'], top='3'))")
py_case("api-predict-empty-list", "predict", either("image"),
        "print(cifarlab.predict(fx / 'run/checkpoints/best.pt', []))")


# --------------------------------------------------------------------------------------------- HF data

HF = ["train", "smoke", *FAST, "data.dataset=hf", "data.val_split=null", "data.options={}", "train.epochs=4",
      "schedule.peak_epoch=1", "train.batch_size=16", "output.dir=runs"]


def _hf_saved(make=None, name: str = "hf"):
    def setup(ctx, folder):
        (make() if make else hf_dataset_dict()).save_to_disk(str(folder / name))
    return setup


def _hf_parquet(make=None, name: str = "hf"):
    def setup(ctx, folder):
        write_parquet(make() if make else hf_dataset_dict(), folder / name)
    return setup


def _learned(result: Result) -> Optional[str]:
    acc = summary_of(result).get("best_test_acc")
    return None if acc is not None and acc >= 0.6 else f"best_test_acc {acc} on classes a tiny net tells apart"


def _no_label(splits):
    splits["test"] = splits["test"].remove_columns("label")
    return splits


def _hf_without_label():
    return _no_label(hf_dataset_dict())


def _empty_test():
    splits = hf_dataset_dict()
    splits["test"] = splits["test"].select([])
    return splits


def _renamed_test():
    splits = hf_dataset_dict()
    splits["test"] = splits["test"].rename_column("label", "target")
    return splits


for layout_name, writer in (("saved", _hf_saved), ("parquet", _hf_parquet)):
    cli_case(f"hf-{layout_name}-trains", "hf-data", accept(_learned), *HF, "data.dir=hf", setup=writer())
    cli_case(f"hf-{layout_name}-test-other-order", "hf-data", either(check=_learned), *HF, "data.dir=hf",
             setup=writer(lambda: hf_dataset_dict(test_names=["striped", "dark", "bright"])))
    cli_case(f"hf-{layout_name}-test-other-names", "hf-data", refuse("test"), *HF, "data.dir=hf",
             setup=writer(lambda: hf_dataset_dict(test_names=["cat", "dog", "bird"])))
    cli_case(f"hf-{layout_name}-test-no-label", "hf-data", refuse("test", "label"), *HF, "data.dir=hf",
             setup=writer(_hf_without_label))
    cli_case(f"hf-{layout_name}-test-renamed-label", "hf-data", refuse("test", "label"), *HF, "data.dir=hf",
             setup=writer(_renamed_test))
    cli_case(f"hf-{layout_name}-plain-int-labels", "hf-data", refuse("ClassLabel"), *HF, "data.dir=hf",
             setup=writer(lambda: hf_dataset_dict(plain_labels=True)))
    cli_case(f"hf-{layout_name}-empty-test", "hf-data", refuse("test"), *HF, "data.dir=hf", setup=writer(_empty_test))
    cli_case(f"hf-{layout_name}-test-is-train", "hf-data", refuse("train"), *HF, "data.dir=hf",
             "data.options={test_split: train}", setup=writer())
    cli_case(f"hf-{layout_name}-val-is-test", "hf-data", refuse("test"), *HF, "data.dir=hf",
             "data.options={val_split_name: test}", setup=writer())
    cli_case(f"hf-{layout_name}-no-such-split", "hf-data", refuse("nosplit"), *HF, "data.dir=hf",
             "data.options={test_split: nosplit}", setup=writer())
    cli_case(f"hf-{layout_name}-image-column-is-label", "hf-data", refuse("image_column"), *HF, "data.dir=hf",
             "data.options={image_column: label}", setup=writer())
    cli_case(f"hf-{layout_name}-label-column-missing", "hf-data", refuse("label_column"), *HF, "data.dir=hf",
             "data.options={label_column: nothere}", setup=writer())
    cli_case(f"hf-{layout_name}-one-test-row", "hf-data", either(), *HF, "data.dir=hf",
             setup=writer(lambda: hf_dataset_dict(counts=(96, 1))))


def _cut_arrow(ctx, folder):
    _hf_saved()(ctx, folder)
    arrow = sorted((folder / "hf" / "test").glob("*.arrow"))[0]
    arrow.write_bytes(arrow.read_bytes()[:400])


def _break(relative: str, text: str):
    def setup(ctx, folder):
        _hf_saved()(ctx, folder)
        (folder / "hf" / relative).write_text(text)
    return setup


def _cut_parquet(ctx, folder):
    _hf_parquet()(ctx, folder)
    part = folder / "hf" / "data" / "test-00000-of-00001.parquet"
    part.write_bytes(part.read_bytes()[:300])


def _empty_parquet_file(ctx, folder):
    _hf_parquet()(ctx, folder)
    (folder / "hf" / "data" / "test-00001-of-00002.parquet").write_bytes(b"")


def _stray_file(ctx, folder):
    _hf_parquet()(ctx, folder)
    (folder / "hf" / "data" / "README.txt").write_text("notes\n")


def _parquet_second_file_other_order(ctx, folder):
    _hf_parquet()(ctx, folder)
    other = hf_dataset_dict(test_names=["bright", "striped", "dark"])["test"]
    other.to_parquet(str(folder / "hf" / "data" / "test-00001-of-00002.parquet"))


cli_case("hf-saved-truncated-arrow", "hf-data", refuse("hf"), *HF, "data.dir=hf", setup=_cut_arrow)
cli_case("hf-saved-dict-json-broken", "hf-data", refuse("dataset_dict.json"), *HF, "data.dir=hf",
         setup=_break("dataset_dict.json", "{"))
cli_case("hf-saved-info-json-broken", "hf-data", refuse("dataset_info.json"), *HF, "data.dir=hf",
         setup=_break("test/dataset_info.json", "nope"))
cli_case("hf-saved-state-json-broken", "hf-data", refuse("state.json"), *HF, "data.dir=hf",
         setup=_break("train/state.json", "[]"))
cli_case("hf-parquet-truncated", "hf-data", refuse("parquet"), *HF, "data.dir=hf", setup=_cut_parquet)
cli_case("hf-parquet-empty-file", "hf-data", refuse("parquet"), *HF, "data.dir=hf", setup=_empty_parquet_file)
cli_case("hf-parquet-stray-text-file", "hf-data", either(), *HF, "data.dir=hf", setup=_stray_file)
cli_case("hf-parquet-second-file-other-order", "hf-data", either(check=_learned), *HF, "data.dir=hf",
         setup=_parquet_second_file_other_order)
cli_case("hf-folder-empty", "hf-data", refuse("hf"), *HF, "data.dir=hf",
         setup=lambda ctx, folder: (folder / "hf").mkdir())
cli_case("hf-dir-missing", "hf-data", refuse("nothere"), *HF, "data.dir=nothere")
cli_case("hf-option-unknown", "hf-data", refuse("nosuch"), *HF, "data.dir=hf", "data.options={nosuch: 1}",
         setup=_hf_saved())
cli_case("hf-channels-five", "hf-data", refuse("channels"), *HF, "data.dir=hf", "data.options={channels: 5}",
         setup=_hf_saved())


# --------------------------------------------------------------------------------------- folder data

FOLDER = ["train", "folder", *FAST, "train.epochs=2", "output.dir=runs", "output.report=false"]
cli_case("folder-trains", "folder-data", accept(finished), *FOLDER, "data.dir={fx}/folder")
cli_case("folder-one-class", "folder-data", refuse("class"), *FOLDER, "data.dir=one",
         setup=lambda ctx, folder: [_png(folder / "one" / split / "a" / f"{k}.png", np.zeros((8, 8, 3), np.uint8))
                                    for split in ("train", "test") for k in range(3)])
cli_case("folder-test-other-classes", "folder-data", refuse("test"), *FOLDER, "data.dir=mix",
         setup=lambda ctx, folder: [_png(folder / "mix" / split / name / f"{k}.png",
                                         np.full((8, 8, 3), 30 * k, np.uint8))
                                    for split, names in (("train", "ab"), ("test", "ac")) for name in names
                                    for k in range(4)])
cli_case("folder-mixed-sizes", "folder-data", either(), *FOLDER, "data.dir=sizes",
         setup=lambda ctx, folder: [_png(folder / "sizes" / split / name / f"{k}.png",
                                         np.zeros((8 + k, 10, 3), np.uint8))
                                    for split in ("train", "test") for name in "ab" for k in range(4)])


# ---------------------------------------------------------------------------------------- user networks

NET_HEAD = """
import torch
from torch import nn
class Base(nn.Module):
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.num_classes = num_classes
        self.f = nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                               nn.Linear(4, num_classes))
    def forward(self, x):
        return self.f(x)
"""
API_TRAIN = ("run_ = cifarlab.train('smoke', ['output.dir=runs', 'train.threads=1', 'train.precision=fp32', "
             "'output.progress=none', 'output.tensorboard=false', 'train.epochs=1', 'schedule.peak_epoch=0.5'{extra}], "
             "model={model}{data})\nprint(run_.best_test_acc)")


def net_case(name: str, forward: str, words, extra: str = "", model: str = "Net", init: str = "",
             expect=None, data: str = ""):
    body = NET_HEAD + f"class Net(Base):\n{init}    def forward(self, x):\n        {forward}\n" + \
        API_TRAIN.format(extra=extra, model=model, data=data)
    py_case(f"net-{name}", "user-net", expect or refuse(*words), body)


net_case("tuple", "return self.f(x), x", ["tuple"])
net_case("dict", "return {'logits': self.f(x)}", ["dict"])
net_case("flat", "return self.f(x)[:, 0]", ["shape"])
net_case("extra-columns", "return torch.cat([self.f(x), self.f(x)[:, :3]], 1)", ["shape"])
net_case("integer-output", "return self.f(x).long()", ["int"])
net_case("half-batch", "return self.f(x)[: max(1, x.shape[0] // 2)]", ["shape"])
net_case("raises", "raise ValueError('bug in my forward')", ["bug in my forward"])
net_case("none", "return None", ["None"])
net_case("nan-output", "return self.f(x) * float('nan')", ["nan"], expect=accept(codes=(3,)))
net_case("ok-class", "return self.f(x)", [], expect=accept())
net_case("ok-instance", "return self.f(x)", [], model="Net(num_classes=10)", expect=accept())
net_case("instance-wrong-classes", "return self.f(x)", ["shape"], model="Net(num_classes=4)")
net_case("plus-model-name", "return self.f(x)", ["model.name"], extra=", 'model.name=resnet18'")
net_case("plus-model-options", "return self.f(x)", ["model.options"], extra=", 'model.options={width: 16}'")
net_case("not-a-module", "return self.f(x)", ["model"], model="42")
net_case("a-string", "return self.f(x)", ["model"], model="'convnet'")
net_case("no-parameters", "return x.new_zeros(x.shape[0], self.num_classes)", ["parameters"],
         init="    def __init__(self, num_classes=10, in_channels=3):\n        nn.Module.__init__(self)\n"
              "        self.num_classes = num_classes\n")
net_case("needs-positional", "return self.f(x)", ["Net"],
         init="    def __init__(self, depth, num_classes=10, in_channels=3):\n        super().__init__(num_classes)\n")
net_case("forward-mutates-input", "x.mul_(0)\n        return self.f(x)", [], expect=either())
py_case("net-register-clash", "user-net", refuse("convnet"),
        "@cifarlab.register_model('convnet')\ndef mine(**options):\n    return None\n")
py_case("net-register-twice", "user-net", refuse("mine"),
        "@cifarlab.register_model('mine')\ndef a(**o):\n    return None\n"
        "@cifarlab.register_model('mine')\ndef b(**o):\n    return None\n")
cli_case("net-module-recipe-trains", "user-net", accept(finished), "train", "smoke", *FAST, "train.epochs=1",
         "schedule.peak_epoch=0.5", "model.module=mynets", "model.name=tinynet", "model.options={}",
         "output.dir=runs")
cli_case("net-module-unknown-option", "user-net", refuse("width"), "train", "smoke", *FAST,
         "model.module=mynets", "model.name=tinynet", "model.options={width: 3}")


# ----------------------------------------------------------------------------------- torch Datasets (API)

DS_HEAD = """
import torch
class DS(torch.utils.data.Dataset):
    def __init__(self, n, item):
        self.n, self.item = n, item
    def __len__(self):
        return self.n
    def __getitem__(self, i):
        return self.item(i)
def good(i):
    return torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(i)), i % 3
"""
DS_TRAIN = ("run_ = cifarlab.train('smoke', ['output.dir=runs', 'train.threads=1', 'train.precision=fp32', "
            "'output.progress=none', 'output.tensorboard=false', 'train.epochs=1', 'schedule.peak_epoch=0.5', "
            "'data.val_split=null', 'train.batch_size=16'], data=({train}, {test}{classes}))\n"
            "print(run_.best_test_acc)")


def ds_case(name: str, item: str, words, test: str = "DS(12, good)", classes: str = ", ['a', 'b', 'c']",
            expect=None, train: Optional[str] = None):
    body = DS_HEAD + f"def item(i):\n    {item}\n" + DS_TRAIN.format(train=train or "DS(48, item)", test=test,
                                                                     classes=classes)
    py_case(f"dataset-{name}", "dataset", expect or refuse(*words), body)


ds_case("ok", "return good(i)", [], expect=accept())
ds_case("label-out-of-range", "return good(i)[0], 3 if i == 5 else i % 3", ["label"])
ds_case("label-negative", "return good(i)[0], -1 if i == 5 else i % 3", ["label"])
ds_case("label-float", "return good(i)[0], float(i % 3)", ["label"])
ds_case("label-bool", "return good(i)[0], i % 2 == 0", ["label"])
ds_case("label-string", "return good(i)[0], 'a'", ["label"])
ds_case("image-above-one", "return good(i)[0] * 3, i % 3", ["[0, 1]"])
ds_case("image-nan", "return good(i)[0] * float('nan'), i % 3", ["image"])
ds_case("image-shape-changes", "return torch.rand(3, 8 if i < 7 else 9, 8), i % 3", ["item 7"])
ds_case("image-four-channels", "return torch.rand(4, 8, 8), i % 3", ["(4, 8, 8)", "C in 1 or 3"])
ds_case("item-not-a-pair", "return good(i)[0]", ["item"])
ds_case("item-triple", "return good(i)[0], i % 3, 'extra'", ["item"], expect=either("item"))  # extras ignored
ds_case("raises", "raise IndexError('my dataset broke')", ["my dataset broke"])
ds_case("classes-short", "return good(i)", ["classes"], classes=", ['a', 'b']")
ds_case("classes-duplicate", "return good(i)", ["classes"], classes=", ['a', 'a', 'b']")
ds_case("test-other-shape", "return good(i)", ["test"], test="DS(12, lambda i: (torch.rand(3, 9, 9), i % 3))")
ds_case("empty", "return good(i)", ["no items"], train="DS(0, item)")
ds_case("numpy-hwc-uint8", "import numpy as np\n    return np.zeros((8, 8, 3), np.uint8) + i, i % 3", [],
        expect=accept())
ds_case("numpy-hwc-float", "import numpy as np\n    return np.zeros((8, 8, 3), np.float32), i % 3", ["uint8"])
ds_case("len-lies", "return good(i) if i < 40 else (good(10 ** 6)[0][:, :2], i % 3)", ["item 40"])
ds_case("image-a-tuple", "return good(i), i % 3", ["image must be"])
py_case("dataset-arrays-labels-out-of-range", "dataset", refuse("label"),
        "import torch\nx = torch.randint(0, 255, (32, 3, 8, 8), dtype=torch.uint8)\n"
        "y = torch.arange(32) % 3\ny[4] = 7\n" + DS_TRAIN.format(train="x, y", test="x, torch.arange(32) % 3",
                                                                 classes=", ['a', 'b', 'c']"))
py_case("dataset-arrays-labels-float", "dataset", refuse("integer class indices"),
        "import torch\nx = torch.randint(0, 255, (32, 3, 8, 8), dtype=torch.uint8)\n"
        + DS_TRAIN.format(train="x, (torch.arange(32) % 3).float()", test="x, torch.arange(32) % 3", classes=""))
py_case("dataset-arrays-length-mismatch", "dataset", refuse("32"),
        "import torch\nx = torch.randint(0, 255, (32, 3, 8, 8), dtype=torch.uint8)\n"
        + DS_TRAIN.format(train="x, torch.arange(30) % 3", test="x, torch.arange(32) % 3", classes=""))


# ----------------------------------------------------------------------------------------- precision cache

PROBE = ["train", "smoke", "train.threads=1", "output.tensorboard=false", "output.progress=none", "train.epochs=1",
         "schedule.peak_epoch=0.5", "output.dir=runs"]


def _cache(edit: Callable[[dict], object]):
    def setup(ctx, folder):
        shutil.copytree(ctx.root / "cache", folder / "cache")
        for path in (folder / "cache" / "autotune").glob("precision-*.json"):
            entry = json.loads(path.read_text())
            replacement = edit(entry)
            if isinstance(replacement, str):
                path.write_text(replacement)
            elif replacement == "fifo":
                pass
            else:
                path.write_text(json.dumps(entry))
    return setup


def _fifo(ctx, folder):
    shutil.copytree(ctx.root / "cache", folder / "cache")
    for path in (folder / "cache" / "autotune").glob("precision-*.json"):
        path.unlink()
        os.mkfifo(path)


def _precision_source_clean(result: Result) -> Optional[str]:
    source = summary_of(result).get("precision_source", "")
    shown = [line for line in result.err.splitlines() if line.startswith("precision:")]
    bad = [text for text in [source, *shown] if "\x1b" in text or "HACKED" in text or len(text) > 400]
    if not summary_of(result):
        return "no summary"
    return f"printed the cache's text as is: {bad[0][:80]!r}" if bad else None


for name, setup in [  # each one measures again (a minute on a busy 2-core machine): the distinct faults only
    ("cache-reason-escape", _cache(lambda e: e.update(reason="\x1b[31mHACKED\x1b[0m run rm -rf"))),
    ("cache-reason-newline", _cache(lambda e: e.update(reason="ok\nprecision: HACKED"))),
    ("cache-reason-long", _cache(lambda e: e.update(reason="HACKED " * 200))),
    ("cache-name-other", _cache(lambda e: e.update(name="fp64"))),
    ("cache-not-json", _cache(lambda e: "{{{")),
    ("cache-fifo", _fifo),
]:
    cli_case(name, "precision", accept(_precision_source_clean, wrong=LOW), *PROBE, setup=setup,
             env={"CIFARLAB_CACHE": "cache"})


# -------------------------------------------------------------------------------------------------- sweeps

SWEEP = ["sweep", "smoke", "data.val_split=64", *FAST, "train.epochs=1", "schedule.peak_epoch=0.5"]
for name, argv, words in [
    ("sweep-trials-zero", ["--grid", "optim.lr=0.05", "--trials", "0"], ["--trials"]),
    ("sweep-seeds-zero", ["--grid", "optim.lr=0.05", "--seeds", "0"], ["--seeds"]),
    ("sweep-workers-zero", ["--grid", "optim.lr=0.05", "--workers", "0"], ["--workers"]),
    ("sweep-pruner-bogus", ["--grid", "optim.lr=0.05", "--pruner", "bogus"], ["bogus"]),
    ("sweep-heartbeat-zero", ["--grid", "optim.lr=0.05", "--heartbeat", "0"], ["--heartbeat"]),
    ("sweep-name-empty", ["--grid", "optim.lr=0.05", "--name", ""], ["--name"]),
    ("sweep-name-slash", ["--grid", "optim.lr=0.05", "--name", "a/b"], ["--name"]),
    ("sweep-storage-bad", ["--grid", "optim.lr=0.05", "--storage", "nosuch://x"], ["--storage"]),
    ("sweep-storage-memory", ["--grid", "optim.lr=0.05", "--storage", "sqlite:///:memory:"], ["memory"]),
    ("sweep-grid-unknown-key", ["--grid", "optim.lrr=0.05,0.1"], ["optim.lrr"]),
    ("sweep-grid-bad-value", ["--grid", "optim.lr=abc,0.1"], ["optim.lr"]),
    ("sweep-grid-no-values", ["--grid", "optim.lr="], ["optim.lr"]),
    ("sweep-no-space", [], ["space"]),
    ("sweep-grid-and-space", ["space.yaml", "--grid", "optim.lr=0.05"], ["space"]),
    ("sweep-test-selection", ["data.val_split=null", "--grid", "optim.lr=0.05"], ["--allow-test-selection"]),
    ("sweep-dir-is-file", ["--grid", "optim.lr=0.05", "--dir", "afile"], ["afile"]),
]:
    cli_case(name, "sweep", refuse(*words), *SWEEP, *argv,
             setup=lambda ctx, folder: ((folder / "afile").write_text("mine\n"),
                                        (folder / "space.yaml").write_text("optim.lr: {low: 0.01, high: 0.1}\n")))

for name, text, words in [
    ("space-not-yaml", "optim.lr: [unclosed\n", ["space.yaml"]),
    ("space-a-list", "- optim.lr\n", ["space.yaml"]),
    ("space-unknown-key", "optim.lrr: {low: 0.01, high: 0.1}\n", ["optim.lrr"]),
    ("space-low-above-high", "optim.lr: {low: 0.5, high: 0.1}\n", ["optim.lr"]),
    ("space-log-zero", "optim.lr: {low: 0, high: 0.1, log: true}\n", ["optim.lr"]),
    ("space-choices-empty", "optim.lr: {choices: []}\n", ["optim.lr"]),
    ("space-choices-bad-value", "optim.name: {choices: [sgd, nosuchopt]}\n", ["nosuchopt"]),
    ("space-step-too-big", "train.batch_size: {low: 16, high: 32, step: 64}\n", ["train.batch_size"]),
    ("space-int-float-mix", "train.batch_size: {low: 16, high: 32.5}\n", ["train.batch_size"]),
    ("space-empty", "", ["space.yaml"]),
    ("space-milestone-past", "schedule.name: {choices: [multistep]}\nschedule.milestones: {choices: [[1], [4]]}\n",
     ["schedule.milestones"]),
    ("space-epochs-lookahead", "train.epochs: {low: 1, high: 3}\ntrain.lookahead.start_epoch: {choices: [2]}\n",
     ["start_epoch"]),
]:
    cli_case(name, "sweep", refuse(*words), *SWEEP, "space.yaml", "--trials", "2",
             setup=(lambda text: lambda ctx, folder: (folder / "space.yaml").write_text(text))(text))


def _other_sqlite(ctx, folder):
    with sqlite3.connect(folder / "mine.db") as db:
        db.execute("create table notes (text)")
        db.execute("insert into notes values ('keep me')")


cli_case("sweep-storage-foreign-sqlite", "sweep", refuse("mine.db"), *SWEEP, "--grid", "optim.lr=0.05",
         "--storage", "sqlite:///mine.db", setup=_other_sqlite)
cli_case("sweep-storage-text-file", "sweep", refuse("notes.db"), *SWEEP, "--grid", "optim.lr=0.05",
         "--storage", "sqlite:///notes.db", setup=lambda ctx, folder: (folder / "notes.db").write_text("my notes\n"))


def _sweep_done(result: Result) -> Optional[str]:
    csv = result.folder / "s" / "trials.csv"
    return None if csv.exists() and len(csv.read_text().splitlines()) == 3 else "no trials.csv with 2 trials"


cli_case("sweep-grid-runs", "sweep", accept(_sweep_done), *SWEEP, "--grid", "optim.lr=0.05,0.1", "--dir", "s")


def _sweep_then(*argv):
    """A case that runs a finished one-trial sweep in its folder, then the same sweep with `argv` changed."""
    def run(ctx: Context, folder: Path) -> Result:
        first = ctx.cli(folder, *SWEEP, "--grid", "optim.lr=0.05", "--dir", "s")
        assert first.rc == 0, first.err[-300:]
        return snapshot(lambda: ctx.cli(folder, *argv), folder)
    return run


CASES.append(Case("sweep-join-other-overrides", "sweep",
                  _sweep_then(*SWEEP, "optim.momentum=0.5", "--grid", "optim.lr=0.05", "--dir", "s"),
                  refuse("optim.momentum")))
CASES.append(Case("sweep-join-other-pruner", "sweep",
                  _sweep_then(*SWEEP, "--grid", "optim.lr=0.05", "--dir", "s", "--pruner", "none"),
                  refuse("pruner")))
CASES.append(Case("sweep-join-same-text-other-spelling", "sweep",
                  _sweep_then(*SWEEP, "--grid", "optim.lr=5e-2", "--dir", "s"), accept()))


def _kill_and_rerun(*extra, recipe_text: Optional[str] = None, workers: int = 1):
    """Start a sweep, SIGKILL it (its whole process group) once a trial has its first checkpoint, run the same
    command again: the trial must be resumed, not trained anew or failed."""
    def run(ctx: Context, folder: Path) -> Result:
        recipe = "smoke"
        if recipe_text is not None:
            (folder / "mine.yaml").write_text(recipe_text)
            recipe = "mine.yaml"
        argv = ["sweep", recipe, "data.val_split=64", *FAST, "train.epochs=3", "checkpoint.every_steps=2",
                "--grid", "optim.lr=0.05", "--dir", "s", "--workers", str(workers), *extra]
        process = subprocess.Popen([str(CLI), *argv], cwd=folder, env=ctx.env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not list(folder.glob("s/trials/*/checkpoints/last.pt")):
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        time.sleep(5)  # twice the heartbeat: the killed trial is stale
        again = ctx.cli(folder, *argv)
        rows = sorted(folder.glob("s/trials/*/metrics.csv"))
        if again.rc == 0 and rows:  # each (kind, epoch, step) row once: a resumed trial never trains a step twice
            keys = [tuple(line.split(",")[:3]) for line in rows[0].read_text().splitlines()[1:]]
            if len(keys) != len(set(keys)):
                again.err += f"\nwarning: metrics.csv repeats epochs {keys}"
        return again
    return run


def _resumed(result: Result) -> Optional[str]:
    if not (result.folder / "s" / "trials.csv").exists():
        return "no trials.csv"
    if "repeats epochs" in result.err:
        return "metrics.csv repeats epochs: the trial trained again over its rows"
    return None


TINY_RECIPE = ("name: mine\ndata: {dataset: synthetic, val_split: null, options: {num_train: 256, num_test: 64, "
               "image_size: 8}}\nmodel: {name: tinynet, module: mynets}\noptim: {name: sgd, lr: 0.05}\n"
               "schedule: {name: constant}\ntrain: {epochs: 3, batch_size: 32}\noutput: {report: false}\n")
CASES.append(Case("sweep-killed-resumes", "sweep", _kill_and_rerun("--heartbeat", "2"), accept(_resumed)))
CASES.append(Case("sweep-killed-user-module-resumes", "sweep",
                  _kill_and_rerun("--heartbeat", "2", recipe_text=TINY_RECIPE), accept(_resumed)))
CASES.append(Case("sweep-killed-two-workers", "sweep", _kill_and_rerun("--heartbeat", "2", workers=2),
                  accept(_resumed)))


def _pause_trainer(ctx: Context, folder: Path) -> Result:
    """A `--workers 2` sweep whose training worker is stopped (SIGSTOP: a starved or suspended process) for
    twice `--heartbeat` and more, then continued: the other worker retries its trial. The sweep must end with
    exit 0 and the trial trained once (round 5 saw exit codes [1, 2] here)."""
    argv = ["sweep", "smoke", "data.val_split=64", *FAST, "train.epochs=3", "checkpoint.every_steps=2", "--grid",
            "optim.lr=0.05", "--dir", "s", "--workers", "2", "--heartbeat", "1"]
    start = time.monotonic()
    process = subprocess.Popen([str(CLI), *argv], cwd=folder, env=ctx.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    saved = "s/trials/*/checkpoints/last.pt"
    while time.monotonic() < deadline and process.poll() is None and not list(folder.glob(saved)):
        time.sleep(0.1)
    run_dirs = [path.resolve() for path in folder.glob("s/trials/*")]
    paused = []
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    for pid in children.read_text().split() if process.poll() is None else []:
        try:
            if any(Path(os.readlink(f"/proc/{pid}/fd/{fd}")) in run_dirs for fd in os.listdir(f"/proc/{pid}/fd")):
                os.kill(int(pid), signal.SIGSTOP)
                paused.append(int(pid))
        except OSError:
            continue
    time.sleep(4)
    for pid in paused:
        os.kill(pid, signal.SIGCONT)
    try:
        out, err = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        err += "\ntimed out after 300 s"
    if not paused:
        err += "\nwarning: no worker was paused (the case did not happen)"
    rows = sorted(folder.glob("s/trials/*/metrics.csv"))
    if process.returncode == 0 and rows:
        keys = [tuple(line.split(",")[:3]) for line in rows[0].read_text().splitlines()[1:]]
        if len(keys) != len(set(keys)):
            err += f"\nwarning: metrics.csv repeats epochs {keys}"
    return Result(process.returncode, out, err, folder, time.monotonic() - start)


def _paused_then_done(result: Result) -> Optional[str]:
    if "no worker was paused" in result.err:
        return "no worker was paused: the case did not happen"
    return _resumed(result)


CASES.append(Case("sweep-worker-paused-past-heartbeat", "sweep", _pause_trainer, accept(_paused_then_done)))


# ---------------------------------------------------------------------------------------- other commands

for name, argv, words, setup in [
    ("report-not-a-run", ["report", "."], ["."], None),
    ("gradcam-count-zero", ["gradcam", "{fx}/run/checkpoints/best.pt", "--count", "0"], ["--count"], None),
    ("gradcam-layer-unknown", ["gradcam", "{fx}/run/checkpoints/best.pt", "--layer", "nosuch"], ["nosuch"], None),
    ("gradcam-out-exists", ["gradcam", "{fx}/run/checkpoints/best.pt", "--out", "mine.png"], ["mine.png"],
     lambda ctx, folder: (folder / "mine.png").write_text("mine\n")),
    ("gradcam-index-out-of-range", ["gradcam", "{fx}/run/checkpoints/best.pt", "--images", "99999"], ["99999"], None),
    ("compare-nothing", ["compare", "nothere"], ["nothere"], None),
    ("export-out-exists", ["export", "{fx}/run/checkpoints/best.pt", "--format", "safetensors", "--out", "m.bin"],
     ["m.bin"], lambda ctx, folder: (folder / "m.bin").write_text("mine\n")),
    ("export-hf-out-exists", ["export", "{fx}/run/checkpoints/best.pt", "--format", "hf", "--out", "dir"], ["dir"],
     lambda ctx, folder: (folder / "dir").mkdir() or (folder / "dir" / "x").write_text("mine\n")),
    ("eval-precision-other", ["eval", "{fx}/run/checkpoints/best.pt", "--precision", "fp64"], ["fp64"], None),
    ("summary-model-name-setting", ["summary", "convnet", "model.name=resnet18"], ["model.name"], None),
    ("summary-batch-huge", ["summary", "convnet", "train.batch_size=100000"], ["batch_size"], None),
    ("lr-find-bad-range", ["lr-find", "smoke", "lr_find.start_lr=1", "lr_find.end_lr=0.1"], ["end_lr"], None),
]:
    cli_case(name, "other", refuse(*words), *argv, setup=setup)


def _eval_equals_summary(result: Result) -> Optional[str]:
    measured = json.loads(result.out.splitlines()[-1])["test_acc"]
    recorded = json.loads((result.folder / "run" / "summary.json").read_text())["best_test_acc"]
    return None if abs(measured - recorded) < 1e-6 else f"eval says {measured}, the run's summary {recorded}"


cli_case("report-config-garbage", "other", accept(lambda r: None if (r.folder / "run" / "report.md").exists() else
                                                 "no report.md"), "report", "run",
         setup=chain(copy_run, _write("run/config.yaml", "{{")))  # the checkpoint's config is the run's
cli_case("sweep-grid-same-value-two-spellings", "sweep", refuse("twice"), *SWEEP, "--grid", "optim.lr=5e-2,0.05")
cli_case("eval-run-equals-summary", "other", accept(_eval_equals_summary), "eval", "run/checkpoints/best.pt",
         setup=copy_run)

_ = (HIGH, MEDIUM)  # the classes a case may name for a silent acceptance
