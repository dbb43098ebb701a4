"""How tests/test_docs.py runs a documented command line: as a user's shell would, in the examples folder,
shortened where it would train long, against a local stand-in where one is real and cheap, and checked
offline where the line says what it needs (`# needs: ...`). The rules are stated in test_docs.py's
docstring and docs/README.md; this module is their one implementation."""
from __future__ import annotations

import glob
import itertools
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from _runs import FAST, SRC
from cifarlab.cli import build_parser, main
from cifarlab.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TRAINING = ("train", "demo", "lr-find")
SWEEP_TRIALS = 2  # a documented sweep runs at most this many (short) trials
# bench scripts run shortened: option -> value (replacing the documented one); a line that names no
# --models times convnet alone (every model's bf16 step, emulated on most CPUs, takes ~50 s even so).
BENCH_SHORT = {"bench/precision.py": {"--steps": "1", "--repeats": "1", "--batch-size": "2", "--models": "convnet"}}
RUN_DIR = "runs/fmnist-quick/20261129-120000"  # the examples folder's own run, as the docs name it
NEEDS = re.compile(r"\s#\s*needs:(.*)$")
RUN_STAMP = re.compile(r"\d{8}-\d{6}(-\d+)?")
POSTGRES_URL = re.compile(r"postgresql(\+\w+)?://[^\s@]*@db-host/\w+")


