"""`cifarlab` command line: the one parser of every command and `main`. Each command's handler (in
`commands.py`) makes one call to the Python facade (`cifarlab/__init__.py`) and prints its answer.
User errors print one line and exit 2; bugs keep their traceback."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cifarlab import commands
from cifarlab.analysis.gradcam_figure import MAX_GRADCAM_IMAGES
from cifarlab.errors import UserError
from cifarlab.launch import exit_code
from cifarlab.run.layout import LR_FIND, LR_FIND_PLOT, example_checkpoint

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


def _overrides(parser, help="config overrides, e.g. train.epochs=5 optim.lr=0.05 augment.cutout=null"):
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=help)


def _recipe(parser, help="recipe name (see `cifarlab recipes`) or path to a YAML file"):
    parser.add_argument("recipe", help=help)


def _checkpoint(parser):
    parser.add_argument("checkpoint", type=Path, help=f"a checkpoint file, e.g. {example_checkpoint()}, or a model "
                                                      "folder from `cifarlab export --format hf`")


def _run_dir(parser):
    parser.add_argument("run_dir", type=Path, help="the run directory, e.g. runs/fmnist-quick/20261121-120000")


def _import(parser):
    """--import MODULE (repeatable): the user's module that registers their model, imported before loading."""
    parser.add_argument("--import", dest="import_modules", action="append", metavar="MODULE", default=[],
                        help="a Python module to import first, whose @register_model registers your own model "
                             "(e.g. mypkg.nets; repeat for several); a checkpoint's own config is never imported")


def _data_dir(parser):
    parser.add_argument("--data-dir", type=Path, help="where datasets are cached (default: $CIFARLAB_DATA, else "
                        "~/.cache/cifarlab); the checkpoint's own data.dir is never written to")


def _tta(parser):
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--tta", dest="tta", nargs="?", const="flip", default=None, choices=["flip", "flip_translate"],
                       help="test-time augmentation: flip (default when given alone) or flip_translate; "
                            "without --tta/--no-tta, as the run trained (train.tta)")
    group.add_argument("--no-tta", dest="tta", action="store_false", help="no test-time augmentation")


