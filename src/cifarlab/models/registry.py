"""The model registry: the CLI, the docs table and the tests all iterate it.

Filled by plain imports: `cifarlab/models/__init__.py` imports every model module, each of which
registers its factories with `@register_model(name)`; importing this module imports that package first."""
from __future__ import annotations

import collections.abc
import importlib
import re
import types
import typing
from typing import Callable, Generic, Optional, TypeVar

from cifarlab.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories, and to what each factory declares about what it builds (`facts`)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._facts: dict[str, dict] = {}

    def register(self, name: str, **facts) -> Callable[[T], T]:
        # A name is written on command lines and in config files; one with ':' would read as a Python object's
        # (`module:qualname`, models/python_objects.py), so it could never be looked up here.
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name):
            raise UserError(f"a {self.kind} name is letters, digits and _ . - (starting with a letter or digit), "
                            f"got {name!r}")

        def add(entry: T) -> T:
            if name in self._entries:  # e.g. a user's model named like a built-in one
                owner = getattr(self._entries[name], "__module__", None) or "?"
                by = f"cifarlab's built-in {self.kind}" if owner.startswith("cifarlab.") else f"module {owner}"
                raise UserError(f"{self.kind} name {name!r} is already registered, by {by}; register yours under a "
                                f"name not taken (taken: {', '.join(self.names())})")
            self._entries[name], self._facts[name] = entry, facts
            return entry

        return add

    def facts(self, name: str) -> dict:
        self.get(name)  # an unknown name is one line naming the registered ones
        return self._facts[name]

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UserError(f"unknown {self.kind} {name!r}; choose from: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)


MODELS: Registry[Callable] = Registry("model")


def register_model(name: str, classifier: Optional[str] = None):
    """Decorator: `@register_model("custom_resnet", classifier="fc")` on a factory `(num_classes, in_channels,
    norm, dropout, **kw)`. `classifier` names the submodule that produces the logits (timm's
    `pretrained_cfg["classifier"]`): the model card records it, and `model.init_head=false` starts it fresh."""
    return MODELS.register(name, classifier=classifier)


def classifier_of(name: str) -> Optional[str]:
    """The classifier submodule model `name` declared when it was registered (None: it declared none)."""
    return MODELS.facts(name)["classifier"]


def create_model(name: str, **kwargs):
    factory = MODELS.get(name)
    check_option_types(name, factory, kwargs)
    return factory(**kwargs)


def check_option_types(name: str, factory: Callable, kwargs: dict) -> None:
    """Each keyword against the factory's annotation (int, float, bool, str, Optional/Union and sequences of
    those): `model.options={width: 8.5}` or `{width: "8"}` is one line naming the option, not a TypeError
    deep in torch. Options the factory does not annotate are left to it."""
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # annotations that cannot be resolved: the factory checks its own arguments
        return
    for key, value in kwargs.items():
        expected = hints.get(key)
        if expected is not None and not _matches(value, expected):
            raise UserError(f"model {name!r} cannot be built: {key}={value!r} must be {_describe(expected)} "
                            f"(model.options.{key}), not a {type(value).__name__}")


def _matches(value, expected) -> bool:
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin is typing.Union or origin is types.UnionType:
        return any(_matches(value, arg) for arg in args)
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence):
        item = args[0] if args else None  # list[int], tuple[int, ...]: every item an int
        return isinstance(value, (list, tuple)) and (item is None or all(_matches(v, item) for v in value))
    return True


def _describe(expected) -> str:
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string", type(None): "null"}
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(expected))
    if typing.get_origin(expected) in (list, tuple, collections.abc.Sequence):
        items = {bool: "true or false values", int: "whole numbers", float: "numbers", str: "strings"}
        args = typing.get_args(expected)
        return f"a list of {items[args[0]]}" if args and args[0] in items else "a list"
    return names.get(expected, getattr(expected, "__name__", str(expected)))


def list_models() -> list[str]:
    return MODELS.names()


def parameter_counts() -> dict[str, int]:
    """Model name -> its parameters, built for 10 classes and 3 channels (`cifarlab models`)."""
    return {name: sum(p.numel() for p in create_model(name).parameters()) for name in list_models()}


def import_user_modules(names) -> None:
    """Import the modules a user named (`model.module` in their recipe, `--import` on the command line,
    `import_modules=` in Python), so that their `@register_model` decorators run.

    Only names the user gave come here: a checkpoint's own config is never a reason to import code."""
    for name in _module_names(names):
        if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", name):
            raise UserError(f"{name!r} is not a module name; give a dotted Python module name like mypkg.nets")
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is None or not (name == err.name or name.startswith(err.name + ".")):
                raise UserError(f"model module {name!r} failed to import: {_failure(err)}") from None
            raise UserError(f"cannot import model module {name!r}: no module named {err.name!r} "
                            f"(install it, or put its folder on PYTHONPATH)") from None
        except UserError:
            raise
        except Exception as err:  # the user's code: its error and where, as one line, before anything is written
            raise UserError(f"model module {name!r} failed to import: {_failure(err)}") from None


def _failure(err: BaseException) -> str:
    """`RuntimeError: message (at path/file.py:12)`: the error and the innermost line of the user's code that
    raised it (a SyntaxError names its own file and line)."""
    import traceback

    message = (str(err).splitlines() or [""])[0][:200]
    if isinstance(err, SyntaxError):
        return f"SyntaxError: {err.msg} (at {err.filename}:{err.lineno})"
    frames = [frame for frame in traceback.extract_tb(err.__traceback__) if "importlib" not in frame.filename]
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(err).__name__}: {message}{where}"


def check_registered(model_cfg) -> None:
    """A model a checkpoint or run names must be registered already: say which module to import, one line."""
    if model_cfg.name in MODELS.names():
        return
    module = _module_names(model_cfg.module)
    named = f" (its run imported {', '.join(module)})" if module else ""
    flags = " ".join(f"--import {m}" for m in module) or "--import MODULE"
    raise UserError(f"model {model_cfg.name!r} is not registered{named}: name the module that registers it with "
                    f"{flags} (in Python: import_modules=[...]); registered models: {', '.join(MODELS.names())}")


def _module_names(module) -> list[str]:
    return [module] if isinstance(module, str) else list(module or ())


def build_model(model_cfg, num_classes: int, in_channels: int):
    """The model a config's `model` section names, for `num_classes` classes of `in_channels`-channel images.
    A model from the user's own module must have been registered first (`import_user_modules`); one passed
    to `train` as a Python object is rebuilt as models/python_objects.py says."""
    from cifarlab.models.python_objects import python_builder

    builder = python_builder(model_cfg.name)
    if builder is not None:
        return builder(num_classes, in_channels, dict(model_cfg.options))
    check_registered(model_cfg)
    return create_model(model_cfg.name, num_classes=num_classes, in_channels=in_channels,
                        norm=model_cfg.norm, dropout=model_cfg.dropout, **model_cfg.options)
