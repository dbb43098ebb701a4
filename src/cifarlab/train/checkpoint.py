"""Checkpoints that hold everything the next step depends on, written atomically, loaded safely.

Writes go to a temporary file in the same folder, are fsynced, then renamed over the target, so a kill
during a save never leaves a half-written `last.pt`; the file it replaces is kept as `last.prev.pt`.
Loads use `torch.load(weights_only=True)`: a checkpoint from the internet cannot run code.
"""
from __future__ import annotations

import os
import platform
import random
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from cifarlab.errors import UserError

FORMAT_VERSION = 1


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through `write(file)` into a temporary sibling, fsync, then rename over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text), mode="w")


def versions() -> dict[str, str]:
    from cifarlab import __version__

    return {"python": platform.python_version(), "torch": str(torch.__version__), "cifarlab": __version__}


def rng_state(runtime) -> dict[str, Any]:
    state = {"python": list(random.getstate()[1]), "python_pos": random.getstate()[2], "torch": torch.get_rng_state()}
    if runtime.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(runtime.device)
    return state


def set_rng_state(state: dict[str, Any], runtime) -> None:
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and runtime.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], runtime.device)


def make_payload(state) -> dict[str, Any]:
    """Everything the next step depends on (see module doc); plain tensors and containers only."""
    payload = {
        "format": FORMAT_VERSION,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "schedule": state.schedule.state_dict(),
        "scaler": state.grad_step.scaler.state_dict() if state.grad_step.scaler is not None else None,
        "ema": state.ema.state_dict() if state.ema is not None else None,
        "epoch": state.epoch,
        "step": state.step,
        "batch_in_epoch": state.batch_in_epoch,
        "elapsed_seconds": state.elapsed_seconds,
        "epoch_meter": state.epoch_meter.totals.cpu(),
        "window_meter": state.window_meter.totals.cpu(),
        "rng": rng_state(state.runtime),
        "history": state.history,
        "config": state.cfg.to_dict(),
        "classes": list(state.classes),
        "mean": list(state.train_loader.mean),
        "std": list(state.train_loader.std),
        "status": state.status,
        "extra": state.extra,
        "versions": versions(),
    }
    return payload


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        previous = path.with_name(path.stem + ".prev" + path.suffix)
        os.replace(path, previous)
    atomic_write(path, lambda handle: torch.save(payload, handle))


def _read(path: Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except Exception as err:  # truncated zip, pickle of code objects, wrong file type...
        raise UserError(f"checkpoint {path} is corrupt or not a cifarlab checkpoint ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION or "model" not in payload:
        raise UserError(f"{path} is not a cifarlab checkpoint (format {FORMAT_VERSION} expected)")
    return payload


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint; if it is bad and a `.prev` sibling is good, warn and use that instead."""
    path = Path(path)
    try:
        return _read(path)
    except UserError as err:
        previous = path.with_name(path.stem + ".prev" + path.suffix)
        if not previous.exists():
            raise
        warnings.warn(f"{err}; falling back to the previous checkpoint {previous}", stacklevel=2)
        return _read(previous)


def restore(state, payload: dict[str, Any]) -> None:
    """Put a payload back into a freshly built TrainState (same config), ready for the next step."""
    state.model.load_state_dict(payload["model"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.schedule.load_state_dict(payload["schedule"])
    if state.grad_step.scaler is not None and payload["scaler"] is not None:
        state.grad_step.scaler.load_state_dict(payload["scaler"])
    if state.ema is not None and payload["ema"] is not None:
        state.ema.load_state_dict(payload["ema"])
    state.epoch, state.step = payload["epoch"], payload["step"]
    state.batch_in_epoch = payload["batch_in_epoch"]
    state.elapsed_seconds = payload["elapsed_seconds"]
    state.epoch_meter.totals.copy_(payload["epoch_meter"])
    state.window_meter.totals.copy_(payload["window_meter"])
    state.history = list(payload["history"])
    state.extra = dict(payload.get("extra", {}))
    set_rng_state(payload["rng"], state.runtime)


def load_model(path: Path, device: str | torch.device = "cpu"):
    """(model in eval mode, Config, meta) from a checkpoint, for eval, analysis and predict."""
    from cifarlab.config import validate
    from cifarlab.experiment import build_model

    payload = load_checkpoint(Path(path))
    cfg = validate(payload["config"])
    classes = payload["classes"]
    meta = {key: payload[key] for key in ("classes", "mean", "std", "epoch", "step", "history", "status", "extra")}
    model = build_model(cfg.model, num_classes=len(classes), in_channels=len(payload["mean"]))
    state_dict = payload["ema"] if payload.get("ema") else payload["model"]
    if payload.get("ema"):  # AveragedModel keys: module.<name> plus n_averaged
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items() if k.startswith("module.")}
    model.load_state_dict(state_dict)
    return model.to(device).eval(), cfg, meta
