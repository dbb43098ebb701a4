"""The analysis subcommands: eval, lr-find, summary, report, gradcam, compare, predict.

eval, report, predict and gradcam evaluate a checkpoint the way its run did (its precision, its TTA)
unless a flag says otherwise, so one checkpoint has one accuracy everywhere."""
from __future__ import annotations

import re
import sys
from datetime import datetime
from pathlib import Path

from cifarlab.errors import UserError
from cifarlab.run.layout import LR_FIND, LR_FIND_PLOT, example_checkpoint

MAX_GRADCAM_IMAGES = 100  # one figure; more is unreadable (and a typo like --count 10000 renders thousands)
MAX_SUMMARY_BATCH = 1024
GRADCAM_FILE_NAMES = {"gradcam": "gradcam", "gradcam++": "gradcampp"}  # --method -> plots/<name>-<checkpoint>.png

def _tta_flags(p) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--tta", dest="tta", nargs="?", const="flip", default=None, choices=["flip", "flip_translate"],
                       help="test-time augmentation: flip (default when given alone) or flip_translate; "
                            "without --tta/--no-tta, as the run trained (train.tta)")
    group.add_argument("--no-tta", dest="tta", action="store_false", help="no test-time augmentation")


def _data_dir_flag(p) -> None:
    p.add_argument("--data-dir", type=Path, help="where datasets are cached (default: $CIFARLAB_DATA, else "
                   "~/.cache/cifarlab); the checkpoint's own data.dir is never written to")


def import_flag(p) -> None:
    """--import MODULE (repeatable): the user's module that registers their model, imported before loading."""
    p.add_argument("--import", dest="import_modules", action="append", metavar="MODULE", default=[],
                   help="a Python module to import first, whose @register_model registers your own model "
                        "(e.g. mypkg.nets; repeat for several); a checkpoint's own config is never imported")


CHECKPOINT_HELP = (f"a checkpoint file, e.g. {example_checkpoint()}, or a model folder from "
                   "`cifarlab export --format hf`")


