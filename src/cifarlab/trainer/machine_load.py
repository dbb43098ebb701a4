"""How much of the machine other processes used while this one measured: Linux's /proc/stat, less our own.

Why the probe needs it: its timings are CPU seconds of our process, meant to be blind to neighbours, and for
fp32 they are. bf16 on an AMX Xeon in a VM is not: with another process busy on the cores, a 2-thread bf16
step of convnet width 8 took 1-5 CPU seconds where it takes 0.08 on a quiet machine (fp32: 0.12-0.4), so a
probe taken then picked fp32 (`bf16 0.03x fp32`) and, cached, kept it for every later run (docs/precision.md).
A measurement taken while the machine was busy is still the run's answer, but not the machine's.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional

BUSY_SHARE = 0.25  # other processes using a quarter of the machine's CPU make a measurement "busy"
QUIET_SAMPLE_SECONDS = 0.3  # how long `others_share_now` watches (USER_HZ ticks are 10 ms: 60 on 2 cores)
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user, nice, system, irq, softirq, steal (guest time is inside user)


@dataclass(frozen=True)
class CpuMark:
    """The machine's busy CPU seconds since boot (every core), ours, and the wall clock, at one moment."""
    machine_busy: float
    ours: float
    wall: float


def mark(stat_path: str = "/proc/stat") -> Optional[CpuMark]:
    """Now, or None where the machine's counters cannot be read (not Linux)."""
    try:
        with open(stat_path) as stat:
            fields = stat.readline().split()
        ticks = os.sysconf("SC_CLK_TCK")
        busy = sum(int(fields[1 + index]) for index in _BUSY_FIELDS if 1 + index < len(fields))
    except (OSError, ValueError, IndexError):
        return None
    return CpuMark(busy / ticks, time.process_time(), time.perf_counter())


def others_share(start: Optional[CpuMark], end: Optional[CpuMark], cores: Optional[int] = None) -> Optional[float]:
    """The fraction of the machine's CPU (cores x wall seconds) that other processes used between two marks;
    None where either is unknown or too close together to say."""
    if start is None or end is None or end.wall - start.wall < 0.05:
        return None
    capacity = (cores or os.cpu_count() or 1) * (end.wall - start.wall)
    others = (end.machine_busy - start.machine_busy) - (end.ours - start.ours)
    return min(1.0, max(0.0, others / capacity))


def others_share_now(seconds: float = QUIET_SAMPLE_SECONDS) -> Optional[float]:
    """What other processes use of the machine right now, watched for `seconds` while this one sleeps."""
    start = mark()
    time.sleep(seconds)
    return others_share(start, mark())


def is_busy(share: Optional[float]) -> bool:
    return share is not None and share >= BUSY_SHARE
