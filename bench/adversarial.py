"""An adversarial round, run by hand (not part of the suite): table-driven cases against the `cifarlab` CLI (a
subprocess each, in its own temporary folder) and the Python API (a small script in a subprocess), each
outcome classified by the contract of docs/robustness.md.

    .venv/bin/python bench/adversarial.py                 # every case (about 10 minutes on 2 cores)
    .venv/bin/python bench/adversarial.py --only sweep    # the cases whose name or surface holds a word

PASS       exit 0 with the right behaviour, or exit 2 with exactly one `... error: ...` line on stderr (warning:
           and note: lines aside) naming what was wrong, and every file that existed before keeps its sha256
FAIL-high  a silent wrong result: wrong accuracy or labels, data mixed up, code run from data, a file lost or
           corrupted
FAIL-medium a traceback, an exit code other than 0/2 on bad input, a partial write or a folder left behind by
           a refusal
FAIL-low   an unclear message: the line lacks the words that name the fault, or the wrong thing is blamed

The cases are in bench/adversarial_cases.py; the files they start from (a trained run, an exported model
folder, Hugging Face datasets, image folders) are built once per round under a temporary folder.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "cifarlab"
HIGH, MEDIUM, LOW, PASS = "FAIL-high", "FAIL-medium", "FAIL-low", "PASS"
QUIET_PREFIXES = ("warning:", "note:", "precision:")  # lines the contract allows besides the error line
TIMEOUT_S = 300


@dataclass
class Result:
    rc: int
    out: str
    err: str
    folder: Path
    seconds: float


@dataclass
class Case:
    """One row: `run(ctx, folder)` sets the case up in its own `folder` and returns a Result; `expect` judges it.
    `surface` groups cases in the table; `--only` matches the name or the surface."""
    name: str
    surface: str
    run: Callable[["Context", Path], Result]
    expect: "Expect"


@dataclass
class Expect:
    """refuse: exit 2, one line holding every word of `words` (else low); accepting the input silently is a
    failure of class `silent`. accept: exit 0 and `check(result)` None (else a failure of class `wrong`).
    either: exit 0 (checked) or a one-line refusal. `keep`: the case's files must keep their sha256 whatever
    the outcome (a refusal always keeps them; a finished command only where this is set)."""
    kind: str
    words: Sequence[str] = ()
    silent: str = HIGH
    check: Optional[Callable[[Result], Optional[str]]] = None
    wrong: str = HIGH
    keep: bool = False
    codes: Sequence[int] = (0,)


def refuse(*words: str, silent: str = HIGH) -> Expect:
    return Expect("refuse", words, silent)


def accept(check: Optional[Callable[[Result], Optional[str]]] = None, wrong: str = HIGH, keep: bool = False,
           codes: Sequence[int] = (0,)) -> Expect:
    return Expect("accept", check=check, wrong=wrong, keep=keep, codes=codes)


def either(*words: str, check=None, wrong: str = HIGH) -> Expect:
    return Expect("either", words, check=check, wrong=wrong)


# ----------------------------------------------------------------------------------------------- running

@dataclass
class Context:
    root: Path
    env: dict
    fixtures: dict = field(default_factory=dict)

    def cli(self, folder: Path, *argv, env: Optional[dict] = None, timeout: int = TIMEOUT_S) -> Result:
        return self.run_process([str(CLI), *map(str, argv)], folder, env, timeout)

    def python(self, folder: Path, body: str, env: Optional[dict] = None) -> Result:
        """`body` run as a script in `folder`, a UserError printed as the CLI prints it (one line, exit 2)."""
        script = folder / "case_script.py"
        script.write_text("import sys\nimport cifarlab\nfrom cifarlab.errors import UserError\ntry:\n"
                          + textwrap.indent(textwrap.dedent(body), "    ")
                          + "\nexcept UserError as err:\n    print(f'cifarlab: error: {err}', file=sys.stderr)\n"
                            "    sys.exit(2)\n")
        hidden = folder / ".case_script.py"
        script.rename(hidden)  # not one of the case's own files, which are hashed
        return self.run_process([sys.executable, str(hidden)], folder, env)

    def run_process(self, argv, folder: Path, env: Optional[dict] = None, timeout: int = TIMEOUT_S) -> Result:
        start = time.monotonic()
        try:
            done = subprocess.run(argv, cwd=folder, env={**self.env, **(env or {})}, capture_output=True, text=True,
                                  timeout=timeout, errors="replace")
            rc, out, err = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as timed_out:
            rc, out, err = -999, str(timed_out.stdout or ""), f"timed out after {timeout} s"
        return Result(rc, out, err, folder, time.monotonic() - start)


def hashes(folder: Path) -> dict[str, str]:
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_file() or path.name.startswith(".case_"):
            continue
        try:
            found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            found[str(path.relative_to(folder))] = "unreadable"
    return found


def entries(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if not path.name.startswith(".case_")}


def error_lines(err: str) -> tuple[list[str], list[str]]:
    """(the error lines, the other lines that are not warnings or notes) of stderr."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if " error: " in line or line.startswith("error:")]
    noise = [line for line in lines if line not in errors and not line.lower().startswith(QUIET_PREFIXES)]
    return errors, noise


