"""The whole config: the training, checkpoint and output sections and `Config`, which checks across sections."""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

import yaml
from pydantic import Field, ValidationInfo, field_validator, model_validator

from cifarlab.config.base import ConfigSection
from cifarlab.config.sections import (
    AugmentConfig,
    DataConfig,
    LookaheadConfig,
    LRFindConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
)


class TrainConfig(ConfigSection):
    epochs: Union[Annotated[int, Field(ge=1)], Literal["auto"]] = Field(10,
        description=("Epochs to train; auto: about 600 optimizer steps in all, 8..100 epochs (the folder recipe)."))
    batch_size: Union[Annotated[int, Field(ge=1)], Literal["auto"]] = Field(128,
        description=("Training batch size (the global batch with several processes); auto: the largest power of "
                     "two giving >= 25 steps an epoch, 8..256."))
    eval_batch_size: int = Field(default=1000, ge=1, description="Batch size for evaluation.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto",
        description=("auto: measured, the fastest of fp32 and bf16 on a CPU (TF32, bf16 on sm80+, fp16 with a "
                     "grad scaler on CUDA) for the run's model and batch, cached (docs/precision.md); or bf16, "
                     "fp16, fp32."))
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

    def selecting_metric(self, has_validation: bool) -> str:
        """The metric that selects best.pt, early stopping, output.keep and a sweep's score: `monitor`, or for
        null val_acc with a validation split, else test_acc (the one place that says what null means)."""
        return self.monitor or ("val_acc" if has_validation else "test_acc")


class OutputConfig(ConfigSection):
    dir: str = Field("runs", description="Folder of the run directories: <dir>/<recipe>/<YYYYmmdd-HHMMSS>/.")
    tensorboard: bool = Field(True, description="Write TensorBoard events under tb/.")
    report: bool = Field(True, description="Make the plots, tables and report (markdown, HTML) at the end of train.")
    keep: Optional[int] = Field(default=None, ge=1, le=1000,
        description=("Also keep the checkpoints of the k best epochs by checkpoint.monitor, as "
                     "checkpoints/epoch-NNNN.pt (a worse one is removed once a better one is saved; the last and "
                     "best checkpoints are always kept); null: only those two."))
    progress: Literal["auto", "bar", "lines", "none"] = Field("auto",
        description=("auto (a bar in a terminal or notebook, plain lines otherwise), bar, lines or none."))
    # MLflow logging (needs `pip install cifarlab[mlflow]`): params, metrics and the run's status, into
    # mlflow_uri, default a local file store in <run_dir>/mlruns. See trainer/writers/mlflow_logger.py.
    mlflow: bool = Field(False, description="Log params, metrics and status to MLflow (needs cifarlab[mlflow]).")
    mlflow_uri: Optional[str] = Field(None,
        description=("MLflow tracking URI; null: a local file store in <run_dir>/mlruns."))
    # Weights & Biases logging (needs `pip install cifarlab[wandb]`): config, epoch rows, summary and the
    # report's plots into project wandb_project (default "cifarlab"). See trainer/writers/wandb_logger.py.
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
    def _schedule_fits_training(self, info: ValidationInfo):
        schedule, epochs = self.schedule, self.train.epochs
        if (schedule.name == "onecycle" and schedule.peak_epoch is not None and epochs != "auto"
                and not 0 < schedule.peak_epoch < epochs):
            raise ValueError(f"schedule.peak_epoch must be in (0, train.epochs={epochs}), got {schedule.peak_epoch}")
        lookahead, recorded = self.train.lookahead, bool((info.context or {}).get("recorded"))
        # A lookahead that starts after the last epoch never runs. A run recorded before this check (`fast
        # train.epochs=2` kept epoch 3 then) still loads: it trained without lookahead, as its config says.
        if lookahead is not None and epochs != "auto" and lookahead.start_epoch >= epochs and not recorded:
            raise ValueError(f"train.lookahead.start_epoch must be in 0..{epochs - 1} (epochs count from 0; "
                             f"train.epochs={epochs}), got {lookahead.start_epoch}: a later start never averages; "
                             f"set train.lookahead=null for no lookahead")
        if schedule.name == "multistep" and not schedule.milestones:
            raise ValueError("schedule.milestones must list at least one epoch for multistep, got []")
        if epochs != "auto" and not recorded:  # a setting past the run's end never acts, silently
            _check_inside_run(schedule, epochs)
            _check_model_epochs(self.model.options, epochs)
        split = self.data.val_split
        if split not in (None, "auto") and not (split >= 1 if isinstance(split, int) else 0 < split < 1):
            raise ValueError(f"data.val_split must be a fraction in (0, 1) or a count of at least 1, got {split}")
        return self

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def _check_inside_run(schedule: ScheduleConfig, epochs: int) -> None:
    """A multistep milestone at or after the last epoch never lowers the lr, and a cosine warm-up as long as the
    plan never decays: both trained as if the setting were not there. A recorded run keeps what it had."""
    late = [m for m in schedule.milestones if m >= epochs] if schedule.name == "multistep" else []
    if late:
        raise ValueError(f"schedule.milestones must be epochs in 1..{epochs - 1} (the lr drops after each; "
                         f"train.epochs={epochs}), got {schedule.milestones}: {late} never act")
    planned = schedule.planned_epochs or epochs
    if schedule.name == "cosine" and schedule.warmup_epochs >= planned:
        raise ValueError(f"schedule.warmup_epochs must be less than the {planned} epochs the cosine plan spans, got "
                         f"{schedule.warmup_epochs:g}: the lr would never decay")


def _check_model_epochs(options: dict, epochs: int) -> None:
    """fastnet's `whiten_bias_epochs` beyond the run says no more than `train.epochs` (trained throughout), and
    is what a shortened run kept from a longer one: the round-5 analogue of a lookahead that never starts."""
    value = options.get("whiten_bias_epochs")
    if isinstance(value, int) and not isinstance(value, bool) and value > epochs:
        raise ValueError(f"model.options.whiten_bias_epochs must be at most train.epochs={epochs} (the bias trains "
                         f"for the first N epochs), got {value}")