def add_analysis_commands(sub) -> None:
    export_example = example_checkpoint("fmnist-quick", "20261121-120000")
    p = sub.add_parser("eval", help="test loss and accuracy of a checkpoint, evaluated as its run did",
                       epilog=f"examples:\n  cifarlab eval {example_checkpoint('fmnist-quick', '20261121-120000')}\n"
                              f"  cifarlab eval {example_checkpoint('fmnist-quick', '20261121-120000')} --no-tta")
    p.add_argument("checkpoint", type=Path, help=CHECKPOINT_HELP)
    _tta_flags(p)
    p.add_argument("--precision", choices=["bf16", "fp16", "fp32"], help="default: the precision the run trained with")
    _data_dir_flag(p)
    import_flag(p)
    p.set_defaults(run=cmd_eval)

    p = sub.add_parser("lr-find", help="LR range test on a recipe: plot and suggestions",
                       epilog="example:\n  cifarlab lr-find custom-resnet-onecycle lr_find.num_iter=200")
    p.add_argument("recipe", help="recipe name (see `cifarlab recipes`) or path to a YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. lr_find.end_lr=1 lr_find.num_iter=200")
    p.add_argument("--out", type=Path,
                   help=f"folder for {LR_FIND_PLOT} and {LR_FIND} (default runs/<recipe>/lr-find-<time>)")
    p.set_defaults(run=cmd_lr_find)

    p = sub.add_parser("summary", help="layers, output shapes, parameters and mult-adds of a model",
                       epilog="examples:\n  cifarlab summary custom_resnet data.dataset=cifar10 train.batch_size=512\n"
                              "  cifarlab summary convnet data.dataset=fashion_mnist model.options.width=16")
    p.add_argument("model", help="a registered model name (see `cifarlab models`)")
    p.add_argument("settings", nargs="*", metavar="key=value",
                   help="config keys: data.dataset (default cifar10), train.batch_size (default 1), model.norm, "
                        "model.dropout, model.options.NAME")
    import_flag(p)
    p.set_defaults(run=cmd_summary)

    p = sub.add_parser("report", help="(re)make the plots, tables and report of a run directory",
                       epilog="example:\n  cifarlab report runs/fmnist-quick/20261121-120000")
    p.add_argument("run_dir", type=Path, help="the run directory, e.g. runs/fmnist-quick/20261121-120000")
    _data_dir_flag(p)
    import_flag(p)
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("gradcam", help="Grad-CAM heat maps of a checkpoint on test or own images",
                       epilog="examples:\n"
                              f"  cifarlab gradcam {example_checkpoint('fmnist-quick')} --method gradcam++\n"
                              f"  cifarlab gradcam {example_checkpoint('fmnist-quick')} --images 3,17,42")
    p.add_argument("checkpoint", type=Path, help=CHECKPOINT_HELP)
    p.add_argument("--images", default="misclassified",
                   help="'misclassified' (by loss), comma-separated test indices, or image files (comma-separated)")
    p.add_argument("--count", type=int, default=10,
                   help=f"how many misclassified images, 1..{MAX_GRADCAM_IMAGES} (default 10)")
    p.add_argument("--layer", help="target layer name (default: deepest layer with output >= 4x4)")
    p.add_argument("--method", choices=["gradcam", "gradcam++"], default="gradcam", help="default gradcam")
    p.add_argument("--out", type=Path, help="output PNG, never overwritten (default: plots/gradcam-<checkpoint>.png, "
                                            "gradcampp-... with gradcam++, in the run the checkpoint belongs to)")
    _data_dir_flag(p)
    import_flag(p)
    p.set_defaults(run=cmd_gradcam)

    p = sub.add_parser("compare", help="table and overlaid curves of several runs",
                       epilog="examples:\n"
                              "  cifarlab compare runs/fmnist-quick/20261121-120000 runs/fmnist-quick/20261122-090000\n"
                              "  cifarlab compare runs/fmnist-quick\n  cifarlab compare 'runs/*/2026112*'")
    p.add_argument("run_dirs", nargs="+", type=Path,
                   help="run directories, folders of runs or quoted globs like 'runs/smoke/*'")
    p.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder (default runs/compare)")
    p.set_defaults(run=cmd_compare)

    p = sub.add_parser(
        "export", help="write a checkpoint's network as safetensors, TorchScript or ONNX, plus a metadata JSON",
        description=f"examples:\n  cifarlab export {export_example} --format onnx\n"
                    f"  cifarlab export {export_example} --format onnx --tta")
    p.add_argument("checkpoint", type=Path, help=CHECKPOINT_HELP)
    p.add_argument("--format", dest="export_format", choices=["hf", "onnx", "safetensors", "torchscript"],
                   required=True, help="safetensors: weights only; torchscript: traced module; onnx: needs "
                                       "cifarlab[onnx]; hf: a Hugging Face-style model folder (model.safetensors, "
                                       "config.json, README.md model card)")
    p.add_argument("--out", type=Path, help="output file, for hf a new folder (default: beside the checkpoint, e.g. "
                                            "best.onnx, best-hf/); never overwritten")
    import_flag(p)
    p.add_argument("--tta", nargs="?", const=True, choices=["flip", "flip_translate"],
                   help="put test-time augmentation in the onnx/torchscript graph, so it scores as the run did: "
                        "the run's own (train.tta; flip if none) when given alone")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("predict", help="top-3 classes of image files under a checkpoint or exported model folder",
                       epilog="example:\n"
                              f"  cifarlab predict {example_checkpoint('fmnist-quick')} photo1.jpg photo2.png\n"
                              f"  cifarlab predict {example_checkpoint('fmnist-quick')} photos/ --csv photos.csv")
    p.add_argument("checkpoint", type=Path, help=CHECKPOINT_HELP)
    p.add_argument("images", nargs="+", type=Path,
                   help="image files (PNG, JPEG, WebP, ...), any size, or folders of them (searched recursively)")
    p.add_argument("--top", type=int, default=3, help="how many classes per image, at least 1 (default 3)")
    p.add_argument("--json", action="store_true",
                   help='one JSON line per image, {"image": path, "top": [[class, probability], ...]}, unrounded')
    p.add_argument("--csv", type=Path, metavar="FILE",
                   help="also write the predictions to this new CSV file: image,class_1,probability_1,...")
    import_flag(p)
    p.set_defaults(run=cmd_predict)


