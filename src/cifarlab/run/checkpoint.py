"""Checkpoint files: what they hold (one table of keys, checked on every load), and how they are written
and read.

A payload holds model, optimizer, LR schedule, grad scaler, EMA weights, epoch/step/batch position, the
epoch and window metric sums, every RNG state (Python, NumPy, torch CPU and CUDA), the metric history,
the resolved config, the model card (run/records.ModelCard) and the library versions. `PAYLOAD_KEYS` is
the one list of its keys: training/checkpoint.py fills exactly these from a TrainState and puts them back,
and `check_payload` refuses a file with a key it does not know or without one a load needs (Lightning
Fabric's save/load are the example). The data loader has no generator state to save: its randomness is
counter-based (batch k of epoch e is a pure function of (seed, e, k)), so `(epoch, batch_in_epoch)` is its
whole state.

Writes go to a temporary file in the same folder, are fsynced, then renamed over the target, so a kill
during a save never leaves a half-written `last.pt`; the file it replaces is kept as `last.prev.pt`.
The file is a normal `torch.save` archive followed by a one-line trailer with the sha256 of the archive
bytes (zip readers, `torch.load` included, ignore trailing bytes), so a truncated or bit-flipped file is
caught even where `torch.load` would happily read it. Loads use `torch.load(weights_only=True)`: a
checkpoint from the internet cannot run code. A bad newest file falls back to `.prev` with a warning.

A checkpoint with a valid sha256 can still hold anything (it was tampered with, or written by a bug): the
trailer proves the file is whole, not that its contents make sense. `check_payload` checks every field a
load path reads — types, ranges and lengths against the checkpoint's own config — so a bad one is one
line naming the field, not a traceback or a half-rewritten run directory.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import platform
import stat
from pathlib import Path
from typing import Any, Optional

import torch

from cifarlab._version import __version__
from cifarlab.atomic import atomic_write_bytes
from cifarlab.config import Config, validate_recorded
from cifarlab.errors import UserError
from cifarlab.messages import warn
from cifarlab.run.layout import BEST, CHECKPOINTS, previous_path

FORMAT_VERSION = 1
TRAILER_TAG = b"\nCIFARLAB-SHA256 "
TRAILER_BYTES = len(TRAILER_TAG) + 64 + 1  # tag, hex digest, newline
# TrainState fields about how the run went that a resumed run must know (older files kept them in "extra").
OUTCOME_FIELDS = ("lr_peak", "lr_peak_source", "early_stop")
# A load reads at most this many bytes (a device file or a huge download must not read until MemoryError).
MAX_BYTES_ENV = "CIFARLAB_MAX_CHECKPOINT_BYTES"
DEFAULT_MAX_BYTES = 4 * 1024**3
# The one table of a checkpoint's keys: True where every load needs it, False where files written by an
# older cifarlab may lack it (or where it is only read when present). Any other key is refused.
PAYLOAD_KEYS = {
    "format": True, "model": True, "optimizer": False, "schedule": False, "lr_used": False, "scaler": False,
    "ema": False, "lookahead": False, "epoch": True, "step": True, "batch_in_epoch": False,
    "elapsed_seconds": False, "compile_seconds": False, "wall_seconds": False, "epoch_meter": False,
    "window_meter": False, "rng": False, "history": True, "config": True, "classes": True, "mean": True,
    "std": True, "image_size": False, "in_channels": False, "precision": False, "status": True,
    "outcome": False, "versions": False, "data_fingerprint": False,
}
LEGACY_KEYS = ("extra",)  # read in place of `outcome` from the oldest files

STATUSES = ("running", "completed", "interrupted", "diverged")
HISTORY_KEYS = ("epoch", "step", "lr", "train_loss", "train_acc", "test_loss", "test_acc")
RESUME_KEYS = ("optimizer", "schedule", "scaler", "ema", "batch_in_epoch", "elapsed_seconds", "epoch_meter",
               "window_meter", "rng")  # read by `restore` on top of what evaluation reads


def check_payload(payload: dict[str, Any], source: Path | str, resume: bool = False) -> Config:
    """Everything a load path reads from a checkpoint, checked before anything is built or written: types,
    ranges and lengths against its own config (with `resume`, also what `restore` needs). Returns the
    validated config; a UserError names the field, what it must be and what it is.

    A checkpoint with a valid sha256 can still hold anything (it was tampered with, or written by a bug):
    the trailer proves the file is whole, not that its contents make sense."""
    def need(ok: bool, field: str, expected: str, value: Any) -> None:
        if not ok:
            text = repr(value)
            text = text if len(text) <= 60 else text[:57] + "..."
            raise UserError(f"checkpoint {source} is not usable: {field} must be {expected}, got {text}")

    unknown = sorted(key for key in payload if key not in PAYLOAD_KEYS and key not in LEGACY_KEYS)
    need(not unknown, "the checkpoint's keys", f"among {', '.join(PAYLOAD_KEYS)}", f"also {', '.join(unknown)}")
    absent = [key for key, required in PAYLOAD_KEYS.items() if required and key not in payload]
    need(not absent, "the checkpoint's keys", "complete", f"no {', '.join(absent)}")
    if resume:
        missing = [key for key in RESUME_KEYS if key not in payload]
        need(not missing, "a resumable checkpoint", f"complete ({', '.join(RESUME_KEYS)})", f"no {', '.join(missing)}")
        need(isinstance(payload["optimizer"], dict) and {"state", "param_groups"} <= set(payload["optimizer"]),
             "optimizer", "an optimizer state_dict (state, param_groups)", type(payload["optimizer"]).__name__)
        for key in ("schedule", "scaler"):
            need(payload[key] is None or isinstance(payload[key], dict), key, "a mapping", type(payload[key]).__name__)
    raw = payload.get("config")
    need(isinstance(raw, dict), "config", "a mapping", raw)
    try:
        cfg = validate_recorded(raw)
    except UserError as err:
        raise UserError(f"checkpoint {source} has an invalid config: {err}") from None
    _check_data_meta(payload, need)
    _check_position(payload, cfg.train.epochs, need)
    _check_tensors(payload, need)
    stored = payload.get("outcome", payload.get("extra", {}))
    need(stored is None or isinstance(stored, dict), "outcome", "a mapping", stored)
    need(isinstance(payload.get("versions", {}), dict), "versions", "a mapping", payload.get("versions"))
    return cfg


def _check_data_meta(payload: dict[str, Any], need) -> None:
    """Class names, per-channel normalisation and image shape: what evaluation and predict build on."""
    classes = payload["classes"]
    need(isinstance(classes, (list, tuple)) and len(classes) >= 1 and all(isinstance(c, str) for c in classes)
         and len(set(classes)) == len(classes), "classes", "a list of distinct class names (strings)", classes)
    mean, std = payload["mean"], payload["std"]
    for key, values in (("mean", mean), ("std", std)):
        need(isinstance(values, (list, tuple)) and 1 <= len(values) <= 4 and all(_finite(v) for v in values),
             key, "a list of 1 to 4 finite numbers (one per channel)", values)
    need(len(std) == len(mean), "std", f"{len(mean)} values like mean", std)
    need(min(std) > 0, "std", "positive", std)
    for key, low, high in (("in_channels", len(mean), len(mean)), ("image_size", 1, 4096)):
        value = payload.get(key)
        need(value is None or _whole(value, low, high), key, f"a whole number in {low}..{high}", value)
    need(payload.get("precision") in (None, "bf16", "fp16", "fp32"), "precision", "bf16, fp16 or fp32",
         payload.get("precision"))
    prints = payload.get("data_fingerprint")
    need(prints is None or (isinstance(prints, dict) and set(prints) == {"train", "val", "test"} and all(
        value is None or (isinstance(value, str) and len(value) == 64) for value in prints.values())),
        "data_fingerprint", "null or {train, val, test: a sha256 hex digest or null}", prints)


def _check_position(payload: dict[str, Any], epochs: int, need) -> None:
    """Where the run is (epoch, step, batch, status, history, clocks), in range for its `train.epochs`."""
    epoch, step = payload["epoch"], payload["step"]
    need(_whole(epoch, 0, epochs), "epoch", f"a whole number in 0..{epochs} (train.epochs)", epoch)
    need(_whole(step, epoch), "step", f"a whole number >= epoch ({epoch})", step)
    batch = payload.get("batch_in_epoch", 0)
    need(_whole(batch, 0, step), "batch_in_epoch", f"a whole number in 0..step ({step})", batch)
    need(payload["status"] in STATUSES, "status", f"one of {', '.join(STATUSES)}", payload["status"])
    _check_history(payload["history"], epoch, need)
    for key in ("elapsed_seconds", "compile_seconds", "wall_seconds", "lr_used"):
        value = payload.get(key)
        need(value is None or (_finite(value) and value >= 0), key, "a finite number >= 0", value)


def _check_tensors(payload: dict[str, Any], need) -> None:
    """Weights are name -> tensor mappings, the metric sums and RNG states have the shapes restore copies."""
    for key in ("model", "ema"):
        weights = payload.get(key)
        if weights is None and key == "ema":
            continue
        need(isinstance(weights, dict), key, "a mapping of names to tensors", type(weights).__name__)
        wrong = [f"{k}: {type(v).__name__}" for k, v in weights.items()
                 if not (isinstance(k, str) and torch.is_tensor(v))]
        need(not wrong, key, "a mapping of names to tensors", ", ".join(wrong[:3]))
    ahead = payload.get("lookahead")
    need(ahead is None or (isinstance(ahead, dict) and (ahead.get("slow") is None or (
        isinstance(ahead["slow"], list) and all(torch.is_tensor(t) for t in ahead["slow"])))),
        "lookahead", "null or {slow: null or a list of tensors}", ahead if not isinstance(ahead, dict) else
        type(ahead.get("slow")).__name__)
    for key in ("epoch_meter", "window_meter"):
        meter = payload.get(key)
        need(meter is None or (isinstance(meter, torch.Tensor) and meter.shape == (3,)
                               and meter.dtype == torch.float64), key, "a float64 tensor of 3 sums", meter)
        if meter is not None:  # the loss sum may be NaN (a diverged step); the counts may not
            _, correct, images = meter.tolist()
            need(images >= 0 and images == int(images) and 0 <= correct <= images and correct == int(correct),
                 key, "sums (loss, correct, images) with whole counts and 0 <= correct <= images",
                 meter.tolist())
    if "rng" in payload:
        _check_rng(payload["rng"], need)


def _whole(value: Any, low: int = 0, high: Optional[int] = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value and (high is None or value <= high)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any) -> bool:  # NaN and inf allowed: a diverged epoch's loss is one
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_history(history: Any, epoch: int, need) -> None:
    """One row per finished epoch, numbered 1..epoch, each with the keys every reader uses."""
    need(isinstance(history, list) and len(history) == epoch, "history", f"a list of {epoch} rows (one per epoch)",
         type(history).__name__ if not isinstance(history, list) else f"{len(history)} rows")
    for number, row in enumerate(history, start=1):
        need(isinstance(row, dict) and all(key in row for key in HISTORY_KEYS), f"history row {number}",
             f"a mapping with {', '.join(HISTORY_KEYS)}", row)
        need(_whole(row["epoch"], number, number) and _whole(row["step"]), f"history row {number}",
             f"epoch {number} with a whole step", {"epoch": row["epoch"], "step": row["step"]})
        bad = [key for key, value in row.items() if key != "epoch" and key != "step" and not _number(value)]
        need(not bad and _finite(row["lr"]), f"history row {number}", "numbers only (finite lr)", row)


def _check_rng(rng: Any, need) -> None:
    """The RNG states `set_rng_state` restores, shaped as this Python, NumPy and torch expect them."""
    need(isinstance(rng, dict), "rng", "a mapping", type(rng).__name__)
    python = rng.get("python")
    need(isinstance(python, list) and len(python) == 625 and all(_whole(v, 0, 2**32 - 1) for v in python)
         and python[-1] <= 624, "rng.python", "625 whole numbers (the Mersenne Twister state and position)",
         type(python).__name__ if not isinstance(python, list) else f"{len(python)} values")
    gauss_next = rng.get("python_pos")  # random.getstate()[2]: the cached gauss() value, or None
    need(gauss_next is None or _finite(gauss_next), "rng.python_pos", "None or a finite number", gauss_next)
    expected = torch.get_rng_state()
    state = rng.get("torch")
    need(isinstance(state, torch.Tensor) and state.dtype == expected.dtype and state.shape == expected.shape,
         "rng.torch", f"a uint8 tensor of {expected.numel()} bytes", state if not isinstance(state, torch.Tensor)
         else f"{state.dtype} tensor of {state.numel()} values")
    if "numpy" in rng:
        keys = rng["numpy"]
        need(isinstance(keys, torch.Tensor) and keys.shape == (624,) and not keys.is_floating_point()
             and bool(((keys >= 0) & (keys < 2**32)).all()), "rng.numpy", "624 whole numbers", type(keys).__name__)
        need(_whole(rng.get("numpy_pos"), 0, 624), "rng.numpy_pos", "a whole number in 0..624", rng.get("numpy_pos"))
        gauss = rng.get("numpy_gauss")
        need(isinstance(gauss, (list, tuple)) and len(gauss) == 2 and _whole(gauss[0], 0, 1) and _finite(gauss[1]),
             "rng.numpy_gauss", "[0 or 1, a finite number]", gauss)
    cuda = rng.get("cuda")
    need(cuda is None or (isinstance(cuda, torch.Tensor) and cuda.dtype == torch.uint8), "rng.cuda",
         "a uint8 tensor", type(cuda).__name__)


# ---------------------------------------------------------------------- reading and writing

def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": str(torch.__version__), "cifarlab": __version__}


def outcome(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload's OUTCOME_FIELDS (missing ones None), whichever format wrote it."""
    stored = payload.get("outcome") or payload.get("extra") or {}
    return {name: stored.get(name) for name in OUTCOME_FIELDS}


