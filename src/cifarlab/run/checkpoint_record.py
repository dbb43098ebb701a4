"""What a checkpoint holds: `Checkpoint`, one typed record that is both what a save writes and what a load
reads, its fields the one list of a checkpoint's keys (in file order) and its validators the checks every
load runs (the file itself, its writing and reading, are run/checkpoint.py).

A checkpoint holds model, optimizer, LR schedule, grad scaler, EMA weights, epoch/step/batch position, the
epoch and window metric sums, every RNG state (Python, NumPy, torch CPU and CUDA), the metric history,
the resolved config, the model card's data fields (run/model_card.ModelCard) and the library versions.
trainer/checkpoint.py says how each field is filled from a TrainState and put back; a file with a key
the record does not know, or without one a load needs, is refused (Lightning Fabric's save/load are the
example). The data loader has no generator state to save: its randomness is counter-based (batch k of
epoch e is a pure function of (seed, e, k)), so `(epoch, batch_in_epoch)` is its whole state.

A checkpoint with a valid sha256 can still hold anything (it was tampered with, or written by a bug): the
trailer proves the file is whole, not that its contents make sense. `Checkpoint.check` validates every
field a load path reads — types, ranges and lengths against the checkpoint's own config — so a bad one is
one line naming the field, not a traceback or a half-rewritten run directory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cifarlab.config import Config, validate_recorded
from cifarlab.errors import UserError
from cifarlab.run.field_checks import FieldProblem, finite, need, whole
from cifarlab.run.metrics import EpochRow
from cifarlab.run.model_card import ModelCard

FORMAT_VERSION = 1
STATUSES = ("running", "completed", "interrupted", "diverged")
HISTORY_KEYS = ("epoch", "step", "lr", "train_loss", "train_acc", "test_loss", "test_acc")
RESUME_KEYS = ("optimizer", "schedule", "scaler", "ema", "batch_in_epoch", "elapsed_seconds", "epoch_meter",
               "window_meter", "rng")  # read by `restore` on top of what evaluation reads
LEGACY_KEYS = ("extra",)  # read in place of `outcome` from the oldest files; never written


class InvalidConfig(ValueError):
    """The checkpoint's config does not validate (the message is the config's own error)."""


Weights = dict[str, torch.Tensor]


class Checkpoint(BaseModel):
    """One checkpoint file's content: what a save writes and what a load reads. Fields without a default
    are in every file; the others may be absent from files an older cifarlab wrote. Each field's check is
    its validator; `_check_whole` checks what needs several fields (ranges against the config's
    `train.epochs`, the model card). Values are kept exactly as read (plain validators: no coercion), so a
    file read and written again holds the same bytes' worth of state."""
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="allow")  # extra: refused by _known_keys

    format: int
    model: Weights
    optimizer: Optional[dict[str, Any]] = None
    schedule: Optional[dict[str, Any]] = None
    lr_used: Optional[float] = None
    scaler: Optional[dict[str, Any]] = None
    ema: Optional[Weights] = None  # an AveragedModel's state_dict: module.<name> plus n_averaged
    lookahead: Optional[dict[str, Any]] = None
    epoch_meter: Optional[torch.Tensor] = None  # float64 sums (loss, correct, images) of the epoch so far
    window_meter: Optional[torch.Tensor] = None  # the same for the logging window
    epoch: int  # epochs completed
    step: int  # optimizer steps completed
    batch_in_epoch: Optional[int] = None
    elapsed_seconds: Optional[float] = None
    compile_seconds: Optional[float] = None
    wall_seconds: Optional[float] = None
    history: list[dict[str, Any]]  # one EpochRow dict per finished epoch
    rng: Optional[dict[str, Any]] = None
    config: dict[str, Any]  # the resolved config, as Config.to_dict() wrote it
    classes: list[str]  # the model card's data fields (ModelCard.DATA_FIELDS), checked as one card
    mean: list[float]
    std: list[float]
    image_size: Optional[int] = None
    in_channels: Optional[int] = None
    precision: Optional[str] = None
    status: str
    data_fingerprint: Optional[dict[str, Optional[str]]] = None
    outcome: Optional[dict[str, Any]] = None  # OUTCOME_FIELDS
    versions: dict[str, str] = {}
    extra: Optional[dict[str, Any]] = None  # LEGACY_KEYS

    _cfg: Optional[Config] = PrivateAttr(default=None)

    # ------------------------------------------------------------------ reading and writing
    @classmethod
    def check(cls, payload: dict[str, Any], source: Path | str, resume: bool = False) -> "Checkpoint":
        """`payload` (a file's mapping) checked field by field (with `resume`, also what `restore` needs);
        a UserError names the first field that is wrong, what it must be and what it is."""
        try:
            return cls.model_validate(payload, context={"resume": resume})
        except ValidationError as err:
            first = err.errors(include_url=False)[0]
            problem = first.get("ctx", {}).get("error")
            if isinstance(problem, InvalidConfig):
                raise UserError(f"checkpoint {source} has an invalid config: {problem}") from None
            text = str(problem) if isinstance(problem, FieldProblem) else \
                f"{'.'.join(map(str, first['loc']))} {first['msg']}"
            raise UserError(f"checkpoint {source} is not usable: {text}") from None

    @classmethod
    def saved_keys(cls) -> tuple[str, ...]:
        """The keys a save writes, in file order."""
        return tuple(name for name in cls.model_fields if name not in LEGACY_KEYS)

    @classmethod
    def required_keys(cls) -> tuple[str, ...]:
        return tuple(name for name, info in cls.model_fields.items() if info.is_required())

    def to_payload(self) -> dict[str, Any]:
        """The mapping `torch.save` writes: the keys this checkpoint was made or read with, in file order."""
        return {name: getattr(self, name) for name in type(self).model_fields if name in self.model_fields_set}

    @property
    def cfg(self) -> Config:
        """The validated config (a checked checkpoint's; validated now for one built by a save)."""
        if self._cfg is None:
            self._cfg = validate_recorded(self.config)
        return self._cfg

    def epoch_rows(self) -> list[EpochRow]:
        """`history` as the records every reader uses (the file holds one mapping per finished epoch)."""
        return [EpochRow.from_dict(row, kind="epoch") for row in self.history]

    @property
    def card(self) -> ModelCard:
        return ModelCard.from_config(self.cfg, self.to_payload())

    # ------------------------------------------------------------------ the checks, one per field
    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, payload: Any) -> Any:
        need(isinstance(payload, dict), "the checkpoint", "a mapping", type(payload).__name__)
        unknown = sorted(key for key in payload if key not in cls.model_fields)
        need(not unknown, "the checkpoint's keys", f"among {', '.join(cls.saved_keys())}", f"also {', '.join(unknown)}")
        absent = [key for key in cls.required_keys() if key not in payload]
        need(not absent, "the checkpoint's keys", "complete", f"no {', '.join(absent)}")
        return payload

    @field_validator("format", mode="plain")
    @classmethod
    def _format(cls, value: Any) -> int:
        need(value == FORMAT_VERSION and whole(value), "format", str(FORMAT_VERSION), value)
        return value

    @field_validator("model", "ema", mode="plain")
    @classmethod
    def _weights(cls, weights: Any, info: ValidationInfo) -> Optional[Weights]:
        if weights is None and info.field_name == "ema":
            return None
        need(isinstance(weights, dict), info.field_name, "a mapping of names to tensors", type(weights).__name__)
        wrong = [f"{k}: {type(v).__name__}" for k, v in weights.items()
                 if not (isinstance(k, str) and torch.is_tensor(v))]
        need(not wrong, info.field_name, "a mapping of names to tensors", ", ".join(wrong[:3]))
        return weights

    @field_validator("schedule", "scaler", "outcome", "extra", mode="plain")
    @classmethod
    def _mapping(cls, value: Any, info: ValidationInfo) -> Optional[dict]:
        need(value is None or isinstance(value, dict), info.field_name, "a mapping", value if info.field_name in (
            "outcome", "extra") else type(value).__name__)
        return value

    @field_validator("versions", mode="plain")
    @classmethod
    def _versions(cls, value: Any) -> dict:
        need(isinstance(value, dict), "versions", "a mapping", value)
        return value

    @field_validator("lr_used", "elapsed_seconds", "compile_seconds", "wall_seconds", mode="plain")
    @classmethod
    def _seconds(cls, value: Any, info: ValidationInfo) -> Optional[float]:
        need(value is None or (finite(value) and value >= 0), info.field_name, "a finite number >= 0", value)
        return value

    @field_validator("lookahead", mode="plain")
    @classmethod
    def _lookahead(cls, ahead: Any) -> Optional[dict]:
        need(ahead is None or (isinstance(ahead, dict) and (ahead.get("slow") is None or (
            isinstance(ahead["slow"], list) and all(torch.is_tensor(t) for t in ahead["slow"])))),
            "lookahead", "null or {slow: null or a list of tensors}", ahead if not isinstance(ahead, dict) else
            type(ahead.get("slow")).__name__)
        return ahead

    @field_validator("epoch_meter", "window_meter", mode="plain")
    @classmethod
    def _meter(cls, meter: Any, info: ValidationInfo) -> Optional[torch.Tensor]:
        key = info.field_name
        need(meter is None or (isinstance(meter, torch.Tensor) and meter.shape == (3,)
                               and meter.dtype == torch.float64), key, "a float64 tensor of 3 sums", meter)
        if meter is not None:  # the loss sum may be NaN (a diverged step); the counts may not
            _, correct, images = meter.tolist()
            need(images >= 0 and images == int(images) and 0 <= correct <= images and correct == int(correct),
                 key, "sums (loss, correct, images) with whole counts and 0 <= correct <= images", meter.tolist())
        return meter

    @field_validator("status", mode="plain")
    @classmethod
    def _status(cls, value: Any) -> str:
        need(value in STATUSES, "status", f"one of {', '.join(STATUSES)}", value)
        return value

    @field_validator("rng", mode="plain")
    @classmethod
    def _rng(cls, rng: Any) -> Optional[dict]:
        if rng is not None:
            _check_rng(rng)
        return rng

    @field_validator("config", mode="plain")
    @classmethod
    def _config(cls, raw: Any) -> dict:
        need(isinstance(raw, dict), "config", "a mapping", raw)
        return raw

    @field_validator(*ModelCard.DATA_FIELDS, "data_fingerprint", "optimizer", "epoch", "step", "batch_in_epoch",
                     "history", mode="plain")
    @classmethod
    def _checked_together(cls, value: Any) -> Any:
        """Fields whose check needs others, in _check_whole: the card's (model_card.check_card_fields), the
        position's (against train.epochs), the optimizer's (only a resume reads it)."""
        return value

    @model_validator(mode="after")
    def _check_whole(self, info: ValidationInfo) -> "Checkpoint":
        """What needs several fields: a resumable file's completeness, the config, the card, the position
        (epoch, step, batch, history) in range for the config's `train.epochs`."""
        if (info.context or {}).get("resume"):
            missing = [key for key in RESUME_KEYS if key not in self.model_fields_set]
            need(not missing, "a resumable checkpoint", f"complete ({', '.join(RESUME_KEYS)})",
                 f"no {', '.join(missing)}")
            need(isinstance(self.optimizer, dict) and {"state", "param_groups"} <= set(self.optimizer),
                 "optimizer", "an optimizer state_dict (state, param_groups)", type(self.optimizer).__name__)
        try:
            self._cfg = validate_recorded(self.config)
        except UserError as err:
            raise InvalidConfig(str(err)) from None
        ModelCard.from_config(self._cfg, self.to_payload())  # the card's fields, checked as every format's are
        epochs, epoch, step = self._cfg.train.epochs, self.epoch, self.step
        need(whole(epoch, 0, epochs), "epoch", f"a whole number in 0..{epochs} (train.epochs)", epoch)
        need(whole(step, epoch), "step", f"a whole number >= epoch ({epoch})", step)
        batch = 0 if self.batch_in_epoch is None else self.batch_in_epoch
        need(whole(batch, 0, step), "batch_in_epoch", f"a whole number in 0..step ({step})", batch)
        _check_history(self.history, epoch)
        return self


