"""Screen levers of the CPU frontier (issue 25) side by side: each variant of a recipe over a few seeds.

Each (variant, seed) is one child process at one thread (`OMP_NUM_THREADS=1`, `train.threads=1`), `--parallel`
of them at a time, so variants share the machine's load alike. A child reports its validation accuracy (what a
lever is chosen on), its test accuracy (reported, never chosen on) and its process CPU seconds for the whole run
(data, precision probe and evaluations included): on a shared machine the wall clock counts other processes'
turns, CPU time does not.

    python bench/frontier.py fmnist-fast --seeds 0 1 --set train.epochs=3 data.val_split=5000 \
        --variant base= --variant ema=train.ema=0.99 --variant ls0=optim.label_smoothing=0
    python bench/frontier.py fmnist-fast --seeds 0 --variant "pr=progressive=20:5,24:8"   # progressive resizing
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed

import common

PROGRESSIVE = "progressive="  # a screen-only lever, not a config key: `progressive=20:5,24:8` (below)


def progressive_resizing(plan: str):
    """A callback that trains the first epochs on smaller images: `20:5,24:8` is 20x20 pixels in epochs 0-4,
    24x24 in 5-7, full size after (bilinear, antialiased, after augmentation; evaluation stays at full size).
    Written here, in the screen, to measure the lever before the loader grows an option for it: the convnet's
    global max-pool takes any size, so only the batches change."""
    import torch
    import torch.nn.functional as F

    from cifarlab.trainer.callbacks import Callback

    stages = sorted((int(until), int(size)) for size, until in (item.split(":") for item in plan.split(",")))

    class Progressive(Callback):
        def on_fit_start(self, state):
            loader = state.objects.train_loader
            full = loader.make_batch

            def make_batch(indices, epoch=0, batch_index=0):
                inputs, labels = full(indices, epoch, batch_index)
                size = next((size for until, size in stages if epoch < until), None)
                if size is not None and size < inputs.shape[-1]:
                    inputs = F.interpolate(inputs, size=(size, size), mode="bilinear", antialias=True,
                                           align_corners=False).contiguous(memory_format=torch.channels_last)
                return inputs, labels

            loader.make_batch = make_batch

    return Progressive()


def child(recipe: str, seed: int, overrides: list[str]) -> dict:
    from cifarlab.experiment import train

    plans = [item[len(PROGRESSIVE):] for item in overrides if item.startswith(PROGRESSIVE)]
    overrides = [item for item in overrides if not item.startswith(PROGRESSIVE)]
    with tempfile.TemporaryDirectory() as out_dir:
        summary = train(recipe, [f"seed={seed}", f"output.dir={out_dir}", "output.report=false",
                                 "output.tensorboard=false", "output.progress=none", "train.threads=1",
                                 *overrides], callbacks=[progressive_resizing(plan) for plan in plans]
                        ).summary.to_json()  # summary.json's keys
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {key: summary.get(key) for key in ("status", "final_val_acc", "final_test_acc", "best_val_acc",
                                              "best_test_acc", "train_seconds", "precision")} | \
        {"cpu_seconds": usage.ru_utime + usage.ru_stime}


def run_one(recipe: str, seed: int, overrides: list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    done = subprocess.run([sys.executable, __file__, "--child", recipe, str(seed), json.dumps(overrides)],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def stats(values: list[float], scale: float = 1.0, fmt: str = ".2f") -> str:
    values = [scale * v for v in values if v is not None]
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):{fmt}} ± {sd:{fmt}}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every variant")
    parser.add_argument("--variant", action="append", required=True, metavar="NAME=KEY=VALUE[;KEY=VALUE]",
                        help="a named variant and its overrides (separated by ';'; `base=` for none)")
    parser.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args(argv)
    variants = {}
    for spec in args.variant:
        name, _, rest = spec.partition("=")
        variants[name] = [item for item in rest.split(";") if item]
    jobs = [(name, seed) for seed in args.seeds for name in variants]
    print(f"machine: {common.machine()}; {args.recipe} {' '.join(args.set)}", flush=True)
    results = {}
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = {pool.submit(run_one, args.recipe, seed, [*args.set, *variants[name]]): (name, seed)
                   for name, seed in jobs}
        for future in as_completed(futures):  # each as it ends, so a stopped screen keeps what it measured
            name, seed = futures[future]
            results[(name, seed)] = future.result()
            print(f"  {name} seed {seed}: {json.dumps(results[(name, seed)])}", flush=True)
    print(f"\n| variant | overrides | val acc % | test acc % | CPU s | n | (load at the end: {common.load()})")
    for name, overrides in variants.items():
        runs = [results[(name, seed)] for seed in args.seeds if "error" not in results[(name, seed)]]
        print(f"| {name} | {' '.join(overrides) or '-'} | {stats([r['final_val_acc'] for r in runs], 100)} | "
              f"{stats([r['final_test_acc'] for r in runs], 100)} | {stats([r['cpu_seconds'] for r in runs], 1, '.0f')}"
              f" | {len(runs)} |", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]))))
    else:
        main()
