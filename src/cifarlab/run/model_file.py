"""`read_model(path)`: the one reader of model files, a checkpoint (`.pt`) or a model folder (`cifarlab export
--format hf`), with one set of checks for both.

Every use of a stored model goes through here: `cifarlab.load_model` (and with it predict, eval, report,
gradcam, export), the Hugging Face folder export, MLflow's copy of best.pt and `model.init_from`. What is
checked, whatever the format: the card's fields (run/model_card.check_card_fields: distinct class names,
finite mean/std with std > 0, whole numbers in range), as many classes as the classifier has outputs, the
weights finite, and the weights fitting the network the card and config build. A file that fails is one
line naming the file and the field; the network of a file that passes is built and filled in eval mode on
the CPU, leaving the caller's global RNGs as they were.

A model folder holds `model.safetensors` (the weights) and `config.json` (the card, its format's extras and
the run's config, use/export_hf.py); reading it needs safetensors and JSON, not huggingface_hub.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from cifarlab.config import Config, validate_recorded
from cifarlab.errors import UserError
from cifarlab.models.registry import build_model
from cifarlab.run.checkpoint import Checkpoint, read_checkpoint
from cifarlab.run.field_checks import FieldProblem, need, whole
from cifarlab.run.layout import BEST, CHECKPOINTS
from cifarlab.run.model_card import ModelCard

FOLDER_WEIGHTS = "model.safetensors"
FOLDER_CONFIG = "config.json"
EXPORTED = (".safetensors", ".onnx", ".torchscript.pt")  # export.FORMATS' suffixes (export sits above run/)


@dataclass(frozen=True)
class ModelFile:
    """A model file, read and checked: the `network` (eval mode, CPU, the weights the file evaluates with:
    EMA where the run kept one), its `card`, the run's `config`, the `epoch` its weights had trained, and
    for a checkpoint the whole `checkpoint` (history, status) it came from."""
    network: nn.Module
    card: ModelCard
    config: Config
    epoch: Optional[int]
    source: Path
    checkpoint: Optional[Checkpoint] = None


def is_model_folder(path: Union[str, Path]) -> bool:
    path = Path(path)
    return path.is_dir() and (path / FOLDER_CONFIG).is_file() and (path / FOLDER_WEIGHTS).is_file()


def read_model(path: Union[str, Path]) -> ModelFile:
    """The model in `path`: a checkpoint, or a model folder (see the module doc)."""
    path = Path(path)
    if is_model_folder(path):
        return _read_folder(path)
    held = [name for name in (FOLDER_CONFIG, FOLDER_WEIGHTS) if path.is_dir() and (path / name).exists()]
    if held:  # half a model folder: say what it lacks, not "give a .pt file"
        lacking = next(name for name in (FOLDER_CONFIG, FOLDER_WEIGHTS) if not (path / name).is_file())
        raise UserError(f"model folder {path} has no {lacking} file beside its {held[0]}; a model folder holds both "
                        f"{FOLDER_CONFIG} and {FOLDER_WEIGHTS} (cifarlab export --format hf)")
    exported = next((suffix for suffix in EXPORTED if path.name.endswith(suffix)), None)
    if exported and path.is_file():  # `cifarlab export`'s files are for other tools; they lack the run's config
        raise UserError(f"{path} is an exported model ({exported[1:]}, for other tools), which cifarlab does not load "
                        f"back; give the run's checkpoint ({CHECKPOINTS}/{BEST}) or a model folder (cifarlab export "
                        f"--format hf)")
    checkpoint, used = read_checkpoint(path)
    cfg = checkpoint.cfg
    card = with_image_size(checkpoint.card, cfg)
    weights = checkpoint.model
    if checkpoint.ema:  # AveragedModel keys: module.<name> plus n_averaged
        weights = {k.removeprefix("module."): v for k, v in checkpoint.ema.items() if k.startswith("module.")}
    network = _build(card, cfg, weights, f"checkpoint {used}")
    return ModelFile(network, card, cfg, checkpoint.epoch, used, checkpoint)


def _read_folder(path: Path) -> ModelFile:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    source = f"model folder {path}"
    stored, weights = None, None
    for name in (FOLDER_CONFIG, FOLDER_WEIGHTS):
        try:  # ValueError: JSON and UTF-8 decoding
            if name == FOLDER_CONFIG:
                stored = json.loads((path / name).read_text())
            else:
                weights = load_file(str(path / name))
        except (OSError, ValueError, SafetensorError) as err:
            raise UserError(f"{path} is not a readable cifarlab model folder: its {name} cannot be read: "
                            f"{(str(err).splitlines() or [type(err).__name__])[0][:200]}") from None
    try:
        need(isinstance(stored, dict), FOLDER_CONFIG, "a JSON object", type(stored).__name__)
        need(isinstance(stored.get("run_config"), dict), "run_config", "the run's config (a mapping)",
             stored.get("run_config"))
        cfg = _validated(stored["run_config"], source)
        card = with_image_size(ModelCard.from_config(cfg, stored), cfg)
        epoch = stored.get("epoch")
        need(epoch is None or whole(epoch), "epoch", "a whole number", epoch)
    except FieldProblem as problem:
        raise UserError(f"{source} is not usable: {problem}") from None
    network = _build(card, cfg, weights, source)  # the classes against the classifier first
    try:
        _check_agrees(stored, card, cfg)
    except FieldProblem as problem:
        raise UserError(f"{source} is not usable: {FOLDER_CONFIG} disagrees with itself: {problem}") from None
    return ModelFile(network, card, cfg, epoch, path)


def _check_agrees(stored: dict[str, Any], card: ModelCard, cfg: Config) -> None:
    """config.json repeats the card and run_config for other tools (transformers' id2label, num_labels, the model's
    keywords); cifarlab builds from the card and run_config. A copy that says otherwise was edited (a class renamed
    in id2label, another architecture), and the edit would be ignored silently: each must say what they say."""
    classes = list(card.classes)
    derived = {"architecture": card.architecture, "options": card.options, "model": card.model_kwargs(),
               "module": cfg.model.module, "num_labels": len(classes), "in_channels": card.in_channels,
               "num_channels": card.in_channels, "id2label": {str(i): name for i, name in enumerate(classes)},
               "label2id": {name: i for i, name in enumerate(classes)}}
    if card.image_size:
        derived["input_shape"] = [card.in_channels, card.image_size, card.image_size]
    for key, value in derived.items():
        expected = json.loads(json.dumps(value))  # as JSON has it: lists for tuples
        if key in stored and stored[key] != expected:
            shown = json.dumps(expected)
            need(False, key, f"{shown if len(shown) <= 80 else shown[:77] + '...'} as its classes and run_config "
                             f"say (edit them together, or export the checkpoint again)", stored[key])


def _validated(raw: dict[str, Any], source: str) -> Config:
    try:
        return validate_recorded(raw)
    except UserError as err:
        raise UserError(f"{source} has an invalid config: {err}") from None


def _build(card: ModelCard, cfg: Config, weights: dict[str, torch.Tensor], source: str) -> nn.Module:
    """The network `cfg` names for the card's classes and channels, holding `weights` (checked first)."""
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"{source} is not usable: its weights have non-finite (NaN or inf) values in {name}: "
                            f"a diverged model predicts garbage and cannot be exported; use a checkpoint from "
                            f"before the divergence")
    head = weights.get(f"{card.classifier}.weight") if card.classifier else None
    if head is not None and head.dim() == 2 and head.shape[0] != card.num_classes:  # else load_state_dict says
        raise UserError(f"{source} does not match its own config: classes must be {head.shape[0]} names (one per "
                        f"output of its classifier {card.classifier!r}), got {card.num_classes} classes")
    # Building the network draws its initial weights from torch's global RNG; the file's weights replace
    # them, and the caller's RNG must not notice.
    with torch.random.fork_rng(devices=[]):
        network = build_model(cfg.model, num_classes=card.num_classes, in_channels=card.in_channels)
    expected = network.state_dict()
    for name, tensor in weights.items():  # load_state_dict would copy integers into float weights, silently
        if name in expected and expected[name].is_floating_point() and not tensor.is_floating_point():
            raise UserError(f"{source} is not usable: its weight {name} is {tensor.dtype}, not a floating-point "
                            f"tensor like the network's ({expected[name].dtype}); export the model again")
    try:
        network.load_state_dict(weights)
    except (RuntimeError, AttributeError, TypeError) as err:
        raise UserError(f"{source} does not match its own config (model {card.architecture!r} with options "
                        f"{cfg.model.options}, {card.num_classes} classes): {_first_line(err)}") from None
    return network.eval()


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return " ".join(line.strip() for line in text[:3])[:300] if text else type(err).__name__


def with_image_size(card: ModelCard, cfg: Config) -> ModelCard:
    """The card with its image size: stored in every file since it was recorded; for older checkpoints,
    `data.options.image_size`, else the built-in source's size, else (an image folder trained at its
    default size) the same default read again from the folder's file headers. Left None where none of
    these can tell (a folder that moved): a use that needs the size says so."""
    if card.image_size:
        return card
    data_cfg, size = cfg.data, None
    if "image_size" in data_cfg.options:
        size = int(data_cfg.options["image_size"])
    elif data_cfg.dataset not in ("folder", "arrays", "hf"):
        from cifarlab.data.sources import dataset_shape

        size = dataset_shape(data_cfg.dataset, **data_cfg.options)[1]
    elif data_cfg.dataset == "folder" and data_cfg.dir and Path(data_cfg.dir).expanduser().is_dir():
        from cifarlab.data.folder import resolved_shape

        size = resolved_shape(data_cfg.dir, **data_cfg.options)[0]
    return replace(card, image_size=size)
