"""A TrainState to a `Checkpoint` and back: `FIELDS` says, for each of the Checkpoint's fields (the one list
of a checkpoint's keys and their checks, run/checkpoint_record.py; the file's I/O is run/checkpoint.py), how
a save fills it from the state and how a restore puts it back. A model read for use (eval, predict,
`model.init_from`) comes from run/model_file.read_model, not from here.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifarlab.errors import UserError
from cifarlab.run.checkpoint import FORMAT_VERSION, Checkpoint, StoredOutcome, outcome, versions
from cifarlab.run.model_card import ModelCard
from cifarlab.trainer.outcome import EARLY_STOPPED, Stop, Why
from cifarlab.trainer.state import Progress


def rng_state(runtime) -> dict[str, Any]:
    """Every global RNG (the loader's randomness is counter-based and needs none, see module doc)."""
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {"python": list(random.getstate()[1]), "python_pos": random.getstate()[2], "torch": torch.get_rng_state(),
             "numpy": torch.from_numpy(np_keys.astype(np.int64)), "numpy_pos": int(np_pos),
             "numpy_gauss": [int(np_has_gauss), float(np_gauss)]}
    if runtime.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(runtime.device)
    return state


def set_rng_state(state: dict[str, Any], runtime) -> None:
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        has_gauss, gauss = state["numpy_gauss"]
        np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], has_gauss, gauss))
    if "cuda" in state and runtime.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], runtime.device)


def _load_if(target, value, *extra) -> None:
    """`target.load_state_dict(value)` where both exist (a run without an EMA, a file without a scaler)."""
    if target is not None and value is not None:
        target.load_state_dict(value, *extra)


def _set_early_stop(state, stored: dict[str, Any]) -> None:
    """A run that stopped early stays stopped: its early stop takes effect at once."""
    stop = outcome(stored).early_stop
    if stop is not None:
        state.stop = Stop(EARLY_STOPPED, state.progress.epoch, state.progress.step, stop.reason,
                          Why(best_epoch=stop.best_epoch, pruned_by=stop.pruned_by))


_READ_ONLY = None  # a key a restore does not put back: the card, config and versions are read from the Checkpoint
# key -> (what a save writes from the state, how a restore puts the file's value back, or _READ_ONLY). A
# tuple of keys is one unit saved and restored together: its save returns {key: value}, its restore reads
# the payload. Restores run in this order; `Checkpoint.check` has checked every value first. The keys are
# exactly `Checkpoint.saved_keys()`, in the same order (tests/test_old_runs.py holds the two together).
FIELDS = {
    "format": (lambda s: FORMAT_VERSION, _READ_ONLY),
    "model": (lambda s: s.objects.model.state_dict(), lambda s, v, p: s.objects.model.load_state_dict(v)),
    "optimizer": (lambda s: s.objects.optimizer.state_dict(), lambda s, v, p: s.objects.optimizer.load_state_dict(v)),
    "schedule": (lambda s: s.objects.schedule.state_dict(), lambda s, v, p: s.objects.schedule.load_state_dict(v)),
    "lr_used": (lambda s: s.objects.schedule.lr_used,
                lambda s, v, p: setattr(s.objects.schedule, "lr_used", s.objects.schedule.lr if v is None else v)),
    "scaler": (lambda s: s.objects.grad_step.scaler.state_dict() if s.objects.grad_step.scaler is not None else None,
               lambda s, v, p: _load_if(s.objects.grad_step.scaler, v)),
    "ema": (lambda s: s.objects.ema.state_dict() if s.objects.ema is not None else None,
            lambda s, v, p: _load_if(s.objects.ema, v)),
    "lookahead": (lambda s: s.objects.lookahead.state_dict() if s.objects.lookahead is not None else None,
                  lambda s, v, p: _load_if(s.objects.lookahead, v, s.objects.model)),
    # float64 sums of the epoch and of the logging window so far (two keys, one StepMetrics)
    "epoch_meter": (lambda s: s.objects.metrics.state_dict()["epoch_meter"],
                    lambda s, v, p: s.objects.metrics.load_state_dict(p)),
    "window_meter": (lambda s: s.objects.metrics.state_dict()["window_meter"], _READ_ONLY),
    # The progress counters (trainer/state.Progress): these keys, and lr_peak and its source from "outcome"
    Progress.KEYS: (lambda s: s.progress.state_dict(process_seconds=s.process.seconds()),
                    lambda s, v, p: s.progress.load_state_dict(p)),
    "rng": (lambda s: rng_state(s.runtime), lambda s, v, p: set_rng_state(v, s.runtime)),
    "config": (lambda s: s.cfg.to_dict(), _READ_ONLY),
    ModelCard.DATA_FIELDS: (lambda s: s.card.payload_fields(), _READ_ONLY),  # the card's data, flat
    "status": (lambda s: s.status, _READ_ONLY),
    # Dataset.fingerprint of the data trained on: eval warns and resume refuses on other data (data/checks.py)
    "data_fingerprint": (lambda s: s.data_fingerprint, _READ_ONLY),
    "outcome": (lambda s: StoredOutcome(s.progress.lr_peak, s.progress.lr_peak_source, s.early_stop).to_json(),
                lambda s, v, p: _set_early_stop(s, p)),
    "versions": (lambda s: versions(), _READ_ONLY),
}
SAVED_KEYS = tuple(key for row in FIELDS for key in (row if isinstance(row, tuple) else (row,)))  # in file order
_OBJECTS = ("model", "optimizer", "schedule", "scaler", "ema", "lookahead", "epoch_meter")  # may not match


def make_checkpoint(state) -> Checkpoint:
    """Everything the next step depends on (see run/checkpoint_record.py); plain tensors and containers only.
    Built from the state's own values, so not checked again (what is read back is)."""
    payload = {}
    for key, (save, _) in FIELDS.items():
        payload.update(save(state) if isinstance(key, tuple) else {key: save(state)})  # a tuple: a unit's keys
    return Checkpoint.model_construct(**payload)


def restore(state, checkpoint: Checkpoint, source: Path | str = "checkpoint") -> None:
    """Put a checkpoint (checked with `resume=True`) back into a freshly built TrainState (same config),
    ready for the next step."""
    payload = checkpoint.to_payload()
    steps = state.steps_per_epoch
    if payload["batch_in_epoch"] >= steps or payload["step"] > payload["epoch"] * steps + payload["batch_in_epoch"]:
        raise UserError(f"checkpoint {source} is not usable: batch_in_epoch must be in 0..{steps - 1} and step at most "
                        f"epoch * {steps} + batch_in_epoch ({steps} batches per epoch), got batch_in_epoch "
                        f"{payload['batch_in_epoch']}, step {payload['step']}")
    try:
        for key in _OBJECTS:
            FIELDS[key][1](state, payload.get(key), payload)
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        raise UserError(f"{source} does not match the model and optimizer its config builds "
                        f"({_describe_model(payload)}): {_first_line(err)}") from None
    for key, (_, load) in FIELDS.items():
        if load is not _READ_ONLY and key not in _OBJECTS:
            load(state, None if isinstance(key, tuple) else payload.get(key), payload)


def _describe_model(payload: dict[str, Any]) -> str:
    model = payload.get("config", {}).get("model", {})
    classes = len(payload.get("classes", []))
    return f"model {model.get('name')!r} with options {model.get('options', {})}, {classes} classes"


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return " ".join(line.strip() for line in text[:3])[:300] if text else type(err).__name__
