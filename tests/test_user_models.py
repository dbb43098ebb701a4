"""A model from the user's own module: `model.module` trains it, `--import` / `import_modules=` load it back
in eval, report, predict, gradcam and export, and without the import every loader refuses in one line
(a checkpoint's config is never a reason to import code)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import cifarlab
from cifarlab.models.registry import MODELS

SRC = Path(__file__).resolve().parents[1] / "src"
MODULE = "cifarlab_test_user_nets"  # a name nothing else on sys.path has
USER_MODULE = '''
from torch import nn

from cifarlab import register_model


@register_model("tiny_mlp")
def tiny_mlp(num_classes=10, in_channels=3, norm="batch", dropout=0.0, hidden=32, image_size=16):
    return nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(hidden, num_classes))
'''

# One process for every CLI call (one torch import): the refusals run first, before anything imports the
# module; each call goes through cifarlab.cli.main exactly as the console script does.
DRIVER = '''
import contextlib, io, json, sys
from cifarlab.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    results.append({"argv": argv, "code": code, "out": out.getvalue(), "err": err.getvalue()})
print(json.dumps(results))
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """The user's module on disk and on sys.path; the registry and sys.modules are put back afterwards."""
    folder = tmp_path / "usercode"
    folder.mkdir()
    (folder / f"{MODULE}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    MODELS.names()  # cifarlab's own models registered first, so the copy put back afterwards holds them
    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))
    yield folder
    sys.modules.pop(MODULE, None)


def _train(tmp_path) -> Path:
    run = cifarlab.train("smoke", [f"output.dir={tmp_path / 'runs'}", "model.name=tiny_mlp", f"model.module={MODULE}",
                                   "model.options={hidden: 16}", "train.epochs=1", "schedule.peak_epoch=0.5",
                                   "train.device=cpu", "output.tensorboard=false", "output.progress=none"])
    assert run.status == "completed" and run.config.model.module == MODULE
    return run.run_dir


def _run_cli(calls: list[list[str]], user_folder: Path, cwd: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(user_folder)]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(calls)], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.slow  # ten CLI calls in one process: about 40 s on a loaded 2-core machine
def test_a_user_model_loads_everywhere_when_its_module_is_named_and_is_refused_in_one_line_when_not(
        tmp_path, user_module):
    from PIL import Image

    run_dir = _train(tmp_path)
    best = str(run_dir / "checkpoints" / "best.pt")
    image = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(image)
    imp = ["--import", MODULE]
    commands = {
        "eval": ["eval", best], "report": ["report", str(run_dir)], "predict": ["predict", best, str(image)],
        "gradcam": ["gradcam", best, "--images", "0,1", "--out", str(tmp_path / "cam.png")],
        "export": ["export", best, "--format", "safetensors", "--out", str(tmp_path / "net.safetensors")],
        "export hf": ["export", best, "--format", "hf", "--out", str(tmp_path / "hf-folder")],
    }
    refused = _run_cli(list(commands.values()) + [[*argv, *imp] for argv in commands.values()], user_module, tmp_path)
    for result in refused[:len(commands)]:
        lines = result["err"].strip().splitlines()
        assert result["code"] == 2 and len(lines) == 1, result
        assert "'tiny_mlp' is not registered" in lines[0] and f"--import {MODULE}" in lines[0], result
    worked = {name: result for name, result in zip(commands, refused[len(commands):])}
    for name, result in worked.items():
        assert result["code"] == 0, (name, result["err"][-2000:])
    assert "Accuracy:" in worked["eval"]["out"]
    assert worked["predict"]["out"].startswith(f"{image}: class")
    assert (run_dir / "report.md").is_file() and (tmp_path / "cam.png").is_file()
    assert (tmp_path / "net.safetensors").is_file() and (tmp_path / "hf-folder" / "config.json").is_file()


def test_the_api_imports_only_the_modules_it_is_given(tmp_path, user_module):
    from cifarlab.errors import UserError
    from cifarlab.use.export_hf import export_hf

    best = _train(tmp_path) / "checkpoints" / "best.pt"
    folder = export_hf(best, tmp_path / "hf-folder")
    for source in (best, folder):  # a checkpoint, and the model folder exported from it
        del MODELS._entries["tiny_mlp"]  # as in a fresh process: nothing registered it yet
        sys.modules.pop(MODULE)
        with pytest.raises(UserError, match="'tiny_mlp' is not registered.*--import " + MODULE):
            cifarlab.load_model(source)
        assert MODULE not in sys.modules  # the file names the module; loading it did not import it
        model = cifarlab.load_model(source, import_modules=[MODULE])
        assert type(model.module).__name__ == "Sequential" and len(model.classes) == 10