def cmd_eval(args) -> int:
    import json

    from cifarlab.analysis.metrics import beyond_accuracy
    from cifarlab.use.evaluate import evaluate_checkpoint
    from cifarlab.use.load import load_model

    loaded, batches = load_model(args.checkpoint, precision=args.precision), []
    result = evaluate_checkpoint(loaded, args.data_dir, args.tta, collect=batches)
    result.update(beyond_accuracy(batches, len(loaded.classes)))
    n, acc = result["images"], result["test_acc"]
    print(f"Test set: Average loss: {result['test_loss']:.4f}, Accuracy: {round(acc * n)}/{n} ({100 * acc:.2f}%)")
    top5 = f"top-5 accuracy {100 * result['test_top5_acc']:.2f}%, " if "test_top5_acc" in result else ""
    print(f"{top5}macro F1 {100 * result['test_macro_f1']:.2f}%, ECE {100 * result['test_ece']:.2f}%")
    print(json.dumps({"checkpoint": str(args.checkpoint), **result}))
    return 0


def cmd_lr_find(args) -> int:
    from cifarlab.config import load_config
    from cifarlab.lr_range.search import describe, run_range_test, save_range_test
    from cifarlab.models.registry import import_user_modules
    from cifarlab.run.layout import check_run_name
    from cifarlab.runtime import make_runtime
    from cifarlab.trainer.autotune import settle_precision
    from cifarlab.trainer.sizing import size_to_data

    if args.out is not None:
        output_target(args.out, "--out", folder=True)
    cfg = load_config(args.recipe, args.overrides)
    import_user_modules(cfg.model.module)
    if args.out is None:
        check_run_name(cfg.name)
    runtime = make_runtime(cfg.train, cfg.seed, cfg.deterministic)
    cfg, dataset = size_to_data(cfg)
    cfg, runtime, precision = settle_precision(cfg, runtime, dataset)  # `auto`: what a run would train in
    if precision is not None:
        print(precision.line(), file=sys.stderr, flush=True)
    out = args.out or Path(cfg.output.dir) / cfg.name / f"lr-find-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    result = run_range_test(cfg, runtime, dataset)
    plot = save_range_test(result, out, cfg.lr_find.suggestion)
    print(describe(result))
    print(f"plot: {plot}\ndata: {out / LR_FIND}")
    return 0


def output_target(path: Path, flag: str, folder: bool = False) -> Path:
    """`path` as a place to write: a file must not exist yet (nothing is overwritten), a folder may exist as
    a folder; either way the nearest existing parent must be a folder. Checked before any work is done."""
    if folder and path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file; give a folder (new or existing)")
    if not folder and (path.exists() or path.is_symlink()):
        kind = "a folder" if path.is_dir() else "a file"
        raise UserError(f"{flag} {path} already exists ({kind}); give a new file name (nothing is overwritten)")
    parent = next(p for p in path.absolute().parents if p.exists())
    if not parent.is_dir():
        raise UserError(f"{flag} {path} cannot be written: {parent} is a file, not a folder")
    return path


# `cifarlab summary` reads the config keys `train` and `show` take; the first spellings still work.
SUMMARY_ALIASES = {"dataset": "data.dataset", "batch_size": "train.batch_size"}
SUMMARY_MODEL_KEYS = ("model.norm", "model.dropout")  # model keyword arguments besides model.options


def _summary_settings(pairs: list[str]) -> tuple[object, object, dict]:
    """(data.dataset, train.batch_size, model keyword arguments) from `key=value` pairs: the config's dotted
    keys, or the older `dataset=`, `batch_size=` and bare model options (`width=16` = model.options.width)."""
    from cifarlab.config import parse_override

    dataset, batch_size, model = "cifar10", 1, {}
    for keys, value in map(parse_override, pairs):
        key = SUMMARY_ALIASES.get(".".join(keys), ".".join(keys) if len(keys) > 1 else f"model.options.{keys[0]}")
        if key == "data.dataset":
            dataset = value
        elif key == "train.batch_size":
            batch_size = value
        elif key in SUMMARY_MODEL_KEYS or (key.startswith("model.options.") and key.count(".") == 2):
            model[key.rsplit(".", 1)[1]] = value
        elif key == "model.options" and isinstance(value, dict):
            model.update(value)
        else:
            raise UserError(f"summary takes data.dataset, train.batch_size, {', '.join(SUMMARY_MODEL_KEYS)} and "
                            f"model.options.NAME (the model's own options), got {key}")
    return dataset, batch_size, model


