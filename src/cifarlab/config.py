"""Validated experiment config: defaults < recipe YAML < `key=value` overrides.

Every section is a pydantic model that forbids unknown keys, so a typo names itself. Leaf functions take
the section they need (`build_optimizer(model, cfg.optim)`), never the whole config.
"""
from __future__ import annotations

import math
import os
import re
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
    dataset: str = Field("synthetic",
        description=("Where the images come from: cifar10, cifar100, fashion_mnist, mnist, folder (your own "
                     "ImageFolder-layout images under data.dir) or synthetic (generated, for tests); `cifarlab "
                     "datasets` lists them."))
    dir: Optional[str] = Field(None,
        description=("The data folder (a dataset cache, or your image folder for dataset=folder); null: "
                     "$CIFARLAB_DATA, else ~/.cache/cifarlab."))
    download: bool = Field(True,
        description=("Download a missing built-in dataset from its canonical URL (md5-checked); false: fail with "
                     "one line instead."))
    train_subset: Optional[int] = Field(default=None, ge=1,
        description=("Train on the first N training images only (quick runs and tests); null: all."))
    test_subset: Optional[int] = Field(default=None, ge=1,
        description=("Evaluate on the first N test images only; null: all."))
    val_split: Union[int, float, Literal["auto"], None] = Field(None,
        description=("Validation images taken from train (after train_subset), stratified by class with the run's "
                     "seed: a fraction in (0, 1) or a count; auto: 10% when the data has no val split of its own "
                     "and enough images. With one, the best checkpoint, early stopping and plateau schedules select on "
                     "validation."))
    mean: Optional[list[float]] = Field(None,
        description=("Per-channel mean to normalise with (one value per channel); null: the train split's own "
                     "statistics."))
    std: Optional[list[Annotated[float, Field(gt=0)]]] = Field(None,
        description=("Per-channel standard deviation to normalise with (positive, one per channel); null: the "
                     "train split's own."))
    options: dict[str, Any] = Field({},
        description=("Options of the data source: folder {image_size, channels}, synthetic {num_train, num_test, "
                     "image_size, num_classes, ...}."))


class CropConfig(ConfigSection):
    padding: int = Field(default=4, ge=0, le=64,
        description=("Pixels added on each side before a random crop back to the image size (a random "
                     "translation)."))
    pad_mode: Literal["zero", "reflect", "constant"] = Field("zero",
        description=("What the padding holds: zero, reflect (mirrored image) or constant (the value `fill`)."))
    fill: float = Field(default=0.0, ge=0, le=1,
        description=("Padding value for pad_mode=constant, in pixel units [0, 1]."))
    p: float = Field(default=1.0, ge=0, le=1, description="Probability that an image is cropped.")


class FlipConfig(ConfigSection):
    p: float = Field(default=0.5, ge=0, le=1, description="Probability of a horizontal flip.")
    # Alternate flips across epochs instead of i.i.d. flips (Jordan 2024, arXiv:2404.00498).
    alternate: bool = Field(False,
        description=("Flip each image on alternate epochs instead of at random (airbench's alternating flip)."))


class CutoutConfig(ConfigSection):
    holes: int = Field(default=1, ge=1, le=16, description="Square holes cut out of each image.")
    size: int = Field(default=16, ge=1, description="Side of each hole in pixels (at most the image size).")
    fill: float = Field(default=0.0, ge=0, le=1, description="Value of the cut-out pixels, in pixel units [0, 1].")
    p: float = Field(default=1.0, ge=0, le=1, description="Probability that an image gets its holes.")


class RotateConfig(ConfigSection):
    degrees: float = Field(default=18.0, gt=0, le=180, description="Largest rotation, in degrees either way.")
    fill: float = Field(default=0.0, ge=0, le=1,
        description=("Value of the pixels a rotation uncovers, in pixel units [0, 1]."))
    p: float = Field(default=1.0, ge=0, le=1, description="Probability that an image is rotated.")


