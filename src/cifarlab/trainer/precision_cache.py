"""The answers `auto` measured, kept per machine and run shape so that a second run pays nothing.

One small JSON file per key under `cache_dir()`: device name and flags, the threads a CPU step runs on,
torch version, model and options, batch shape, memory format, optimizer, the candidates. The cache is a
file anyone can edit, so an entry is taken only where its key matches, its pick is one of the candidates and
its reason reads as a measurement; anything else is measured again, never an error. An answer measured while
other processes were busy is taken only while they still are (`machine_load`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from cifarlab.atomic import atomic_write_text
from cifarlab.errors import UserError
from cifarlab.trainer import machine_load

CACHE_ENV = "CIFARLAB_CACHE"
CACHE_VERSION = 1


@dataclass(frozen=True)
class PrecisionChoice:
    """What `auto` took and why: `reason` goes into summary.json (`precision_source`), `line()` on stderr."""
    name: str
    reason: str

    def line(self) -> str:
        return f"precision: {self.name} ({self.reason})"


def cache_dir() -> Path:
    """$CIFARLAB_CACHE, else $XDG_CACHE_HOME/cifarlab, else ~/.cache/cifarlab; then autotune/."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "cifarlab")
    return Path(root).expanduser() / "autotune"


def device_identity(device: torch.device) -> dict:
    """What the answer depends on about the hardware: the GPU's name and capability, or the CPU's model
    name and its flags (torch's read of cpuinfo), and the threads a CPU step runs on."""
    if device.type == "cuda":
        return {"gpu": torch.cuda.get_device_name(device), "capability": list(torch.cuda.get_device_capability(device))}
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    flags = capabilities() if capabilities is not None else {}
    return {"cpu": cpu_name(), "flags": sorted(name for name, value in flags.items() if value is True),
            "threads": torch.get_num_threads()}


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what torch reads, else "unknown CPU"."""
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration, IndexError):
        capabilities = getattr(torch.cpu, "get_capabilities", None)
        return (capabilities() if capabilities else {}).get("cpu_name") or "unknown CPU"


def cache_key(model_cfg, optim_name: str, shape: tuple[int, ...], num_classes: int, device: torch.device,
              channels_last: bool, order: Sequence[str]) -> dict:
    return {"version": CACHE_VERSION, "setting": "precision", "device": device_identity(device),
            "torch": torch.__version__, "model": model_cfg.name, "options": dict(model_cfg.options),
            "optimizer": optim_name, "batch_shape": list(shape), "num_classes": num_classes,
            "channels_last": channels_last, "candidates": list(order)}


def _cache_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return cache_dir() / f"precision-{digest}.json"


def read_cached(key: dict) -> Optional[PrecisionChoice]:
    """The cached answer for `key`, or None where there is none, or the file is unreadable, not JSON, for
    another key (an edit, a hash collision) or names a candidate not allowed: measure again. An answer
    measured while other processes were busy is taken only while they still are (`machine_load`): on a
    quiet machine it is measured again, and the quiet answer replaces it."""
    path = _cache_path(key)
    if not path.is_file():  # a FIFO there would block the run forever on open; a folder or device is no entry
        return None
    try:
        entry = json.loads(path.read_text())
        same_key = json.dumps(entry["key"], sort_keys=True, default=str) == json.dumps(key, sort_keys=True, default=str)
        valid = same_key and entry["name"] in key["candidates"] and is_measured_reason(entry["reason"])
        busy = entry.get("busy", False)  # absent in files written before it was recorded
        if valid and (busy is False or (busy is True and machine_load.is_busy(machine_load.others_share_now()))):
            return PrecisionChoice(entry["name"], f"{entry['reason']}; cached in {cache_dir()}")
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        pass
    return None


_RATIO = r"([0-9]+\.[0-9]{2}x|out \(non-finite loss or a failed step\))"
MEASURED_REASON = re.compile(rf"measured ([a-z0-9]+ )?{_RATIO} [a-z0-9]+(, [a-z0-9]+ {_RATIO})* on [ -~]+")


def is_measured_reason(reason) -> bool:
    """Whether a cached `reason` reads as `measured_reason` writes it: the cache is a file anyone can edit, and
    the reason is printed and kept in summary.json, so an escape sequence, a second line or a page of text in
    it is an edit, not a measurement (the run then measures again)."""
    return isinstance(reason, str) and len(reason) <= MAX_REASON_CHARS and MEASURED_REASON.fullmatch(reason) is not None


MAX_REASON_CHARS = 400


def write_cached(key: dict, choice: PrecisionChoice, busy: bool = False) -> None:
    """Atomically (a reader sees the old file or the new one); a cache folder that cannot be written only
    costs the next run a measurement."""
    try:
        path = _cache_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"key": key, "name": choice.name, "reason": choice.reason,
                                             "busy": busy}, default=str))
    except (OSError, UserError):
        pass
