"""Recipes and overrides: defaults < recipe YAML < `key=value`, validated into a `Config` (errors in one line)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ValidationError

from cifarlab.config.schema import Config, TrainConfig
from cifarlab.errors import UserError
from cifarlab.launch import is_rank_zero
from cifarlab.messages import say
from cifarlab.recipe_files import list_recipes, recipes_dir
from cifarlab.strict_yaml import YAMLRefused, load_yaml, yaml_error

# ---------------------------------------------------------------- recipes and overrides

MAX_RECIPE_BYTES = 1 << 20  # recipes are a few hundred bytes; a config.yaml of a run about 2 KB


def _read_text(path: Path) -> str:
    """A recipe file's text, or one line saying why not: missing, not a file, too big, not UTF-8."""
    where = repr(str(path))
    if path.is_dir():
        raise UserError(f"recipe {where} is a directory; give a .yaml file")
    if not path.exists():
        raise UserError(f"recipe file {where} does not exist")
    if not path.is_file():
        raise UserError(f"recipe {where} is not a regular file")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_RECIPE_BYTES + 1)
    except OSError as err:
        raise UserError(f"cannot read recipe {where}: {err.strerror or err}") from None
    if len(data) > MAX_RECIPE_BYTES:
        raise UserError(f"recipe {where} is larger than {MAX_RECIPE_BYTES >> 20} MiB; a recipe is a short YAML file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        bad = f"byte 0x{data[err.start]:02x} at offset {err.start}"
        raise UserError(f"recipe {where} is not UTF-8 text ({bad})") from None


def read_recipe(recipe: str) -> dict:
    """A recipe name (`custom-resnet-onecycle`) or a path to a YAML file (a run's config.yaml too), as a dict."""
    path = Path(recipe)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        path = recipes_dir() / f"{recipe}.yaml"
        if not path.exists():
            raise UserError(f"unknown recipe {recipe!r}; choose from: {', '.join(list_recipes())} or give a .yaml path")
    text = _read_text(path)
    try:
        raw = load_yaml(text)
    except YAMLRefused as err:
        raise UserError(f"recipe {str(path)!r}: {err}") from None
    except yaml.YAMLError as err:
        raise UserError(f"recipe {str(path)!r} is not valid YAML: {yaml_error(err)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"recipe {str(path)!r} must be a mapping of sections, got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    return raw


def parse_override(text: str) -> tuple[list[str], Any]:
    """`optim.lr=0.05` -> (["optim", "lr"], 0.05). Values are YAML scalars, lists or mappings."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in argv arrive as lone surrogates
        raise UserError(f"override {text!r} is not valid UTF-8") from None
    if "=" not in text:
        raise UserError(f"override {text!r} must look like key=value, e.g. train.epochs=5")
    key, _, value = text.partition("=")
    keys = key.strip().split(".")
    if not all(keys):
        raise UserError(f"override key {key!r} is malformed; use dotted names like optim.lr")
    try:
        parsed = load_yaml(value) if value.strip() else None
    except YAMLRefused as err:
        raise UserError(f"override {text!r}: {err}") from None
    except yaml.YAMLError:
        parsed = value
    return keys, parsed


def apply_override(raw: dict, keys: list[str], value: Any) -> None:
    node = raw
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise UserError(f"{'.'.join(keys[:depth + 1])} is a value, not a section; cannot set {'.'.join(keys)}")
        node = child
    node[keys[-1]] = value


_TYPE_TAGS = {"float", "int", "str", "bool", "none", "list", "tuple", "dict"}


def _describe(error: dict) -> str:
    # Drop the union-member tags pydantic puts in a location (`lr_peak.constrained-float`).
    where = ".".join(str(part) for part in error["loc"] if isinstance(part, int)
                     or (str(part).isidentifier() and part not in _TYPE_TAGS)) or "config"
    if error["type"] == "extra_forbidden":
        section = _section_for(error["loc"][:-1])
        allowed = ", ".join(section.model_fields) if section else "?"
        return f"unknown config key {where!r}; allowed here: {allowed}"
    given = error.get("input")
    shown = repr(given)
    shown = shown if len(shown) <= 80 else f"{shown[:60]}... ({len(shown)} characters)"
    given_text = f", got {shown}" if not isinstance(given, dict) else ""
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message}{given_text}"


def _section_for(loc: tuple) -> Optional[type[BaseModel]]:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        candidates = getattr(annotation, "__args__", (annotation,))
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model


def validate(raw: dict, recorded: bool = False) -> Config:
    """`raw` as a Config (UserError naming the first bad key). `recorded`: a run's own config, read back, which
    keeps what it trained with even where a check added since would refuse it for a new run."""
    try:
        return Config.model_validate(raw, context={"recorded": recorded})
    except ValidationError as err:
        raise UserError(_describe(err.errors()[0])) from None


# Defaults that changed after runs were recorded: a recorded config (a checkpoint's) written before its
# key existed had the old default, so loading, evaluating or resuming it does what the run did.
RECORDED_DEFAULTS = {("data", "val_split"): None}  # "auto" now: a validation split by default


def validate_recorded(raw: dict) -> Config:
    """`validate` for a config a run recorded: keys it lacks take RECORDED_DEFAULTS, then today's defaults."""
    raw = {**raw}
    for (section, key), old_default in RECORDED_DEFAULTS.items():
        if isinstance(raw.get(section), dict) and key not in raw[section]:
            raw[section] = {**raw[section], key: old_default}
    return validate(raw, recorded=True)


def load_config(recipe: str | None = None, overrides: list[str] = ()) -> Config:
    """defaults < recipe < overrides, validated. `recipe=None` starts from the defaults."""
    raw, note = read_with_overrides(recipe, overrides)
    cfg = validate(raw)
    if note and is_rank_zero():  # said once under torchrun, and only for a valid config
        say(note)
    return cfg


def read_with_overrides(recipe: str | None, overrides: list[str] = ()) -> tuple[dict, Optional[str]]:
    """(the recipe with its overrides, not yet validated; the lines saying what moved with train.epochs, or None)."""
    raw = read_recipe(recipe) if recipe else {}
    recipe_epochs = (raw.get("train") or {}).get("epochs", TrainConfig.model_fields["epochs"].default)
    parsed = [parse_override(text) for text in overrides]
    overridden = {".".join(keys) for keys, _ in parsed}
    _reset_switched_options(raw, parsed, overridden)
    for keys, value in parsed:
        apply_override(raw, keys, value)
    return raw, keep_epoch_fractions(raw, recipe_epochs, overridden)


def keep_epoch_fractions(raw: dict, recipe_epochs: Any, overridden: set[str]) -> Optional[str]:
    """When `overridden` changes `train.epochs`, the recipe's settings counted in epochs (the onecycle peak,
    EPOCH_SETTINGS) keep their fraction of the run, as `cifarlab train` and every sweep trial do. Returns the
    lines that say what moved, or None."""
    notes = [keep_peak_fraction(raw, recipe_epochs, overridden), _keep_epoch_settings(raw, recipe_epochs, overridden)]
    return "\n".join(note for note in notes if note) or None



# The key that picks what a section's `options` belong to: options are the chosen dataset's or model's own
# keyword arguments, so a recipe's options for another one (smoke's synthetic {num_train: 512}) would be refused.
SWITCHES = {"data": "dataset", "model": "name"}


def _reset_switched_options(raw: dict, parsed: list[tuple[list[str], Any]], overridden: set[str]) -> None:
    """An override that switches `data.dataset` or `model.name` to another value drops the recipe's
    `options` of that section, unless the same overrides give options (or the whole section) too."""
    for section, switch in SWITCHES.items():
        given = raw.get(section)
        if not isinstance(given, dict) or f"{section}.{switch}" not in overridden:
            continue
        new = next(value for keys, value in reversed(parsed) if keys == [section, switch])
        if new == given.get(switch) or any(key.startswith(f"{section}.options") for key in overridden):
            continue
        given.pop("options", None)


def keep_peak_fraction(raw: dict, recipe_epochs: Any, overridden: set[str]) -> Optional[str]:
    """A recipe's onecycle `peak_epoch` is a point in its run: when an override changes `train.epochs`,
    the peak keeps its fraction of the run (5 of 24 becomes 1.04 of 5); returns the line that says so.
    A peak_epoch given on the command line is the user's own and is left for validation to judge."""
    schedule, epochs = raw.get("schedule"), (raw.get("train") or {}).get("epochs")
    if not overridden & {"train.epochs", "train"} or overridden & {"schedule.peak_epoch", "schedule"}:
        return None
    if not isinstance(schedule, dict) or schedule.get("name") != "onecycle":
        return None
    peak = schedule.get("peak_epoch")
    numbers = (peak, epochs, recipe_epochs)
    if not all(isinstance(n, (int, float)) and not isinstance(n, bool) and n > 0 for n in numbers):
        return None  # validation names whatever is wrong
    if epochs == recipe_epochs:
        return None
    schedule["peak_epoch"] = peak * epochs / recipe_epochs
    return (f"note: schedule.peak_epoch moves from {peak:g} of {recipe_epochs} epochs to "
            f"{schedule['peak_epoch']:.3g} of {epochs}, the same fraction of the run")


# A recipe's settings counted in whole epochs of its run, besides the onecycle peak (fast: lookahead from
# epoch 3 of 10, the whitening bias trained for the first 3): (dotted key, least value once scaled).
EPOCH_SETTINGS = (("train.lookahead.start_epoch", 0), ("model.options.whiten_bias_epochs", 1))


def _keep_epoch_settings(raw: dict, recipe_epochs: Any, overridden: set[str]) -> Optional[str]:
    """When an override changes `train.epochs`, each of EPOCH_SETTINGS keeps its fraction of the run as
    the peak does, rounded to a whole epoch: lookahead still starts before the last epoch, a bias trained for
    some epochs still trains for one. Without this, `fast train.epochs=2` never started its lookahead (epoch 3)
    and trained the whitening bias throughout. Returns the line that says so; a setting given on the command
    line (or a section above it) is the user's own."""
    epochs = (raw.get("train") or {}).get("epochs")
    whole = all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in (epochs, recipe_epochs))
    if not overridden & {"train.epochs", "train"} or not whole or epochs == recipe_epochs:
        return None
    moved = []
    for key, least in EPOCH_SETTINGS:
        *parents, leaf = key.split(".")
        section = raw
        for part in parents:
            section = section.get(part) if isinstance(section, dict) else None
        value = section.get(leaf) if isinstance(section, dict) else None
        if any(key == given or key.startswith(given + ".") for given in overridden) or isinstance(value, bool) \
                or not isinstance(value, int) or value <= 0:
            continue  # the user's own, or left for validation to judge
        scaled = max(least, round(value * epochs / recipe_epochs))
        if key == "train.lookahead.start_epoch":
            scaled = min(scaled, epochs - 1)
        if scaled != value:
            section[leaf] = scaled
            moved.append(f"{key} moves from {value} to {scaled}")
    if not moved:
        return None
    return (f"note: for {epochs} epochs instead of the recipe's {recipe_epochs}, {' and '.join(moved)}: the same "
            f"fraction of the run")