def serialize(payload: dict[str, Any]) -> bytes:
    """torch.save bytes plus the sha256 trailer (see module doc)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    return body + TRAILER_TAG + hashlib.sha256(body).hexdigest().encode() + b"\n"


def save_checkpoint(payload: dict[str, Any], *paths: Path) -> None:
    """Serialise once, write each of `paths` atomically (e.g. best.pt and last.pt of the same epoch)."""
    data = serialize(payload)
    for path in map(Path, paths):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create checkpoint folder {path.parent}: {err.strerror or err}") from None
        atomic_write_bytes(path, data, keep_previous=previous_path(path))


def _verified_body(path: Path, data: bytes) -> bytes:
    tail = data[-TRAILER_BYTES:]
    if len(data) <= TRAILER_BYTES or not tail.startswith(TRAILER_TAG) or not tail.endswith(b"\n"):
        raise UserError(f"checkpoint {path} is truncated or not a cifarlab checkpoint (no checksum trailer)")
    body, expected = data[:-TRAILER_BYTES], tail[len(TRAILER_TAG):-1].decode("ascii", "replace")
    if hashlib.sha256(body).hexdigest() != expected:
        raise UserError(f"checkpoint {path} is corrupt: its sha256 does not match the one stored with it")
    return body


def max_checkpoint_bytes() -> int:
    """The most bytes a checkpoint load reads: $CIFARLAB_MAX_CHECKPOINT_BYTES, else 4 GiB."""
    text = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    if not (text.isascii() and text.isdigit()) or int(text) < 1:  # "²".isdigit() is True; int("²") fails
        raise UserError(f"{MAX_BYTES_ENV} must be a positive whole number of bytes, got {text!r}")
    return int(text)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes: a regular file only (never a device, FIFO or socket), at most max_checkpoint_bytes()."""
    limit = max_checkpoint_bytes()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: opening a FIFO must not wait for a writer
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"checkpoint {path} is a directory; give a .pt file such as {CHECKPOINTS}/{BEST}") from None
    except OSError as err:
        raise UserError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    info = os.fstat(fd)
    problem = None
    if stat.S_ISDIR(info.st_mode):
        problem = f"checkpoint {path} is a directory; give a .pt file such as {CHECKPOINTS}/{BEST}"
    elif not stat.S_ISREG(info.st_mode):
        problem = f"checkpoint {path} is not a regular file (a device, pipe or socket); give a .pt file"
    elif info.st_size > limit:
        problem = (f"checkpoint {path} is {info.st_size:,} bytes, over the {limit:,}-byte limit "
                   f"(raise it with {MAX_BYTES_ENV})")
    if problem:
        os.close(fd)
        raise UserError(problem)
    with os.fdopen(fd, "rb") as handle:
        try:  # exactly the size stat gave (read(limit) would reserve the whole limit up front)
            data, more = handle.read(info.st_size), handle.read(1)
        except OSError as err:
            raise UserError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    if more:  # it grew while we read it: being written by something that is not cifarlab's atomic save
        raise UserError(f"checkpoint {path} changed while it was read; try again once nothing writes to it")
    return data


