import copy
import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _compare import assert_same_state
from torch import nn

from _curves import calibration_then_descent, ema, hand_made_curve
from cifarlab.config import LRFindConfig
from cifarlab.errors import UserError
from cifarlab.lr_range.finder import (
    RangeTestResult,
    lr_schedule,
    plain_step,
    plot_range_test,
    range_test,
    range_test_figure,
    summarize,
)

FASHION = Path("/usr/share/datasets/fashion-mnist")


def tiny_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.1), nn.Linear(4 * 4 * 4, 3),
    )


def random_batches(seed=0, n=16):
    gen = torch.Generator().manual_seed(seed)
    return lambda: (torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 3, (n,), generator=gen))


def snapshot(model, optimizer):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {i: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
         for i, s in optimizer.state_dict()["state"].items()},
        [dict(g) for g in optimizer.param_groups],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        [m.training for m in model.modules()],
    )


def assert_same(before, after):
    model_a, state_a, groups_a, grads_a, modes_a = before
    model_b, state_b, groups_b, grads_b, modes_b = after
    assert_same_state(model_b, model_a, "model")
    assert_same_state(state_b, state_a, "optimizer state")
    for group_a, group_b in zip(groups_a, groups_b):
        assert group_a["lr"] == group_b["lr"]
    for grad_a, grad_b in zip(grads_a, grads_b):
        assert (grad_a is None and grad_b is None) or torch.equal(grad_a, grad_b)
    assert modes_a == modes_b


@pytest.mark.parametrize("optim_name", ["sgd", "adam"])
def test_restores_model_and_optimizer_bit_identically(optim_name):
    torch.manual_seed(0)
    model = tiny_cnn()
    if optim_name == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches, loss_fn = random_batches(), nn.CrossEntropyLoss()
    for _ in range(3):  # real steps first: momentum buffers, BN running stats and grads all non-trivial
        inputs, targets = batches()
        optimizer.zero_grad()
        loss_fn(model(inputs), targets).backward()
        optimizer.step()
    model[1].eval()  # a per-module mode that a blanket model.train(flag) would lose
    before = snapshot(model, optimizer)
    result = range_test(model, optimizer, plain_step(model, optimizer, loss_fn), batches,
                        LRFindConfig(num_iter=20, end_lr=1.0))
    assert len(result.lrs) > 5
    assert_same(before, snapshot(model, optimizer))


