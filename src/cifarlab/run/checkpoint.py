"""Checkpoint files: how a `Checkpoint` (run/checkpoint_record.py: what a checkpoint holds, and its checks)
is written and read.

Writes go to a temporary file in the same folder, are fsynced, then renamed over the target, so a kill
during a save never leaves a half-written `last.pt`; the file it replaces is kept as `last.prev.pt`.
The file is a normal `torch.save` archive of a plain mapping followed by a one-line trailer with the sha256
of the archive bytes (zip readers, `torch.load` included, ignore trailing bytes), so a truncated or
bit-flipped file is caught even where `torch.load` would happily read it. Loads use
`torch.load(weights_only=True)`: a checkpoint from the internet cannot run code. A bad newest file falls
back to `.prev` with a warning. `read_checkpoint` then checks the content (`Checkpoint.check`).
"""
from __future__ import annotations

import hashlib
import io
import os
import platform
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from cifarlab._version import __version__
from cifarlab.atomic import atomic_write_bytes
from cifarlab.errors import UserError
from cifarlab.messages import warn
from cifarlab.run.checkpoint_record import FORMAT_VERSION, Checkpoint
from cifarlab.run.layout import BEST, CHECKPOINTS, previous_path
from cifarlab.run.outcomes import EarlyStopped

__all__ = ["FORMAT_VERSION", "Checkpoint", "StoredOutcome", "load_checkpoint", "load_checkpoint_with_path", "outcome",
           "read_checkpoint", "save_checkpoint", "versions"]

TRAILER_TAG = b"\nCIFARLAB-SHA256 "
TRAILER_BYTES = len(TRAILER_TAG) + 64 + 1  # tag, hex digest, newline
# TrainState fields about how the run went that a resumed run must know (older files kept them in "extra").
OUTCOME_FIELDS = ("lr_peak", "lr_peak_source", "early_stop")
# A load reads at most this many bytes (a device file or a huge download must not read until MemoryError).
MAX_BYTES_ENV = "CIFARLAB_MAX_CHECKPOINT_BYTES"
DEFAULT_MAX_BYTES = 4 * 1024**3


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": str(torch.__version__), "cifarlab": __version__}


@dataclass(frozen=True)
class StoredOutcome:
    """A checkpoint's "outcome": how the run chose its peak lr, and its early stop (None: none took effect)."""
    lr_peak: Optional[float] = None
    lr_peak_source: Optional[str] = None
    early_stop: Optional[EarlyStopped] = None

    def to_json(self) -> dict[str, Any]:
        return {"lr_peak": self.lr_peak, "lr_peak_source": self.lr_peak_source,
                "early_stop": self.early_stop.to_json() if self.early_stop is not None else None}


def outcome(payload: dict[str, Any]) -> StoredOutcome:
    """The payload's OUTCOME_FIELDS (missing ones None), whichever format wrote it."""
    stored = payload.get("outcome") or payload.get("extra") or {}
    return StoredOutcome(stored.get("lr_peak"), stored.get("lr_peak_source"),
                         EarlyStopped.from_json(stored.get("early_stop")))


def serialize(payload: dict[str, Any]) -> bytes:
    """torch.save bytes plus the sha256 trailer (see module doc)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    return body + TRAILER_TAG + hashlib.sha256(body).hexdigest().encode() + b"\n"


def save_checkpoint(checkpoint: Checkpoint | dict[str, Any], *paths: Path) -> None:
    """Serialise once, write each of `paths` atomically (e.g. best.pt and last.pt of the same epoch)."""
    data = serialize(checkpoint.to_payload() if isinstance(checkpoint, Checkpoint) else checkpoint)
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
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:  # its keys: Checkpoint.check
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
    """A checkpoint file's mapping, unchecked (see `read_checkpoint`); if the file is bad and a `.prev`
    sibling is good, warn and use that instead."""
    return load_checkpoint_with_path(path)[0]


def read_checkpoint(path: Path, resume: bool = False) -> tuple[Checkpoint, Path]:
    """(the checked Checkpoint, the file it came from: `path`, or its `.prev` sibling with a warning when
    `path` is bad). `resume`: also check what a resume restores."""
    payload, used = load_checkpoint_with_path(path)
    return Checkpoint.check(payload, used, resume=resume), used
