"""The analysis subcommands: lr-find, summary, report, gradcam, compare, predict."""
from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from cifarlab.errors import UserError

# (channels, size, classes) per dataset, so `summary` needs no data on disk.
INPUT_SHAPES = {"cifar10": (3, 32, 10), "cifar100": (3, 32, 100), "fashion_mnist": (1, 28, 10),
                "mnist": (1, 28, 10), "synthetic": (3, 32, 10)}


def add_analysis_commands(sub) -> None:
    p = sub.add_parser("lr-find", help="LR range test on a recipe: plot and suggestions")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. lr_find.end_lr=1 lr_find.num_iter=200")
    p.add_argument("--out", type=Path, help="folder for lr_find.png/json (default runs/<recipe>/lr-find-<time>)")
    p.set_defaults(run=cmd_lr_find)

    p = sub.add_parser("summary", help="layers, output shapes, parameters and mult-adds of a model")
    p.add_argument("model")
    p.add_argument("settings", nargs="*", metavar="key=value", help="dataset=cifar10 batch_size=1, or model options")
    p.set_defaults(run=cmd_summary)

    p = sub.add_parser("report", help="(re)make the plots, tables and report of a run directory")
    p.add_argument("run_dir", type=Path)
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("gradcam", help="Grad-CAM heat maps of a checkpoint on test or own images")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--images", default="misclassified",
                   help="'misclassified' (by loss), comma-separated test indices, or image files (comma-separated)")
    p.add_argument("--count", type=int, default=10, help="how many misclassified images (default 10)")
    p.add_argument("--layer", help="target layer name (default: deepest layer with output >= 4x4)")
    p.add_argument("--method", choices=["gradcam", "gradcam++"], default="gradcam")
    p.add_argument("--out", type=Path, help="output PNG (default: next to the run's plots)")
    p.set_defaults(run=cmd_gradcam)

    p = sub.add_parser("compare", help="table and overlaid curves of several runs")
    p.add_argument("run_dirs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder (default runs/compare)")
    p.set_defaults(run=cmd_compare)

    p = sub.add_parser("predict", help="top-3 classes of image files under a checkpoint")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=3)
    p.set_defaults(run=cmd_predict)


def cmd_lr_find(args) -> int:
    from cifarlab.analysis.lr_search import describe, run_range_test, save_range_test
    from cifarlab.config import load_config
    from cifarlab.experiment import load_data
    from cifarlab.runtime import make_runtime

    cfg = load_config(args.recipe, args.overrides)
    runtime = make_runtime(cfg.train, cfg.seed, cfg.deterministic)
    dataset = load_data(cfg.data)
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
    from cifarlab.analysis.summary import model_summary
    from cifarlab.registry import create_model

    settings = _settings(args.settings)
    dataset = settings.pop("dataset", "cifar10")
    batch_size = int(settings.pop("batch_size", 1))
    if dataset not in INPUT_SHAPES:
        raise UserError(f"unknown dataset {dataset!r}; choose from: {', '.join(INPUT_SHAPES)}")
    channels, size, classes = INPUT_SHAPES[dataset]
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
    from cifarlab.analysis.compare import compare_runs, to_markdown, write_comparison

    files = write_comparison(args.run_dirs, args.out)
    print(to_markdown(compare_runs(args.run_dirs)))
    print("\n".join(f"{name}: {path}" for name, path in files._asdict().items()), file=sys.stderr)
    return 0


def cmd_predict(args) -> int:
    import torch

    from cifarlab.analysis.predict import predict
    from cifarlab.data.images import read_image
    from cifarlab.training.checkpoint import load_model

    model, cfg, meta = load_model(args.checkpoint)
    channels, size = len(meta["mean"]), _image_size(cfg)
    images = torch.stack([read_image(path, channels, size) for path in args.images])
    labels = torch.zeros(len(images), dtype=torch.long)
    probs = predict(model, images, labels, meta["mean"], meta["std"]).probs
    top = min(args.top, probs.shape[1])
    for path, row in zip(args.images, probs):
        values, indices = row.topk(top)
        ranked = ", ".join(f"{meta['classes'][i]} {100 * v:.1f}%" for v, i in zip(values.tolist(), indices.tolist()))
        print(f"{path}: {ranked}")
    return 0


def _image_size(cfg) -> int:
    if cfg.data.dataset in INPUT_SHAPES and cfg.data.dataset != "synthetic":
        return INPUT_SHAPES[cfg.data.dataset][1]
    return int(cfg.data.options.get("image_size", 32))


def cmd_gradcam(args) -> int:
    import torch

    from cifarlab.analysis.gradcam import gradcam
    from cifarlab.analysis.plots import plot_gradcam
    from cifarlab.analysis.predict import predict
    from cifarlab.data.images import read_image
    from cifarlab.data.normalize import normalize, to_float
    from cifarlab.experiment import load_data
    from cifarlab.training.checkpoint import load_model

    model, cfg, meta = load_model(args.checkpoint)
    classes, mean, std = meta["classes"], meta["mean"], meta["std"]
    if args.images == "misclassified" or args.images.replace(",", "").isdigit():
        test = load_data(cfg.data).test
        if args.images == "misclassified":
            found = predict(model, test.images, test.labels, mean, std)
            chosen = found.misclassified(args.count)
        else:
            chosen = torch.tensor([int(i) for i in args.images.split(",")])
            if chosen.max() >= len(test.labels) or chosen.min() < 0:
                raise UserError(f"--images indices must be in 0..{len(test.labels) - 1}, got {args.images}")
        images, labels = test.images[chosen], test.labels[chosen]
        names = [f"#{i}" for i in chosen.tolist()]
    else:
        paths = [Path(p) for p in args.images.split(",")]
        images = torch.stack([read_image(p, len(mean), _image_size(cfg)) for p in paths])
        labels, names = None, [p.name for p in paths]
    probs = predict(model, images, torch.zeros(len(images), dtype=torch.long), mean, std).probs
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
