"""Files that are either the old version or the whole new one: write a temporary sibling, fsync, rename.

Every file cifarlab writes that a later step reads back (checkpoints, config.yaml, summary.json,
metrics.csv rewrites, dataset caches) goes through here, so a kill at any instant leaves a readable file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional

from cifarlab.errors import UserError


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb", keep_previous: Optional[Path] = None) -> None:
    """Write through `write(file)` into a temporary sibling, fsync, then rename over `path`.

    With `keep_previous`, an existing `path` is renamed to it just before the new file takes its place,
    so at every instant either `path` or `keep_previous` holds a complete file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except OSError as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text), mode="w")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
