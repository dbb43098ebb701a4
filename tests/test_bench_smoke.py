"""The GPU speed benchmark stays runnable: its CPU smoke mode builds every case (the GPU ones too) and
prints the comparison table. The figures themselves are for `make bench-gpu`, not for tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # builds and profiles every benchmark case
def test_gpu_speed_smoke_prints_the_table_for_every_cpu_case():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_speed.py"), "--smoke"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "img/s" not in line]
    assert len(rows) >= 2 and all(row.count("|") == 13 for row in rows), done.stdout
    assert "syncs/step fit (bare)" in done.stdout


@pytest.mark.slow  # a subprocess that builds and profiles every augmentation and two training states
def test_augment_cost_smoke_counts_every_op_without_a_sync():
    """Each augmentation's row: zero host syncs, and MixUp/CutMix/colour jitter within a few launches."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "augment_cost.py"), "--smoke"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("| ") and "launches/" not in line]
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)}
    assert len(rows) == 13 and all(cells[2] == "0" for cells in rows.values()), done.stdout  # syncs per batch
    added = {label: float(cells[1]) for label, cells in rows.items()}
    # Budgets with a little headroom over what the ops launch today (CPU count: 6, 7 and 12).
    assert added["mixup"] <= 8 and added["cutmix"] <= 8 and added["color (b, c, s 0.4)"] <= 14, added
    assert "training step launches" in done.stdout


@pytest.mark.slow  # two tiny runs in child processes
def test_the_frontier_screen_prints_a_row_per_variant():
    """bench/frontier.py reads each child's summary (a typed record since the records step: it broke once)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "frontier.py"), "smoke", "--seeds", "0",
                           "--parallel", "1", "--set", "train.epochs=1", "data.val_split=64",
                           "--variant", "base=", "--variant", "ls0=optim.label_smoothing=0"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| base |") or line.startswith("| ls0 |")]
    assert len(rows) == 2 and "error" not in done.stdout, done.stdout
    assert all(row.split("|")[3].strip() != "-" and row.split("|")[6].strip() == "1" for row in rows), rows


@pytest.fixture
def frontier(monkeypatch):
    """bench/frontier.py as a module (it imports bench/common.py by its plain name)."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import frontier

    return frontier


def fit_state_of(model):
    """What a screen lever's `on_fit_start` reads: `state.objects.model`."""
    return type("State", (), {"objects": type("Objects", (), {"model": model})})()


def test_the_frontier_swaps_activations_and_pooling_as_its_levers_say(frontier):
    """`act=gelu` leaves no ReLU in convnet; `pool=ceil` makes its last residual see 4x4 maps, not 3x3."""
    import torch
    from torch import nn

    from cifarlab.models.registry import create_model

    model = create_model("convnet", num_classes=10, in_channels=1, width=2)
    state = fit_state_of(model)
    for lever in ("act=gelu", "pool=ceil"):
        frontier.swapped_modules(*lever.split("=")).on_fit_start(state)
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert sum(isinstance(m, nn.GELU) for m in model.modules()) == 8
    assert model.features[:6](torch.randn(1, 1, 28, 28)).shape[-2:] == (4, 4)
    with pytest.raises(SystemExit, match="takes gelu"):
        frontier.swapped_modules("act", "silu")


def test_the_frontier_runs_a_named_layer_in_float32_under_autocast(frontier):
    """`fp32=features.0.0`: that layer's output is float32 inside a bf16 autocast, the next layer's bf16."""
    import torch

    from cifarlab.models.registry import create_model

    model = create_model("convnet", num_classes=10, in_channels=1, width=2)
    state = fit_state_of(model)
    frontier.float32_layer("features.0.0").on_fit_start(state)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = model.features[0][0](torch.randn(1, 1, 28, 28))
        second = model.features[1][0](first)
    assert (first.dtype, second.dtype) == (torch.float32, torch.bfloat16)
    with pytest.raises(SystemExit, match="names no layer"):
        frontier.float32_layer("features.9").on_fit_start(state)


@pytest.mark.slow  # a subprocess timing a few tiny steps per variant
def test_step_rate_times_every_width_precision_and_lever():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "step_rate.py"), "--widths", "2", "2,3,4,5",
                           "--precisions", "fp32", "bf32", "--levers", "nchw", "fused", "--batch-size", "8",
                           "--steps", "2", "--warmup", "1", "--repeats", "1"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("|")[1:4] for line in done.stdout.splitlines() if line.startswith("| 2 |")]
    assert sorted((p.strip(), lever.strip()) for _, p, lever in rows) == sorted(
        (p, lever) for p in ("fp32", "bf32") for lever in ("-", "nchw", "fused")), done.stdout
    assert "| 2,3,4,5 | fp32 | - |" in done.stdout  # a width per stage: convnet's `widths`


def test_the_reference_way_runs_its_one_cycle_to_the_end_inside_its_budget(monkeypatch):
    """bench/time_to_accuracy.py's reference loop: steps at the starting lr while it times them, then exactly the
    one-cycle it planned from that rate, up to its peak and down to its last lr (no step past it, none left)."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import time_to_accuracy
    import torch

    from cifarlab.config import load_config

    cfg = load_config("fmnist-fast", [])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    used = []  # the lr of every step taken
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    loader = [(torch.randn(2, 1, 2, 2), torch.randint(0, 3, (2,))) for _ in range(7)]
    images, seconds = time_to_accuracy.train_reference(model, optimizer, loader, cfg, budget_seconds=0.3,
                                                       probe_steps=12, warmup_steps=3)
    start = 0.1 / cfg.schedule.div_factor
    assert images == 2 * len(used) and len(used) > 13 and 0 < seconds < 30, (images, seconds, len(used))
    assert used[:13] == [pytest.approx(start)] * 13, used[:13]  # the timed steps, then the cycle's first
    assert max(used) == pytest.approx(0.1, rel=0.02) and min(used) > 0, (max(used), min(used))
    assert used[-1] == pytest.approx(start / cfg.schedule.final_div_factor, rel=0.02), used[-3:]