def judge(expect: Expect, result: Result, before: dict[str, str], before_entries: set[str]) -> tuple[str, str]:
    """(class, why) of one outcome."""
    after = hashes(result.folder)
    changed = sorted(name for name, digest in before.items() if after.get(name) != digest)
    errors, noise = error_lines(result.err)
    last = (errors or [""])[-1]
    if "Traceback (most recent call last)" in result.err:
        tail = [line for line in result.err.splitlines() if line.strip()][-1][:160]
        return MEDIUM, f"traceback (exit {result.rc}): {tail}"
    if result.rc == -999:
        return MEDIUM, result.err
    if result.rc == 2:
        if changed:
            return HIGH, f"refused, yet changed {', '.join(changed[:3])}"
        left = sorted(entries(result.folder) - before_entries)
        if left:
            return MEDIUM, f"refused, yet left {', '.join(left[:3])}"
        if len(errors) != 1:
            return MEDIUM if not errors else LOW, f"{len(errors)} error lines: {result.err.strip()[-160:]!r}"
        if noise:
            return LOW, f"noise around the line: {noise[0][:100]!r}"
        if expect.kind == "accept":
            return LOW, f"refused valid input: {last[:160]}"
        missing = [word for word in expect.words if word.lower() not in last.lower()]
        if missing:
            return LOW, f"line lacks {missing}: {last[:200]}"
        return PASS, last[:160]
    if result.rc not in (0, *expect.codes):
        return MEDIUM, f"exit {result.rc}: {result.err.strip()[-160:]!r}"
    if expect.kind == "refuse":
        return expect.silent, f"accepted (exit {result.rc}): {(result.err.strip() or result.out.strip())[-140:]!r}"
    if changed and (expect.keep or expect.kind == "either"):
        return HIGH, f"changed {', '.join(changed[:3])}"
    problem = expect.check(result) if expect.check else None
    if problem:
        return expect.wrong, problem
    return PASS, (result.out.strip().splitlines() or [""])[-1][:160]


def run_case(ctx: Context, case: Case) -> tuple[str, str, float]:
    folder = ctx.root / "cases" / case.name.replace("/", "_").replace(" ", "_")
    folder.mkdir(parents=True)
    start = time.monotonic()
    try:
        result = case.run(ctx, folder)
    except Exception as err:  # the harness's own setup failed: say so, never count it as the product's
        return "HARNESS", f"{type(err).__name__}: {err}"[:160], time.monotonic() - start
    outcome, why = judge(case.expect, result, getattr(result, "before", {}), getattr(result, "before_entries", set()))
    if outcome != PASS:  # the whole stderr, for the table's failures (a traceback's first lines included)
        (ctx.root / "stderr").mkdir(exist_ok=True)
        (ctx.root / "stderr" / f"{folder.name}.txt").write_text(result.err)
    return outcome, why, time.monotonic() - start


def snapshot(result_maker: Callable[[], Result], folder: Path) -> Result:
    """Hash `folder` before calling `result_maker`, attach the hashes to its Result (for `judge`)."""
    before, before_entries = hashes(folder), entries(folder)
    result = result_maker()
    result.before, result.before_entries = before, before_entries
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", default=[], metavar="WORD",
                        help="only the cases whose name or surface holds WORD (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print its path")
    parser.add_argument("--list", action="store_true", help="list the cases and stop")
    parser.add_argument("--jobs", type=int, default=1, help="cases at once (default 1; each is a subprocess)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from adversarial_cases import CASES, build_fixtures

    cases = [case for case in CASES if not args.only
             or any(word in case.name or word in case.surface for word in args.only)]
    if args.list:
        for case in cases:
            print(f"{case.surface:12} {case.name}")
        print(f"{len(cases)} cases")
        return 0
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # the fixtures are built with `datasets`
    root = Path(tempfile.mkdtemp(prefix="cifarlab-adversarial-"))
    home = root / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "CIFARLAB_DATA": str(root / "data"), "CIFARLAB_CACHE": str(root / "cache"),
           "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(root / "modules"), os.environ.get("PYTHONPATH")])),
           "COLUMNS": "200", "PYTHONWARNINGS": "ignore"}
    ctx = Context(root, env)
    started = time.monotonic()
    print(f"building fixtures under {root} ...", flush=True)
    build_fixtures(ctx, {case.surface for case in cases})
    rows, counts = [], {PASS: 0, HIGH: 0, MEDIUM: 0, LOW: 0, "HARNESS": 0}
    from concurrent.futures import ThreadPoolExecutor

    def one(case: Case):
        outcome, why, seconds = run_case(ctx, case)
        print(f"{outcome:11} {case.surface:10} {case.name:48} {seconds:5.1f}s  {why}", flush=True)
        return outcome, why

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:  # each case is its own folder and subprocess
        for case, (outcome, why) in zip(cases, pool.map(one, cases)):
            counts[outcome] += 1
            rows.append((case.surface, case.name, outcome, why))
    print()
    print(f"{'surface':10} {'case':48} outcome")
    for surface, name, outcome, why in rows:
        if outcome != PASS:
            print(f"{surface:10} {name:48} {outcome}: {why}")
    for surface, name, outcome, why in rows:
        saved = root / "stderr" / f"{name.replace('/', '_').replace(' ', '_')}.txt"
        if outcome != PASS and saved.exists():
            print(f"\n--- {name}: stderr (last 25 lines)\n" + "\n".join(saved.read_text().splitlines()[-25:]))
    print(f"\n{len(cases)} cases: {counts[PASS]} pass, {counts[HIGH]} high, {counts[MEDIUM]} medium, {counts[LOW]} low"
          + (f", {counts['HARNESS']} harness errors" if counts["HARNESS"] else "")
          + f" ({time.monotonic() - started:.0f} s)")
    if args.keep:
        print(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if counts[HIGH] == counts[MEDIUM] == counts["HARNESS"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
