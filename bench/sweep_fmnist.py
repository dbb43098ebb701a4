"""Issue 19 item 8: a sweep of fmnist-quick (smaller: a training subset, fewer epochs) over the learning
rate and weight decay on real Fashion-MNIST, selecting on a validation split, against the recipe's own
settings trained the same way. Prints one markdown table for bench/README.md.

    python bench/sweep_fmnist.py --out /tmp/sweep-bench --trials 10
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SHARED = ["data.train_subset=10000", "data.val_split=2000", "train.epochs=3", "output.progress=none",
          "output.tensorboard=false", "output.report=false", "data.download=false"]
SPACE = "optim.lr: {low: 0.01, high: 1.0, log: true}\noptim.weight_decay: {low: 1.0e-5, high: 1.0e-2, log: true}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("sweep-bench"))
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    space = args.out / "lr-wd.yaml"
    space.write_text(SPACE)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cifarlab", "train", "fmnist-quick", *SHARED,
                    f"output.dir={args.out / 'baseline'}"], check=True)
    baseline_seconds = time.perf_counter() - started
    baseline = json.loads(next((args.out / "baseline").rglob("summary.json")).read_text())
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cifarlab", "sweep", "fmnist-quick", str(space), *SHARED,
                    "--trials", str(args.trials), "--pruner", "none", "--dir", str(args.out / "sweep")], check=True)
    sweep_seconds = time.perf_counter() - started
    print(f"baseline (recipe settings lr 0.1, wd 5e-4): val {baseline['best_val_acc']:.4f}, "
          f"test {100 * baseline['best_test_acc']:.2f}% in {baseline_seconds:.0f} s wall")
    print(f"sweep: {args.trials} trials in {sweep_seconds:.0f} s wall; table in {args.out / 'sweep' / 'report.md'}")
    print((args.out / "sweep" / "trials.csv").read_text())


if __name__ == "__main__":
    main()
