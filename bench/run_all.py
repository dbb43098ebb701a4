"""All benchmarks in one run (`make bench`): throughput vs the reference pipeline, loop overhead, and
(unless --no-accuracy) time to accuracy of the Fashion-MNIST recipes.

On a CPU shared with other work, OpenMP threads that spin while they wait for each other are slowed
badly by every other process; passive waiting costs little when the machine is idle and helps a lot
when it is not, so it is the default here (export OMP_WAIT_POLICY yourself to override).
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when the OpenMP runtime loads, i.e. import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402

import loop_overhead  # noqa: E402
import throughput  # noqa: E402
import time_to_accuracy  # noqa: E402
from common import machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-accuracy", action="store_true", help="skip the time-to-accuracy runs (~1 h)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--width", type=int, default=8, help="convnet width for the speed benchmarks")
    args = parser.parse_args()
    print(f"machine: {machine()}\nOMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}\n", flush=True)
    throughput.main(["--width", str(args.width)])
    print(flush=True)
    loop_overhead.main(["--width", str(args.width), "--steps", "30", "--repeats", "7"])
    if not args.no_accuracy:
        print(flush=True)
        time_to_accuracy.main(["--seeds", *map(str, args.seeds)])
    print(f"\nload average at the end: {machine().rsplit('load average ', 1)[1]}")


if __name__ == "__main__":
    main()
