"""Run directories several test files start from."""
from __future__ import annotations

import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

import torch

from cifarlab.cli import main
from cifarlab.run.checkpoint import load_checkpoint, save_checkpoint
from cifarlab.trainer.callbacks import Callback
from cifarlab.trainer.state import TrainState

SRC = Path(__file__).resolve().parents[1] / "src"
MEMORY_LIMIT = 4 << 30  # for CLI runs that, were their fix lost, would read until memory runs out
FAST = ["train.threads=1", "output.tensorboard=false", "output.progress=none"]


class SharedRuns:
    """Runs the suite trains once per test session and tests only copy: the `shared_runs` fixture
    (tests/conftest.py). Each is built by the first test that asks, under a file lock in the session's
    temporary folder that every pytest-xdist worker sees (pytest-xdist's recipe for "session-scoped fixtures
    that execute only once"), so two workers never train the same run. A test never gets the built folder
    itself, only its own copy (`copy`), which it may change, resume or tamper with as it likes."""

    def __init__(self, root: Path):
        self.root = root

    def built(self, name: str, build: Callable[[Path], None]) -> Path:
        """The folder `build(folder)` filled, built now unless a test (in any worker) built it before."""
        from filelock import FileLock

        folder = self.root / name
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / f"{name}.lock")):
            if not (folder / ".built").exists():
                if folder.exists():  # a build that failed half-way in another test
                    shutil.rmtree(folder)
                folder.mkdir()
                threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
                try:
                    build(folder)
                finally:  # a run's train.threads and deterministic=true are process-wide
                    torch.set_num_threads(threads)
                    torch.use_deterministic_algorithms(deterministic)
                (folder / ".built").touch()
        return folder

    def copy(self, name: str, build: Callable[[Path], None], dest: Path) -> Path:
        """A copy of the built folder `name` at `dest` (a new or empty folder)."""
        shutil.copytree(self.built(name, build), dest, ignore=shutil.ignore_patterns(".built"), dirs_exist_ok=True)
        return dest


def only_run(output_dir: Path, recipe: str = "smoke") -> Path:
    """The one run directory a run with `output.dir=output_dir` made."""
    (run_dir,) = [path for path in (output_dir / recipe).iterdir() if path.is_dir()]
    return run_dir


def _train_finished_and_open(root: Path) -> None:
    assert main(["train", "smoke", f"output.dir={root / 'done'}", "train.epochs=1", "schedule.peak_epoch=0.5",
                 *FAST]) == 0
    assert main(["train", "smoke", f"output.dir={root / 'open'}", "checkpoint.every_steps=3", *FAST]) == 0
    stopped = only_run(root / "open")
    os.replace(stopped / "checkpoints" / "last.prev.pt", stopped / "checkpoints" / "last.pt")
    payload = load_checkpoint(stopped / "checkpoints" / "last.pt")
    assert (payload["step"], payload["epoch"], payload["batch_in_epoch"]) == (15, 1, 7)


def finished_and_open_runs(root: Path, shared: SharedRuns) -> dict[str, Path]:
    """{"done": a finished 1-epoch smoke run, "open": a 2-epoch one put back to its step-15 checkpoint
    (epoch 1, batch 7: resumable)}: this test's own copies, under `root`, of runs trained once per session."""
    shared.copy("finished-and-open", _train_finished_and_open, root)
    return {"done": only_run(root / "done"), "open": only_run(root / "open")}


def _train_flip(root: Path) -> None:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["train", "smoke", f"output.dir={root}", "train.epochs=1", "schedule.peak_epoch=0.5",
                     "train.tta=flip", *FAST, "output.progress=lines"]) == 0
    (root / "train.err").write_text(err.getvalue())


def flip_run(root: Path, shared: SharedRuns) -> tuple[Path, str]:
    """(run directory, what `train` printed on stderr) of a finished 1-epoch smoke run evaluated with flip TTA,
    progress as lines: this test's own copy, under `root`, of the run trained once per session."""
    shared.copy("flip", _train_flip, root)
    return only_run(root), (root / "train.err").read_text()


