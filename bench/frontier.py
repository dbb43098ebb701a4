"""Screen levers of the CPU frontier (issue 25) side by side: each variant of a recipe over a few seeds.

Each (variant, seed) is one child process at one thread (`OMP_NUM_THREADS=1`, `train.threads=1`; `--threads N`
for N, as a run of the recipe on this machine would), `--parallel` of them at a time, so variants share the
machine's load alike. A child reports its validation accuracy (what a lever is chosen on), its test accuracy
(reported, never chosen on) and its process CPU seconds for the whole run (data, precision probe and evaluations
included): on a shared machine the wall clock counts other processes' turns, CPU time does not.

    python bench/frontier.py fmnist-fast --seeds 0 1 --set train.epochs=3 data.val_split=5000 \
        --variant base= --variant ema=train.ema=0.99 --variant ls0=optim.label_smoothing=0
    python bench/frontier.py fmnist-fast --seeds 0 --variant "pr=progressive=20:5,24:8"   # progressive resizing
    python bench/frontier.py fmnist-fast --seeds 0 1 --variant base= --variant wi=whiten=init --variant wf=whiten=frozen
    python bench/frontier.py fmnist-fast --seeds 0 --variant base= --variant nores=drop=features.5
    python bench/frontier.py fmnist-fast --seeds 0 --variant base= --variant gelu=act=gelu --variant ceil=pool=ceil
    python bench/frontier.py fmnist-fast --seeds 1 2 --parallel 1 --threads 2 --variant f32=fp32=features.0.0
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
WHITEN = "whiten="  # another: `whiten=init` or `whiten=frozen` (below)
DROP = "drop="  # another: `drop=features.5` trains without that layer (below)
ACT = "act="  # another: `act=gelu` swaps every ReLU for a GELU (below)
POOL = "pool="  # another: `pool=ceil` rounds max-pooled sizes up (7x7 -> 4x4, not 3x3) (below)
FP32 = "fp32="  # another: `fp32=features.0.0` runs that layer outside autocast, in float32 (below)
SCREEN_ONLY = (PROGRESSIVE, WHITEN, DROP, ACT, POOL, FP32)


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


def whitened_first_layer(mode: str, eps: float = 5e-4):
    """A callback that sets the network's first convolution to whiten its k x k input patches before training:
    the leading out_channels/2 eigenvectors of the training patches' covariance and their negatives, each
    scaled by 1/sqrt(eigenvalue + eps) (airbench's whitening layer, Page 2018, which fastnet has as an extra
    2x2 layer; here convnet's own 3x3 first layer takes the filters, so a step costs the same). `init`
    trains them from there, `frozen` keeps them. Written in the screen, as progressive resizing was, to
    measure the lever before convnet grows an option for it."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from cifarlab.trainer.callbacks import Callback

    if mode not in ("init", "frozen"):
        raise SystemExit(f"whiten= takes init or frozen, got {mode!r}")

    class Whiten(Callback):
        def on_fit_start(self, state):
            conv = next(m for m in state.objects.model.modules() if isinstance(m, nn.Conv2d))
            loader = state.objects.train_loader
            sample = loader.make_batch(torch.arange(min(5000, loader.num_images), device=conv.weight.device))[0]
            C, k = conv.in_channels, conv.kernel_size[0]
            patches = F.unfold(sample.double(), k).transpose(1, 2).reshape(-1, C * k * k)
            patches = patches - patches.mean(0)
            eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
            top = eigenvalues.argsort(descending=True)[:min(conv.out_channels // 2, C * k * k)]
            filters = eigenvectors[:, top].T / torch.sqrt(eigenvalues[top].clamp_min(0) + eps)[:, None]
            filters = torch.cat([filters, -filters]).reshape(-1, C, k, k)
            with torch.no_grad():
                conv.weight[:len(filters)] = filters.to(conv.weight.dtype)
            if mode == "frozen":
                conv.weight.requires_grad_(False)  # no gradient: SGD and its weight decay skip it

    return Whiten()


def dropped_layer(name: str):
    """A callback that replaces one submodule of the network (`features.5`: convnet's last residual, the two
    128-channel convolutions on 3x3 maps, 16% of a step in the profile) with the identity before training, to
    measure what that layer buys against what it costs. Its parameters stay in the optimizer without a
    gradient, so SGD and weight decay skip them."""
    from torch import nn

    from cifarlab.trainer.callbacks import Callback

    class Drop(Callback):
        def on_fit_start(self, state):
            parent_name, _, child_name = name.rpartition(".")
            parent = state.objects.model.get_submodule(parent_name)
            if not hasattr(parent, child_name):
                raise SystemExit(f"drop= names no layer of the model: {name!r}")
            setattr(parent, child_name, nn.Identity())

    return Drop()


def swapped_modules(kind: str, value: str):
    """A callback that changes the network's modules before training: `act=gelu` puts a GELU (exact, as
    airbench's blocks have) where each ReLU was; `pool=ceil` sets ceil_mode on every max-pool, which changes
    only convnet's last one (7x7 -> 4x4 instead of 3x3, so its last residual sees the 7th row and column and
    costs 16/9 as much). Neither has parameters, so the optimizer built before is unaffected."""
    from torch import nn

    from cifarlab.trainer.callbacks import Callback

    if (kind, value) not in (("act", "gelu"), ("pool", "ceil")):
        raise SystemExit(f"{kind}= takes {'gelu' if kind == 'act' else 'ceil'}, got {value!r}")

    class Swap(Callback):
        def on_fit_start(self, state):
            for module in list(state.objects.model.modules()):
                for name, layer in list(module.named_children()):
                    if kind == "act" and isinstance(layer, nn.ReLU):
                        setattr(module, name, nn.GELU())
                    elif kind == "pool" and isinstance(layer, nn.MaxPool2d):
                        layer.ceil_mode = True

    return Swap()


def float32_layer(name: str):
    """A callback that runs one submodule outside autocast, in float32 (`features.0.0`: convnet's first
    convolution, 1 -> 16 channels on 28x28, 0.6% of the FLOPs). Under bf16 its rounded output reaches every
    later layer: on real batches of a trained model that made the weight gradients 0.07-0.13 from float64
    where a float32 first layer made them 0.06-0.08 (bench/README.md, session 12). It paid, so convnet has it as
    `model.options.fp32_first`; this lever stays for any other layer or model."""
    import torch

    from cifarlab.trainer.callbacks import Callback

    class Float32(Callback):
        def on_fit_start(self, state):
            try:
                layer = state.objects.model.get_submodule(name)
            except AttributeError:
                raise SystemExit(f"fp32= names no layer of the model: {name!r}") from None
            inner = layer.forward

            def forward(inputs):
                with torch.autocast(inputs.device.type, enabled=False):
                    return inner(inputs.float())

            layer.forward = forward

    return Float32()


def child(recipe: str, seed: int, overrides: list[str], threads: int = 1) -> dict:
    from cifarlab.experiment import train

    callbacks = [progressive_resizing(item[len(PROGRESSIVE):]) for item in overrides if item.startswith(PROGRESSIVE)]
    callbacks += [whitened_first_layer(item[len(WHITEN):]) for item in overrides if item.startswith(WHITEN)]
    callbacks += [dropped_layer(item[len(DROP):]) for item in overrides if item.startswith(DROP)]
    callbacks += [float32_layer(item[len(FP32):]) for item in overrides if item.startswith(FP32)]
    callbacks += [swapped_modules(item.split("=")[0], item.partition("=")[2]) for item in overrides
                  if item.startswith((ACT, POOL))]
    overrides = [item for item in overrides if not item.startswith(SCREEN_ONLY)]
    with tempfile.TemporaryDirectory() as out_dir:
        summary = train(recipe, [f"seed={seed}", f"output.dir={out_dir}", "output.report=false",
                                 "output.tensorboard=false", "output.progress=none", f"train.threads={threads}",
                                 *overrides], callbacks=callbacks
                        ).summary.to_json()  # summary.json's keys
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {key: summary.get(key) for key in ("status", "final_val_acc", "final_test_acc", "best_val_acc",
                                              "best_test_acc", "train_seconds", "precision")} | \
        {"cpu_seconds": usage.ru_utime + usage.ru_stime}


def run_one(recipe: str, seed: int, overrides: list[str], threads: int = 1) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE")
    done = subprocess.run([sys.executable, __file__, "--child", recipe, str(seed), json.dumps(overrides), str(threads)],
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
    parser.add_argument("--threads", type=int, default=1, help="threads per run (1: the screens' way)")
    args = parser.parse_args(argv)
    variants = {}
    for spec in args.variant:
        name, _, rest = spec.partition("=")
        variants[name] = [item for item in rest.split(";") if item]
    jobs = [(name, seed) for seed in args.seeds for name in variants]
    print(f"machine: {common.machine()}; {args.recipe} {' '.join(args.set)}", flush=True)
    results = {}
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = {pool.submit(run_one, args.recipe, seed, [*args.set, *variants[name]], args.threads): (name, seed)
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
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]), int(sys.argv[5]))))
    else:
        main()
