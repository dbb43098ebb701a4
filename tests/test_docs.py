"""Every example in README.md and docs/*.md runs, so none can go stale; docs/config.md matches the schema.

The convention (docs/README.md says it for writers):
- ```bash blocks are commands, one per line (a `\\` continues a line, `#` starts a comment). Each runs and
  must exit 0: `cifarlab ...` through the real CLI (`cifarlab.cli.main`), `torchrun`/`python` in a process,
  `make TARGET` as `make -n TARGET` (the target exists), `pip install ...` checked, not run (the extras named
  exist in pyproject.toml, a `-c` file exists). No pipes, redirections or `&&`.
- ```console blocks are transcripts: `$ command` lines run like bash lines, and every line shown after one
  must appear in what that command printed (stdout and stderr).
- ```python blocks run as written, each on its own.
- ```text (or any other language) blocks are output or layouts: never run.
All run in one folder that holds a finished short fmnist-quick run, named in the docs
`runs/fmnist-quick/20261129-120000`, an image folder `my_photos/` (train/ and test/, 10 classes of real
Fashion-MNIST) and two images `shoe.png`, `bag.png`. A command that would train long runs shortened
(`short_run`): one epoch unless it sets `train.epochs`, Fashion-MNIST/MNIST cut to 1,000/500 images, a
CIFAR recipe (CIFAR-10 is not on the test machine) on synthetic 32x32 images with a width-4 convnet, a
10-step range test, no report unless asked for.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _folders import FASHION_DIR, fashion_test_arrays, needs_fashion, write_fashion_folder
from _runs import FAST, SRC
from cifarlab.cli import main
from cifarlab.config import Config, load_config
from cifarlab.config_docs import config_reference
from cifarlab.models.registry import MODELS

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_DIR = "runs/fmnist-quick/20261129-120000"  # the run directory the docs' examples name
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
TRAINING = ("train", "demo", "lr-find")


# ------------------------------------------------------------------------------ docs/config.md

def test_docs_config_md_is_generated_from_the_current_schema():
    page = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert page == config_reference(), "docs/config.md is stale: python -m cifarlab.config_docs --write docs/config.md"


def test_every_config_key_has_a_description():
    def missing(model, prefix=""):
        for key, field in model.model_fields.items():
            if not (field.description or "").strip():
                yield prefix + key
            for arg in getattr(field.annotation, "__args__", (field.annotation,)):
                if isinstance(arg, type) and hasattr(arg, "model_fields"):
                    yield from missing(arg, f"{prefix}{key}.")

    assert list(missing(Config)) == []


# ------------------------------------------------------------------------------ the examples

def _blocks():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            language, body = match.group(1), match.group(2)
            if language in ("bash", "console", "python"):
                line = text.count("\n", 0, match.start()) + 1
                # Every example waits for the examples folder, which trains a run first: all are slow.
                yield pytest.param(language, body, id=f"{page.relative_to(ROOT)}:{line}", marks=[pytest.mark.slow])


def commands(body: str) -> list[str]:
    """The command lines of a bash block: continuations joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    return [line for line in joined.splitlines() if shlex.split(line, comments=True)]


def short_run(argv: list[str]) -> list[str]:
    """A `cifarlab` command that would train long, shortened (see the module docstring)."""
    if not argv or argv[0] not in TRAINING:
        return argv
    overrides = [arg for arg in argv[1:] if "=" in arg and not arg.startswith("-")]
    given = {arg.split("=", 1)[0] for arg in overrides}
    recipe = "fmnist-quick" if argv[0] == "demo" else argv[1]
    cfg = load_config(recipe, overrides)
    extra = []
    if cfg.data.dataset in ("cifar10", "cifar100"):
        extra += ["data.dataset=synthetic", "data.options={num_train: 256, num_test: 128, image_size: 32}",
                  "model.name=convnet", "model.options={width: 4}", "train.batch_size=64"]
    elif cfg.data.dataset in ("fashion_mnist", "mnist"):
        extra += ["data.train_subset=1000", "data.test_subset=500"]
    if argv[0] == "lr-find" or cfg.schedule.lr_peak == "auto":
        extra.append("lr_find.num_iter=10")
    if argv[0] != "lr-find":
        extra += [] if "train.epochs" in given else ["train.epochs=1"]
        extra += [] if "output.report" in given else ["output.report=false"]
    return argv + extra + FAST