def test_a_module_that_cannot_be_imported_is_one_line_before_any_run_directory(tmp_path, capsys):
    from cifarlab.cli import main

    assert main(["train", "smoke", f"output.dir={tmp_path}", "model.module=no_such_user_module"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no module named 'no_such_user_module'" in err[0] and "PYTHONPATH" in err[0]
    assert not (tmp_path / "smoke").exists()
    assert main(["eval", "x.pt", "--import", "not a module"]) == 2


def test_model_module_must_be_a_module_name():
    from cifarlab.errors import UserError

    with pytest.raises(UserError, match="model.module"):
        cifarlab.load_config("smoke", ["model.module=../evil.py"])
    assert cifarlab.load_config("smoke", ["model.module=[a.b, c]"]).model.module == ["a.b", "c"]


def test_the_user_module_in_the_docs_is_the_one_tested():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "ecosystem.md").read_text()
    assert textwrap.dedent(USER_MODULE).strip() in doc


def test_options_a_user_factory_does_not_take_are_named_as_such_before_any_run_directory(tmp_path, user_module,
                                                                                         capsys):
    from cifarlab.cli import main

    # convnet's options given to tiny_mlp, which takes `hidden`, not `width` (switching model.name alone
    # drops the recipe's convnet options: tests/test_config.py).
    assert main(["train", "smoke", f"output.dir={tmp_path}", "model.name=tiny_mlp", f"model.module={MODULE}",
                 "model.options={width: 8}", "output.progress=none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model 'tiny_mlp' could not be built with model.options={'width': 8}" in err[0], err
    assert "width" in err[0] and "too small" not in err[0]
    assert not (tmp_path / "smoke").exists()


BAD_NETS_MODULE = "cifarlab_test_bad_nets"
BAD_NETS = '''
from torch import nn

from cifarlab import register_model


class Net(nn.Module):
    """A small classifier whose forward returns `what` instead of (N, num_classes) logits."""

    def __init__(self, in_channels, outputs, what):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(8, outputs))
        self.what = what

    def forward(self, x):
        logits = self.body(x)
        if self.what == "not-on-meta":  # .item() cannot run on the meta device: checked on one real image
            return logits if x.abs().sum().item() >= 0 else None
        return {"tuple": (logits, x), "dict": {"logits": logits}, "flat": logits.flatten(),
                "integers": logits.argmax(1, keepdim=True).expand_as(logits), "wide": logits}[self.what]


for what, extra in (("tuple", 0), ("dict", 0), ("flat", 0), ("integers", 0), ("wide", 3), ("not-on-meta", 3)):
    register_model(f"returns_{what}")(
        lambda num_classes=10, in_channels=3, norm="batch", dropout=0.0, what=what, extra=extra:
        Net(in_channels, num_classes + extra, what))
'''
CLASH_MODULE = "cifarlab_test_clashing_net"
CLASH = '''
from torch import nn

from cifarlab import register_model


@register_model("resnet18")
def my_resnet(num_classes=10, in_channels=3, norm="batch", dropout=0.0):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))
'''

# (id, model.module, model.name, words the one line must hold); smoke's data: 10 classes, 3x32x32 (batch 2 on meta)
BAD_USER_NETS = [
    ("returns-10+3-columns", BAD_NETS_MODULE, "returns_wide",
     ["model 'returns_wide' returns a torch.float32 tensor of shape (2, 13)", "shape (2, 10)", "10 classes"]),
    ("returns-a-tuple", BAD_NETS_MODULE, "returns_tuple", ["returns a tuple of 2 values", "one floating-point tensor"]),
    ("returns-a-dict", BAD_NETS_MODULE, "returns_dict", ["returns a dict with keys 'logits'", "shape (2, 10)"]),
    ("returns-a-flat-tensor", BAD_NETS_MODULE, "returns_flat", ["tensor of shape (20,)", "one row per image"]),
    ("returns-integers", BAD_NETS_MODULE, "returns_integers", ["a torch.int64 tensor of shape (2, 10)"]),
    ("not-on-meta-checked-on-one-image", BAD_NETS_MODULE, "returns_not-on-meta",
     ["tensor of shape (1, 13)", "(1, 10)"]),
    ("registers-a-built-in-name", CLASH_MODULE, "resnet18",
     ["model name 'resnet18' is already registered, by cifarlab's built-in model", "register yours under a name not "
      "taken", "convnet"]),
]


@pytest.mark.parametrize("case", BAD_USER_NETS, ids=[case[0] for case in BAD_USER_NETS])
def test_a_user_network_that_returns_no_logits_is_one_line_before_anything_is_written(case, tmp_path, monkeypatch,
                                                                                      capsys):
    from _runs import FAST, assert_refused

    name, module, model, words = case
    folder = tmp_path / "usercode"
    folder.mkdir()
    (folder / f"{module}.py").write_text(BAD_NETS if module == BAD_NETS_MODULE else CLASH)
    monkeypatch.syspath_prepend(str(folder))
    MODELS.names()
    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))
    monkeypatch.delitem(sys.modules, module, raising=False)  # imported afresh, and forgotten afterwards
    try:
        assert_refused(["train", "smoke", f"output.dir={tmp_path / 'runs'}", f"model.module={module}",
                        f"model.name={model}", "model.options={}", *FAST], words, {"code": folder}, capsys, tmp_path)
    finally:
        sys.modules.pop(module, None)
    assert not (tmp_path / "runs").exists()