class ColorConfig(ConfigSection):
    """Colour jitter (data/color.py): each factor uniform in [1 - x, 1 + x] per image, applied in this order."""

    brightness: float = Field(default=0.4, ge=0, le=1, description="pixels scaled by a factor in [1-x, 1+x]")
    contrast: float = Field(default=0.4, ge=0, le=1,
                            description="distance from the image's mean grey scaled by a factor in [1-x, 1+x]")
    saturation: float = Field(default=0.4, ge=0, le=1, description=(
        "distance from each pixel's grey scaled by a factor in [1-x, 1+x]; RGB images only"))
    p: float = Field(default=1.0, ge=0, le=1, description="probability that an image is jittered")


class MixupConfig(ConfigSection):
    """MixUp (Zhang et al. 2018, arXiv:1710.09412) of a batch with its reverse, targets mixed alike."""

    alpha: float = Field(default=0.2, gt=0, le=100,
                         description="the batch's weight of its own images is drawn from Beta(alpha, alpha)")
    p: float = Field(default=1.0, ge=0, le=1, description="share of training batches that are mixed")


class CutmixConfig(ConfigSection):
    """CutMix (Yun et al. 2019, arXiv:1905.04899): a box from the reversed batch pasted in, targets by area."""

    alpha: float = Field(default=1.0, gt=0, le=100,
                         description="the box covers 1 - lambda of the image, lambda from Beta(alpha, alpha)")
    p: float = Field(default=1.0, ge=0, le=1, description="share of training batches that are cut and mixed")


class AugmentConfig(ConfigSection):
    """Applied in this order: crop, flip, rotate, color, cutout, then mixup or cutmix; a null op is off.
    Test data is never augmented."""

    crop: Optional[CropConfig] = Field(None, description="Pad and randomly crop (a random translation); null: off.")
    flip: Optional[FlipConfig] = Field(None, description="Random horizontal flip; null: off.")
    rotate: Optional[RotateConfig] = Field(None, description="Random rotation; null: off.")
    color: Optional[ColorConfig] = Field(default=None, description="colour jitter: brightness, contrast, saturation")
    cutout: Optional[CutoutConfig] = Field(None, description="Cutout: square holes of constant value; null: off.")
    mixup: Optional[MixupConfig] = Field(default=None, description=(
        "MixUp; the loss is taken on the mixed targets, train accuracy against each image's dominant label"))
    cutmix: Optional[CutmixConfig] = Field(default=None, description=(
        "CutMix; with mixup on too, each batch gets at most one of them (mixup.p + cutmix.p <= 1)"))

    @model_validator(mode="after")
    def _one_mix_per_batch(self):
        if self.mixup is not None and self.cutmix is not None and self.mixup.p + self.cutmix.p > 1:
            raise ValueError(f"augment.mixup.p + augment.cutmix.p must be at most 1 (each batch is mixed by one "
                             f"of them at most, e.g. 0.5 each), got {self.mixup.p:g} + {self.cutmix.p:g}")
        return self


class ModelConfig(ConfigSection):
    name: str = Field("custom_resnet",
        description=("A registered model: resnet18, resnet34, custom_resnet, fastnet, convnet (`cifarlab models`)."))
    norm: Literal["batch", "group", "layer", "instance"] = Field("batch",
        description=("Normalisation layers: batch, group, layer or instance."))
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout probability before the classifier.")
    options: dict[str, Any] = Field({},
        description=("Extra keyword arguments of the model factory, e.g. convnet {width: 16}."))
    module: Union[str, list[str], None] = Field(None,
        description=("Python module(s) whose import registers model.name with @register_model (your own model "
                     "code), e.g. mypkg.nets; imported by train. Loading a checkpoint never imports it: pass "
                     "--import there."))

    @field_validator("module")
    @classmethod
    def _module_names(cls, value):
        for name in [value] if isinstance(value, str) else value or ():
            if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", name):
                raise ValueError(f"must be an importable module name like mypkg.nets, got {name!r}")
        return value
    # Start a new run from a checkpoint's weights (model only; optimizer and schedule fresh), see
    # training/warmstart.py. init_head=false: all but the classifier head, for data with other classes.
    init_from: Optional[str] = Field(None,
        description=("A checkpoint whose model weights start this new run (optimizer and schedule start fresh); "
                     "null: random init."))
    init_head: bool = Field(True,
        description=("With init_from, load the classifier head too; false: all but the head, for data with other "
                     "classes."))


