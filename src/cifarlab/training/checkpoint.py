"""Checkpoints that hold everything the next step depends on, written atomically, loaded safely.

A payload holds model, optimizer, LR schedule, grad scaler, EMA weights, epoch/step/batch position, the
epoch and window metric sums, every RNG state (Python, NumPy, torch CPU and CUDA), the metric history,
the resolved config and the library versions. The data loader has no generator state to save: its
randomness is counter-based (batch k of epoch e is a pure function of (seed, e, k)), so
`(epoch, batch_in_epoch)` is its whole state.

Writes go to a temporary file in the same folder, are fsynced, then renamed over the target, so a kill
during a save never leaves a half-written `last.pt`; the file it replaces is kept as `last.prev.pt`.
The file is a normal `torch.save` archive followed by a one-line trailer with the sha256 of the archive
bytes (zip readers, `torch.load` included, ignore trailing bytes), so a truncated or bit-flipped file is
caught even where `torch.load` would happily read it. Loads use `torch.load(weights_only=True)`: a
checkpoint from the internet cannot run code. A bad newest file falls back to `.prev` with a warning.
"""
from __future__ import annotations

import hashlib
import io
import os
import platform
import random
import stat
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifarlab.atomic import atomic_write_bytes
from cifarlab.errors import UserError
from cifarlab.registry import build_model
from cifarlab.training.payload_check import check_payload

FORMAT_VERSION = 1
TRAILER_TAG = b"\nCIFARLAB-SHA256 "
TRAILER_BYTES = len(TRAILER_TAG) + 64 + 1  # tag, hex digest, newline
# TrainState fields about how the run went that a resumed run must know (older files kept them in "extra").
OUTCOME_FIELDS = ("lr_peak", "lr_peak_source", "early_stop")
# A load reads at most this many bytes (a device file or a huge download must not read until MemoryError).
MAX_BYTES_ENV = "CIFARLAB_MAX_CHECKPOINT_BYTES"
DEFAULT_MAX_BYTES = 4 * 1024**3


def versions() -> dict[str, str]:
    from cifarlab import __version__

    return {"python": platform.python_version(), "torch": str(torch.__version__), "cifarlab": __version__}


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


def make_payload(state) -> dict[str, Any]:
    """Everything the next step depends on (see module doc); plain tensors and containers only."""
    payload = {
        "format": FORMAT_VERSION,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "schedule": state.schedule.state_dict(),
        "lr_used": state.schedule.lr_used,
        "scaler": state.grad_step.scaler.state_dict() if state.grad_step.scaler is not None else None,
        "ema": state.ema.state_dict() if state.ema is not None else None,
        "lookahead": state.lookahead.state_dict() if state.lookahead is not None else None,
        "epoch": state.epoch,
        "step": state.step,
        "batch_in_epoch": state.batch_in_epoch,
        "elapsed_seconds": state.elapsed_seconds,
        "compile_seconds": state.compile_seconds,
        **state.metrics.state_dict(),  # epoch_meter, window_meter: float64 sums of the epoch and window so far
        "rng": rng_state(state.runtime),
        "history": state.history,
        "config": state.cfg.to_dict(),
        "classes": list(state.classes),
        "data_fingerprint": state.data_fingerprint,  # absent from older checkpoints: then nothing is compared
        "mean": list(state.train_loader.mean),
        "std": list(state.train_loader.std),
        "image_size": int(state.train_loader.images.shape[-1]),
        "in_channels": int(state.train_loader.images.shape[1]),
        "precision": state.runtime.precision.name,
        "status": state.status,
        "outcome": {name: getattr(state, name) for name in OUTCOME_FIELDS},
        "versions": versions(),
    }
    return payload