def cmd_summary(args) -> int:
    from cifarlab.analysis.model_summary import model_summary
    from cifarlab.data.sources import dataset_shape
    from cifarlab.models.registry import MODELS, create_model

    MODELS.get(args.model)  # an unknown model name first, with the list of known ones
    dataset, batch_size, settings = _summary_settings(args.settings)
    if not isinstance(dataset, str):
        raise UserError(f"data.dataset={dataset!r} must be a dataset name, e.g. data.dataset=cifar10")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_SUMMARY_BATCH:
        raise UserError(f"train.batch_size={batch_size!r} must be a whole number in 1..{MAX_SUMMARY_BATCH}")
    for key in ("num_classes", "in_channels"):
        if key in settings:
            raise UserError(f"{key} comes from the dataset; set data.dataset=<name> instead of "
                            f"model.options.{key}={settings[key]!r}")
    channels, size, classes = dataset_shape(dataset)
    try:
        model = create_model(args.model, num_classes=classes, in_channels=channels, **settings)
    except (TypeError, ValueError, RuntimeError) as err:
        if isinstance(err, UserError):
            raise
        given = " ".join(f"{key}={value!r}" for key, value in settings.items())
        reason = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise UserError(f"model {args.model!r} cannot be built with {given}: {reason}") from None
    print(model_summary(model, (channels, size, size), batch_size))
    return 0


def cmd_report(args) -> int:
    from cifarlab.analysis.run_report import report_from_run_dir
    from cifarlab.run.layout import CONFIG

    if not (args.run_dir / CONFIG).exists():
        raise UserError(f"{args.run_dir} is not a run directory (no {CONFIG})")
    print(report_from_run_dir(args.run_dir, data_dir=args.data_dir))
    return 0