def _read(path: Path) -> dict[str, Any]:
    data = _read_bytes(Path(path))
    body = _verified_body(path, data)
    try:
        payload = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as err:  # pickle of code objects, wrong file type...
        raise UserError(f"checkpoint {path} is corrupt or not a cifarlab checkpoint ({type(err).__name__})") from None
    required = ("model", "optimizer", "config", "epoch", "step", "classes", "mean", "std", "history", "status")
    if (not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION
            or not all(k in payload for k in required)):
        raise UserError(f"{path} is not a cifarlab checkpoint (format {FORMAT_VERSION} expected)")
    return payload


def load_checkpoint_with_path(path: Path) -> tuple[dict[str, Any], Path]:
    """(payload, file it came from): `path`, or its `.prev` sibling with a warning when `path` is bad."""
    path = Path(path)
    if not path.name:  # ".", "/": a folder with no name, so no `.prev` sibling either
        raise UserError(f"checkpoint {path} is a directory; give a .pt file such as {CHECKPOINTS}/{BEST}")
    try:
        return _read(path), path
    except UserError as err:
        previous = previous_path(path)
        if not previous.is_file():
            raise
        try:
            payload = _read(previous)
        except UserError:
            raise err from None
        warn(f"warning: {err}; using the previous checkpoint {previous} instead")
        return payload, previous


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint; if it is bad and a `.prev` sibling is good, warn and use that instead."""
    return load_checkpoint_with_path(path)[0]
