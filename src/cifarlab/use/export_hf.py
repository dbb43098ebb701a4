"""`cifarlab export CHECKPOINT --format hf --out DIR`: a Hugging Face-style model folder, and loading it back.

    DIR/model.safetensors   the weights (EMA weights where the run kept them), float32
    DIR/config.json         everything to rebuild and feed the network: architecture and options, classes
                            (also as id2label/label2id), input shape, mean/std, TTA, precision, the run's config
    DIR/README.md           a model card: what it is, how to use it, the run's results

The folder is what `huggingface_hub.upload_folder` pushes as is; nothing here needs huggingface_hub (plain
safetensors and JSON). Loading is cifarlab/use/hf_folder.py: `cifarlab.load_model(DIR)`, `cifarlab.predict(DIR,
...)`, `cifarlab predict DIR img.png` and `cifarlab eval DIR` accept the folder like a checkpoint, with the
same probabilities. A model from the user's own module needs that module named again (`import_modules=` /
`--import`): config.json records it, and as for a checkpoint it is never imported because a file names it.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional, Union

import torch

from cifarlab.errors import UserError
from cifarlab.use.hf_folder import CONFIG_FILE, WEIGHTS_FILE

CARD = "README.md"
FOLDER_FORMAT = 1


def default_out(checkpoint: Path) -> Path:
    """runs/x/checkpoints/best.pt -> runs/x/checkpoints/best-hf/"""
    return checkpoint.with_name(checkpoint.stem + "-hf")


def export_hf(checkpoint: Union[str, Path], out: Union[str, Path, None] = None) -> Path:
    """Write the model folder of `checkpoint` to `out` (a new or empty folder); returns `out`."""
    from cifarlab.training.checkpoint import load_model

    checkpoint = Path(checkpoint)
    out = Path(out) if out is not None else default_out(checkpoint)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not an empty folder; give a new --out (exports never overwrite)")
    if not out.absolute().parent.is_dir():
        raise UserError(f"output folder {out.absolute().parent} does not exist")
    model, cfg, meta = load_model(checkpoint)
    config = folder_config(model, cfg, meta)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tmp.mkdir()
        _write_weights(model, tmp / WEIGHTS_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / CARD).write_text(model_card(config, _run_results(checkpoint, meta)))
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)  # last: a failed export leaves no half-written folder under `out`
    except OSError as err:
        raise UserError(f"cannot write {out}: {err.strerror or err}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    weights = {key: value.detach().float().contiguous() if value.is_floating_point() else value.contiguous()
               for key, value in model.state_dict().items()}
    save_file(weights, str(path), metadata={"format": "pt"})


def folder_config(model: torch.nn.Module, cfg, meta: dict) -> dict[str, Any]:
    from cifarlab._version import __version__
    from cifarlab.use.load import image_size_of

    classes = list(meta["classes"])
    size, channels = image_size_of(meta, cfg.data), len(meta["mean"])
    return {
        "library_name": "cifarlab", "cifarlab_version": __version__, "folder_format": FOLDER_FORMAT,
        "architecture": cfg.model.name, "module": cfg.model.module,
        "model": {"name": cfg.model.name, "num_classes": len(classes), "in_channels": channels,
                  "norm": cfg.model.norm, "dropout": cfg.model.dropout, **cfg.model.options},
        "num_labels": len(classes), "classes": classes,
        "id2label": {str(i): name for i, name in enumerate(classes)}, "label2id": {n: i for i, n in enumerate(classes)},
        "input_shape": [channels, size, size], "image_size": size, "num_channels": channels,
        "mean": list(meta["mean"]), "std": list(meta["std"]),
        "preprocessing": "shorter side resized to image_size (antialiased bilinear), centre crop, pixel / 255, "
                         "(x - mean) / std per channel; float32 (N, C, H, W)",
        "output": "logits (N, num_labels); softmax gives class probabilities",
        "tta": cfg.train.tta, "precision": meta.get("precision"), "epoch": meta.get("epoch"),
        "run_config": cfg.to_dict(),
    }


def _run_results(checkpoint: Path, meta: dict) -> dict[str, Any]:
    """The numbers the card reports: this checkpoint's epoch row, and the run's summary.json when beside it."""
    from cifarlab.run.layout import CONFIG
    from cifarlab.run.records import read_summary

    row = next((r for r in reversed(meta.get("history") or []) if r.get("epoch") == meta.get("epoch")), {})
    run_dir = checkpoint.resolve().parent.parent
    try:
        summary = read_summary(run_dir, required=False) if (run_dir / CONFIG).is_file() else None
    except UserError:
        summary = None
    summary = summary.to_json() if summary is not None else {}
    return {"row": row, "summary": summary}


def model_card(config: dict, results: dict) -> str:
    """README.md with the Hub's YAML header (library, task, metric) and the run's results."""
    row, summary = results["row"], results["summary"]
    cfg = config["run_config"]
    accuracy = row.get("test_acc")
    header = ["---", "library_name: cifarlab", "pipeline_tag: image-classification",
              "tags: [image-classification, cifarlab, pytorch]"]
    if accuracy is not None:
        dataset = json.dumps(cfg["data"]["dataset"])
        header += ["model-index:", f"- name: {json.dumps(cfg['name'])}", "  results:",
                   "  - task: {type: image-classification}", f"    dataset: {{name: {dataset}, type: {dataset}}}",
                   f"    metrics: [{{type: accuracy, value: {accuracy:.6f}, name: test accuracy}}]"]
    lines = [*header, "---", "", f"# {cfg['name']}: {config['architecture']} on {cfg['data']['dataset']}", "",
             f"An image classifier trained with cifarlab {config['cifarlab_version']} (recipe `{cfg['name']}`): "
             f"{config['num_labels']} classes, input {config['num_channels']}x{config['image_size']}x"
             f"{config['image_size']}.", "", "## Results", "", "| metric | value |", "|---|---|"]
    results_rows = [("epoch of these weights", config.get("epoch")), ("test accuracy", _percent(accuracy)),
                    ("test loss", row.get("test_loss")), ("validation accuracy", _percent(row.get("val_acc"))),
                    ("best test accuracy of the run", _percent(summary.get("best_test_acc"))),
                    ("epochs trained", summary.get("epochs_completed")),
                    ("training wall time (s)", summary.get("wall_seconds")),
                    ("training images/s", summary.get("train_images_per_second")),
                    ("device", summary.get("device")), ("precision", config.get("precision")),
                    ("test-time augmentation", config.get("tta") or "none")]
    lines += [f"| {name} | {value} |" for name, value in results_rows if value is not None]
    lines += ["", "## Classes", "", ", ".join(config["classes"]), "", "## Use", "", "```python", "import cifarlab",
              "", 'model = cifarlab.load_model("path/to/this/folder")',
              'print(cifarlab.predict(model, ["image.png"], top=3))', "```", "",
              "Without cifarlab: rebuild the network from `config.json` (`model`), load `model.safetensors`, and feed "
              f"it {config['preprocessing']}; it returns {config['output']}.", ""]
    if config.get("module"):
        lines += [f"The model is defined in the user module `{config['module']}`: import it first "
                  f"(`import_modules=[...]`, `--import`).", ""]
    return "\n".join(lines)


def _percent(value: Optional[float]) -> Optional[str]:
    return None if value is None else f"{100 * value:.2f}%"