def cmd_compare(args) -> int:
    from cifarlab.analysis.compare import compare_runs, expand_run_dirs, to_markdown, write_comparison

    output_target(args.out, "--out", folder=True)
    run_dirs = expand_run_dirs(args.run_dirs)
    rows = compare_runs(run_dirs)
    print(to_markdown(rows), flush=True)  # the answer first; the plot below takes matplotlib's import (~1 s)
    files = write_comparison(run_dirs, args.out, rows)
    print("\n".join(f"{name}: {path}" for name, path in files._asdict().items()), file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    import json

    from cifarlab.export import export

    if args.export_format == "hf":
        if args.tta:
            raise UserError("--tta needs --format onnx or torchscript: an hf folder holds weights, not a graph")
        from cifarlab.use.export_hf import export_hf

        print(export_hf(args.checkpoint, args.out))
        return 0

    out = export(args.checkpoint, args.export_format, args.out, tta=args.tta)
    print(f"{out}\n{out.with_name(out.name + '.json')}")
    note = json.loads(out.with_name(out.name + ".json").read_text()).get("note")
    if note:
        print(f"note: {note}", file=sys.stderr)
    return 0


def cmd_predict(args) -> int:
    import json

    import cifarlab
    from cifarlab.use.predict import image_files, write_predictions_csv

    if args.top < 1:
        raise UserError(f"--top must be at least 1, got {args.top}")
    csv_out = output_target(args.csv, "--csv") if args.csv is not None else None
    files = image_files(args.images)
    results = cifarlab.predict(cifarlab.load_model(args.checkpoint), files, top=args.top)
    if csv_out is not None:
        print(f"predictions of {len(files)} images: {write_predictions_csv(files, results, csv_out)}",
              file=sys.stderr)
    for path, ranked in zip(files, results):
        if args.json:
            print(json.dumps({"image": str(path), "top": ranked}))
        else:
            print(f"{path}: " + ", ".join(f"{name} {100 * p:.1f}%" for name, p in ranked))
    return 0


def cmd_gradcam(args) -> int:
    from cifarlab.analysis.gradcam import gradcam
    from cifarlab.analysis.image_grids import plot_gradcam
    from cifarlab.data.normalize import normalize, to_float
    from cifarlab.use.load import load_model
    from cifarlab.use.predict import predictions

    if not 1 <= args.count <= MAX_GRADCAM_IMAGES:
        raise UserError(f"--count must be in 1..{MAX_GRADCAM_IMAGES}, got {args.count}")
    chosen = _image_choice(args.images)
    out = output_target(args.out, "--out") if args.out is not None else None
    loaded = load_model(args.checkpoint)
    out = out or _default_gradcam_out(args.checkpoint, args.method)
    images, labels, names = _gradcam_images(loaded, chosen, args)
    probs = predictions(loaded, images).probs
    top2 = probs.topk(min(2, probs.shape[1]), dim=1).indices
    preds = top2[:, 0]
    second = labels if labels is not None else top2[:, -1]  # own images: compare with the runner-up class
    inputs = normalize(to_float(images), loaded.mean, loaded.std, channels_last=False)
    cam_pred = gradcam(loaded.module, inputs, preds, layer=args.layer, method=args.method)
    cam_other = gradcam(loaded.module, inputs, second, layer=args.layer, method=args.method)
    classes = loaded.classes
    if labels is not None:
        titles = [f"{name}: {classes[o]} → {classes[p]} ({100 * probs[i, p]:.0f}%)"
                  for i, (name, p, o) in enumerate(zip(names, preds.tolist(), second.tolist()))]
    else:  # own images have no true class: the second map is the runner-up's
        titles = [f"{name}: {classes[p]} {100 * probs[i, p]:.0f}%\nrunner-up {classes[o]} {100 * probs[i, o]:.0f}%"
                  for i, (name, p, o) in enumerate(zip(names, preds.tolist(), second.tolist()))]
    written = plot_gradcam(images, cam_pred, cam_other, titles, out,
                           other="true class" if labels is not None else "runner-up class")
    print(shown_path(written))
    return 0


def _gradcam_images(loaded, chosen, args):
    """(uint8 images, true labels or None, names) of --images: misclassified or indexed test images, or files."""
    import torch

    from cifarlab.use.evaluate import run_test_data
    from cifarlab.use.images import as_batch
    from cifarlab.use.predict import predictions

    if chosen != "misclassified" and not isinstance(chosen[0], int):
        return as_batch(chosen, loaded.in_channels, loaded.image_size), None, [p.name for p in chosen]
    test = run_test_data(loaded, args.data_dir).test
    if chosen == "misclassified":
        chosen = predictions(loaded, test.images, test.labels).misclassified(args.count)
        if len(chosen) == 0:
            raise UserError("the checkpoint classifies every test image correctly: no misclassified image to "
                            "explain; give --images with test indices or image files")
    else:
        if max(chosen) >= len(test.labels) or min(chosen) < 0:
            raise UserError(f"--images indices must be in 0..{len(test.labels) - 1}, got {args.images}")
        chosen = torch.tensor(chosen)
    return test.images[chosen], test.labels[chosen], [f"#{i}" for i in chosen.tolist()]


def _image_choice(text: str):
    """--images: "misclassified", a list of test indices, or a list of image paths."""
    if text == "misclassified":
        return text
    items = [item.strip() for item in text.split(",")]
    what = "'misclassified', test indices like 0,5,7, or image files separated by commas"
    if not all(items):
        raise UserError(f"--images {text!r} has an empty item; give {what}")
    if len(items) > MAX_GRADCAM_IMAGES:
        raise UserError(f"--images names {len(items)} images; give at most {MAX_GRADCAM_IMAGES}")
    numeric = [bool(re.fullmatch(r"[+-]?\d+", item)) for item in items]
    if all(numeric):
        return [int(item) for item in items]
    if any(numeric):
        raise UserError(f"--images {text!r} mixes test indices and file names; give {what}")
    return [Path(item) for item in items]


def _default_gradcam_out(checkpoint: Path, method: str) -> Path:
    """plots/<method>-<checkpoint name>.png of the run the checkpoint really lies in (symlinks
    and `..` resolved), so the same checkpoint always writes to the same place however its path was spelled."""
    from cifarlab.run.layout import CHECKPOINTS, CONFIG, PLOTS, run_dir_of_checkpoint

    run_dir = run_dir_of_checkpoint(checkpoint)
    if run_dir is None:
        raise UserError(f"{checkpoint} is not inside a run directory (<run>/{CHECKPOINTS}/<file>.pt next to "
                        f"{CONFIG}), so there is no {PLOTS}/ folder for it; give --out FILE.png")
    plots = output_target(run_dir / PLOTS, "the run's plots folder", folder=True)
    out = plots / f"{GRADCAM_FILE_NAMES[method]}-{Path(checkpoint).resolve().stem}.png"  # gradcam-<best|last>.png
    if out.is_dir():
        raise UserError(f"{out} is a folder; remove it or give --out FILE.png")
    return out  # the run's own plot: made again on each call


def shown_path(path: Path) -> str:
    """`path` as a user would type it: relative to the working folder when it lies below it, else absolute."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
