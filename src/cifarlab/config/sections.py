"""The config sections a run is made of, each a pydantic model (the field descriptions are docs/config.md)."""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from cifarlab.config.base import ConfigSection


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
    # "auto" by default: selecting best.pt on the test split makes its test accuracy an optimistic
    # estimate (docs/data.md, validation split). The course recipes keep their protocol (null) to reproduce
    # its figures, and say so.
    val_split: Union[int, float, Literal["auto"], None] = Field("auto",
        description=("Validation images taken from train (after train_subset), stratified by class with the run's "
                     "seed: a fraction in (0, 1) or a count; auto: 10% when the data has no val split of its own "
                     "and enough images (20 a class); null: none. With one, the best checkpoint, early stopping and "
                     "plateau schedules select on validation; without, on the test split, and the run says its "
                     "test accuracy is optimistic."))
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


class TrivialAugmentConfig(ConfigSection):
    """TrivialAugment (Müller & Hutter 2021, arXiv:2103.10158): one op per image at a random magnitude."""

    bins: int = Field(default=31, ge=2, le=100, description="magnitude levels the random magnitude is drawn from")
    p: float = Field(default=1.0, ge=0, le=1, description="probability that an image gets an op")


class RandAugmentConfig(ConfigSection):
    """RandAugment (Cubuk et al. 2019, arXiv:1909.13719): num_ops random ops per image at one magnitude."""

    num_ops: int = Field(default=2, ge=1, le=10, description="ops applied in turn to each image")
    magnitude: int = Field(default=9, ge=0, le=99, description="the ops' strength, a level in 0..bins-1")
    bins: int = Field(default=31, ge=2, le=100, description="magnitude levels (magnitude bins-1 is each op's most)")
    p: float = Field(default=1.0, ge=0, le=1, description="probability that an image is augmented")

    @model_validator(mode="after")
    def _magnitude_in_bins(self):
        if self.magnitude >= self.bins:
            raise ValueError(f"augment.randaugment.magnitude must be in 0..{self.bins - 1} (bins={self.bins}), "
                             f"got {self.magnitude}")
        return self


class EraseConfig(ConfigSection):
    """Random erasing (Zhong et al. 2017, arXiv:1708.04896): one rectangle per chosen image."""

    p: float = Field(default=0.5, ge=0, le=1, description="probability that an image gets a rectangle")
    scale: tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]] = Field(
        (0.02, 0.33), description="least and most area of the rectangle, as fractions of the image")
    ratio: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = Field(
        (0.3, 3.3), description="least and most aspect ratio (height / width), drawn log-uniformly")
    value: Union[Literal["random"], Annotated[float, Field(ge=0, le=1)]] = Field(
        "random", description="the fill: random (uniform noise per pixel) or a value in [0, 1]")

    @model_validator(mode="after")
    def _ordered(self):
        for key in ("scale", "ratio"):
            low, high = getattr(self, key)
            if low > high:
                raise ValueError(f"augment.erase.{key} must be [least, most], got [{low:g}, {high:g}]")
        return self


class AugmentConfig(ConfigSection):
    """Applied in this order: crop, flip, rotate, color, randaugment or trivialaugment, cutout, erase, then
    mixup or cutmix; a null op is off. Test data is never augmented."""

    crop: Optional[CropConfig] = Field(None, description="Pad and randomly crop (a random translation); null: off.")
    flip: Optional[FlipConfig] = Field(None, description="Random horizontal flip; null: off.")
    rotate: Optional[RotateConfig] = Field(None, description="Random rotation; null: off.")
    color: Optional[ColorConfig] = Field(default=None, description="colour jitter: brightness, contrast, saturation")
    randaugment: Optional[RandAugmentConfig] = Field(None, description=(
        "RandAugment, batched on the device (docs/augment.md); null: off"))
    trivialaugment: Optional[TrivialAugmentConfig] = Field(None, description=(
        "TrivialAugment (wide), batched on the device; null: off. Not together with randaugment"))
    cutout: Optional[CutoutConfig] = Field(None, description="Cutout: square holes of constant value; null: off.")
    erase: Optional[EraseConfig] = Field(None, description="Random erasing of one rectangle per image; null: off.")
    mixup: Optional[MixupConfig] = Field(default=None, description=(
        "MixUp; the loss is taken on the mixed targets, train accuracy against each image's dominant label"))
    cutmix: Optional[CutmixConfig] = Field(default=None, description=(
        "CutMix; with mixup on too, each batch gets at most one of them: cutmix.p and mixup.p are shares of all "
        "batches, scaled to add up to 1 when they add up to more (both at p=1: half and half, timm's switch_prob)"))

    @model_validator(mode="after")
    def _one_policy(self):
        if self.randaugment is not None and self.trivialaugment is not None:
            raise ValueError("augment.randaugment and augment.trivialaugment are two policies for the same place: "
                             "set one of them (the other null)")
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
                     "code), e.g. mypkg.nets; imported by train, and by resume of the run when its model is not "
                     "registered. Loading a checkpoint never imports it: pass --import there."))

    @field_validator("module")
    @classmethod
    def _module_names(cls, value):
        for name in [value] if isinstance(value, str) else value or ():
            if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", name):
                raise ValueError(f"must be an importable module name like mypkg.nets, got {name!r}")
        return value
    # Start a new run from a checkpoint's weights (model only; optimizer and schedule fresh), see
    # trainer/warmstart.py. init_head=false: all but the classifier head, for data with other classes.
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

    @model_validator(mode="after")
    def _nesterov_is_sgd_only(self):
        # Checked with the config, not when the optimizer is built: a sweep that offers adam on a recipe
        # with nesterov is refused before its first trial, not at it.
        if self.nesterov and self.name != "sgd":
            raise ValueError(f"nesterov applies to sgd only, not {self.name}; set optim.nesterov=false with it")
        return self


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

    def watched_metric(self, has_validation: bool) -> str:
        """plateau: the metric watched, `monitor` or for null val_loss with a validation split, else test_loss."""
        return self.monitor or ("val_loss" if has_validation else "test_loss")


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
    # airbench94's lookahead (trainer/lookahead.py): from epoch `start_epoch` (0-based), every `every` steps
    # the slow weights move towards the model with rho = decay**every * (step / planned steps)**power and
    # the model is reset to them; at each epoch end the model takes the slow weights.
    every: int = Field(default=5, ge=1, description="Pull the weights to the slow average every this many steps.")
    decay: float = Field(default=0.95, gt=0, lt=1,
        description=("Per-step decay of the slow average (raised to the power `every`)."))
    power: float = Field(default=3.0, ge=0,
        description=("The decay is scaled by (step / planned steps) ** power, averaging harder towards the end."))
    start_epoch: int = Field(default=0, ge=0, description="First epoch (0-based) with lookahead.")
