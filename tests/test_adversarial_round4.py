"""Issue 27's fresh adversarial round: the cases it found failing, each a table row that failed before its fix.

Settings counted in epochs must fall inside the run they belong to: a lookahead that starts after the last
epoch never runs, silently. A recipe's own such settings move with `train.epochs` (train and every sweep
trial alike); the user's own are refused in one line. A run recorded before the check still loads."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cifarlab.config import load_config, read_with_overrides, validate, validate_recorded
from cifarlab.errors import UserError
from cifarlab.sweep.space import apply_params

# (overrides on smoke (2 epochs), words of the one line; None: accepted)
EPOCH_TIED = [
    (["train.lookahead={start_epoch: 2}"], ["train.lookahead.start_epoch must be in 0..1", "got 2"]),
    (["train.lookahead={start_epoch: 9}", "train.epochs=4", "schedule.peak_epoch=1"],
     ["train.lookahead.start_epoch must be in 0..3", "train.epochs=4", "train.lookahead=null"]),
    (["train.lookahead={start_epoch: 1}"], None),
    (["train.lookahead={start_epoch: 5}", "train.epochs=auto"], None),  # decided with the data, checked then
]


@pytest.mark.parametrize("overrides, words", EPOCH_TIED, ids=[" ".join(o) for o, _ in EPOCH_TIED])
def test_a_lookahead_start_outside_the_run_is_refused_in_one_line(overrides, words):
    if words is None:
        assert load_config("smoke", overrides).train.lookahead is not None
        return
    with pytest.raises(UserError) as refused:
        load_config("smoke", overrides)
    assert len(str(refused.value).splitlines()) == 1
    for word in words:
        assert word in str(refused.value)


def test_a_run_recorded_with_a_late_lookahead_still_loads():
    raw = load_config("smoke", ["train.lookahead={start_epoch: 1}"]).to_dict()
    raw["train"]["lookahead"]["start_epoch"] = 3  # what `fast train.epochs=2` recorded before the scaling fix
    assert validate_recorded(raw).train.lookahead.start_epoch == 3
    with pytest.raises(UserError, match="start_epoch must be in 0..1"):
        validate(raw)


@pytest.mark.parametrize("epochs, start, whiten", [(2, 1, 1), (4, 1, 1), (20, 6, 6)])
def test_a_sweep_trial_moves_fast_s_epoch_settings_as_train_does(epochs, start, whiten):
    """`sweep fast --grid train.epochs=2,...` trained trials whose lookahead (epoch 3) never started."""
    raw, _ = read_with_overrides("fast", [])
    trial = validate(apply_params(raw, {"train.epochs": epochs}))
    by_train = load_config("fast", [f"train.epochs={epochs}"])
    assert (trial.train.lookahead.start_epoch, trial.model.options["whiten_bias_epochs"]) == (start, whiten)
    assert trial.train.lookahead == by_train.train.lookahead
    assert trial.model.options == by_train.model.options


def test_a_swept_lookahead_start_is_the_users_own_and_stays():
    raw, _ = read_with_overrides("fast", [])
    trial = validate(apply_params(raw, {"train.epochs": 4, "train.lookahead.start_epoch": 2}))
    assert trial.train.lookahead.start_epoch == 2


@pytest.mark.parametrize("grid, words", [
    (["optim.lr=0.1,0.10"], ["space key 'optim.lr' lists 0.1 twice"]),
    (["seed=1,2,1"], ["space key 'seed' lists 1 twice"]),
    ([" optim.lr=0.1", "optim.lr=0.2"], ["--grid names 'optim.lr' twice"]),
    (["train.lookahead.start_epoch=0,4"], ["train.lookahead.start_epoch must be in 0..1"]),  # a start never run
])
def test_a_grid_that_repeats_a_point_or_leaves_the_run_is_refused(grid, words, tmp_path, capsys):
    """`--grid optim.lr=0.1,0.10` trained the same configuration twice, as two trials."""
    from _runs import assert_refused

    argv = ["sweep", "smoke", "data.val_split=64", "train.threads=1", "train.lookahead={start_epoch: 0}", "--grid",
            *grid, "--dir", str(tmp_path / "s")]
    assert_refused(argv, words, {}, capsys, tmp_path)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("more", [0, -2, 1.5, "2", True])
def test_resume_more_from_python_names_the_value_as_given(more, tmp_path):
    """`cifarlab.resume(run, more="2")` said `--more must be at least 1, got 2`: the value looked right."""
    import cifarlab

    with pytest.raises(UserError) as refused:
        cifarlab.resume(tmp_path / "no-run", more=more)
    assert f"more (--more) must be a whole number of epochs to add, at least 1, got {more!r}" == str(refused.value)


class SmallNet(nn.Module):
    def __init__(self, num_classes=3, in_channels=3):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                               nn.Linear(4, num_classes))

    def forward(self, x):
        return self.f(x)


class NoParameters(nn.Module):
    def __init__(self, num_classes=3, in_channels=3):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        return x.new_zeros(x.shape[0], self.num_classes)


class RaisesInForward(SmallNet):
    def forward(self, x):
        raise RuntimeError("my forward has a bug")


# (network, words of the one line); round 4: no parameters ended in a traceback after the run directory
# existed; a channel mismatch and a bug in forward were both reported as "images too small"
USER_NETWORKS = [
    (NoParameters, ["has no trainable parameters"]),
    (lambda num_classes=3: SmallNet(num_classes, in_channels=1), ["fails on one image of this data",
                                                                  "shape (1, 3, 16, 16)", "3 channels"]),
    (RaisesInForward, ["fails on one image of this data", "my forward has a bug"]),
]


@pytest.mark.parametrize("network, words", USER_NETWORKS, ids=["no-parameters", "one-channel", "forward-raises"])
def test_a_users_network_that_cannot_train_is_one_line_before_anything_is_written(network, words, tmp_path):
    import cifarlab

    images, labels = torch.randint(0, 255, (64, 3, 16, 16), dtype=torch.uint8), torch.arange(64) % 3
    with pytest.raises(UserError) as refused:
        cifarlab.train("smoke", [f"output.dir={tmp_path / 'runs'}", "train.threads=1", "output.progress=none"],
                       model=network, data=(images, labels, images, labels))
    assert len(str(refused.value).splitlines()) == 1
    for word in words:
        assert word in str(refused.value), (word, str(refused.value))
    assert "too small" not in str(refused.value)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["a b:c", "mypkg.nets:Net", "", "../x", 7])
def test_a_model_name_that_cannot_be_looked_up_again_is_refused_when_registered(name):
    """Round 4: `register_model("a b:c")` was accepted; a name with ':' reads as a Python object's elsewhere."""
    import cifarlab
    from cifarlab.models.registry import MODELS

    before = MODELS.names()
    with pytest.raises(UserError, match="name is letters, digits and _ . -"):
        cifarlab.register_model(name)(lambda **options: None)
    assert MODELS.names() == before