def build_parser() -> Parser:
    """The one parser of every command; each sets `run`, its handler in `cifarlab.commands`."""
    parser = Parser(prog="cifarlab", description="Train and analyse image classifiers on CIFAR-10-class datasets.",
                    epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cifarlab {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for add in (_add_training, _add_listing, _add_analysis, _add_model_files, _add_sweep):
        add(sub)
    return parser


def _add_training(sub) -> None:
    p = sub.add_parser("train", help="train a recipe into a new run directory",
                       epilog="examples:\n  cifarlab train fmnist-quick\n  cifarlab train smoke train.epochs=5 "
                              "optim.lr=0.05\n"
                              f"  cifarlab train smoke model.init_from={example_checkpoint('smoke')}")
    _recipe(p)
    _overrides(p)
    p.add_argument("--run-dir", help="the run's own folder: trained the first time, continued when the "
                   "same command runs again (a requeued or restarted job), see docs/cluster.md")
    p.set_defaults(run=commands.cmd_train)

    p = sub.add_parser("resume", help="continue a run from its last checkpoint, or extend it with --more/--epochs",
                       epilog="examples:\n  cifarlab resume runs/fmnist-quick/20261121-120000\n"
                              "  cifarlab resume runs/fmnist-quick/20261121-120000 --more 2     # 6 epochs -> 8\n"
                              "  cifarlab resume runs/fmnist-quick/20261121-120000 --epochs 8   # the same")
    _run_dir(p)
    extend = p.add_mutually_exclusive_group()
    extend.add_argument("--more", type=int, metavar="N",
                        help="extend the run (finished or not) by N epochs beyond its train.epochs")
    extend.add_argument("--epochs", type=int, metavar="TOTAL",
                        help="extend the run (finished or not) to this many epochs in all (the new total)")
    _import(p)
    p.set_defaults(run=commands.cmd_resume)

    p = sub.add_parser("demo", help="a real short training run: CIFAR-10 if it can be had, else Fashion-MNIST",
                       epilog="examples:\n  cifarlab demo\n  cifarlab demo train.epochs=1")
    _overrides(p)
    p.set_defaults(run=commands.cmd_demo)


def _add_listing(sub) -> None:
    p = sub.add_parser("recipes", help="list the recipes", epilog="example:\n  cifarlab recipes")
    p.set_defaults(run=commands.cmd_recipes)
    p = sub.add_parser("models", help="list the models", epilog="example:\n  cifarlab models")
    p.set_defaults(run=commands.cmd_models)
    p = sub.add_parser("datasets", help="list the datasets and whether each is available offline",
                       epilog="example:\n  cifarlab datasets")
    p.set_defaults(run=commands.cmd_datasets)
    p = sub.add_parser("show", help="print the resolved config of a recipe with overrides",
                       epilog="examples:\n  cifarlab show custom-resnet-onecycle train.epochs=5\n"
                              "  cifarlab show fmnist-quick --diff")
    _recipe(p)
    _overrides(p)
    p.add_argument("--diff", action="store_true",
                   help="only the values that differ from the defaults (itself a recipe giving the same config)")
    p.set_defaults(run=commands.cmd_show)


def _add_analysis(sub) -> None:
    example = example_checkpoint("fmnist-quick", "20261121-120000")
    p = sub.add_parser("eval", help="test loss and accuracy of a checkpoint, evaluated as its run did",
                       epilog=f"examples:\n  cifarlab eval {example}\n  cifarlab eval {example} --no-tta")
    _checkpoint(p)
    _tta(p)
    p.add_argument("--precision", choices=["bf16", "fp16", "fp32"], help="default: the precision the run trained with")
    _data_dir(p)
    _import(p)
    p.set_defaults(run=commands.cmd_eval)

    p = sub.add_parser("lr-find", help="LR range test on a recipe: plot and suggestions",
                       epilog="example:\n  cifarlab lr-find custom-resnet-onecycle lr_find.num_iter=200")
    _recipe(p)
    _overrides(p, help="e.g. lr_find.end_lr=1 lr_find.num_iter=200")
    p.add_argument("--out", type=Path,
                   help=f"folder for {LR_FIND_PLOT} and {LR_FIND} (default runs/<recipe>/lr-find-<time>)")
    p.set_defaults(run=commands.cmd_lr_find)

    p = sub.add_parser("summary", help="layers, output shapes, parameters and mult-adds of a model",
                       epilog="examples:\n  cifarlab summary custom_resnet data.dataset=cifar10 train.batch_size=512\n"
                              "  cifarlab summary convnet data.dataset=fashion_mnist model.options.width=16")
    p.add_argument("model", help="a registered model name (see `cifarlab models`)")
    p.add_argument("settings", nargs="*", metavar="key=value",
                   help="config keys: data.dataset (default cifar10), train.batch_size (default 1), model.norm, "
                        "model.dropout, model.options.NAME")
    _import(p)
    p.set_defaults(run=commands.cmd_summary)

    p = sub.add_parser("report", help="(re)make the plots, tables and report of a run directory",
                       epilog="example:\n  cifarlab report runs/fmnist-quick/20261121-120000")
    _run_dir(p)
    _data_dir(p)
    _import(p)
    p.set_defaults(run=commands.cmd_report)

    p = sub.add_parser("gradcam", help="Grad-CAM heat maps of a checkpoint on test or own images",
                       epilog="examples:\n"
                              f"  cifarlab gradcam {example_checkpoint('fmnist-quick')} --method gradcam++\n"
                              f"  cifarlab gradcam {example_checkpoint('fmnist-quick')} --images 3,17,42")
    _checkpoint(p)
    p.add_argument("--images", default="misclassified",
                   help="'misclassified' (by loss), comma-separated test indices, or image files (comma-separated)")
    p.add_argument("--count", type=int, default=10,
                   help=f"how many misclassified images, 1..{MAX_GRADCAM_IMAGES} (default 10)")
    p.add_argument("--layer", help="target layer name (default: deepest layer with output >= 4x4)")
    p.add_argument("--method", choices=["gradcam", "gradcam++"], default="gradcam", help="default gradcam")
    p.add_argument("--out", type=Path, help="output PNG, never overwritten (default: plots/gradcam-<checkpoint>.png, "
                                            "gradcampp-... with gradcam++, in the run the checkpoint belongs to)")
    _data_dir(p)
    _import(p)
    p.set_defaults(run=commands.cmd_gradcam)

    p = sub.add_parser("compare", help="table and overlaid curves of several runs",
                       epilog="examples:\n"
                              "  cifarlab compare runs/fmnist-quick/20261121-120000 runs/fmnist-quick/20261122-090000\n"
                              "  cifarlab compare runs/fmnist-quick\n  cifarlab compare 'runs/*/2026112*'")
    p.add_argument("run_dirs", nargs="+", type=Path,
                   help="run directories, folders of runs or quoted globs like 'runs/smoke/*'")
    p.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder (default runs/compare)")
    p.set_defaults(run=commands.cmd_compare)


def _add_model_files(sub) -> None:
    example = example_checkpoint("fmnist-quick", "20261121-120000")
    p = sub.add_parser(
        "export", help="write a checkpoint's network as safetensors, TorchScript or ONNX, plus a metadata JSON",
        description=f"examples:\n  cifarlab export {example} --format onnx\n"
                    f"  cifarlab export {example} --format onnx --tta")
    _checkpoint(p)
    p.add_argument("--format", dest="export_format", choices=["hf", "onnx", "safetensors", "torchscript"],
                   required=True, help="safetensors: weights only; torchscript: traced module; onnx: needs "
                                       "cifarlab[onnx]; hf: a Hugging Face-style model folder (model.safetensors, "
                                       "config.json, README.md model card)")
    p.add_argument("--out", type=Path, help="output file, for hf a new folder (default: beside the checkpoint, e.g. "
                                            "best.onnx, best-hf/); never overwritten")
    _import(p)
    p.add_argument("--tta", nargs="?", const=True, choices=["flip", "flip_translate"],
                   help="put test-time augmentation in the onnx/torchscript graph, so it scores as the run did: "
                        "the run's own (train.tta; flip if none) when given alone")
    p.set_defaults(run=commands.cmd_export)

    p = sub.add_parser("predict", help="top-3 classes of image files under a checkpoint or exported model folder",
                       epilog="example:\n"
                              f"  cifarlab predict {example_checkpoint('fmnist-quick')} photo1.jpg photo2.png\n"
                              f"  cifarlab predict {example_checkpoint('fmnist-quick')} photos/ --csv photos.csv")
    _checkpoint(p)
    p.add_argument("images", nargs="+", type=Path,
                   help="image files (PNG, JPEG, WebP, ...), any size, or folders of them (searched recursively)")
    p.add_argument("--top", type=int, default=3, help="how many classes per image, at least 1 (default 3)")
    p.add_argument("--json", action="store_true",
                   help='one JSON line per image, {"image": path, "top": [[class, probability], ...]}, unrounded')
    p.add_argument("--csv", type=Path, metavar="FILE",
                   help="also write the predictions to this new CSV file: image,class_1,probability_1,...")
    _import(p)
    p.set_defaults(run=commands.cmd_predict)


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="many runs of a recipe as one Optuna study (space file or --grid)",
                       epilog="examples:\n  cifarlab sweep fmnist-quick space.yaml data.val_split=0.1 --trials 20\n"
                              "  cifarlab sweep smoke data.val_split=64 --grid seed=0,1,2 optim.lr=0.05,0.1\n"
                              "  cifarlab sweep fmnist-quick space.yaml data.val_split=0.1 --trials 50 "
                              "--storage postgresql://user@host/db   # the same command on every machine\n"
                              "see docs/sweeps.md")
    _recipe(p, help="recipe name or YAML path")
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
    p.add_argument("--worker-id", help="this worker's name, the same when its job is requeued: a trial it is "
                                       "stopped in waits for it (default: $SLURM_ARRAY_JOB_ID_$SLURM_ARRAY_TASK_ID "
                                       "or $SLURM_JOB_ID; docs/cluster.md)")
    p.add_argument("--allow-test-selection", action="store_true",
                   help="let trials select on the test split (no validation split); the test score is then tuned on")
    p.add_argument("--no-report", action="store_true", help="skip the sweep report at the end")
    p.set_defaults(run=commands.cmd_sweep)


def _version() -> str:
    from cifarlab._version import __version__

    return __version__


def parse(argv=None) -> argparse.Namespace:
    """The command line as the handlers read it. argparse leaves the words after an option unparsed
    (`train RECIPE --run-dir PATH key=value`, `sweep RECIPE --trials 20 space.yaml`); they belong to the
    command's own list all the same (overrides; a sweep's space file and overrides), in the order written."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    words = getattr(args, "overrides", None)
    takes_files = words is None and getattr(args, "command", None) == "sweep"
    words = args.args if takes_files else words
    if extra and isinstance(words, list) and all(not arg.startswith("-") and (takes_files or "=" in arg)
                                                 for arg in extra):
        words += extra
    elif extra:
        parser.parse_args(argv)  # the usual one-line error for what is really unknown
    return args


def main(argv=None) -> int:
    # Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning made training
    # steps 2-4x slower (bench/README.md). Idle, sleeping costs time on some CPUs (a whole run 1.1-1.2x
    # longer on an AMD EPYC Zen 3; bare steps 6% slower on a Xeon): a user with the machine to themselves sets
    # OMP_WAIT_POLICY=ACTIVE, and we keep the choice that cannot go badly wrong. Read when torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return exit_code(_run(parse(argv)))


def _run(args) -> int:
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
