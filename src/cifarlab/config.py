"""Validated experiment config: defaults < recipe YAML < `key=value` overrides.

Every section is a pydantic model that forbids unknown keys, so a typo names itself. Leaf functions take
the section they need (`build_optimizer(model, cfg.optim)`), never the whole config.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cifarlab.errors import UserError

PositiveFloat = Field(gt=0)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    dataset: str = "synthetic"
    dir: Optional[str] = None  # else $CIFARLAB_DATA, else ~/.cache/cifarlab
    download: bool = True
    train_subset: Optional[int] = Field(default=None, ge=1)  # first N train images (quick runs, tests)
    test_subset: Optional[int] = Field(default=None, ge=1)
    mean: Optional[list[float]] = None  # default: the dataset's own per-channel statistics
    std: Optional[list[float]] = None
    options: dict[str, Any] = {}  # source options, e.g. synthetic's num_train


class CropConfig(Section):
    padding: int = Field(default=4, ge=0, le=64)
    pad_mode: Literal["zero", "reflect", "constant"] = "zero"
    fill: float = Field(default=0.0, ge=0, le=1)  # for pad_mode=constant, in pixel units [0, 1]
    p: float = Field(default=1.0, ge=0, le=1)


class FlipConfig(Section):
    p: float = Field(default=0.5, ge=0, le=1)
    # Alternate flips across epochs instead of i.i.d. flips (Jordan 2024, arXiv:2404.00498).
    alternate: bool = False


class CutoutConfig(Section):
    holes: int = Field(default=1, ge=1, le=16)
    size: int = Field(default=16, ge=1)  # side of the square hole in pixels; checked against the image
    fill: float = Field(default=0.0, ge=0, le=1)
    p: float = Field(default=1.0, ge=0, le=1)


class RotateConfig(Section):
    degrees: float = Field(default=18.0, gt=0, le=180)
    fill: float = Field(default=0.0, ge=0, le=1)
    p: float = Field(default=1.0, ge=0, le=1)


class AugmentConfig(Section):
    """Applied in this order: crop, flip, rotate, cutout; a null op is off. Test data is never augmented."""

    crop: Optional[CropConfig] = None
    flip: Optional[FlipConfig] = None
    rotate: Optional[RotateConfig] = None
    cutout: Optional[CutoutConfig] = None


class ModelConfig(Section):
    name: str = "custom_resnet"
    norm: Literal["batch", "group", "layer", "instance"] = "batch"
    dropout: float = Field(default=0.0, ge=0, lt=1)
    options: dict[str, Any] = {}  # extra keyword arguments for the model factory


class OptimConfig(Section):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    grad_clip: Optional[float] = Field(default=None, gt=0)  # max global grad norm


class ScheduleConfig(Section):
    """One LR schedule. Fields not used by `name` are ignored; per-step schedules step every batch."""

    name: Literal["constant", "onecycle", "step", "multistep", "plateau", "cosine"] = "constant"
    # onecycle
    lr_peak: Union[float, Literal["auto"], None] = None  # None: optim.lr; auto: LR range test first
    peak_epoch: Optional[float] = Field(default=None, ge=0)  # e.g. 5 of 24; else pct_start
    pct_start: float = Field(default=0.3, gt=0, lt=1)
    div_factor: float = Field(default=10.0, gt=0)  # initial lr = lr_peak / div_factor
    final_div_factor: Optional[float] = Field(default=None, gt=0)  # None = no annihilation: end at initial lr
    anneal: Literal["linear", "cos"] = "linear"
    # step / multistep (in epochs)
    step_size: int = Field(default=30, ge=1)
    milestones: list[int] = []
    gamma: float = Field(default=0.1, gt=0)
    # plateau: all of ReduceLROnPlateau's arguments, watching test or train loss
    monitor: Literal["test_loss", "train_loss", "test_acc", "train_acc"] = "test_loss"
    mode: Literal["min", "max"] = "min"
    factor: float = Field(default=0.1, gt=0, lt=1)
    patience: int = Field(default=10, ge=0)
    threshold: float = Field(default=1e-4, ge=0)
    threshold_mode: Literal["rel", "abs"] = "rel"
    cooldown: int = Field(default=0, ge=0)
    min_lr: float = Field(default=0.0, ge=0)
    eps: float = Field(default=1e-8, ge=0)
    # cosine
    warmup_epochs: float = Field(default=0.0, ge=0)


class LRFindConfig(Section):
    start_lr: float = Field(default=1e-7, gt=0)
    end_lr: float = Field(default=10.0, gt=0)
    num_iter: int = Field(default=100, ge=5)
    step_mode: Literal["exp", "linear"] = "exp"
    smooth: float = Field(default=0.05, ge=0, lt=1)
    diverge_threshold: float = Field(default=5.0, gt=1)
    # minimum: of the loss smoothed without lag (analysis/lr_suggest.py); steepest, valley: the older rules
    suggestion: Literal["minimum", "steepest", "valley"] = "minimum"

    @model_validator(mode="after")
    def _range(self):
        if self.end_lr <= self.start_lr:
            raise ValueError(f"lr_find.end_lr must be greater than start_lr ({self.start_lr}), got {self.end_lr}")
        return self


class TrainConfig(Section):
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=128, ge=1)
    eval_batch_size: int = Field(default=1000, ge=1)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    channels_last: bool = True
    compile: bool = False
    tta: bool = False  # evaluate with horizontal-flip test-time augmentation
    ema: Optional[float] = Field(default=None, gt=0, lt=1)  # decay of an EMA of the weights, evaluated
    log_every_steps: int = Field(default=50, ge=1)
    threads: Optional[int] = Field(default=None, ge=1)  # CPU intra-op threads; default: torch's choice
    early_stop_patience: Optional[int] = Field(default=None, ge=1)  # epochs without a better checkpoint.monitor
    early_stop_min_delta: float = Field(default=0.0, ge=0)  # smaller changes do not count as better


class CheckpointConfig(Section):
    every_epochs: int = Field(default=1, ge=1)
    every_steps: Optional[int] = Field(default=None, ge=1)
    monitor: Literal["test_acc", "test_loss"] = "test_acc"


class OutputConfig(Section):
    dir: str = "runs"
    tensorboard: bool = True
    report: bool = True  # analysis and report.md/html at the end of train
    progress: Literal["auto", "bar", "lines", "none"] = "auto"


class Config(Section):
    name: str = "experiment"
    description: str = ""
    seed: int = 0
    deterministic: bool = False
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    lr_find: LRFindConfig = LRFindConfig()
    train: TrainConfig = TrainConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _schedule_fits_training(self):
        schedule, epochs = self.schedule, self.train.epochs
        if schedule.name == "onecycle" and schedule.peak_epoch is not None and not 0 < schedule.peak_epoch < epochs:
            raise ValueError(f"schedule.peak_epoch must be in (0, train.epochs={epochs}), got {schedule.peak_epoch}")
        if schedule.name == "multistep" and not schedule.milestones:
            raise ValueError("schedule.milestones must list at least one epoch for multistep, got []")
        return self

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------- recipes and overrides

def recipes_dir() -> Path:
    return Path(str(resources.files("cifarlab") / "recipes"))


def list_recipes() -> dict[str, str]:
    """Recipe name -> one-line description, for `cifarlab recipes`."""
    found = {}
    for path in sorted(recipes_dir().glob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        found[path.stem] = str(raw.get("description", "")).strip().splitlines()[0] if raw.get("description") else ""
    return found


def read_recipe(recipe: str) -> dict:
    """A recipe name (`custom-resnet-onecycle`) or a path to a YAML file, as a plain dict."""
    path = Path(recipe)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        path = recipes_dir() / f"{recipe}.yaml"
        if not path.exists():
            raise UserError(f"unknown recipe {recipe!r}; choose from: {', '.join(list_recipes())} or give a .yaml path")
    if not path.is_file():
        raise UserError(f"recipe file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"recipe {str(path)!r} is not valid YAML: {str(err).splitlines()[0]}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"recipe {str(path)!r} must be a mapping of sections, got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    return raw


def parse_override(text: str) -> tuple[list[str], Any]:
    """`optim.lr=0.05` -> (["optim", "lr"], 0.05). Values are YAML scalars, lists or mappings."""
    if "=" not in text:
        raise UserError(f"override {text!r} must look like key=value, e.g. train.epochs=5")
    key, _, value = text.partition("=")
    keys = key.strip().split(".")
    if not all(keys):
        raise UserError(f"override key {key!r} is malformed; use dotted names like optim.lr")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return keys, parsed


def apply_override(raw: dict, keys: list[str], value: Any) -> None:
    node = raw
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise UserError(f"{'.'.join(keys[:depth + 1])} is a value, not a section; cannot set {'.'.join(keys)}")
        node = child
    node[keys[-1]] = value


def _describe(error: dict) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "config"
    if error["type"] == "extra_forbidden":
        section = _section_for(error["loc"][:-1])
        allowed = ", ".join(section.model_fields) if section else "?"
        return f"unknown config key {where!r}; allowed here: {allowed}"
    given = error.get("input")
    given_text = f", got {given!r}" if not isinstance(given, dict) else ""
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message}{given_text}"


def _section_for(loc: tuple) -> Optional[type[BaseModel]]:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        candidates = getattr(annotation, "__args__", (annotation,))
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model


def validate(raw: dict) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise UserError(_describe(err.errors()[0])) from None


def load_config(recipe: str | None = None, overrides: list[str] = ()) -> Config:
    """defaults < recipe < overrides, validated. `recipe=None` starts from the defaults."""
    raw = read_recipe(recipe) if recipe else {}
    for text in overrides:
        apply_override(raw, *parse_override(text))
    return validate(raw)
