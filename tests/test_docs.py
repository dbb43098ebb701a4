"""Every example in README.md and docs/*.md runs, so none can go stale; docs/config.md matches the schema.

The convention (docs/README.md says it for writers):
- ```bash blocks are commands, one per line (a `\\` continues a line, `#` starts a comment). Each runs and
  must exit 0: `cifarlab ...` through the real CLI (`cifarlab.cli.main`), `torchrun`/`python` in a process
  (`python bench/...` in the checkout), `make TARGET` as `make -n TARGET` (the target exists), `pip install
  ...` checked, not run (the extras named exist in pyproject.toml, a `-c` file exists). `NAME=value cmd`
  sets the environment of one command, `export NAME=value` of the rest of the block; `PYTHONPATH` puts its
  folders on sys.path for the in-process CLI, as the interpreter would. Wildcards expand as in a shell. No
  pipes, redirections or `&&`.
- A line that needs what the test machine lacks ends in `# needs: WHAT` (network, an account, a browser).
  It is checked, not run: a `cifarlab` line's arguments parse and the config (or the sweep) they make
  validates; another program is installed and `PROGRAM [SUBCOMMAND] --help` exits 0; its wildcards and
  `sqlite:///` files exist. A `# needs:` without what is an error.
- ```console blocks are transcripts: `$ command` lines run like bash lines, and every line shown after one
  must appear in a line of what that command printed (stdout and stderr); `...` stands for any text.
- ```python blocks run as written, each on its own, with the examples folder on sys.path (as a script
  saved there would have it).
- ```yaml blocks that name no file are part of a recipe: each loads as one over the defaults (`cifarlab show`).
- A block whose first line is a comment naming a file (`# space.yaml`, `# mypkg/nets.py`) shows that file:
  the examples folder holds exactly that text before any example runs.
- ```text (or any other language) blocks are output or layouts: never run.
- A whole `cifarlab` command written inline in prose (a subcommand and an argument, no placeholder such
  as RECIPE, `<time>` or `...`) runs like a bash line; `cifarlab report` or `cifarlab resume RUN_DIR`
  only names a command.
All run in one folder, in page order, so an example may use what an earlier one on its page made (so one
worker runs this file: pytest-xdist's --dist loadfile, as the Makefile has it). It holds
the run `make demo` makes offline, fmnist-quick with its 6 epochs, shortened only in its data (1,000/500
images), so the README's flow runs on the run a reader has; the docs name it
`runs/fmnist-quick/20261129-120000`. It also holds an image
folder `my_photos/` (train/ and test/, 10 classes of real Fashion-MNIST) and two images `shoe.png`,
`bag.png`. `runs/RECIPE/<time>` stands for the newest run directory of RECIPE there (the one an earlier
example trained). A `postgresql://...@db-host/...` URL is a throwaway PostgreSQL server on 127.0.0.1
(tests/_postgres.py). Hugging Face and W&B keep their caches in the folder, offline.
A command that would train long runs shortened (`short_run`, tests/_docs_shell.py): one epoch unless it
sets `train.epochs` (then at most 5), Fashion-MNIST/MNIST cut to 1,000/500 images, a CIFAR recipe
(CIFAR-10 is not on the test machine) on synthetic 32x32 images with a width-4 convnet, a 10-step range
test, no report unless asked for; a sweep at most 2 such trials; `python bench/precision.py` 1 step,
1 pair, batch 2, convnet alone unless the line names --models.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from _docs_shell import RUN_DIR, Shell, StandIns, commands, newest_runs, short_bench, short_run

from _folders import FASHION_DIR, fashion_test_arrays, needs_fashion, write_fashion_folder
from _runs import FAST
from cifarlab.cli import main
from cifarlab.config import Config
from cifarlab.config_docs import config_reference
from cifarlab.errors import UserError
from cifarlab.models.registry import MODELS

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
FILE_NAME = re.compile(r"# ([\w.-]+(/[\w.-]+)*\.\w+)\n")  # the first line of a block that shows a file


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
            if language in ("bash", "console", "python") or (language == "yaml" and not FILE_NAME.match(body)):
                line = text.count("\n", 0, match.start()) + 1
                # Every example waits for the examples folder, which trains a run first: all are slow.
                yield pytest.param(language, body, id=f"{page.relative_to(ROOT)}:{line}", marks=[pytest.mark.slow])
        for line, command in inline_commands(text):
            yield pytest.param("bash", command, id=f"{page.relative_to(ROOT)}:{line}:inline", marks=[pytest.mark.slow])


INLINE = re.compile(r"`(cifarlab [^`]+)`")
PLACEHOLDER = re.compile(r"<|\.\.\.|\b[A-Z][A-Z_]{2,}\b")  # runs/<time>, sweeps/.../x, RECIPE, RUN_DIR


def inline_commands(text: str) -> list[tuple[int, str]]:
    """(line, command) of the whole `cifarlab` commands written inline in prose, outside the blocks: those
    with at least a subcommand and an argument that is not an option, and no placeholder. `cifarlab
    report`, `cifarlab eval --precision fp32` and `cifarlab resume RUN_DIR` name a command; they are
    references, not examples."""
    found = []
    prose = FENCE.sub(lambda block: re.sub(r"[^\n]", " ", block.group(0)), text)  # same positions, no blocks
    for match in INLINE.finditer(prose):
        command = " ".join(match.group(1).split())
        words = command.split()
        if len(words) >= 3 and not PLACEHOLDER.search(command) and (words[2] == "--help" or words[2][0] != "-"):
            found.append((text.count("\n", 0, match.start()) + 1, command))
    return found


def shown_files() -> dict[str, str]:
    """{path: text} of the blocks that show a file (first line `# PATH`)."""
    files = {}
    for page in PAGES:
        for match in FENCE.finditer(page.read_text(encoding="utf-8")):
            named = FILE_NAME.match(match.group(2))
            if named:
                assert files.get(named.group(1), match.group(2)) == match.group(2), f"two texts of {named.group(1)}"
                files[named.group(1)] = match.group(2)
    return files


@pytest.fixture(scope="module")
def examples_folder(tmp_path_factory):
    """The folder every example runs in (see the module docstring)."""
    root = tmp_path_factory.mktemp("examples")
    write_fashion_folder(root / "my_photos", 20, 5)
    from PIL import Image

    images, labels = fashion_test_arrays()
    Image.fromarray(images[np.flatnonzero(labels == 7)[0]]).save(root / "shoe.png")  # a sneaker
    Image.fromarray(images[np.flatnonzero(labels == 8)[0]]).save(root / "bag.png")
    for name, text in shown_files().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("CIFARLAB_DATA", str(root / "cache"))
        # The demo's run (README: Quick start) as the demo makes it, its epochs included: `resume --more 2`
        # and `--epochs 10` must work on it as written. Only the data is cut, for time.
        assert main(["train", "fmnist-quick", "data.train_subset=1000", "data.test_subset=500",
                     "output.report=false", *FAST]) == 0
    (made,) = (root / "runs" / "fmnist-quick").iterdir()
    made.rename(root / RUN_DIR)
    return root


@pytest.fixture(scope="module")
def stand_ins():
    servers = StandIns()
    yield servers
    servers.close()


@pytest.fixture
def in_examples_folder(examples_folder, monkeypatch):
    """The examples folder as the current one, its own caches, offline; and afterwards the process as a fresh
    interpreter would have it: an example may register a model or import the folder's modules (mypkg)."""
    monkeypatch.chdir(examples_folder)
    monkeypatch.setenv("CIFARLAB_DATA", str(examples_folder / "cache"))
    monkeypatch.setenv("HF_HOME", str(examples_folder / ".cache" / "huggingface"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(examples_folder / ".cache" / "wandb"))
    registered, modules, environ = dict(MODELS._entries), set(sys.modules), dict(os.environ)
    yield examples_folder
    MODELS._entries.clear()
    MODELS._entries.update(registered)
    # An example may call mlflow.set_tracking_uri, which MLflow keeps process-wide and also writes into
    # os.environ: the next test file on this worker would log to that store (it did, under pytest-xdist).
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(environ.get("MLFLOW_TRACKING_URI"))
    os.environ.clear()
    os.environ.update(environ)
    for name in set(sys.modules) - modules:
        if _imported_from(sys.modules[name], examples_folder):
            del sys.modules[name]


def _imported_from(module, folder: Path) -> bool:
    """Whether `module` (a file, a package or a namespace package like mypkg/) was imported from `folder`."""
    spec = getattr(module, "__spec__", None)
    places = [getattr(spec, "origin", None), *(getattr(spec, "submodule_search_locations", None) or [])]
    return any(str(place or "").startswith(str(folder)) for place in places)


@needs_fashion
@pytest.mark.parametrize("language, body", list(_blocks()))
def test_documented_example_runs(language, body, in_examples_folder, stand_ins, monkeypatch, capsys):
    assert FASHION_DIR.exists()
    shell = Shell(in_examples_folder, monkeypatch, capsys, stand_ins)
    if language == "python":
        monkeypatch.syspath_prepend(str(in_examples_folder))
        exec(compile(newest_runs(body, in_examples_folder), "docs example", "exec"), {"__name__": "__docs__"})
    elif language == "yaml":  # a part of a recipe: it loads as one, over the defaults
        (in_examples_folder / "fragment.yaml").write_text(body, encoding="utf-8")
        assert main(["show", "fragment.yaml"]) == 0, capsys.readouterr().err
    elif language == "bash":
        for line in commands(body):
            code, printed = shell.run(line)
            assert code == 0, f"{line}\n{printed[-3000:]}"
    else:
        for command, shown in _transcript(body):
            _, printed = shell.run(command)
            for expected in shown:
                pattern = ".*?".join(map(re.escape, expected.split("...")))
                assert re.search(pattern, printed), f"{command}: expected {expected!r} in\n{printed[-3000:]}"


def _transcript(body: str) -> list[tuple[str, list[str]]]:
    """[(command, lines it prints)] of a console block; `...` lines stand for output not checked."""
    steps: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps and line.strip() and line.strip() != "...":
            steps[-1][1].append(line.strip())
    return steps


# ------------------------------------------------------------------------------ the rules themselves

def test_a_line_not_run_says_what_it_needs_and_is_still_checked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shell = Shell(tmp_path, monkeypatch, capsys, StandIns())
    with pytest.raises(AssertionError, match="says what the line needs"):
        shell.run("wandb sync runs   # needs:")
    with pytest.raises(AssertionError, match="no rule to run 'wandb'"):
        shell.run("wandb sync runs")
    with pytest.raises(AssertionError, match="matches nothing"):
        shell.run("wandb sync runs/*/offline-run-*   # needs: network")
    with pytest.raises(UserError, match="no_such_key"):
        shell.run("cifarlab train smoke optim.no_such_key=1   # needs: network")
    with pytest.raises(AssertionError, match="arguments refused"):
        shell.run("cifarlab eval --no-such-flag best.pt   # needs: network")
    assert shell.run("cifarlab train smoke output.mlflow_uri=http://mlflow.example:5000   # needs: a server")[0] == 0
    assert not (tmp_path / "runs").exists()  # checked, not run


def test_sweeps_and_bench_scripts_run_short():
    assert short_run(["sweep", "smoke", "data.val_split=64", "--grid", "seed=0,1,2", "optim.lr=0.05,0.1"]) == [
        "sweep", "smoke", "data.val_split=64", "train.epochs=1", "output.report=false", *FAST,
        "--grid", "seed=0,1,2", "optim.lr=0.05,0.1", "--trials", "2"]
    shortened = short_run(["sweep", "smoke", "s.yaml", "--trials", "200", "--dir", "d"])
    assert shortened[:3] == ["sweep", "smoke", "s.yaml"] and shortened[-4:] == ["--trials", "2", "--dir", "d"]
    assert short_bench(["bench/precision.py"]) == ["bench/precision.py", "--steps", "1", "--repeats", "1",
                                                   "--batch-size", "2", "--models", "convnet"]
    assert short_bench(["bench/precision.py", "--models", "convnet", "fastnet", "--steps", "2"]) == [
        "bench/precision.py", "--models", "convnet", "fastnet", "--steps", "1", "--repeats", "1", "--batch-size", "2"]


def test_time_stands_for_the_newest_run_an_example_trained(tmp_path):
    for run in ("smoke/20250101-000009", "smoke/20250101-000010", "smoke/20250101-000010-1", "smoke/lr-find-20250102-0",
                "fmnist-quick/20250101-000000", RUN_DIR.removeprefix("runs/")):
        (tmp_path / "runs" / run).mkdir(parents=True)
    assert newest_runs("eval runs/smoke/<time>/checkpoints/best.pt", tmp_path) == \
        "eval runs/smoke/20250101-000010-1/checkpoints/best.pt"
    assert newest_runs("runs/fmnist-quick/<time>", tmp_path) == "runs/fmnist-quick/20250101-000000"
    with pytest.raises(AssertionError, match="an earlier example on the page trains it"):
        newest_runs("runs/fast/<time>", tmp_path)