def run_command(line: str, capsys, monkeypatch) -> tuple[int, str]:
    """(exit code, everything printed) of one documented command line, run in the current folder."""
    assert not re.search(r"\s(\||&&|;|>|<)\s", line), f"one command per line, no shell syntax: {line}"
    argv = shlex.split(line, comments=True)
    while re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):  # `WANDB_MODE=offline cifarlab ...`: for this command
        name, _, value = argv.pop(0).partition("=")
        monkeypatch.setenv(name, value)
    program, args = argv[0], argv[1:]
    if program == "cifarlab":
        capsys.readouterr()
        code = main(short_run(args))
        out, err = capsys.readouterr()
        return code, out + err
    if program in ("torchrun", "python"):
        if program == "torchrun":
            at = args.index("cifarlab")
            args = ["-m", "torch.distributed.run", *args[:at + 1], *short_run(args[at + 1:])]
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600,
                              env={**os.environ, "PYTHONPATH": str(SRC)})
        return done.returncode, done.stdout + done.stderr
    if program == "make":
        done = subprocess.run(["make", "-n", *args], capture_output=True, text=True, cwd=ROOT)
        return done.returncode, done.stdout + done.stderr
    if program == "pip":
        return _check_pip(args), ""
    raise AssertionError(f"no rule to run {program!r} in a docs example: {line}")


def _check_pip(args: list[str]) -> int:
    """`pip install [-c FILE] [-e] TARGET`: the constraints file exists and every extra named is declared."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert args[0] == "install", args
    rest = args[1:]
    if "-c" in rest:
        assert (ROOT / rest[rest.index("-c") + 1]).is_file()
    for target in [arg for arg in rest if not arg.startswith("-") and not arg.endswith(".txt")]:
        name, _, wanted = target.partition("[")
        assert name in ("cifarlab", "."), f"docs install only cifarlab itself, not {target}"
        for extra in filter(None, wanted.rstrip("]").split(",")):
            assert extra in extras, f"pip install {target}: no extra {extra!r} in pyproject.toml"
    return 0


@pytest.fixture(scope="module")
def examples_folder(tmp_path_factory):
    """The folder every example runs in (see the module docstring)."""
    root = tmp_path_factory.mktemp("examples")
    write_fashion_folder(root / "my_photos", 20, 5)
    from PIL import Image

    images, labels = fashion_test_arrays()
    Image.fromarray(images[np.flatnonzero(labels == 7)[0]]).save(root / "shoe.png")  # a sneaker
    Image.fromarray(images[np.flatnonzero(labels == 8)[0]]).save(root / "bag.png")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("CIFARLAB_DATA", str(root / "cache"))
        assert main(["train", "fmnist-quick", "train.epochs=1", "data.train_subset=1000", "data.test_subset=500",
                     "output.report=false", *FAST]) == 0
    (made,) = (root / "runs" / "fmnist-quick").iterdir()
    made.rename(root / RUN_DIR)
    return root


@needs_fashion
@pytest.mark.parametrize("language, body", list(_blocks()))
def test_documented_example_runs(language, body, examples_folder, monkeypatch, capsys):
    monkeypatch.chdir(examples_folder)
    monkeypatch.setenv("CIFARLAB_DATA", str(examples_folder / "cache"))
    assert FASHION_DIR.exists()
    if language == "python":
        # An example may register a model (docs/ecosystem.md): the registry is process-wide, so it is put
        # back afterwards, as a fresh interpreter would have it for the next test.
        registered = dict(MODELS._entries)
        try:
            exec(compile(body, "docs example", "exec"), {"__name__": "__docs__"})
        finally:
            MODELS._entries.clear()
            MODELS._entries.update(registered)
        return
    if language == "bash":
        for line in commands(body):
            with monkeypatch.context() as patch:
                code, printed = run_command(line, capsys, patch)
            assert code == 0, f"{line}\n{printed[-3000:]}"
        return
    for command, shown in _transcript(body):
        with monkeypatch.context() as patch:
            _, printed = run_command(command, capsys, patch)
        for expected in shown:
            assert expected in printed, f"{command}: expected {expected!r} in\n{printed[-3000:]}"


def _transcript(body: str) -> list[tuple[str, list[str]]]:
    """[(command, lines it prints)] of a console block; `...` lines stand for output not checked."""
    steps: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps and line.strip() and line.strip() != "...":
            steps[-1][1].append(line.strip())
    return steps
