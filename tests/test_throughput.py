"""What the user sees of performance: images/s and MFU on every epoch line and in summary.json, and the
FLOP count and peak they come from."""
import json
import re

import pytest
import torch
from _compare import assert_same_state
from torch import nn

from cifarlab.trainer.throughput import datasheet_peak, peak_flops, training_flops_per_image


def test_training_flops_of_a_two_layer_net_are_counted_exactly():
    D, H, K = 3 * 4 * 4, 32, 10
    model = nn.Sequential(nn.Flatten(), nn.Linear(D, H), nn.ReLU(), nn.Linear(H, K))
    # forward 2DH + 2HK; backward: both weight gradients (2DH + 2HK) and the hidden layer's input
    # gradient (2HK); the images need no gradient.
    assert training_flops_per_image(model, (3, 4, 4)) == 4 * D * H + 6 * H * K


def test_counting_flops_leaves_the_model_and_the_random_stream_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 36, 10))
    before = {key: value.clone() for key, value in model.state_dict().items()}
    state = torch.random.get_rng_state()
    assert training_flops_per_image(model, (3, 8, 8)) > 0
    assert_same_state(model.state_dict(), before)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(p.grad is None for p in model.parameters())


def test_known_gpus_take_their_datasheet_peak_and_others_none():
    assert datasheet_peak("NVIDIA H100 80GB HBM3", "bf16") == 989.5e12
    assert datasheet_peak("NVIDIA H100 PCIe", "bf16") == 756e12
    assert datasheet_peak("NVIDIA A100-SXM4-40GB", "fp32") == 156e12  # TF32, which the runtime enables
    assert datasheet_peak("NVIDIA L40S", "bf16") is None  # not an L4
    assert datasheet_peak("NVIDIA GeForce RTX 3060", "bf16") is None and datasheet_peak("Tesla T4", "fp16") is None


def test_a_cpu_peak_is_measured_and_says_so():
    peak, source = peak_flops(torch.device("cpu"), "fp32")
    assert 1e8 < peak < 1e14 and source.startswith("matmul probe: cpu, fp32")


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=pytest.mark.slow)])  # bf16: emulated, slow
def test_epoch_line_and_summary_show_images_per_second_and_mfu(tmp_path, capsys, precision):
    """In both precisions on any CPU: a bf16 run where bf16 is emulated once showed MFU 214% (its peak was
    the slow bf16 matmul; the peak is now the faster of the two)."""
    from cifarlab.cli import main

    assert main(["train", "smoke", f"output.dir={tmp_path}", "train.epochs=1", "schedule.peak_epoch=0.5",
                 f"train.precision={precision}", "train.threads=1", "output.tensorboard=false",
                 "output.progress=auto"]) == 0
    err = capsys.readouterr().err
    lines = re.findall(r"^Train: .*, (\d+) images/s, MFU ([\d.]+)%", err, flags=re.M)
    assert len(lines) == 1, err
    images_per_second, mfu_percent = map(float, lines[0])
    assert images_per_second > 0 and 0 < mfu_percent <= 100
    assert re.search(r"^speed: [\d.e+-]+ GFLOP per training image; peak .* \(matmul probe: cpu", err, flags=re.M)
    summary = json.loads(next(tmp_path.glob("smoke/*/summary.json")).read_text())
    assert summary["train_images_per_second"] > 0 and 0 < summary["mfu"] <= 1
    assert summary["train_flops_per_image"] > 0 and summary["peak_flops_source"].startswith("matmul probe")
    # MFU is the FLOPs done per second over the peak
    achieved = summary["train_flops_per_image"] * summary["train_images_per_second"]
    assert summary["mfu"] == pytest.approx(achieved / summary["peak_flops"], rel=1e-2)
    metrics = next(tmp_path.glob("smoke/*/metrics.csv")).read_text().splitlines()
    assert metrics[0].endswith(",mfu") and float(metrics[-1].split(",")[-1]) > 0


def test_a_model_the_counter_cannot_run_trains_without_mfu():
    from types import SimpleNamespace

    from cifarlab.runtime import Distributed, Precision
    from cifarlab.trainer.throughput import measure_speed

    class Refuses(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, x):
            raise RuntimeError("an op the counter cannot trace")

    runtime = SimpleNamespace(device=torch.device("cpu"), precision=Precision("fp32", "cpu"), dist=Distributed())
    loader = SimpleNamespace(images=torch.zeros(4, 1, 2, 2, dtype=torch.uint8))
    state = SimpleNamespace(runtime=runtime, objects=SimpleNamespace(model=Refuses(), train_loader=loader))
    with pytest.warns(UserWarning, match="FLOPs could not be counted.*MFU is left out"):
        assert measure_speed(state) is None