def outcome(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload's OUTCOME_FIELDS (missing ones None), whichever format wrote it."""
    stored = payload.get("outcome") or payload.get("extra") or {}
    return {name: stored.get(name) for name in OUTCOME_FIELDS}


def previous_path(path: Path) -> Path:
    """`last.pt` -> `last.prev.pt`: where the file a save replaces is kept."""
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


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
        raise UserError(f"checkpoint {path} is a directory; give a .pt file such as checkpoints/best.pt") from None
    except OSError as err:
        raise UserError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    info = os.fstat(fd)
    problem = None
    if stat.S_ISDIR(info.st_mode):
        problem = f"checkpoint {path} is a directory; give a .pt file such as checkpoints/best.pt"
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
        raise UserError(f"checkpoint {path} is a directory; give a .pt file such as checkpoints/best.pt")
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
        print(f"warning: {err}; using the previous checkpoint {previous} instead", file=sys.stderr, flush=True)
        return payload, previous


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint; if it is bad and a `.prev` sibling is good, warn and use that instead."""
    return load_checkpoint_with_path(path)[0]


def restore(state, payload: dict[str, Any], source: Path | str = "checkpoint") -> None:
    """Put a payload (passed through `check_payload`) back into a freshly built TrainState (same config),
    ready for the next step."""
    steps = state.steps_per_epoch
    if payload["batch_in_epoch"] >= steps or payload["step"] > payload["epoch"] * steps + payload["batch_in_epoch"]:
        raise UserError(f"checkpoint {source} is not usable: batch_in_epoch must be in 0..{steps - 1} and step at most "
                        f"epoch * {steps} + batch_in_epoch ({steps} batches per epoch), got batch_in_epoch "
                        f"{payload['batch_in_epoch']}, step {payload['step']}")
    try:
        state.model.load_state_dict(payload["model"])
        state.optimizer.load_state_dict(payload["optimizer"])
        state.schedule.load_state_dict(payload["schedule"])
        if state.grad_step.scaler is not None and payload["scaler"] is not None:
            state.grad_step.scaler.load_state_dict(payload["scaler"])
        if state.ema is not None and payload["ema"] is not None:
            state.ema.load_state_dict(payload["ema"])
        if state.lookahead is not None and payload.get("lookahead") is not None:
            state.lookahead.load_state_dict(payload["lookahead"], state.model)
        state.metrics.load_state_dict(payload)
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        raise UserError(f"{source} does not match the model and optimizer its config builds "
                        f"({_describe_model(payload)}): {_first_line(err)}") from None
    state.epoch, state.step = payload["epoch"], payload["step"]
    state.batch_in_epoch = payload["batch_in_epoch"]
    state.elapsed_seconds = payload["elapsed_seconds"]
    state.compile_seconds = payload.get("compile_seconds", 0.0)
    state.schedule.lr_used = payload.get("lr_used", state.schedule.lr)
    state.history = list(payload["history"])
    for name, value in outcome(payload).items():
        setattr(state, name, value)
    set_rng_state(payload["rng"], state.runtime)


def _describe_model(payload: dict[str, Any]) -> str:
    model = payload.get("config", {}).get("model", {})
    classes = len(payload.get("classes", []))
    return f"model {model.get('name')!r} with options {model.get('options', {})}, {classes} classes"


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return " ".join(line.strip() for line in text[:3])[:300] if text else type(err).__name__


def load_model(path: Path, device: str | torch.device = "cpu"):
    """(model in eval mode, Config, meta) from a checkpoint, for eval, analysis and predict."""
    payload = load_checkpoint(Path(path))
    cfg = check_payload(payload, path)
    classes = payload["classes"]
    meta = {key: payload[key] for key in ("classes", "mean", "std", "epoch", "step", "history", "status")}
    meta.update(outcome(payload), precision=payload.get("precision"), image_size=payload.get("image_size"),
                data_fingerprint=payload.get("data_fingerprint"))
    model = build_model(cfg.model, num_classes=len(classes), in_channels=len(payload["mean"]))
    state_dict = payload["ema"] if payload.get("ema") else payload["model"]
    if payload.get("ema"):  # AveragedModel keys: module.<name> plus n_averaged
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items() if k.startswith("module.")}
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, AttributeError, TypeError) as err:
        raise UserError(f"checkpoint {path} does not match its own config ({_describe_model(payload)}): "
                        f"{_first_line(err)}") from None
    return model.to(device).eval(), cfg, meta
