"""The handlers of the `cifarlab` commands (their parser is `cli.py`). Each makes one call to the Python
facade (`cifarlab/__init__.py`) with the parsed arguments and prints the answer: checks, defaults and
messages live in the library, so the command line and the Python API cannot disagree.
`tests/test_structure.py` holds every handler to that: facade calls only, one per handler, a few statements.

eval, report, predict and gradcam evaluate a checkpoint the way its run did (its precision, its TTA)
unless a flag says otherwise, so one checkpoint has one accuracy everywhere."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cifarlab

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


def shown_path(path: Path) -> str:
    """`path` as a user would type it: relative to the working folder when it lies below it, else absolute."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------ training

def cmd_train(args) -> int:
    return run_exit_code(cifarlab.train_or_continue(args.recipe, args.overrides, run_dir=args.run_dir))


def cmd_resume(args) -> int:
    return run_exit_code(cifarlab.resume(args.run_dir, epochs=args.epochs, more=args.more))


def cmd_demo(args) -> int:
    run = cifarlab.demo(args.overrides)
    print(run.run_dir)
    return run_exit_code(run)


def cmd_lr_find(args) -> int:
    found = cifarlab.lr_find(args.recipe, args.overrides, out=args.out)
    print(found.text)
    print(f"plot: {found.plot}\ndata: {found.data}")
    return 0


def cmd_sweep(args) -> int:
    return cifarlab.sweep_recipe(args.recipe, args.args, grid=args.grid, trials=args.trials, seeds=args.seeds,
                                 name=args.name, folder=args.dir, storage=args.storage, pruner=args.pruner,
                                 heartbeat=args.heartbeat, allow_test_selection=args.allow_test_selection,
                                 workers=args.workers, report=not args.no_report,
                                 worker_id=args.worker_id)


# ------------------------------------------------------------------------------ listing

def _print_table(names: dict) -> int:
    width = max(map(len, names), default=0)
    for name, text in names.items():
        print(f"{name:<{width}}  {text}")
    return 0


def cmd_recipes(args) -> int:
    return _print_table(cifarlab.list_recipes())


def cmd_models(args) -> int:
    for name, params in cifarlab.parameter_counts().items():
        print(f"{name:<16} {params:>12,} parameters (10 classes, 3 channels)")
    return 0


def cmd_datasets(args) -> int:
    for name, where in cifarlab.list_datasets().items():
        print(f"{name:<14} {where}")
    return 0


def cmd_show(args) -> int:
    print(cifarlab.config_yaml(args.recipe, args.overrides, diff=args.diff), end="")
    return 0


def cmd_summary(args) -> int:
    print(cifarlab.model_summary(args.model, args.settings))
    return 0


# ------------------------------------------------------------------------------ checkpoints and runs

def cmd_eval(args) -> int:
    result = cifarlab.evaluate(args.checkpoint, precision=args.precision, tta=args.tta, data_dir=args.data_dir)
    n, acc = result.images, result.test_acc
    print(f"Test set: Average loss: {result.test_loss:.4f}, Accuracy: {round(acc * n)}/{n} ({100 * acc:.2f}%)")
    top5 = f"top-5 accuracy {100 * result.test_top5_acc:.2f}%, " if result.test_top5_acc is not None else ""
    print(f"{top5}macro F1 {100 * result.test_macro_f1:.2f}%, ECE {100 * result.test_ece:.2f}%")
    print(json.dumps({"checkpoint": str(args.checkpoint), **result.to_dict()}))
    return 0


def cmd_report(args) -> int:
    print(cifarlab.report(args.run_dir, data_dir=args.data_dir))
    return 0


def cmd_gradcam(args) -> int:
    written = cifarlab.gradcam(args.checkpoint, images=args.images, count=args.count, layer=args.layer,
                               method=args.method, out=args.out, data_dir=args.data_dir)
    print(shown_path(written))
    return 0


def cmd_compare(args) -> int:
    comparison = cifarlab.compare(args.run_dirs, out=args.out)
    print(comparison.table)
    print("\n".join(f"{name}: {path}" for name, path in comparison.files._asdict().items()), file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    exported = cifarlab.export_checkpoint(args.checkpoint, args.export_format, out=args.out, tta=args.tta)
    print("\n".join(str(path) for path in (exported.path, exported.metadata) if path is not None))
    if exported.note:
        print(f"note: {exported.note}", file=sys.stderr)
    return 0


def cmd_predict(args) -> int:
    for path, ranked in cifarlab.predict_files(args.checkpoint, args.images, top=args.top, csv_out=args.csv):
        if args.json:
            print(json.dumps({"image": str(path), "top": ranked}))
        else:
            print(f"{path}: " + ", ".join(f"{name} {100 * p:.1f}%" for name, p in ranked))
    return 0