def _check_history(history: Any, epoch: int) -> None:
    """One row per finished epoch, numbered 1..epoch, each with the keys every reader uses."""
    need(isinstance(history, list) and len(history) == epoch, "history", f"a list of {epoch} rows (one per epoch)",
         type(history).__name__ if not isinstance(history, list) else f"{len(history)} rows")
    for number, row in enumerate(history, start=1):
        need(isinstance(row, dict) and all(key in row for key in HISTORY_KEYS), f"history row {number}",
             f"a mapping with {', '.join(HISTORY_KEYS)}", row)
        need(whole(row["epoch"], number, number) and whole(row["step"]), f"history row {number}",
             f"epoch {number} with a whole step", {"epoch": row["epoch"], "step": row["step"]})
        bad = [key for key, value in row.items() if key not in ("epoch", "step") and not _number(value)]
        need(not bad and finite(row["lr"]), f"history row {number}", "numbers only (finite lr)", row)


def _number(value: Any) -> bool:  # NaN and inf allowed: a diverged epoch's loss is one
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_rng(rng: Any) -> None:
    """The RNG states `set_rng_state` restores, shaped as this Python, NumPy and torch expect them."""
    need(isinstance(rng, dict), "rng", "a mapping", type(rng).__name__)
    python = rng.get("python")
    need(isinstance(python, list) and len(python) == 625 and all(whole(v, 0, 2**32 - 1) for v in python)
         and python[-1] <= 624, "rng.python", "625 whole numbers (the Mersenne Twister state and position)",
         type(python).__name__ if not isinstance(python, list) else f"{len(python)} values")
    gauss_next = rng.get("python_pos")  # random.getstate()[2]: the cached gauss() value, or None
    need(gauss_next is None or finite(gauss_next), "rng.python_pos", "None or a finite number", gauss_next)
    expected = torch.get_rng_state()
    state = rng.get("torch")
    need(isinstance(state, torch.Tensor) and state.dtype == expected.dtype and state.shape == expected.shape,
         "rng.torch", f"a uint8 tensor of {expected.numel()} bytes", state if not isinstance(state, torch.Tensor)
         else f"{state.dtype} tensor of {state.numel()} values")
    if "numpy" in rng:
        keys = rng["numpy"]
        need(isinstance(keys, torch.Tensor) and keys.shape == (624,) and not keys.is_floating_point()
             and bool(((keys >= 0) & (keys < 2**32)).all()), "rng.numpy", "624 whole numbers", type(keys).__name__)
        need(whole(rng.get("numpy_pos"), 0, 624), "rng.numpy_pos", "a whole number in 0..624", rng.get("numpy_pos"))
        gauss = rng.get("numpy_gauss")
        need(isinstance(gauss, (list, tuple)) and len(gauss) == 2 and whole(gauss[0], 0, 1) and finite(gauss[1]),
             "rng.numpy_gauss", "[0 or 1, a finite number]", gauss)
    cuda = rng.get("cuda")
    need(cuda is None or (isinstance(cuda, torch.Tensor) and cuda.dtype == torch.uint8), "rng.cuda",
         "a uint8 tensor", type(cuda).__name__)