class OptimConfig(ConfigSection):
    name: Literal["sgd", "adam", "adamw"] = Field("sgd", description="Optimizer: sgd, adam or adamw.")
    lr: float = Field(default=0.1, gt=0,
        description=("Learning rate (the base of every schedule; onecycle peaks at schedule.lr_peak when set)."))
    momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD momentum.")
    nesterov: bool = Field(False, description="SGD with Nesterov momentum.")
    weight_decay: float = Field(default=0.0, ge=0, description="L2 weight decay (decoupled for adamw).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam/AdamW (beta1, beta2).")
    eps: float = Field(default=1e-8, gt=0, description="Adam/AdamW epsilon.")
    label_smoothing: float = Field(default=0.0, ge=0, lt=1, description="Label smoothing of the cross-entropy loss.")
    grad_clip: Optional[float] = Field(default=None, gt=0,
        description=("Clip the global gradient norm to this value; null: no clipping."))
    # lr multiplier for normalisation layers' parameters (airbench's bias_scaler, 64); their weight decay
    # is divided by it, so the per-step decay lr*wd stays that of the other parameters.
    norm_lr_scale: Optional[float] = Field(default=None, gt=0,
        description=("Learning rate multiplier for normalisation layers' parameters, whose weight decay is divided "
                     "by it (airbench's bias scaler, 64); null: off."))


class ScheduleConfig(ConfigSection):
    """One LR schedule. Fields not used by `name` are ignored; per-step schedules step every batch."""

    name: Literal["constant", "onecycle", "step", "multistep", "plateau", "cosine"] = Field("constant",
        description=("LR schedule: constant, onecycle, step, multistep, plateau or cosine. onecycle and cosine "
                     "step every batch, the others every epoch."))
    # onecycle
    # None: optim.lr; auto: LR range test first
    lr_peak: Union[Annotated[float, Field(gt=0)], Literal["auto"], None] = Field(None,
        description=("onecycle: the peak lr; null: optim.lr; auto: the LR range test runs first and its value is "
                     "written into the run's resolved config."))
    peak_epoch: Optional[float] = Field(default=None, ge=0,
        description=("onecycle: the epoch the peak is reached (e.g. 5 of 24); null: pct_start. Overriding "
                     "train.epochs moves a recipe's peak to the same fraction of the run."))
    pct_start: float = Field(default=0.3, gt=0, lt=1,
        description=("onecycle: the fraction of the steps spent rising to the peak, when peak_epoch is null."))
    div_factor: float = Field(default=10.0, gt=0, description="onecycle: the initial lr is lr_peak / div_factor.")
    final_div_factor: Optional[float] = Field(default=None, gt=0,
        description=("onecycle: the final lr is the initial lr / final_div_factor; null: no annihilation, the "
                     "cycle ends where it began."))
    anneal: Literal["linear", "cos"] = Field("linear",
        description=("onecycle: linear or cos annealing between its points."))
    # torch's OneCycleLR default, which the course notebooks used: momentum (SGD) or beta1 (Adam) cycles
    # 0.95 -> 0.85 at the peak -> 0.95, replacing optim.momentum / betas[0]; false keeps the configured one.
    cycle_momentum: bool = Field(True,
        description=("onecycle: cycle the momentum (SGD) or beta1 (Adam) 0.95 -> 0.85 at the peak -> 0.95, as "
                     "torch's OneCycleLR does; false keeps optim's."))
    # step / multistep (in epochs)
    step_size: int = Field(default=30, ge=1, description="step: multiply the lr by gamma every this many epochs.")
    milestones: list[Annotated[int, Field(ge=1)]] = Field([],
        description=("multistep: the epochs after which the lr is multiplied by gamma."))
    gamma: float = Field(default=0.1, gt=0, description="step, multistep: the factor applied to the lr.")
    # plateau: all of ReduceLROnPlateau's arguments; monitor null = val_loss with a validation split, else test_loss
    monitor: Optional[Literal["val_loss", "val_acc", "test_loss", "train_loss", "test_acc", "train_acc"]] = Field(None,
        description=("plateau: the metric watched; null: val_loss with a validation split, else test_loss."))
    mode: Literal["min", "max"] = Field("min", description="plateau: min (a loss) or max (an accuracy).")
    factor: float = Field(default=0.1, gt=0, lt=1,
        description=("plateau: the factor applied to the lr when the metric stalls."))
    patience: int = Field(default=10, ge=0, description="plateau: epochs without improvement before the lr drops.")
    threshold: float = Field(default=1e-4, ge=0,
        description=("plateau: the smallest change that counts as an improvement."))
    threshold_mode: Literal["rel", "abs"] = Field("rel",
        description=("plateau: threshold relative to the best value (rel) or absolute (abs)."))
    cooldown: int = Field(default=0, ge=0, description="plateau: epochs to wait after a drop before watching again.")
    min_lr: float = Field(default=0.0, ge=0, description="plateau and cosine: the lowest lr.")
    eps: float = Field(default=1e-8, ge=0, description="plateau: drops smaller than this are skipped.")
    # cosine
    warmup_epochs: float = Field(default=0.0, ge=0, description="cosine: epochs of linear warm-up before the decay.")
    # The epochs onecycle and cosine are planned over; null = train.epochs. `resume --epochs` sets it to the
    # run's original total when it extends a run: the added epochs hold the lr the plan ended at.
    planned_epochs: Optional[int] = Field(default=None, ge=1,
        description=("onecycle, cosine: the epochs the plan spans; null: train.epochs. `resume --epochs` sets it "
                     "when extending a run, whose added epochs hold the final lr."))


