"""`cifarlab export CHECKPOINT --format hf --out DIR`: a Hugging Face model folder.

    DIR/model.safetensors   the weights (EMA weights where the run kept them), float32, mode 0644 (the umask's)
    DIR/config.json         the model card (run/model_card.ModelCard.to_dict) plus this format's extras: the Hub's
                            `model_type` and `library_name`, classes as id2label/label2id, the input shape,
                            create_model's keywords (`model`), the run's config
    DIR/README.md           a model card for people: what it is, how to use it, the run's results

Writing needs no huggingface_hub (plain safetensors and JSON). The folder loads the way the Hub's users load
models: `CifarlabModel.from_pretrained(DIR or "user/repo")` (use/hf_folder.py, huggingface_hub's
PyTorchModelHubMixin, which also gives `push_to_hub`), and `cifarlab.load_model(DIR)`, `cifarlab.predict(DIR,
...)`, `cifarlab predict DIR img.png` and `cifarlab eval DIR` accept it like a checkpoint, with the same
probabilities (reading it is run/model_file.read_model's). A model from the user's own module needs that
module named again (`import_modules=` / `--import`): config.json records it, and as for a checkpoint it is
never imported because a file names it.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

from torch import nn

from cifarlab.errors import UserError
from cifarlab.run.metrics import EpochRow
from cifarlab.run.model_card import ModelCard
from cifarlab.run.model_file import FOLDER_CONFIG, FOLDER_WEIGHTS
from cifarlab.run.summary import Summary

CARD = "README.md"
FOLDER_FORMAT = 1
MODEL_TYPE = "cifarlab"  # config.json's `model_type`, as the Hub and its libraries read a folder's kind


def default_out(checkpoint: Path) -> Path:
    """runs/x/checkpoints/best.pt -> runs/x/checkpoints/best-hf/"""
    return checkpoint.with_name(checkpoint.stem + "-hf")


def export_hf(checkpoint: Union[str, Path], out: Union[str, Path, None] = None) -> Path:
    """Write the model folder of `checkpoint` to `out` (a new or empty folder); returns `out`."""
    from cifarlab.run.model_file import read_model

    checkpoint = Path(checkpoint)
    out = Path(out) if out is not None else default_out(checkpoint)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not an empty folder; give a new --out (exports never overwrite)")
    if not out.absolute().parent.is_dir():
        raise UserError(f"output folder {out.absolute().parent} does not exist")
    stored = read_model(checkpoint)
    if not stored.card.image_size:
        raise UserError(f"{checkpoint} does not store its image size, and its data.dir cannot tell it "
                        f"(folder moved?); retrain with data.options.image_size set")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tmp.mkdir()
        write_folder(tmp, stored.network, stored.card, stored.config, stored.epoch,
                     _run_results(checkpoint, stored.checkpoint))
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)  # last: a failed export leaves no half-written folder under `out`
    except OSError as err:
        raise UserError(f"cannot write {out}: {err.strerror or err}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def write_folder(folder: Path, network: nn.Module, card: ModelCard, cfg, epoch: Optional[int],
                 results: Optional[RunResults] = None) -> None:
    """The folder's three files into `folder` (which exists): weights, config.json, README.md."""
    from safetensors.torch import save

    weights = {key: value.detach().cpu().float().contiguous() if value.is_floating_point()
               else value.detach().cpu().contiguous() for key, value in network.state_dict().items()}
    # safetensors' save_file creates its file 0600; written as bytes here, it gets the umask's permissions
    # like every other export.
    (folder / FOLDER_WEIGHTS).write_bytes(save(weights, metadata={"format": "pt"}))
    config = folder_config(card, cfg, epoch)
    (folder / FOLDER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    (folder / CARD).write_text(model_card(config, results or RunResults(EpochRow(), Summary())))


def folder_config(card: ModelCard, cfg, epoch: Optional[int]) -> dict[str, Any]:
    """config.json: the card plus this format's extras."""
    from cifarlab._version import __version__

    classes, size, channels = list(card.classes), card.image_size, card.in_channels
    return {
        **card.to_dict(), "model_type": MODEL_TYPE, "library_name": "cifarlab", "cifarlab_version": __version__,
        "folder_format": FOLDER_FORMAT, "module": cfg.model.module, "model": card.model_kwargs(),
        "num_labels": len(classes), "id2label": {str(i): name for i, name in enumerate(classes)},
        "label2id": {n: i for i, n in enumerate(classes)},
        "input_shape": [channels, size, size], "num_channels": channels,
        "preprocessing": "shorter side resized to image_size (antialiased bilinear), centre crop, pixel / 255, "
                         "(x - mean) / std per channel; float32 (N, C, H, W)",
        "output": "logits (N, num_labels); softmax gives class probabilities",
        "epoch": epoch, "run_config": cfg.to_dict(),
    }


class RunResults(NamedTuple):
    row: EpochRow  # the epoch these weights are from (every metric None where unknown)
    summary: Summary  # the run's summary.json (every field None where there is none)


def _run_results(checkpoint: Path, stored) -> RunResults:
    """The numbers the card reports: this checkpoint's epoch row, and the run's summary.json when beside it
    (`stored`: the Checkpoint, None for a model folder)."""
    from cifarlab.run.layout import CONFIG
    from cifarlab.run.summary import read_summary

    history = stored.epoch_rows() if stored is not None else []
    epoch = stored.epoch if stored is not None else None
    row = next((r for r in reversed(history) if r.epoch == epoch), EpochRow())
    run_dir = checkpoint.resolve().parent.parent
    try:
        summary = read_summary(run_dir, required=False) if (run_dir / CONFIG).is_file() else None
    except UserError:
        summary = None
    return RunResults(row, summary if summary is not None else Summary())


def model_card(config: dict, results: RunResults) -> str:
    """README.md with the Hub's YAML header (library, task, metric) and the run's results."""
    row, summary = results
    cfg = config["run_config"]
    accuracy = row.test_acc
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
                    ("test loss", row.test_loss), ("validation accuracy", _percent(row.val_acc)),
                    ("best test accuracy of the run", _percent(summary.best_test_acc)),
                    ("epochs trained", summary.epochs_completed),
                    ("training wall time (s)", summary.wall_seconds),
                    ("training images/s", summary.train_images_per_second),
                    ("device", summary.device), ("precision", config.get("precision")),
                    ("test-time augmentation", config.get("tta") or "none")]
    lines += [f"| {name} | {value} |" for name, value in results_rows if value is not None]
    lines += ["", "## Classes", "", ", ".join(config["classes"]), "", "## Use", "", "```python", "import cifarlab",
              "", 'model = cifarlab.load_model("path/to/this/folder")',
              'print(cifarlab.predict(model, ["image.png"], top=3))', "", "# or as the Hub's users load models "
              "(this folder, or its repository on the Hub):", "from cifarlab.use.hf_folder import CifarlabModel", "",
              'model = CifarlabModel.from_pretrained("path/to/this/folder")', "```", "",
              "Without cifarlab: rebuild the network from `config.json` (`model`), load `model.safetensors`, and feed "
              f"it {config['preprocessing']}; it returns {config['output']}.", ""]
    if config.get("module"):
        lines += [f"The model is defined in the user module `{config['module']}`: import it first "
                  f"(`import_modules=[...]`, `--import`).", ""]
    return "\n".join(lines)


def _percent(value: Optional[float]) -> Optional[str]:
    return None if value is None else f"{100 * value:.2f}%"
