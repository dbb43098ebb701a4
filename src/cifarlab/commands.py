"""The analysis subcommands: eval, lr-find, summary, report, gradcam, compare, predict.

eval, report, predict and gradcam evaluate a checkpoint the way its run did (its precision, its TTA)
unless a flag says otherwise, so one checkpoint has one accuracy everywhere."""
from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from cifarlab.errors import UserError

def _tta_flags(p) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--tta", dest="tta", nargs="?", const="flip", default=None, choices=["flip", "flip_translate"],
                       help="test-time augmentation: flip (default when given alone) or flip_translate; "
                            "without --tta/--no-tta, as the run trained (train.tta)")
    group.add_argument("--no-tta", dest="tta", action="store_false", help="no test-time augmentation")


CHECKPOINT_HELP = "a checkpoint file, e.g. runs/<recipe>/<time>/checkpoints/best.pt"


def add_analysis_commands(sub) -> None:
    p = sub.add_parser("eval", help="test loss and accuracy of a checkpoint, evaluated as its run did",
                       epilog="examples:\n  cifarlab eval runs/fmnist-quick/20261121-120000/checkpoints/best.pt\n"
                              "  cifarlab eval runs/fmnist-quick/20261121-120000/checkpoints/best.pt --no-tta")
    p.add_argument("checkpoint", type=Path, help=CHECKPOINT_HELP)
    _tta_flags(p)
    p.add_argument("--precision", choices=["bf16", "fp16", "fp32"], help="default: the precision the run trained with")
    p.set_defaults(run=cmd_eval)

    p = sub.add_parser("lr-find", help="LR range test on a recipe: plot and suggestions",
                       epilog="example:\n  cifarlab lr-find custom-resnet-onecycle lr_find.num_iter=200")
    p.add_argument("recipe", help="recipe name (see `cifarlab recipes`) or path to a YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. lr_find.end_lr=1 lr_find.num_iter=200")
    p.add_argument("--out", type=Path, help="folder for lr_find.png/json (default runs/<recipe>/lr-find-<time>)")
    p.set_defaults(run=cmd_lr_find)

    p = sub.add_parser("summary", help="layers, output shapes, parameters and mult-adds of a model",
                       epilog="example:\n  cifarlab summary custom_resnet dataset=cifar10 batch_size=512")
    p.add_argument("model", help="a registered model name (see `cifarlab models`)")
    p.add_argument("settings", nargs="*", metavar="key=value", help="dataset=cifar10 batch_size=1, or model options")
    p.set_defaults(run=cmd_summary)

    p = sub.add_parser("report", help="(re)make the plots, tables and report of a run directory",
                       epilog="example:\n  cifarlab report runs/fmnist-quick/20261121-120000")
    p.add_argument("run_dir", type=Path, help="the run directory, e.g. runs/fmnist-quick/20261121-120000")
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("gradcam", help="Grad-CAM heat maps of a checkpoint on test or own images",
                       epilog="examples:\n  cifarlab gradcam runs/fmnist-quick/<time>/checkpoints/best.pt --method gradcam++\n"
                              "  cifarlab gradcam runs/fmnist-quick/<time>/checkpoints/best.pt --images 3,17,42")
    p.add_argument("checkpoint", type=Path, help=CHECKPOINT_HELP)
    p.add_argument("--images", default="misclassified",
                   help="'misclassified' (by loss), comma-separated test indices, or image files (comma-separated)")
    p.add_argument("--count", type=int, default=10, help="how many misclassified images (default 10)")
    p.add_argument("--layer", help="target layer name (default: deepest layer with output >= 4x4)")
    p.add_argument("--method", choices=["gradcam", "gradcam++"], default="gradcam", help="default gradcam")
    p.add_argument("--out", type=Path, help="output PNG (default: next to the run's plots)")
    p.set_defaults(run=cmd_gradcam)

    p = sub.add_parser("compare", help="table and overlaid curves of several runs",
                       epilog="examples:\n  cifarlab compare runs/fmnist-quick/20261121-120000 runs/fmnist-quick/20261122-090000\n"
                              "  cifarlab compare runs/fmnist-quick\n  cifarlab compare 'runs/*/2026112*'")
    p.add_argument("run_dirs", nargs="+", type=Path,
                   help="run directories, folders of runs or quoted globs like 'runs/smoke/*'")
    p.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder (default runs/compare)")
    p.set_defaults(run=cmd_compare)

    p = sub.add_parser(
        "export", help="write a checkpoint's network as safetensors, TorchScript or ONNX, plus a metadata JSON",
        description="example: cifarlab export runs/fmnist-quick/20261121-120000/checkpoints/best.pt --format onnx")
    p.add_argument("checkpoint", type=Path, help="a checkpoint file, e.g. runs/<recipe>/<time>/checkpoints/best.pt")
    p.add_argument("--format", dest="export_format", choices=["onnx", "safetensors", "torchscript"], required=True,
                   help="safetensors: weights only; torchscript: traced module; onnx: needs cifarlab[onnx]")
    p.add_argument("--out", type=Path, help="output file (default: beside the checkpoint, e.g. best.onnx); "
                                            "never overwritten")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("predict", help="top-3 classes of image files under a checkpoint",
                       epilog="example:\n  cifarlab predict runs/fmnist-quick/<time>/checkpoints/best.pt photo1.jpg photo2.png")
    p.add_argument("checkpoint", type=Path, help=CHECKPOINT_HELP)
    p.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, WebP, ...), any size")
    p.add_argument("--top", type=int, default=3, help="how many classes per image (default 3)")
    p.set_defaults(run=cmd_predict)