class LRFindConfig(ConfigSection):
    start_lr: float = Field(default=1e-7, gt=0, description="The range test's first lr.")
    end_lr: float = Field(default=10.0, gt=0, description="The range test's last lr (greater than start_lr).")
    num_iter: int = Field(default=100, ge=5, description="Steps of the range test.")
    step_mode: Literal["exp", "linear"] = Field("exp", description="How the lr grows: exp (geometric) or linear.")
    smooth: float = Field(default=0.05, ge=0, lt=1, description="Exponential smoothing of the recorded loss (0: none).")
    diverge_threshold: float = Field(default=5.0, gt=1,
        description=("Stop when the smoothed loss exceeds this multiple of the best."))
    # minimum: of the loss smoothed without lag (analysis/lr_suggest.py); steepest, valley: the older rules
    suggestion: Literal["minimum", "steepest", "valley"] = Field("minimum",
        description=("The rule that picks the lr: minimum (of the loss smoothed without lag), steepest (descent vs "
                     "log lr) or valley (fastai's)."))

    @model_validator(mode="after")
    def _range(self):
        if self.end_lr <= self.start_lr:
            raise ValueError(f"lr_find.end_lr must be greater than start_lr ({self.start_lr}), got {self.end_lr}")
        return self


class LookaheadConfig(ConfigSection):
    # airbench94's lookahead (training/lookahead.py): from epoch `start_epoch` (0-based), every `every` steps
    # the slow weights move towards the model with rho = decay**every * (step / planned steps)**power and
    # the model is reset to them; at each epoch end the model takes the slow weights.
    every: int = Field(default=5, ge=1, description="Pull the weights to the slow average every this many steps.")
    decay: float = Field(default=0.95, gt=0, lt=1,
        description=("Per-step decay of the slow average (raised to the power `every`)."))
    power: float = Field(default=3.0, ge=0,
        description=("The decay is scaled by (step / planned steps) ** power, averaging harder towards the end."))
    start_epoch: int = Field(default=0, ge=0, description="First epoch (0-based) with lookahead.")


