"""Files that are never seen half-written: atomic replace, and appends that reach the disk.

`atomic_write(path, write)` writes through `write(handle)` into a new temporary file in the same folder,
fsyncs it, renames it over `path` and fsyncs the folder: a reader (or a process resumed after a kill)
sees the old file or the whole new one. The temporary file is created by `tempfile.mkstemp`: an
unpredictable name opened with O_CREAT|O_EXCL|O_NOFOLLOW, so a planted file or symlink is never written
through. Any failure removes it; a kill cannot, so the next write into the same folder removes the
temporaries of writers that are no longer running (their pid is part of the name).

`append_line(path, line)` appends one whole line and fsyncs it (metrics.csv).
Errors from the OS become a one-line `WriteError` ("cannot write PATH: No space left on device"), a
`UserError` that is also an `OSError`.
"""
from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from cifarlab.errors import UserError

TEMP_SUFFIX = ".tmp"
STALE_SECONDS = 60  # a dead writer's temporary older than this is removed by the next write beside it


class WriteError(UserError, OSError):
    """A file could not be written: one line for the CLI, and still an OSError for callers that can
    live without the file (a dataset cache)."""


def _umask() -> int:
    try:  # Linux shows it; elsewhere it can only be read by setting it (briefly, once, at import)
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _new_temp(path: Path) -> tuple[int, Path]:
    """A new, empty, exclusively created temporary sibling of `path`, with the permissions open() would give."""
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; a plain open() honours the umask
    except OSError:
        pass
    return fd, Path(name)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temps(path: Path) -> None:
    """Remove temporaries of `path` left by writers that were killed (pid gone, untouched for a minute)."""
    path = Path(path)
    try:
        candidates = list(path.parent.glob(f".{_glob_escape(path.name)}.*{TEMP_SUFFIX}"))
    except OSError:
        return
    now = time.time()
    for temp in candidates:
        pid_text = temp.name[len(path.name) + 2:].split(".", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _pid_alive(int(pid_text)):
            continue
        try:
            if now - temp.lstat().st_mtime > STALE_SECONDS:
                temp.unlink()
        except OSError:
            pass


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def fsync_dir(folder: Path) -> None:
    """Make renames and new names in `folder` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _keep_copy(path: Path, keep_previous: Path) -> None:
    """Put the current `path` at `keep_previous` without `path` ever being absent (a hard link, or a copy)."""
    link = keep_previous.with_name(f"{_temp_prefix(keep_previous)}{secrets.token_hex(6)}{TEMP_SUFFIX}")
    try:
        os.link(path, link)  # a second name for the same file: nothing is copied, `path` stays; never overwrites
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some network and FAT filesystems): copy into a new temporary
        fd, link = _new_temp(keep_previous)
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as source:
                shutil.copyfileobj(source, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            _unlink_quietly(link)
            raise
    try:
        os.replace(link, keep_previous)
    finally:
        # Gone after a rename; but where `keep_previous` already is this same file (a writer killed between
        # keeping the previous file and renaming the new one leaves both names on one inode), POSIX rename
        # does nothing and returns success, and the link would stay forever.
        _unlink_quietly(link)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb",
                 keep_previous: Optional[Path] = None) -> None:
    """Write through `write(file)` into a temporary sibling, fsync, then rename over `path`.

    With `keep_previous`, the existing `path` is first given that second name too, so at every instant
    `path` holds a complete file (the old one, then the new one) and `keep_previous` the one before.
    `mode` is "wb" or "w" (text, UTF-8).
    An OSError becomes a one-line WriteError (a UserError); on any failure the temporary file is removed."""
    path = Path(path)
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    remove_stale_temps(path)
    if keep_previous is not None:  # _keep_copy's temporaries, of a writer killed before their rename
        remove_stale_temps(Path(keep_previous))
    tmp: Optional[Path] = None
    try:
        fd, tmp = _new_temp(path)
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous is not None and path.exists():
            _keep_copy(path, Path(keep_previous))
        os.replace(tmp, path)
        tmp = None
    except WriteError:
        raise
    except OSError as err:
        raise WriteError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        if tmp is not None:
            _unlink_quietly(tmp)
    fsync_dir(path.parent)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling of `path` for tools that write by file name (safetensors, ONNX): what the body
    writes there is fsynced and renamed over `path` when the body returns, and removed if it raises. The name
    carries our pid, so a kill leaves a temporary the next write of `path` sweeps (`remove_stale_temps`)."""
    path = Path(path)
    remove_stale_temps(path)
    try:
        fd, tmp = _new_temp(path)
        os.close(fd)
    except OSError as err:
        raise WriteError(f"cannot write {path}: {err.strerror or err}") from None
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except WriteError:
        raise
    except OSError as err:
        raise WriteError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        _unlink_quietly(tmp)  # gone after the rename; otherwise the failed write's leftover
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text), mode="w")


def atomic_write_bytes(path: Path, data: bytes, keep_previous: Optional[Path] = None) -> None:
    atomic_write(path, lambda handle: handle.write(data), keep_previous=keep_previous)


def append_line(path: Path, line: str, *, durable: bool = True) -> None:
    """Append `line` (a newline is added if missing) as one write, then fsync: a kill leaves whole lines,
    except at worst the last one, which readers must tolerate (metrics.csv's reader drops it)."""
    path = Path(path)
    data = (line if line.endswith("\n") else line + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        raise WriteError(f"cannot write {path}: {err.strerror or err}") from None


def output_target(path: Path, flag: str, folder: bool = False) -> Path:
    """`path` as a place to write, checked before any work is done: a file must not exist yet (nothing is
    overwritten), a folder may exist as a folder; either way the nearest existing parent must be a folder.
    `flag` names the argument in the message (`--out`, `--csv`)."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file; give a folder (new or existing)")
    if not folder and (path.exists() or path.is_symlink()):
        kind = "a folder" if path.is_dir() else "a file"
        raise UserError(f"{flag} {path} already exists ({kind}); give a new file name (nothing is overwritten)")
    parent = next(p for p in path.absolute().parents if p.exists())
    if not parent.is_dir():
        raise UserError(f"{flag} {path} cannot be written: {parent} is a file, not a folder")
    return path