def tree_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every regular file under `folder` (symbolic links are not followed)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def tampered_copy(run_dir: Path, dest: Path, change) -> Path:
    """A copy of `run_dir` whose checkpoints were re-saved, with a valid trailer, after `change(payload)`."""
    shutil.copytree(run_dir, dest)
    for name in ("last.pt", "best.pt"):
        path = dest / "checkpoints" / name
        if path.exists():
            payload = load_checkpoint(path)
            change(payload)
            save_checkpoint(payload, path)
    for prev in (dest / "checkpoints").glob("*.prev.pt"):
        prev.unlink()
    return dest


def _limited_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_cli(argv: list[str], capsys, cwd: Path, in_a_process: bool) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `cifarlab argv`: in this process, or (for cases that would block or eat
    memory were their fix lost) in a real one under a memory limit and a timeout, so a regression fails the
    test instead of the machine."""
    if not in_a_process:
        code = main(argv)
        out, err = capsys.readouterr()
        return code, out, err
    done = subprocess.run([sys.executable, "-m", "cifarlab", *argv], capture_output=True, text=True, timeout=120,
                          preexec_fn=_limited_memory, cwd=cwd, env={**os.environ, "PYTHONPATH": str(SRC)})
    return done.returncode, done.stdout, done.stderr


def assert_refused(argv: list[str], words: list[str], watched: dict[str, Path], capsys, cwd: Path,
                   in_a_process: bool = False) -> None:
    """The bad-input contract: exit code 2, no traceback, one stderr line `cifarlab CMD: error: ...` that holds
    every one of `words`, and nothing under the `watched` folders written, changed or removed."""
    before = {name: tree_hashes(path) for name, path in watched.items()}
    code, out, err = run_cli(argv, capsys, cwd, in_a_process)
    lines = err.strip().splitlines()  # `train` announces a run only once nothing can reject it
    assert code == 2, err[-3000:]
    assert "Traceback" not in out + err
    assert len(lines) == 1 and lines[0].startswith(f"cifarlab {argv[0]}: error: "), err[-3000:]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert {name: tree_hashes(path) for name, path in watched.items()} == before  # nothing written or changed


class AtStep(Callback):
    """A test's fault at a chosen step, through the public callback surface
    (`cifarlab.train(..., callbacks=[AtStep(11, action)])`, `cifarlab.resume`, `cluster.train_or_continue`):
    `action(state)` runs once, in `on_step_end` of step `step` (1-based, counted over the whole run), after
    cifarlab's own callbacks and before the loop looks at `state.stop_now`. No loop internals are patched."""

    def __init__(self, step: int, action: Callable[[TrainState], None]):
        self.step, self.action, self.done = step, action, False

    def on_step_end(self, state):
        if state.progress.step == self.step and not self.done:
            self.done = True
            self.action(state)


def signal_at_step(step: int, signum: int = signal.SIGINT) -> AtStep:
    """A real signal to this process as step `step` ends, as Ctrl-C or a scheduler sends it: cifarlab's handler
    marks the run interrupted, the loop stops after that step and last.pt holds step `step`."""
    return AtStep(step, lambda state: signal.raise_signal(signum))


def train_cli_exit(recipe: str, overrides: list[str], callbacks=(), run_dir=None) -> int:
    """`cifarlab train RECIPE OVERRIDES [--run-dir RUN_DIR]` with test `callbacks` added: the same library call
    the command makes (`experiment.train`, or `cluster.train_or_continue` for a named run) and the command's exit
    code for its outcome (`cli.run_exit_code`), as the CLI itself cannot take callbacks."""
    from cifarlab.commands import run_exit_code

    threads = torch.get_num_threads()
    try:
        if run_dir is None:
            from cifarlab.experiment import train

            return run_exit_code(train(recipe, overrides, callbacks=callbacks))
        from cifarlab.cluster import train_or_continue

        return run_exit_code(train_or_continue(recipe, overrides, run_dir=run_dir, callbacks=callbacks))
    finally:
        torch.set_num_threads(threads)