class TrainConfig(ConfigSection):
    epochs: Union[Annotated[int, Field(ge=1)], Literal["auto"]] = Field(10,
        description=("Epochs to train; auto: about 600 optimizer steps in all, 8..100 epochs (the folder recipe)."))
    batch_size: Union[Annotated[int, Field(ge=1)], Literal["auto"]] = Field(128,
        description=("Training batch size (the global batch with several processes); auto: the largest power of "
                     "two giving >= 25 steps an epoch, 8..256."))
    eval_batch_size: int = Field(default=1000, ge=1, description="Batch size for evaluation.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto",
        description=("auto: bf16 on CUDA sm80+, fp16 with a grad scaler on older GPUs, on a CPU bf16 only with "
                     "AMX, else fp32; or bf16, fp16, fp32."))
    device: str = Field("auto", description="auto (CUDA when present, else CPU), cpu, cuda or cuda:N.")
    channels_last: bool = Field(True, description="Train in the channels_last memory format.")
    # torch.compile the training model: a mode (default, reduce-overhead = CUDA graphs,
    # max-autotune-no-cudagraphs), true = default, false/null = eager. The warm-up is timed apart.
    compile: Optional[Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"]] = Field(None,
        description=("torch.compile the training model: default, reduce-overhead (CUDA graphs) or "
                     "max-autotune-no-cudagraphs; true means default, null or false eager. The warm-up is timed "
                     "apart."))
    # Test-time augmentation at evaluation: flip (the image and its mirror) or flip_translate (airbench's
    # level 2: also 1-px shifted copies); true means flip, false or null none.
    tta: Optional[Literal["flip", "flip_translate"]] = Field(None,
        description=("Test-time augmentation at evaluation: flip (the image and its mirror) or flip_translate "
                     "(also 1-px shifts); true means flip, null or false none."))
    ema: Optional[float] = Field(default=None, gt=0, lt=1,
        description=("Decay of an exponential moving average of the weights, which is then what is evaluated and "
                     "saved as best; null: none."))
    ema_every: int = Field(default=1, ge=1,
        description=("Update the EMA every N steps (with decay ** N): a cheaper step."))
    lookahead: Optional[LookaheadConfig] = Field(None,
        description=("airbench94's lookahead weight averaging; null: off."))
    log_every_steps: int = Field(default=50, ge=1,
        description=("Optimizer steps per logging window (progress, the metrics file's step rows, TensorBoard)."))
    accumulate: int = Field(default=1, ge=1, le=1024, description=(
        "micro-batches of train.batch_size per optimizer step (gradient accumulation): each step sees "
        "batch_size x accumulate images; steps, the schedule and checkpoints count optimizer steps"))
    threads: Optional[int] = Field(default=None, ge=1, description="CPU intra-op threads; null: torch's choice.")
    early_stop_patience: Optional[int] = Field(default=None, ge=1,
        description=("Stop after this many epochs without a better checkpoint.monitor; null: never."))
    early_stop_min_delta: float = Field(default=0.0, ge=0,
        description=("Smaller improvements do not count for early stopping."))


    @field_validator("tta", "compile", mode="before")
    @classmethod
    def _bool_means_default(cls, value, info):
        on = {"tta": "flip", "compile": "default"}[info.field_name]
        return (on if value else None) if isinstance(value, bool) else value


class CheckpointConfig(ConfigSection):
    every_epochs: int = Field(default=1, ge=1, description="Write the last checkpoint every this many epochs.")
    every_steps: Optional[int] = Field(default=None, ge=1,
        description=("Also write it every this many optimizer steps (a resume continues mid-epoch); null: only at "
                     "epoch ends."))
    # What selects best.pt and early stopping: null = val_acc with a validation split, else test_acc.
    monitor: Optional[Literal["val_acc", "val_loss", "test_acc", "test_loss"]] = Field(None,
        description=("What selects the best checkpoint and early stopping: val_acc, val_loss, test_acc or "
                     "test_loss; null: val_acc with a validation split, else test_acc."))


class OutputConfig(ConfigSection):
    dir: str = Field("runs", description="Folder of the run directories: <dir>/<recipe>/<YYYYmmdd-HHMMSS>/.")
    tensorboard: bool = Field(True, description="Write TensorBoard events under tb/.")
    report: bool = Field(True, description="Make the plots, tables and report (markdown, HTML) at the end of train.")
    progress: Literal["auto", "bar", "lines", "none"] = Field("auto",
        description=("auto (a bar in a terminal or notebook, plain lines otherwise), bar, lines or none."))
    # MLflow logging (needs `pip install cifarlab[mlflow]`): params, metrics and the run's status, into
    # mlflow_uri, default a local file store in <run_dir>/mlruns. See training/mlflow_logger.py.
    mlflow: bool = Field(False, description="Log params, metrics and status to MLflow (needs cifarlab[mlflow]).")
    mlflow_uri: Optional[str] = Field(None,
        description=("MLflow tracking URI; null: a local file store in <run_dir>/mlruns."))
    # Weights & Biases logging (needs `pip install cifarlab[wandb]`): config, epoch rows, summary and the
    # report's plots into project wandb_project (default "cifarlab"). See training/wandb_logger.py.
    wandb: bool = Field(False, description="Log the config, epoch rows, summary and plots to Weights & Biases "
                                           "(needs cifarlab[wandb]; offline with WANDB_MODE=offline).")
    wandb_project: Optional[str] = Field(None, description="The W&B project; null: cifarlab.")


