"""Time to accuracy on real Fashion-MNIST: train recipes over several seeds, report mean and spread.

Training time is the `train_seconds` of the run summary (the loop's wall time, evaluation excluded);
the wall time of the whole run (data loading, evaluation every epoch) is shown next to it.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile

import common  # noqa: F401  (puts src/ on the path when run from a checkout)

from cifarlab.experiment import train

TARGETS = {"fmnist-quick": (0.92, 300), "fmnist-fast": (0.94, 240), "fmnist-95": (0.95, 900)}


def run_recipe(recipe: str, seed: int, out_dir: str, extra: list[str]) -> dict:
    overrides = [f"seed={seed}", f"output.dir={out_dir}", "output.report=false", "output.tensorboard=false",
                 "output.progress=none", *extra]
    summary = train(recipe, overrides).summary
    if summary["status"] != "completed":  # an interrupted (SIGTERM) or diverged run is no time-to-accuracy figure
        raise SystemExit(f"{recipe} seed {seed}: the run ended {summary['status']}; no figure reported")
    return summary


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", default=list(TARGETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    args = parser.parse_args(argv)
    extra = args.set
    results = {}
    with tempfile.TemporaryDirectory() as out_dir:
        for recipe in args.recipes:
            runs = []
            for seed in args.seeds:
                summary = run_recipe(recipe, seed, out_dir, extra)
                runs.append(summary)
                print(f"  {recipe} seed {seed}: final {100 * summary['final_test_acc']:.2f}%, best "
                      f"{100 * summary['best_test_acc']:.2f}%, train {summary['train_seconds']:.0f} s, "
                      f"wall {summary['wall_seconds']:.0f} s, {summary['train_images_per_second']:.0f} img/s",
                      flush=True)
            results[recipe] = runs
            print(describe(recipe, runs), flush=True)
    return results


def describe(recipe: str, runs: list[dict]) -> str:
    accs = [100 * r["final_test_acc"] for r in runs]
    secs = [r["train_seconds"] for r in runs]
    target_acc, target_s = TARGETS.get(recipe, (None, None))
    goal = f" (target {100 * target_acc:.0f}% in {target_s / 60:.0f} min)" if target_acc else ""
    sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
    return (f"{recipe}{goal}: final test accuracy mean {statistics.mean(accs):.2f}% ± {sd:.2f} "
            f"(min {min(accs):.2f}, max {max(accs):.2f}) over {len(runs)} seeds; training "
            f"{statistics.mean(secs):.0f} s mean (min {min(secs):.0f}, max {max(secs):.0f})")


if __name__ == "__main__":
    main()
