"""`cifarlab` command line. User errors print one line and exit 2; bugs keep their traceback."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cifarlab.errors import UserError
from cifarlab.run.layout import example_checkpoint

EXAMPLES = """examples:
  cifarlab recipes                                  # the reference experiments and quick recipes
  cifarlab train fmnist-quick                       # real Fashion-MNIST, about 5 minutes on 2 cores
  cifarlab train custom-resnet-onecycle train.epochs=5 optim.weight_decay=1e-4
  cifarlab resume runs/fmnist-quick/20261121-120000
  cifarlab resume runs/fmnist-quick/20261121-120000 --more 2     # extend a finished run by 2 epochs
  cifarlab show fmnist-quick --diff                 # what a recipe changes from the defaults
  cifarlab compare runs/fmnist-quick                # every run under a folder, differing settings as columns
  cifarlab lr-find custom-resnet-onecycle lr_find.num_iter=200
  cifarlab report runs/fmnist-quick/20261121-120000
  cifarlab sweep smoke data.val_split=64 --grid optim.lr=0.02,0.05,0.1   # an Optuna study of runs
  cifarlab COMMAND --help                           # each command's arguments and examples

exit codes of train/resume/demo: 0 done, 2 bad input (one line on stderr), 3 diverged (NaN/inf loss;
the last good checkpoint is kept), 130/143/138 stopped by SIGINT/SIGTERM/SIGUSR1 after saving a
checkpoint (continue with `cifarlab resume RUN_DIR`, or the same `train ... --run-dir` command)
"""


class Parser(argparse.ArgumentParser):
    """One-line errors; descriptions and epilogs (the examples) keep their line breaks."""

    def __init__(self, *args, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message):  # one line, exit 2 (argparse's default prints the whole usage first)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _overrides(parser):
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. train.epochs=5 optim.lr=0.05 augment.cutout=null")


def build_parser() -> Parser:
    parser = Parser(prog="cifarlab", description="Train and analyse image classifiers on CIFAR-10-class datasets.",
                    epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cifarlab {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    from cifarlab import commands

    p = sub.add_parser("train", help="train a recipe into a new run directory",
                       epilog="examples:\n  cifarlab train fmnist-quick\n  cifarlab train smoke train.epochs=5 "
                              "optim.lr=0.05\n"
                              f"  cifarlab train smoke model.init_from={example_checkpoint('smoke')}")
    p.add_argument("recipe", help="recipe name (see `cifarlab recipes`) or path to a YAML file")
    _overrides(p)
    p.add_argument("--run-dir", type=Path, help="the run's own folder: trained the first time, continued when the "
                   "same command runs again (a requeued or restarted job), see docs/cluster.md")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("resume", help="continue a run from its last checkpoint, or extend it with --more/--epochs",
                       epilog="examples:\n  cifarlab resume runs/fmnist-quick/20261121-120000\n"
                              "  cifarlab resume runs/fmnist-quick/20261121-120000 --more 2     # 6 epochs -> 8\n"
                              "  cifarlab resume runs/fmnist-quick/20261121-120000 --epochs 8   # the same")
    p.add_argument("run_dir", type=Path, help="the run directory, e.g. runs/fmnist-quick/20261121-120000")
    extend = p.add_mutually_exclusive_group()
    extend.add_argument("--more", type=int, metavar="N",
                        help="extend the run (finished or not) by N epochs beyond its train.epochs")
    extend.add_argument("--epochs", type=int, metavar="TOTAL",
                        help="extend the run (finished or not) to this many epochs in all (the new total)")
    commands.import_flag(p)
    p.set_defaults(run=cmd_resume)

    p = sub.add_parser("demo", help="a real short training run: CIFAR-10 if it can be had, else Fashion-MNIST",
                       epilog="examples:\n  cifarlab demo\n  cifarlab demo train.epochs=1")
    _overrides(p)
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("recipes", help="list the recipes", epilog="example:\n  cifarlab recipes")
    p.set_defaults(run=cmd_recipes)
    p = sub.add_parser("models", help="list the models", epilog="example:\n  cifarlab models")
    p.set_defaults(run=cmd_models)
    p = sub.add_parser("datasets", help="list the datasets and whether each is available offline",
                       epilog="example:\n  cifarlab datasets")
    p.set_defaults(run=cmd_datasets)
    p = sub.add_parser("show", help="print the resolved config of a recipe with overrides",
                       epilog="examples:\n  cifarlab show custom-resnet-onecycle train.epochs=5\n"
                              "  cifarlab show fmnist-quick --diff")
    p.add_argument("recipe", help="recipe name (see `cifarlab recipes`) or path to a YAML file")
    _overrides(p)
    p.add_argument("--diff", action="store_true",
                   help="only the values that differ from the defaults (itself a recipe giving the same config)")
    p.set_defaults(run=cmd_show)

    commands.add_analysis_commands(sub)
    _add_sweep(sub)
    return parser


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="many runs of a recipe as one Optuna study (space file or --grid)",
                       epilog="examples:\n  cifarlab sweep fmnist-quick space.yaml data.val_split=0.1 --trials 20\n"
                              "  cifarlab sweep smoke data.val_split=64 --grid seed=0,1,2 optim.lr=0.05,0.1\n"
                              "  cifarlab sweep fmnist-quick space.yaml data.val_split=0.1 --trials 50 "
                              "--storage postgresql://user@host/db   # the same command on every machine\n"
                              "see docs/sweeps.md")
    p.add_argument("recipe", help="recipe name or YAML path")
    p.add_argument("args", nargs="*", metavar="SPACE.yaml | key=value",
                   help="the space file (config key -> {low, high[, log, step]} or {choices}) and overrides")
    p.add_argument("--grid", nargs="+", metavar="key=v1,v2", help="try every combination of these values")
    p.add_argument("--trials", type=int, help="trials in all, over every worker (default with --grid: the grid size)")
    p.add_argument("--seeds", type=int, default=1, help="train each configuration with this many seeds; score the mean")
    p.add_argument("--pruner", default="median", help="median (default), hyperband or none")
    p.add_argument("--workers", type=int, default=1, help="trials at once on this machine (one GPU each)")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite in the sweep folder), e.g. postgresql://...")
    p.add_argument("--name", help="study name (default: RECIPE-SPACE or RECIPE-grid)")
    p.add_argument("--dir", help="sweep folder (default: sweeps/NAME)")
    p.add_argument("--heartbeat", type=int, default=10,
                   help="seconds between a running trial's heartbeats; a trial silent for twice that is retried")
    p.add_argument("--allow-test-selection", action="store_true",
                   help="let trials select on the test split (no validation split); the test score is then tuned on")
    p.add_argument("--no-report", action="store_true", help="skip the sweep report at the end")
    p.set_defaults(run=cmd_sweep)


def cmd_sweep(args) -> int:
    from cifarlab.sweep import define_sweep, run_sweep

    spaces = [arg for arg in args.args if "=" not in arg]
    if len(spaces) > 1:
        raise UserError(f"one space file expected, got {', '.join(spaces)} (overrides look like key=value)")
    sweep = define_sweep(args.recipe, [arg for arg in args.args if "=" in arg], spaces[0] if spaces else None,
                         args.grid, args.trials, args.seeds, args.name, args.dir, args.storage, args.pruner,
                         args.heartbeat, args.allow_test_selection)
    return run_sweep(sweep, workers=args.workers, report=not args.no_report)


def _version() -> str:
    from cifarlab._version import __version__

    return __version__


# Exit codes of train/resume/demo: 0 completed, 2 user error, 3 diverged (NaN/inf loss),
# 128 + signal number when stopped by a signal after saving a checkpoint (130 SIGINT, 143 SIGTERM,
# 138 SIGUSR1: a scheduler's warning before preemption; the job script requeues on it, docs/cluster.md).
EXIT_DIVERGED = 3


def run_exit_code(run) -> int:
    status = run.summary.status
    if status == "diverged":
        return EXIT_DIVERGED
    if status == "interrupted":
        return 128 + int(run.summary.signal_number or 2)
    return 0


def cmd_train(args) -> int:
    if args.run_dir is not None:  # a named run: continued when it exists (docs/cluster.md)
        from cifarlab.cluster import train_or_continue

        return run_exit_code(train_or_continue(args.recipe, args.overrides, run_dir=args.run_dir))
    from cifarlab.experiment import train

    return run_exit_code(train(args.recipe, args.overrides))


DEMO_PROBE_SECONDS = 5.0


def cmd_demo(args) -> int:
    from cifarlab.config import read_with_overrides, validate
    from cifarlab.data.sources import dataset_available, download_server_answers, load_dataset
    from cifarlab.experiment import train

    for recipe in ("cifar10-quick", "fmnist-quick"):  # a bad override is refused before any probe or announcement
        validate(read_with_overrides(recipe, args.overrides)[0])
    if dataset_available("cifar10"):
        recipe, why = "cifar10-quick", "CIFAR-10 is in the data cache"
    elif not download_server_answers("cifar10", DEMO_PROBE_SECONDS):  # offline: don't wait on a download
        recipe, why = "fmnist-quick", (f"CIFAR-10 is not cached and its server did not answer within "
                                       f"{DEMO_PROBE_SECONDS:g} s")
    else:
        try:
            load_dataset("cifar10")
            recipe, why = "cifar10-quick", "CIFAR-10 was downloaded"
        except UserError as err:
            recipe, why = "fmnist-quick", f"CIFAR-10 is not cached and could not be downloaded ({err})"
    print(f"demo: training {recipe} because {why}", file=sys.stderr, flush=True)
    run = train(recipe, args.overrides)
    print(run.run_dir)
    return run_exit_code(run)


def cmd_resume(args) -> int:
    from cifarlab.experiment import resume

    return run_exit_code(resume(args.run_dir, epochs=args.epochs, more=args.more))


def cmd_recipes(args) -> int:
    from cifarlab.recipe_files import list_recipes

    recipes = list_recipes()
    width = max(map(len, recipes))
    for name, description in recipes.items():
        print(f"{name:<{width}}  {description}")
    return 0


def cmd_models(args) -> int:
    from cifarlab.models.registry import create_model, list_models

    for name in list_models():
        params = sum(p.numel() for p in create_model(name).parameters())
        print(f"{name:<16} {params:>12,} parameters (10 classes, 3 channels)")
    return 0


def cmd_datasets(args) -> int:
    from cifarlab.data.sources import dataset_available, list_datasets

    for name in list_datasets():
        if name == "folder":
            where = "your own images: cifarlab train folder data.dir=PATH (train/<class>/*, test/<class>/*)"
        elif name == "hf":
            where = "a Hugging Face dataset: data.dataset=hf data.dir=SAVED_FOLDER|PARQUET_FOLDER|HUB_NAME"
        else:
            where = "available offline" if dataset_available(name) else "not cached: downloads on first use"
        print(f"{name:<14} {where}")
    return 0


def cmd_show(args) -> int:
    from cifarlab.config import load_config

    cfg = load_config(args.recipe, args.overrides)
    if args.diff:
        from cifarlab.config_diff import diff_yaml

        print(diff_yaml(cfg) or "# the defaults: nothing differs\n", end="")
        return 0
    print(cfg.to_yaml(), end="")
    return 0


def main(argv=None) -> int:
    # Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning made training
    # steps 2-4x slower (bench/README.md); idle, it costs nothing measurable. Read when torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `train RECIPE --run-dir PATH key=value`: argparse leaves key=value words after an option unparsed;
    # they are overrides all the same, in the order written.
    if extra and isinstance(getattr(args, "overrides", None), list) and all("=" in arg for arg in extra):
        args.overrides += extra
    elif extra:
        parser.parse_args(argv)  # the usual one-line error for what is really unknown
    try:
        if getattr(args, "import_modules", None):  # --import: the user's model code registers itself
            from cifarlab.models.registry import import_user_modules

            import_user_modules(args.import_modules)
        return args.run(args)
    except UserError as err:
        from cifarlab.launch import is_rank_zero

        if is_rank_zero():  # under torchrun every rank fails alike: say it once
            print(f"cifarlab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cifarlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `cifarlab eval ... | head -1`: the reader left; no traceback for that
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush has somewhere to go
        return 141  # 128 + SIGPIPE, what a shell reports for a command whose reader left


if __name__ == "__main__":
    raise SystemExit(main())