def cmd_eval(args) -> int:
    import json

    from cifarlab.training.build import load_for_evaluation

    result = load_for_evaluation(args.checkpoint, precision=args.precision).test_metrics(args.tta)
    n, acc = result["images"], result["test_acc"]
    print(f"Test set: Average loss: {result['test_loss']:.4f}, Accuracy: {round(acc * n)}/{n} ({100 * acc:.2f}%)")
    print(json.dumps({"checkpoint": str(args.checkpoint), **result}))
    return 0


def cmd_lr_find(args) -> int:
    from cifarlab.analysis.lr_search import describe, run_range_test, save_range_test
    from cifarlab.config import load_config
    from cifarlab.runtime import make_runtime
    from cifarlab.training.build import load_data

    cfg = load_config(args.recipe, args.overrides)
    runtime = make_runtime(cfg.train, cfg.seed, cfg.deterministic)
    dataset = load_data(cfg.data, cfg.seed)
    out = args.out or Path(cfg.output.dir) / cfg.name / f"lr-find-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    result = run_range_test(cfg, runtime, dataset)
    plot = save_range_test(result, out, cfg.lr_find.suggestion)
    print(describe(result))
    print(f"plot: {plot}\ndata: {out / 'lr_find.json'}")
    return 0


def _settings(pairs: list[str]) -> dict:
    from cifarlab.config import parse_override

    return {".".join(keys): value for keys, value in map(parse_override, pairs)}


def cmd_summary(args) -> int:
    from cifarlab.analysis.model_summary import model_summary
    from cifarlab.registry import create_model

    from cifarlab.data.sources import dataset_shape

    settings = _settings(args.settings)
    dataset = settings.pop("dataset", "cifar10")
    batch_size = int(settings.pop("batch_size", 1))
    channels, size, classes = dataset_shape(dataset)
    model = create_model(args.model, num_classes=classes, in_channels=channels, **settings)
    print(model_summary(model, (channels, size, size), batch_size))
    return 0


def cmd_report(args) -> int:
    from cifarlab.analysis.run_report import report_from_run_dir

    if not (args.run_dir / "config.yaml").exists():
        raise UserError(f"{args.run_dir} is not a run directory (no config.yaml)")
    print(report_from_run_dir(args.run_dir))
    return 0


def cmd_compare(args) -> int:
    from cifarlab.analysis.compare import compare_runs, expand_run_dirs, to_markdown, write_comparison

    run_dirs = expand_run_dirs(args.run_dirs)
    files = write_comparison(run_dirs, args.out)
    print(to_markdown(compare_runs(run_dirs)))
    print("\n".join(f"{name}: {path}" for name, path in files._asdict().items()), file=sys.stderr)
    return 0