def commands(body: str) -> list[str]:
    """The command lines of a bash block: continuations joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    return [line for line in joined.splitlines() if shlex.split(line, comments=True)]


def newest_runs(text: str, folder: Path) -> str:
    """`text` with each `runs/RECIPE/<time>` put as the newest run directory of RECIPE under `folder` that an
    example trained (RUN_DIR, named for a date, is not one: on a clock before that date it would be newest)."""
    def newest(match: re.Match) -> str:
        parent = folder / match.group(1)
        stamps = sorted((p.name for p in parent.glob("*")
                         if RUN_STAMP.fullmatch(p.name) and p != folder / RUN_DIR),
                        key=lambda name: [int(part) for part in name.split("-")])
        assert stamps, f"no run under {match.group(1)}: an earlier example on the page trains it"
        return f"{match.group(1)}/{stamps[-1]}"

    return re.sub(r"(runs/[\w.-]+)/<time>", newest, text)


def short_run(argv: list[str]) -> list[str]:
    """A `cifarlab` command that would train long, shortened (see test_docs.py's docstring)."""
    if argv and argv[0] == "sweep":
        return _short_sweep(argv)
    if not argv or argv[0] not in TRAINING:
        return argv
    overrides = [arg for arg in argv[1:] if "=" in arg and not arg.startswith("-")]
    recipe = "fmnist-quick" if argv[0] == "demo" else argv[1]
    return argv + _short_overrides(argv[0], recipe, overrides) + FAST


MAX_EPOCHS = 5  # a command that sets more epochs (README: `train.epochs=30`) trains this many


def _short_overrides(command: str, recipe: str, overrides: list[str]) -> list[str]:
    given = {arg.split("=", 1)[0] for arg in overrides}
    cfg = load_config(recipe, overrides)
    extra = []
    if cfg.data.dataset in ("cifar10", "cifar100"):
        extra += ["data.dataset=synthetic", "data.options={num_train: 256, num_test: 128, image_size: 32}",
                  "model.name=convnet", "model.options={width: 4}", "train.batch_size=64"]
    elif cfg.data.dataset in ("fashion_mnist", "mnist"):
        extra += ["data.train_subset=1000", "data.test_subset=500"]
    if command == "lr-find" or cfg.schedule.lr_peak == "auto":
        extra.append("lr_find.num_iter=10")
    if command != "lr-find":
        epochs = cfg.train.epochs if "train.epochs" in given else 1
        if epochs == 1 or (isinstance(epochs, int) and epochs > MAX_EPOCHS):
            extra.append(f"train.epochs={min(epochs, MAX_EPOCHS)}")
        extra += [] if "output.report" in given else ["output.report=false"]
    return extra


def _short_sweep(argv: list[str]) -> list[str]:
    """At most SWEEP_TRIALS trials, each a short run; the overrides go right after the recipe, as documented."""
    recipe, rest = argv[1], argv[2:]
    positional = rest[:next((i for i, arg in enumerate(rest) if arg.startswith("--")), len(rest))]
    overrides = [arg for arg in positional if "=" in arg]
    rest = [arg for arg in rest if arg not in positional]
    if "--trials" in rest:
        at = rest.index("--trials") + 1
        rest[at] = str(min(int(rest[at]), SWEEP_TRIALS))
    else:
        rest += ["--trials", str(SWEEP_TRIALS)]
    extra = _short_overrides("train", recipe, overrides) + FAST
    return ["sweep", recipe, *positional, *extra, *rest]


def short_bench(args: list[str]) -> list[str]:
    """`bench/SCRIPT.py ...` arguments with BENCH_SHORT's options in place of the documented ones."""
    shortened = BENCH_SHORT.get(args[0]) if args else None
    if not shortened:
        return args
    args = list(args)
    for option, value in shortened.items():
        if option in args:
            at = args.index(option) + 1
            if option == "--models":
                continue  # the models a line names are what it is about: kept
            args[at] = value
        else:
            args += [option, value]
    return args


class Shell:
    """One bash block's shell: `export`s last to the end of the block, `NAME=value cmd` for one command."""

    def __init__(self, folder: Path, patch: pytest.MonkeyPatch, capsys, stand_ins: StandIns):
        self.folder, self.patch, self.capsys, self.stand_ins = folder, patch, capsys, stand_ins

    def run(self, line: str) -> tuple[int, str]:
        """(exit code, everything printed) of one documented command line, run in the examples folder."""
        assert not re.search(r"\s(\||&&|;|>|<)\s", line), f"one command per line, no shell syntax: {line}"
        needs = NEEDS.search(line)
        argv = shlex.split(newest_runs(line, self.folder), comments=True)
        if argv[0] == "export":
            for assignment in argv[1:]:
                self._setenv(self.patch, assignment)
            return 0, ""
        with self.patch.context() as patch:
            while re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
                self._setenv(patch, argv.pop(0))
            if needs:
                return self._check_offline(line, needs.group(1).strip(), argv)
            # A PostgreSQL server at db-host: a throwaway local one stands in.
            argv = [POSTGRES_URL.sub(lambda m: self.stand_ins.postgres(m.group(1) or ""), arg) for arg in argv]
            return self._run(argv, line)

    def _setenv(self, patch: pytest.MonkeyPatch, assignment: str) -> None:
        name, _, value = assignment.partition("=")
        patch.setenv(name, value)
        if name == "PYTHONPATH":  # what the interpreter does with it, for the in-process CLI
            for entry in reversed(value.split(os.pathsep)):
                patch.syspath_prepend(str((self.folder / entry).resolve()))

    def _run(self, argv: list[str], line: str) -> tuple[int, str]:
        program, args = argv[0], _globbed(argv[1:])
        if program == "cifarlab":
            self.capsys.readouterr()
            try:
                code = main(short_run(args))
            except SystemExit as done:  # argparse's --help and --version exit, as the real program does
                code = done.code or 0
            out, err = self.capsys.readouterr()
            return code, out + err
        if program == "python" and args and args[0].startswith("bench/"):
            return self._bench_script(short_bench(args))
        if program in ("torchrun", "python"):
            return _process(program, args)
        if program == "make":
            done = subprocess.run(["make", "-n", *args], capture_output=True, text=True, cwd=ROOT)
            return done.returncode, done.stdout + done.stderr
        if program == "pip":
            return _check_pip(args), ""
        raise AssertionError(f"no rule to run {program!r} in a docs example (mark it `# needs: ...`?): {line}")

    def _bench_script(self, args: list[str]) -> tuple[int, str]:
        """`python bench/X.py ...` in the checkout, run in this interpreter as `python` runs a script (its folder
        first on sys.path, `__name__ == "__main__"`): a process of its own would spend ~10 s importing torch."""
        script = ROOT / args[0]
        with self.patch.context() as patch:
            patch.chdir(ROOT)
            patch.setattr(sys, "argv", [str(script), *args[1:]])
            patch.syspath_prepend(str(script.parent))
            self.capsys.readouterr()
            try:
                runpy.run_path(str(script), run_name="__main__")
                code = 0
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 1
            out, err = self.capsys.readouterr()
        for name in [name for name, module in sys.modules.items()
                     if str(getattr(module, "__file__", None) or "").startswith(str(script.parent))]:
            del sys.modules[name]  # bench/common.py: a fresh interpreter's next script imports its own
        return code, out + err

    def _check_offline(self, line: str, reason: str, argv: list[str]) -> tuple[int, str]:
        """A line that needs what the test machine lacks: what can be checked without it is."""
        assert reason, f"`# needs:` says what the line needs (network, an account, ...): {line}"
        program, args = argv[0], argv[1:]
        for arg in args:
            if re.search(r"[*?[]", arg):
                assert glob.glob(arg), f"{arg} matches nothing in the examples folder: {line}"
            if arg.startswith("sqlite:///"):
                assert Path(arg.removeprefix("sqlite:///")).exists(), f"no database {arg}: {line}"
        if program == "cifarlab":
            _check_cifarlab_arguments(args)
            return 0, ""
        found = shutil.which(program) or shutil.which(program, path=str(Path(sys.executable).parent))
        assert found, f"{program} is not installed (the line needs {reason}): {line}"
        words = list(itertools.takewhile(lambda arg: re.fullmatch(r"[a-z][a-z-]*", arg), args))  # subcommands
        done = subprocess.run([found, *words, "--help"], capture_output=True, text=True, timeout=120)
        return done.returncode, done.stdout + done.stderr


def _globbed(args: list[str]) -> list[str]:
    """Arguments with shell wildcards expanded in the current folder (a pattern that matches nothing stays)."""
    out = []
    for arg in args:
        matches = sorted(glob.glob(arg)) if re.search(r"[*?[]", arg) and "=" not in arg else []
        out += matches or [arg]
    return out


def _check_cifarlab_arguments(args: list[str]) -> None:
    """The arguments parse and the config they make validates, as the command would check them first."""
    from cifarlab.sweep import define_sweep, split_arguments

    try:
        parsed = build_parser().parse_args(args)
    except SystemExit as stop:
        raise AssertionError(f"cifarlab {' '.join(args)}: arguments refused (exit {stop.code})") from None
    if parsed.command == "sweep":
        overrides, space_file = split_arguments(parsed.args)
        define_sweep(parsed.recipe, overrides, space_file, parsed.grid, parsed.trials, parsed.seeds, parsed.name,
                     parsed.dir, parsed.storage, parsed.pruner, parsed.heartbeat, parsed.allow_test_selection)
    elif parsed.command in TRAINING or parsed.command == "show":
        load_config("fmnist-quick" if parsed.command == "demo" else parsed.recipe, parsed.overrides)


def _process(program: str, args: list[str]) -> tuple[int, str]:
    """`python ...` / `torchrun ...` in a process of its own."""
    if program == "torchrun":
        at = args.index("cifarlab")
        args = ["-m", "torch.distributed.run", *args[:at + 1], *short_run(args[at + 1:])]
    paths = [str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])]
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)})
    return done.returncode, done.stdout + done.stderr


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


class StandIns:
    """Local servers that stand in for the documented ones, started on first use, stopped at the end."""

    def __init__(self):
        self._stack, self._postgres = ExitStack(), None

    def postgres(self, driver: str) -> str:
        """The URL of a throwaway PostgreSQL server on 127.0.0.1 (tests/_postgres.py, as the sweep tests use)."""
        from _postgres import postgres_server, why_not

        if self._postgres is None:
            reason = why_not()
            if reason:
                pytest.skip(f"a documented command needs PostgreSQL: {reason}")
            self._postgres = self._stack.enter_context(postgres_server())
        return self._postgres.replace("postgresql://", f"postgresql{driver}://", 1)

    def close(self) -> None:
        self._stack.close()
