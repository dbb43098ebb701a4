"""Start-up time of a cifarlab command: median wall and CPU time over several runs, optionally against another
installation's `cifarlab` side by side (alternating, so both see the same machine load).

    python bench/startup.py recipes
    python bench/startup.py --against /work/main/.venv/bin/cifarlab show smoke

CPU time (the child's user + sys) is the figure to trust on a shared machine; wall time waits for the CPU.
"""
from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def timed(command: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of `command`, its output discarded."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--against", help="another `cifarlab` executable, timed alternately with this one")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the cifarlab command, e.g. recipes")
    options = parser.parse_args()
    own = shutil.which("cifarlab", path=str(Path(sys.executable).parent)) or "cifarlab"
    executables = {"this": own, **({"against": options.against} if options.against else {})}
    times = {name: [] for name in executables}
    for _ in range(options.runs):
        for name, executable in executables.items():
            times[name].append(timed([executable, *options.args]))
    for name, runs in times.items():
        wall, cpu = zip(*runs)
        print(f"{name} ({executables[name]}) cifarlab {' '.join(options.args)}: median wall "
              f"{statistics.median(wall):.2f} s (min {min(wall):.2f}), median CPU {statistics.median(cpu):.2f} s")


if __name__ == "__main__":
    main()