def _predictions(loaded, images, labels=None):
    """Predictions for uint8 images under a loaded checkpoint, with its precision and TTA."""
    import torch

    from cifarlab.analysis.predict import predict

    labels = torch.zeros(len(images), dtype=torch.long) if labels is None else labels
    return predict(loaded.model, images, labels, loaded.meta["mean"], loaded.meta["std"], tta=loaded.tta,
                   autocast=loaded.runtime.precision.autocast, channels_last=loaded.runtime.channels_last)


def cmd_export(args) -> int:
    from cifarlab.export import export

    out = export(args.checkpoint, args.export_format, args.out)
    print(f"{out}\n{out.with_name(out.name + '.json')}")
    return 0


def cmd_predict(args) -> int:
    import torch

    from cifarlab.data.images import read_image
    from cifarlab.training.build import load_for_evaluation

    loaded = load_for_evaluation(args.checkpoint)
    meta = loaded.meta
    channels, size = len(meta["mean"]), _image_size(loaded)
    images = torch.stack([read_image(path, channels, size) for path in args.images])
    probs = _predictions(loaded, images).probs
    top = min(args.top, probs.shape[1])
    for path, row in zip(args.images, probs):
        values, indices = row.topk(top)
        ranked = ", ".join(f"{meta['classes'][i]} {100 * v:.1f}%" for v, i in zip(values.tolist(), indices.tolist()))
        print(f"{path}: {ranked}")
    return 0


def _image_size(loaded) -> int:
    """The image size the checkpoint's model was trained on."""
    from cifarlab.inference import image_size_of

    return image_size_of(loaded.meta, loaded.cfg.data)


def cmd_gradcam(args) -> int:
    import torch

    from cifarlab.analysis.gradcam import gradcam
    from cifarlab.analysis.plots import plot_gradcam
    from cifarlab.data.images import read_image
    from cifarlab.data.normalize import normalize, to_float
    from cifarlab.training.build import load_for_evaluation

    loaded = load_for_evaluation(args.checkpoint)
    model, meta = loaded.model, loaded.meta
    classes, mean, std = meta["classes"], meta["mean"], meta["std"]
    if args.images == "misclassified" or args.images.replace(",", "").isdigit():
        test = loaded.test_data().test
        if args.images == "misclassified":
            chosen = _predictions(loaded, test.images, test.labels).misclassified(args.count)
        else:
            chosen = torch.tensor([int(i) for i in args.images.split(",")])
            if chosen.max() >= len(test.labels) or chosen.min() < 0:
                raise UserError(f"--images indices must be in 0..{len(test.labels) - 1}, got {args.images}")
        images, labels = test.images[chosen], test.labels[chosen]
        names = [f"#{i}" for i in chosen.tolist()]
    else:
        paths = [Path(p) for p in args.images.split(",")]
        images = torch.stack([read_image(p, len(mean), _image_size(loaded)) for p in paths])
        labels, names = None, [p.name for p in paths]
    probs = _predictions(loaded, images).probs
    top2 = probs.topk(min(2, probs.shape[1]), dim=1).indices
    preds = top2[:, 0]
    second = labels if labels is not None else top2[:, -1]  # own images: compare with the runner-up class
    inputs = normalize(to_float(images), mean, std, channels_last=False)
    cam_pred = gradcam(model, inputs, preds, layer=args.layer, method=args.method)
    cam_other = gradcam(model, inputs, second, layer=args.layer, method=args.method)
    titles = [f"{name}: {classes[o]} → {classes[p]} ({100 * probs[i, p]:.0f}%)"
              for i, (name, p, o) in enumerate(zip(names, preds.tolist(), second.tolist()))]
    out = args.out or args.checkpoint.parent.parent / "plots" / f"gradcam_{args.method.replace('+', 'pp')}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    print(plot_gradcam(images, cam_pred, cam_other, titles, out))
    return 0
