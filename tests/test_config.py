"""Config layering (defaults < recipe < overrides), one-line errors, and the reference recipes as written."""
import pytest
import yaml

from cifarlab.config import Config, list_recipes, load_config, read_recipe
from cifarlab.errors import UserError

REFERENCE_RECIPES = ["resnet18-steplr", "resnet18-cutout", "custom-resnet-onecycle",
                     "resnet18-layernorm-plateau", "custom-resnet-fp16"]


def test_layering_defaults_recipe_overrides():
    defaults = Config()
    recipe = load_config("resnet18-steplr")
    assert recipe.optim.lr == 0.1 and defaults.optim.lr == 0.1
    assert recipe.train.epochs == 115 and defaults.train.epochs != 115
    assert recipe.train.eval_batch_size == defaults.train.eval_batch_size  # untouched keys keep defaults
    changed = load_config("resnet18-steplr", ["optim.lr=0.05", "train.epochs=3", "augment.cutout.size=8"])
    assert (changed.optim.lr, changed.train.epochs, changed.augment.cutout.size) == (0.05, 3, 8)
    assert changed.optim.momentum == 0.9  # the recipe's other values stay


def test_override_can_switch_an_op_off_and_yaml_file_recipes_work(tmp_path):
    assert load_config("resnet18-cutout", ["augment.cutout=null"]).augment.cutout is None
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "resnet34"}, "train": {"epochs": 2}}))
    cfg = load_config(str(path))
    assert cfg.name == "mine" and cfg.model.name == "resnet34" and cfg.train.epochs == 2


def test_resolved_config_round_trips_through_yaml():
    cfg = load_config("custom-resnet-onecycle", ["seed=7"])
    again = Config.model_validate(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


@pytest.mark.parametrize("override, needle", [
    ("optim.lrr=0.1", "unknown config key 'optim.lrr'; allowed here: name, lr"),
    ("optim.lr=0", "optim.lr: Input should be greater than 0"),
    ("train.epochs=many", "train.epochs"),
    ("optim.name=rmsprop", "'sgd', 'adam' or 'adamw'"),
    ("schedule.name=cyclic", "schedule.name"),
    ("lr_find.end_lr=1e-9", "lr_find"),
    ("no_equals_sign", "must look like key=value"),
    ("optim.lr.value=1", "optim.lr is a value, not a section"),
    ("optim.name=adam optim.nesterov=true", "nesterov applies to sgd only, not adam"),
])
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(UserError) as err:
        load_config("smoke", override.split())
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_every_recipe_validates_and_references_are_listed():
    names = list_recipes()
    for name in REFERENCE_RECIPES + ["fmnist-quick", "smoke"]:
        assert name in names and names[name], f"{name} missing or without description"
    for name in names:
        load_config(name)


def test_reference_recipes_match_the_design_table():
    steplr = load_config("resnet18-steplr")
    assert (steplr.model.name, steplr.optim.name, steplr.optim.weight_decay) == ("resnet18", "sgd", 5e-4)
    assert (steplr.schedule.name, steplr.schedule.step_size, steplr.train.batch_size) == ("step", 100, 128)
    assert steplr.data.mean == [0.4914, 0.4822, 0.4465] and steplr.data.std == [0.2023, 0.1994, 0.2010]
    cutout = load_config("resnet18-cutout")
    assert (cutout.augment.cutout.size, cutout.augment.rotate.degrees,
            cutout.train.epochs, cutout.train.batch_size) == (16, 18, 20, 64)
    onecycle = load_config("custom-resnet-onecycle")
    assert onecycle.schedule.lr_peak == "auto" and onecycle.schedule.peak_epoch == 5
    assert onecycle.schedule.final_div_factor is None and onecycle.train.batch_size == 512
    assert onecycle.augment.cutout.size == 8 and onecycle.optim.name == "adam"
    plateau = load_config("resnet18-layernorm-plateau")
    assert plateau.model.norm == "layer" and plateau.schedule.name == "plateau"
    assert (plateau.schedule.patience, plateau.schedule.threshold_mode, plateau.optim.lr) == (2, "abs", 0.01)
    fp16 = load_config("custom-resnet-fp16")
    assert fp16.train.precision == "fp16" and fp16.lr_find.num_iter == 200 and fp16.lr_find.end_lr == 10


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown recipe 'nope'; choose from: .*smoke"):
        read_recipe("nope")


def test_switching_dataset_or_model_in_an_override_drops_the_recipes_options_for_the_old_one():
    from cifarlab.models.registry import create_model

    smoke = load_config("smoke")
    assert smoke.data.options and smoke.model.options  # synthetic {num_train: ...}, convnet {width: 8}
    switched = load_config("smoke", ["data.dataset=cifar10"])
    assert switched.data.dataset == "cifar10" and switched.data.options == {}
    assert switched.model.options == smoke.model.options  # the model was not switched
    fast = load_config("fast", ["model.name=convnet"])
    assert fast.model.options == {}
    create_model(fast.model.name, **fast.model.options)  # fastnet's widths= would be refused by convnet
    # options given in the same overrides are the new dataset's own; naming the same dataset keeps them
    given = load_config("smoke", ["data.dataset=synthetic", "model.name=convnet"])
    assert given.data.options == smoke.data.options and given.model.options == smoke.model.options
    mine = load_config("smoke", ["data.options={num_train: 64}", "data.dataset=folder"])
    assert mine.data.options == {"num_train": 64}
