"""Validated experiment config: defaults < recipe YAML < `key=value` overrides.

Every section is a pydantic model that forbids unknown keys, so a typo names itself. Leaf functions take
the section they need (`build_optimizer(model, cfg.optim)`), never the whole config.
"""
from __future__ import annotations

import math
import os
import sys
import types
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cifarlab.errors import UserError
from cifarlab.strict_yaml import YAMLRefused, load_yaml, yaml_error

PositiveFloat = Field(gt=0)
INT64 = (-2**63, 2**63 - 1)  # every integer in a config fits a C int64 (torch, numpy)


class ConfigSection(BaseModel):
    """Forbids unknown keys; every float is finite, a bool is never a number, every int fits 64 bits."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bools_for_numbers(cls, value: Any, info) -> Any:
        # Pydantic's lax mode reads `epochs: true` as 1 and `download: 1` as true; neither is meant.
        annotation = cls.model_fields[info.field_name].annotation
        if _misplaced_bool(annotation, value):
            raise ValueError("must be a number, not true/false")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and _leaves(annotation) == [bool]:
            raise ValueError("must be true or false")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _finite_and_64_bit(cls, value: Any) -> Any:
        problem = _number_problem(value)  # also inside free-form `options` dicts, which pydantic leaves alone
        if problem:
            raise ValueError(problem)
        return value


def _leaves(annotation) -> list:
    """The alternatives of a Union/Optional, with Annotated[...] unwrapped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _leaves(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [leaf for arg in get_args(annotation) for leaf in _leaves(arg)]
    return [annotation]


def _misplaced_bool(annotation, value: Any) -> bool:
    """True when `value` is, or holds, a bool where `annotation` wants an int or float."""
    leaves = _leaves(annotation)
    if isinstance(value, bool):
        return bool not in leaves and any(leaf in (int, float) for leaf in leaves)
    if not isinstance(value, (list, tuple)):
        return False
    for leaf in leaves:
        origin, args = get_origin(leaf), get_args(leaf)
        if origin in (list, tuple) and args:
            item_types = args if origin is tuple and args[-1] is not Ellipsis else [args[0]] * len(value)
            if any(_misplaced_bool(t, v) for t, v in zip(item_types, value)):
                return True
    return False


def _number_problem(value: Any, where: str = "", depth: int = 0) -> Optional[str]:
    """A non-finite float or an int beyond 64 bits anywhere in `value`, named by its place inside it."""
    if isinstance(value, BaseModel) or depth > 32:
        return None
    at = f"{where} " if where else ""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{at}must be a finite number" + (f", got {value}" if where else "")
    if isinstance(value, int) and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
        return f"{at}must be in {INT64[0]}..{INT64[1]} (64 bits)"
    if isinstance(value, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{where}[{i}]" if where else f"[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    return next((p for p in (_number_problem(v, w, depth + 1) for w, v in items) if p), None)


class DataConfig(ConfigSection):
    dataset: str = "synthetic"
    dir: Optional[str] = None  # else $CIFARLAB_DATA, else ~/.cache/cifarlab
    download: bool = True
    train_subset: Optional[int] = Field(default=None, ge=1)  # first N train images (quick runs, tests)
    test_subset: Optional[int] = Field(default=None, ge=1)
    # Validation images taken from the training split (after train_subset), stratified by class with the
    # run's seed: a fraction in (0, 1) or a count. With it, best.pt, early stopping and plateau schedules
    # select on validation and the test split only reports.
    val_split: Union[int, float, Literal["auto"], None] = None
    mean: Optional[list[float]] = None  # default: the dataset's own per-channel statistics
    std: Optional[list[Annotated[float, Field(gt=0)]]] = None
    options: dict[str, Any] = {}  # source options, e.g. synthetic's num_train


class CropConfig(ConfigSection):
    padding: int = Field(default=4, ge=0, le=64)
    pad_mode: Literal["zero", "reflect", "constant"] = "zero"
    fill: float = Field(default=0.0, ge=0, le=1)  # for pad_mode=constant, in pixel units [0, 1]
    p: float = Field(default=1.0, ge=0, le=1)


class FlipConfig(ConfigSection):
    p: float = Field(default=0.5, ge=0, le=1)
    # Alternate flips across epochs instead of i.i.d. flips (Jordan 2024, arXiv:2404.00498).
    alternate: bool = False


class CutoutConfig(ConfigSection):
    holes: int = Field(default=1, ge=1, le=16)
    size: int = Field(default=16, ge=1)  # side of the square hole in pixels; checked against the image
    fill: float = Field(default=0.0, ge=0, le=1)
    p: float = Field(default=1.0, ge=0, le=1)


class RotateConfig(ConfigSection):
    degrees: float = Field(default=18.0, gt=0, le=180)
    fill: float = Field(default=0.0, ge=0, le=1)
    p: float = Field(default=1.0, ge=0, le=1)


class AugmentConfig(ConfigSection):
    """Applied in this order: crop, flip, rotate, cutout; a null op is off. Test data is never augmented."""

    crop: Optional[CropConfig] = None
    flip: Optional[FlipConfig] = None
    rotate: Optional[RotateConfig] = None
    cutout: Optional[CutoutConfig] = None


class ModelConfig(ConfigSection):
    name: str = "custom_resnet"
    norm: Literal["batch", "group", "layer", "instance"] = "batch"
    dropout: float = Field(default=0.0, ge=0, lt=1)
    options: dict[str, Any] = {}  # extra keyword arguments for the model factory
    # Start a new run from a checkpoint's weights (model only; optimizer and schedule fresh), see
    # training/warmstart.py. init_head=false: all but the classifier head, for data with other classes.
    init_from: Optional[str] = None
    init_head: bool = True


class OptimConfig(ConfigSection):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    grad_clip: Optional[float] = Field(default=None, gt=0)  # max global grad norm
    # lr multiplier for normalisation layers' parameters (airbench's bias_scaler, 64); their weight decay
    # is divided by it, so the per-step decay lr*wd stays that of the other parameters.
    norm_lr_scale: Optional[float] = Field(default=None, gt=0)


class ScheduleConfig(ConfigSection):
    """One LR schedule. Fields not used by `name` are ignored; per-step schedules step every batch."""

    name: Literal["constant", "onecycle", "step", "multistep", "plateau", "cosine"] = "constant"
    # onecycle
    # None: optim.lr; auto: LR range test first
    lr_peak: Union[Annotated[float, Field(gt=0)], Literal["auto"], None] = None
    peak_epoch: Optional[float] = Field(default=None, ge=0)  # e.g. 5 of 24; else pct_start
    pct_start: float = Field(default=0.3, gt=0, lt=1)
    div_factor: float = Field(default=10.0, gt=0)  # initial lr = lr_peak / div_factor
    final_div_factor: Optional[float] = Field(default=None, gt=0)  # None = no annihilation: end at initial lr
    anneal: Literal["linear", "cos"] = "linear"
    # torch's OneCycleLR default, which the course notebooks used: momentum (SGD) or beta1 (Adam) cycles
    # 0.95 -> 0.85 at the peak -> 0.95, replacing optim.momentum / betas[0]; false keeps the configured one.
    cycle_momentum: bool = True
    # step / multistep (in epochs)
    step_size: int = Field(default=30, ge=1)
    milestones: list[Annotated[int, Field(ge=1)]] = []
    gamma: float = Field(default=0.1, gt=0)
    # plateau: all of ReduceLROnPlateau's arguments; monitor null = val_loss with a validation split, else test_loss
    monitor: Optional[Literal["val_loss", "val_acc", "test_loss", "train_loss", "test_acc", "train_acc"]] = None
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
    # The epochs onecycle and cosine are planned over; null = train.epochs. `resume --epochs` sets it to the
    # run's original total when it extends a run: the added epochs hold the lr the plan ended at.
    planned_epochs: Optional[int] = Field(default=None, ge=1)


class LRFindConfig(ConfigSection):
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


class LookaheadConfig(ConfigSection):
    # airbench94's lookahead (training/lookahead.py): from epoch `start_epoch` (0-based), every `every` steps
    # the slow weights move towards the model with rho = decay**every * (step / planned steps)**power and
    # the model is reset to them; at each epoch end the model takes the slow weights.
    every: int = Field(default=5, ge=1)
    decay: float = Field(default=0.95, gt=0, lt=1)
    power: float = Field(default=3.0, ge=0)
    start_epoch: int = Field(default=0, ge=0)


class TrainConfig(ConfigSection):
    epochs: Union[Annotated[int, Field(ge=1)], Literal["auto"]] = 10
    batch_size: Union[Annotated[int, Field(ge=1)], Literal["auto"]] = 128
    eval_batch_size: int = Field(default=1000, ge=1)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    channels_last: bool = True
    # torch.compile the training model: a mode (default, reduce-overhead = CUDA graphs,
    # max-autotune-no-cudagraphs), true = default, false/null = eager. The warm-up is timed apart.
    compile: Optional[Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"]] = None
    # Test-time augmentation at evaluation: flip (the image and its mirror) or flip_translate (airbench's
    # level 2: also 1-px shifted copies); true means flip, false or null none.
    tta: Optional[Literal["flip", "flip_translate"]] = None
    ema: Optional[float] = Field(default=None, gt=0, lt=1)  # decay of an EMA of the weights, evaluated
    ema_every: int = Field(default=1, ge=1)  # update the EMA every N steps (with decay**N), a cheaper step
    lookahead: Optional[LookaheadConfig] = None  # lookahead weight averaging (changes the training path)
    log_every_steps: int = Field(default=50, ge=1)
    threads: Optional[int] = Field(default=None, ge=1)  # CPU intra-op threads; default: torch's choice
    early_stop_patience: Optional[int] = Field(default=None, ge=1)  # epochs without a better checkpoint.monitor
    early_stop_min_delta: float = Field(default=0.0, ge=0)  # smaller changes do not count as better


    @field_validator("tta", "compile", mode="before")
    @classmethod
    def _bool_means_default(cls, value, info):
        on = {"tta": "flip", "compile": "default"}[info.field_name]
        return (on if value else None) if isinstance(value, bool) else value


class CheckpointConfig(ConfigSection):
    every_epochs: int = Field(default=1, ge=1)
    every_steps: Optional[int] = Field(default=None, ge=1)
    # What selects best.pt and early stopping: null = val_acc with a validation split, else test_acc.
    monitor: Optional[Literal["val_acc", "val_loss", "test_acc", "test_loss"]] = None


class OutputConfig(ConfigSection):
    dir: str = "runs"
    tensorboard: bool = True
    report: bool = True  # analysis and report.md/html at the end of train
    progress: Literal["auto", "bar", "lines", "none"] = "auto"
    # MLflow logging (needs `pip install cifarlab[mlflow]`): params, metrics and the run's status, into
    # mlflow_uri, default a local file store in <run_dir>/mlruns. See training/mlflow_logger.py.
    mlflow: bool = False
    mlflow_uri: Optional[str] = None


class Config(ConfigSection):
    name: str = "experiment"
    description: str = ""
    seed: int = 0  # any 64-bit integer (negative seeds work and reproduce); wider ones are refused
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
        if (schedule.name == "onecycle" and schedule.peak_epoch is not None and epochs != "auto"
                and not 0 < schedule.peak_epoch < epochs):
            raise ValueError(f"schedule.peak_epoch must be in (0, train.epochs={epochs}), got {schedule.peak_epoch}")
        if schedule.name == "multistep" and not schedule.milestones:
            raise ValueError("schedule.milestones must list at least one epoch for multistep, got []")
        split = self.data.val_split
        if split not in (None, "auto") and not (split >= 1 if isinstance(split, int) else 0 < split < 1):
            raise ValueError(f"data.val_split must be a fraction in (0, 1) or a count of at least 1, got {split}")
        return self

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------- recipes and overrides

MAX_RECIPE_BYTES = 1 << 20  # recipes are a few hundred bytes; a config.yaml of a run about 2 KB
def recipes_dir() -> Path:
    return Path(str(resources.files("cifarlab") / "recipes"))


def list_recipes() -> dict[str, str]:
    """Recipe name -> one-line description, for `cifarlab recipes`."""
    found = {}
    for path in sorted(recipes_dir().glob("*.yaml")):
        raw = load_yaml(path.read_text(encoding="utf-8")) or {}
        found[path.stem] = str(raw.get("description", "")).strip().splitlines()[0] if raw.get("description") else ""
    return found


def _read_text(path: Path) -> str:
    """A recipe file's text, or one line saying why not: missing, not a file, too big, not UTF-8."""
    where = repr(str(path))
    if path.is_dir():
        raise UserError(f"recipe {where} is a directory; give a .yaml file")
    if not path.exists():
        raise UserError(f"recipe file {where} does not exist")
    if not path.is_file():
        raise UserError(f"recipe {where} is not a regular file")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_RECIPE_BYTES + 1)
    except OSError as err:
        raise UserError(f"cannot read recipe {where}: {err.strerror or err}") from None
    if len(data) > MAX_RECIPE_BYTES:
        raise UserError(f"recipe {where} is larger than {MAX_RECIPE_BYTES >> 20} MiB; a recipe is a short YAML file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        bad = f"byte 0x{data[err.start]:02x} at offset {err.start}"
        raise UserError(f"recipe {where} is not UTF-8 text ({bad})") from None


def read_recipe(recipe: str) -> dict:
    """A recipe name (`custom-resnet-onecycle`) or a path to a YAML file (a run's config.yaml too), as a dict."""
    path = Path(recipe)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        path = recipes_dir() / f"{recipe}.yaml"
        if not path.exists():
            raise UserError(f"unknown recipe {recipe!r}; choose from: {', '.join(list_recipes())} or give a .yaml path")
    text = _read_text(path)
    try:
        raw = load_yaml(text)
    except YAMLRefused as err:
        raise UserError(f"recipe {str(path)!r}: {err}") from None
    except yaml.YAMLError as err:
        raise UserError(f"recipe {str(path)!r} is not valid YAML: {yaml_error(err)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"recipe {str(path)!r} must be a mapping of sections, got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    return raw


def parse_override(text: str) -> tuple[list[str], Any]:
    """`optim.lr=0.05` -> (["optim", "lr"], 0.05). Values are YAML scalars, lists or mappings."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in argv arrive as lone surrogates
        raise UserError(f"override {text!r} is not valid UTF-8") from None
    if "=" not in text:
        raise UserError(f"override {text!r} must look like key=value, e.g. train.epochs=5")
    key, _, value = text.partition("=")
    keys = key.strip().split(".")
    if not all(keys):
        raise UserError(f"override key {key!r} is malformed; use dotted names like optim.lr")
    try:
        parsed = load_yaml(value) if value.strip() else None
    except YAMLRefused as err:
        raise UserError(f"override {text!r}: {err}") from None
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


_TYPE_TAGS = {"float", "int", "str", "bool", "none", "list", "tuple", "dict"}


def _describe(error: dict) -> str:
    # Drop the union-member tags pydantic puts in a location (`lr_peak.constrained-float`).
    where = ".".join(str(part) for part in error["loc"] if isinstance(part, int)
                     or (str(part).isidentifier() and part not in _TYPE_TAGS)) or "config"
    if error["type"] == "extra_forbidden":
        section = _section_for(error["loc"][:-1])
        allowed = ", ".join(section.model_fields) if section else "?"
        return f"unknown config key {where!r}; allowed here: {allowed}"
    given = error.get("input")
    shown = repr(given)
    shown = shown if len(shown) <= 80 else f"{shown[:60]}... ({len(shown)} characters)"
    given_text = f", got {shown}" if not isinstance(given, dict) else ""
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
    recipe_epochs = (raw.get("train") or {}).get("epochs", TrainConfig.model_fields["epochs"].default)
    parsed = [parse_override(text) for text in overrides]
    for keys, value in parsed:
        apply_override(raw, keys, value)
    _keep_peak_fraction(raw, recipe_epochs, {".".join(keys) for keys, _ in parsed})
    return validate(raw)


def _keep_peak_fraction(raw: dict, recipe_epochs: Any, overridden: set[str]) -> None:
    """A recipe's onecycle `peak_epoch` is a point in its run: when an override changes `train.epochs`,
    the peak keeps its fraction of the run (5 of 24 becomes 1.04 of 5) and one line says so. A peak_epoch
    given on the command line is the user's own and is left for validation to judge."""
    schedule, epochs = raw.get("schedule"), (raw.get("train") or {}).get("epochs")
    if not overridden & {"train.epochs", "train"} or overridden & {"schedule.peak_epoch", "schedule"}:
        return
    if not isinstance(schedule, dict) or schedule.get("name") != "onecycle":
        return
    peak = schedule.get("peak_epoch")
    numbers = (peak, epochs, recipe_epochs)
    if not all(isinstance(n, (int, float)) and not isinstance(n, bool) and n > 0 for n in numbers):
        return  # validation names whatever is wrong
    if epochs == recipe_epochs:
        return
    schedule["peak_epoch"] = peak * epochs / recipe_epochs
    if os.environ.get("RANK", "0") == "0":  # under torchrun, say it once
        print(f"note: schedule.peak_epoch moves from {peak:g} of {recipe_epochs} epochs to "
              f"{schedule['peak_epoch']:.3g} of {epochs}, the same fraction of the run", file=sys.stderr, flush=True)
