"""The run lock: one process trains a run directory at a time."""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Optional

from cifarlab.errors import UserError
from cifarlab.run.layout import LOCK


class RunBusy(UserError):
    """Another live process holds the run's lock (it is training the run now)."""


class RunLock:
    """An exclusive `flock` on the run directory itself, held while a process trains the run.

    The lock is on the directory's own file descriptor, so taking it writes nothing (a refused `resume`
    leaves the run byte for byte as it was, and no stale lock file is left behind), and the kernel drops it
    when the process exits, however it exits (SIGKILL included). On a file system that cannot lock a
    directory it falls back to locking `.lock` inside the run directory."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        """Take the lock, or RunBusy (a UserError) when another process holds it (nothing is written either way)."""
        try:
            self.fd = os.open(self.run_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                os.close(self.fd)  # no locks on directories here (e.g. NFS): lock a file in the run directory
                self.fd = None
                self.fd = os.open(self.run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            self.release()
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise RunBusy(f"run {self.run_dir} is being trained by another process right now; wait for it "
                                f"to finish, or stop it (Ctrl-C, kill), before resuming it") from None
            raise UserError(f"cannot lock run directory {self.run_dir}: {err.strerror or err}") from None
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None

    def __enter__(self) -> "RunLock":  # `with lock:` releases an acquired lock at the end; it takes none
        return self

    def __exit__(self, *exc) -> None:
        self.release()
