"""Progress of the long phases outside the training epochs: the LR range test, decoding an image folder,
the report. In a terminal or a notebook a tqdm bar; when the output is a file or a pipe (a batch job,
CI, `| tee log`) a plain line when the phase starts, then one every tenth of the work (but not more often
than every MIN_SECONDS, except the last) and at least every MAX_SILENT_SECONDS, so a log never sits silent for minutes:
a range test of custom-resnet-onecycle on a 2-core CPU used to print nothing for 15 minutes.

`mode` is `output.progress`: auto (a bar on a terminal or in a notebook, lines otherwise), bar, lines, or none.
"""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


def wants_bar(mode: str, stream: TextIO) -> bool:
    """A tqdm bar: asked for, or `auto` on a terminal or in a Jupyter kernel."""
    return mode == "bar" or (mode == "auto" and (_isatty(stream) or in_notebook()))


def in_notebook() -> bool:
    """Running in a Jupyter kernel (where stderr is not a terminal but a bar still renders). Here, not in
    trainer/, so that the data layer need not import the trainer; trainer/writers/progress_printer uses it too."""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or bare stream object
        return False


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class PhaseProgress:
    """`with PhaseProgress("range test", 100, "steps") as progress: ... progress.update(text=...)`."""

    MIN_SECONDS = 5.0  # between two lines, except the one that says the phase is done
    MAX_SILENT_SECONDS = 30.0  # a line at least this often, however slow the steps
    LINE_FRACTION = 0.1  # a line every tenth of the work

    def __init__(self, what: str, total: int, unit: str = "steps", mode: str = "auto",
                 stream: Optional[TextIO] = None, start_text: str = "", announce: bool = True):
        """`announce=False`: no line at the start, so a phase that is usually short (an evaluation) prints
        only once it has taken MIN_SECONDS."""
        self.what, self.total, self.unit = what, max(int(total), 1), unit
        self.stream = stream or sys.stderr
        self.done, self.silent = 0, mode == "none"
        self.started = self.last_line = time.perf_counter()
        self.last_fraction = 0.0
        self.bar = None
        self.printed = False  # a line is out: the phase's end gets one too
        if self.silent:
            return
        if wants_bar(mode, self.stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=self.what, unit=unit.rstrip("s") or unit, file=self.stream,
                            leave=False, dynamic_ncols=True)
        elif announce:
            self._print(f"{what}: {self.total:,} {unit}" + (f", {start_text}" if start_text else ""))

    def update(self, count: int = 1, text: str = "") -> None:
        """`count` more units done; `text` (e.g. the current loss) goes on the line or the bar."""
        self.done += count
        if self.silent:
            return
        if self.bar is not None:
            if text:
                self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(count)
            return
        now = time.perf_counter()
        fraction = self.done / self.total
        since_line = now - self.last_line
        tenth_crossed = int(fraction / self.LINE_FRACTION) > int(self.last_fraction / self.LINE_FRACTION)
        finished_what_it_announced = self.done >= self.total and self.printed
        due = (tenth_crossed and (since_line >= self.MIN_SECONDS or finished_what_it_announced)) \
            or since_line >= self.MAX_SILENT_SECONDS
        if due:
            self.last_line, self.last_fraction = now, fraction
            elapsed = now - self.started
            left = f", about {_duration(elapsed / fraction - elapsed)} left" if 0 < fraction < 1 else ""
            self._print(f"  {self.what}: {self.done:,}/{self.total:,} {self.unit}"
                        + (f" ({text})" if text else "") + f", {_duration(elapsed)} so far{left}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "PhaseProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _print(self, line: str) -> None:
        self.printed = True
        print(line, file=self.stream, flush=True)