class Config(ConfigSection):
    name: str = Field("experiment",
        description=("The run's name: runs go to <output.dir>/<name>/; a recipe's file name by default."))
    description: str = Field("", description="One line about the recipe, shown by `cifarlab recipes`.")
    seed: int = Field(0, description="Seed of every random draw (any 64-bit integer).")
    deterministic: bool = Field(False,
        description=("Deterministic algorithms: a run stopped and resumed on a CPU ends bit-identical to one never "
                     "stopped."))
    data: DataConfig = Field(DataConfig(), description="The data section.")
    augment: AugmentConfig = Field(AugmentConfig(),
        description=("Training augmentation, applied in the order crop, flip, rotate, cutout."))
    model: ModelConfig = Field(ModelConfig(), description="The network.")
    optim: OptimConfig = Field(OptimConfig(), description="The optimizer.")
    schedule: ScheduleConfig = Field(ScheduleConfig(), description="The learning-rate schedule.")
    lr_find: LRFindConfig = Field(LRFindConfig(),
        description=("The LR range test (`cifarlab lr-find`, schedule.lr_peak: auto)."))
    train: TrainConfig = Field(TrainConfig(), description="The training loop.")
    checkpoint: CheckpointConfig = Field(CheckpointConfig(), description="Checkpoints and what selects the best one.")
    output: OutputConfig = Field(OutputConfig(), description="Where and how a run reports.")

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
    raw, note = read_with_overrides(recipe, overrides)
    cfg = validate(raw)
    if note and os.environ.get("RANK", "0") == "0":  # said once under torchrun, and only for a valid config
        print(note, file=sys.stderr, flush=True)
    return cfg


def read_with_overrides(recipe: str | None, overrides: list[str] = ()) -> tuple[dict, Optional[str]]:
    """(the recipe with its overrides, not yet validated; the line saying a moved onecycle peak, or None)."""
    raw = read_recipe(recipe) if recipe else {}
    recipe_epochs = (raw.get("train") or {}).get("epochs", TrainConfig.model_fields["epochs"].default)
    parsed = [parse_override(text) for text in overrides]
    for keys, value in parsed:
        apply_override(raw, keys, value)
    return raw, _keep_peak_fraction(raw, recipe_epochs, {".".join(keys) for keys, _ in parsed})


def _keep_peak_fraction(raw: dict, recipe_epochs: Any, overridden: set[str]) -> Optional[str]:
    """A recipe's onecycle `peak_epoch` is a point in its run: when an override changes `train.epochs`,
    the peak keeps its fraction of the run (5 of 24 becomes 1.04 of 5); returns the line that says so.
    A peak_epoch given on the command line is the user's own and is left for validation to judge."""
    schedule, epochs = raw.get("schedule"), (raw.get("train") or {}).get("epochs")
    if not overridden & {"train.epochs", "train"} or overridden & {"schedule.peak_epoch", "schedule"}:
        return None
    if not isinstance(schedule, dict) or schedule.get("name") != "onecycle":
        return None
    peak = schedule.get("peak_epoch")
    numbers = (peak, epochs, recipe_epochs)
    if not all(isinstance(n, (int, float)) and not isinstance(n, bool) and n > 0 for n in numbers):
        return None  # validation names whatever is wrong
    if epochs == recipe_epochs:
        return None
    schedule["peak_epoch"] = peak * epochs / recipe_epochs
    return (f"note: schedule.peak_epoch moves from {peak:g} of {recipe_epochs} epochs to "
            f"{schedule['peak_epoch']:.3g} of {epochs}, the same fraction of the run")