def test_restores_even_when_a_step_fails():
    torch.manual_seed(0)
    model = tiny_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = snapshot(model, optimizer)
    calls = []

    def failing_loss(logits, targets):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("boom")
        return nn.functional.cross_entropy(logits, targets)

    with pytest.raises(RuntimeError, match="boom"):
        range_test(model, optimizer, plain_step(model, optimizer, failing_loss), random_batches(),
                   LRFindConfig(num_iter=10))
    assert_same(before, snapshot(model, optimizer))


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.open(path).read()
    dims = raw[3]
    shape = np.frombuffer(raw, dtype=">u4", count=dims, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def learning_problem():
    """Fashion-MNIST (first 2048 training images) where the OS package has it, else separable blobs."""
    images_path, labels_path = FASHION / "train-images-idx3-ubyte.gz", FASHION / "train-labels-idx1-ubyte.gz"
    if images_path.exists() and labels_path.exists():
        images = torch.from_numpy(read_idx(images_path)[:2048].copy()).float().div(255).flatten(1)
        labels = torch.from_numpy(read_idx(labels_path)[:2048].astype(np.int64))
        images = (images - 0.286) / 0.353
    else:
        gen = torch.Generator().manual_seed(0)
        centers = torch.randn(10, 64, generator=gen) * 2
        labels = torch.randint(0, 10, (2048,), generator=gen)
        images = centers[labels] + torch.randn(2048, 64, generator=gen)
    return images, labels


def mlp_range_test(images, labels, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(images.shape[1], 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(seed + 1)

    def batches():
        index = torch.randint(0, len(labels), (64,), generator=gen)
        return images[index], labels[index]

    cfg = LRFindConfig(start_lr=1e-5, end_lr=10.0, num_iter=100)
    result = range_test(model, optimizer, plain_step(model, optimizer, nn.CrossEntropyLoss()), batches, cfg)
    return model, optimizer, batches, result


def test_every_rule_lies_on_the_descent_of_a_real_problem():
    images, labels = learning_problem()
    _, _, _, result = mlp_range_test(images, labels)
    smoothed = np.array(result.smoothed)
    lrs = np.array(result.lrs)
    bottom = int(np.argmin(smoothed))
    for rule in ("steepest", "valley"):
        lr = result.suggestion(rule)
        at = int(np.searchsorted(lrs, lr))
        assert smoothed[at] < smoothed[0] - 0.1, rule
        assert lr < lrs[bottom], rule
    lr = result.suggestion("minimum")
    at = int(np.searchsorted(lrs, lr))
    assert np.mean(result.losses[at - 2:at + 3]) < np.mean(result.losses[:5]) - 0.5
    assert lr < lrs[-1]  # below where the sweep saw the loss diverge
    max_lr, div_factor = result.onecycle()
    assert max_lr == result.suggestion() and 5 <= div_factor <= 100


@pytest.mark.parametrize("seed", [0, 1])
def test_minimum_rule_trains_better_than_ten_times_less_or_more(seed):
    images, labels = learning_problem()
    model, _, batches, result = mlp_range_test(images, labels, seed)
    lr = result.suggestion("minimum")
    start = copy.deepcopy(model.state_dict())
    final = {}
    for factor in (0.1, 1.0, 10.0):
        model.load_state_dict(start)
        trainer = torch.optim.SGD(model.parameters(), lr=lr * factor, momentum=0.9)
        step = plain_step(model, trainer, nn.CrossEntropyLoss())
        for _ in range(60):
            step(*batches())
        with torch.no_grad():
            loss = nn.functional.cross_entropy(model(images), labels).item()
        final[factor] = loss if np.isfinite(loss) else np.inf
    assert final[1.0] < final[0.1] and final[1.0] < final[10.0], final


def test_onecycle_starts_where_the_loss_starts_falling():
    lrs, loss = hand_made_curve()
    result = summarize(lrs, loss, loss)
    max_lr, div_factor = result.onecycle("steepest")
    initial_lr = max_lr / div_factor
    assert 5 <= div_factor <= 100
    assert 1e-4 < initial_lr < 3e-3  # the sigmoid has dropped ~10 % of its depth by ~2e-3


@pytest.mark.parametrize("mode", ["exp", "linear"])
def test_lrs_follow_the_step_mode(mode):
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias], "lr": 0.5}], lr=0.1)
    seen = []

    def loss_fn(out, targets):
        seen.append([group["lr"] for group in optimizer.param_groups])
        return 0.0 * out.sum() + 1.0

    cfg = LRFindConfig(start_lr=1e-4, end_lr=1.0, num_iter=20, step_mode=mode)
    result = range_test(model, optimizer, plain_step(model, optimizer, loss_fn), lambda: (torch.randn(3, 4), None), cfg)
    lrs = np.array(result.lrs)
    assert len(lrs) == 20 and lrs[0] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(1.0)
    assert [row[0] for row in seen] == [row[1] for row in seen] == list(result.lrs)
    steps = lrs[1:] / lrs[:-1] if mode == "exp" else np.diff(lrs)
    np.testing.assert_allclose(steps, steps[0], rtol=1e-9)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.5]
    np.testing.assert_allclose(lr_schedule(cfg), lrs)


def test_stops_early_when_the_loss_diverges():
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    true_weights = torch.randn(8, 1, generator=gen)

    def batches():
        inputs = torch.randn(32, 8, generator=gen)
        return inputs, inputs @ true_weights

    cfg = LRFindConfig(start_lr=1e-4, end_lr=100.0, num_iter=100, diverge_threshold=4.0)
    result = range_test(model, optimizer, plain_step(model, optimizer, nn.MSELoss()), batches, cfg)
    assert result.stopped_early
    assert len(result.lrs) < 100
    assert result.smoothed[-1] > 4.0 * min(result.smoothed) or not np.isfinite(result.losses[-1])
    assert result.steepest_lr is not None and result.steepest_lr < result.lrs[-1]


def test_one_shot_iterator_that_runs_out_is_a_user_error():
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = iter([(torch.randn(2, 4), torch.tensor([0, 1]))] * 3)
    with pytest.raises(UserError, match="ran out"):
        range_test(model, optimizer, plain_step(model, optimizer, nn.CrossEntropyLoss()), batches,
                   LRFindConfig(num_iter=10))


def test_result_round_trips_through_json_and_plots(tmp_path):
    lrs, loss = hand_made_curve()
    result = summarize(lrs, loss, loss, stopped_early=True)
    again = RangeTestResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result
    figures_before = sys.modules["matplotlib.pyplot"].get_fignums() if "matplotlib.pyplot" in sys.modules else []
    path = plot_range_test(result, tmp_path / "plots" / "lr_find.png", rule="valley")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if "matplotlib.pyplot" in sys.modules:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == figures_before


def test_plot_marks_the_chosen_lr_and_names_its_rule():
    lrs, noisy, _ = calibration_then_descent()
    result = summarize(lrs, noisy, ema(noisy), rule="minimum")
    for rule in ("minimum", "steepest"):
        ax = range_test_figure(result, rule).axes[0]
        handles, labels = ax.get_legend_handles_labels()
        chosen = [(h, label) for h, label in zip(handles, labels) if label.startswith("chosen")]
        assert len(chosen) == 1 and f"(rule: {rule})" in chosen[0][1]
        assert chosen[0][0].get_xdata()[0] == result.suggestion(rule)
        assert rule in ax.get_title()
