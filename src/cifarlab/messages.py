"""What cifarlab tells its user (the run directory, the data, resuming, warnings, the closing line) goes
through the standard `logging` module, logger `cifarlab`, so a library user can quiet or route it:

    logging.getLogger("cifarlab").setLevel(logging.WARNING)      # warnings only
    logging.getLogger("cifarlab").addHandler(my_handler)          # before the first message: instead of stderr

By default the messages print to stderr as plain lines, as a command line tool's would: on its first
message the logger gets a handler writing to (the current) `sys.stderr`, unless it has one of its own
already, and does not propagate to the root logger, so a program that configured the root logger sees
each line once (set `propagate = True` and remove the handler to route them through the root instead).
A run with `output.progress: none` is quiet: its informational lines are left out, its warnings are not.
Progress bars and epoch lines are the progress display's own (`progress.py`), not messages.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

LOGGER = logging.getLogger("cifarlab")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a message comes (a test's capture, a redirect), flushed."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler sets it once; the current sys.stderr is used instead
        pass


def logger() -> logging.Logger:
    """The `cifarlab` logger, given its default stderr handler on first use (see the module)."""
    if not LOGGER.handlers:
        LOGGER.addHandler(_StderrHandler())
        LOGGER.propagate = False
    if LOGGER.level == logging.NOTSET:  # informational lines are what a run says; a level set by the user stays
        LOGGER.setLevel(logging.INFO)
    return LOGGER


def say(text: str) -> None:
    """An informational message (left out by a quiet run)."""
    logger().info(text)


def warn(text: str) -> None:
    """A warning: printed even by a quiet run."""
    logger().warning(text)


@contextlib.contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Informational messages left out while inside (`output.progress: none`); warnings still print."""
    if not enabled:
        yield
        return
    log, level = logger(), LOGGER.level
    log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        log.setLevel(level)
