"""A model handed over as a Python object: `cifarlab.train(..., model=MyNet)` with an `nn.Module` instance, a
module class or a factory (a function, a `functools.partial`). The run's `model` section says how to rebuild it:

- an importable class or factory (its module is not `__main__`, it is not defined inside a function, and its
  keyword arguments are plain YAML values): `model.name: "mypkg.nets:MyNet"` (module:qualname, as entry points
  spell it), `model.module: mypkg.nets`, `model.options`: its keyword arguments. Loading imports nothing by
  itself: name the module (`--import mypkg.nets`, `import_modules=[...]`) as for a registered model.
- anything else (an instance, whose constructor arguments are unknown; a class of a notebook or script):
  `model.name: "state_dict:__main__.MyNet"`: only `load_state_dict` into a module you pass rebuilds it
  (`load_model(path, model=MyNet())`, `resume(run, model=MyNet())`, or any loader inside `rebuild_with`).

A class or factory is called with the keyword arguments it was given, plus `num_classes` and `in_channels`
where its signature names them and they were not given; an instance is copied (its own weights start the run).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import sys
from contextvars import ContextVar
from typing import Any, Callable, Iterator, Optional

from torch import nn

from cifarlab.errors import UserError

STATE_DICT_ONLY = "state_dict:"  # the prefix of a model name that only load_state_dict can rebuild
Builder = Callable[[int, int, dict], nn.Module]  # (num_classes, in_channels, options) -> module

_SUPPLIED: ContextVar[Optional[Builder]] = ContextVar("cifarlab_supplied_model", default=None)


def is_python_object_name(name: str) -> bool:
    """`mypkg.nets:MyNet` or `state_dict:...`: a model passed as an object, not a registered one."""
    return ":" in name


def model_section(obj) -> dict[str, Any]:
    """The `model` config fields (name, module, options) that record how to rebuild `obj`."""
    check_model_object(obj)
    if isinstance(obj, nn.Module):
        return _state_dict_only(type(obj))
    func, options = _func_and_options(obj)
    if func is None or not _importable(func) or not _plain(options):
        return _state_dict_only(func or _innermost(obj))
    return {"name": f"{func.__module__}:{func.__qualname__}", "module": func.__module__, "options": options}


# The model keys an object passed as `model=` decides itself (`model_section`); an override of one would be
# dropped without a word, so the two together are refused.
OBJECT_DECIDES = ("model", "model.name", "model.module", "model.options")


def refuse_model_overrides(overrides) -> None:
    """One line for `model=` given with an override that sets what the object decides (`model.name=resnet18`)."""
    from cifarlab.config import parse_override

    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if any(key == decided or key.startswith(decided + ".") for decided in OBJECT_DECIDES[1:]) or key == "model":
            raise UserError(f"model= passes the network, and the override {text!r} names another: give one of the "
                            f"two (model.norm, model.dropout and the other model keys may still be set)")


def check_model_object(obj) -> None:
    if isinstance(obj, nn.Module) or callable(obj):
        return
    raise UserError(f"model must be a torch.nn.Module, a Module class or a function that returns one, "
                    f"got {type(obj).__name__}")


def _state_dict_only(func) -> dict[str, Any]:
    where = f"{getattr(func, '__module__', None) or '?'}.{getattr(func, '__qualname__', type(func).__qualname__)}"
    return {"name": STATE_DICT_ONLY + where, "module": None, "options": {}}


def _func_and_options(obj) -> tuple[Optional[Callable], dict]:
    """(the class or function, its recorded keyword arguments); (None, {}) when positional ones are bound."""
    if isinstance(obj, functools.partial):
        if obj.args:  # positional arguments have no names to record
            return None, {}
        inner, options = _func_and_options(obj.func)
        return inner, {**options, **obj.keywords} if inner is not None else {}
    return obj, {}


def _innermost(obj):
    while isinstance(obj, functools.partial):
        obj = obj.func
    return obj


def _importable(func) -> bool:
    """Would `import <module>` and a getattr walk of `<qualname>` give `func` back in another process?"""
    module, qualname = getattr(func, "__module__", None), getattr(func, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname:
        return False
    return _resolve(module, qualname) is func


def _resolve(module: str, qualname: str):
    target = sys.modules.get(module)
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return target


def _plain(value) -> bool:
    """Values the run's config.yaml can hold and read back as they were."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def builder_of(obj) -> Builder:
    """How to build a fresh module from `obj`: an instance is deep-copied, a class or factory is called."""
    check_model_object(obj)
    if isinstance(obj, nn.Module):
        return lambda num_classes, in_channels, options: copy.deepcopy(obj)
    return lambda num_classes, in_channels, options: _call(obj, num_classes, in_channels, options)


def _call(factory: Callable, num_classes: int, in_channels: int, options: dict) -> nn.Module:
    kwargs = dict(options)
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature: only the recorded keywords
        parameters = {}
    bound = getattr(factory, "keywords", None) or {}  # a partial's own keywords stay as it binds them
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if key in parameters and key not in bound:
            kwargs.setdefault(key, value)
    name = getattr(factory, "__qualname__", type(factory).__name__)
    try:
        module = factory(**kwargs)
    except TypeError as err:
        raise UserError(f"model {name} could not be built with {kwargs}: {err}") from None
    if not isinstance(module, nn.Module):
        raise UserError(f"model {name} returned a {type(module).__name__}, not a torch.nn.Module")
    return module


@contextlib.contextmanager
def rebuild_with(obj) -> Iterator[None]:
    """Inside the block, every model a run, resume or loader builds is built from `obj` (an instance is
    copied, a class or factory called), whatever the checkpoint names: the checkpoint's weights are then
    loaded into it with load_state_dict, which refuses a module of another shape."""
    token = _SUPPLIED.set(builder_of(obj))
    try:
        yield
    finally:
        _SUPPLIED.reset(token)


def python_builder(name: str) -> Optional[Builder]:
    """The builder for a model name: the one `rebuild_with` supplies, else for `module:qualname` the object
    found in the (already imported) module, else None for a registered model's name. Never imports."""
    supplied = _SUPPLIED.get()
    if supplied is not None:
        return supplied
    if not is_python_object_name(name):
        return None
    if name.startswith(STATE_DICT_ONLY):
        what = name.removeprefix(STATE_DICT_ONLY)
        example = f"{what.rpartition('.')[2]}(...)"
        raise UserError(f"this run's model {what} was passed to train as an object, and only load_state_dict can "
                        f"rebuild it: pass one, e.g. cifarlab.load_model(path, model={example}) or "
                        f"cifarlab.resume(run_dir, model=...)")
    module, _, qualname = name.partition(":")
    if module not in sys.modules:
        raise UserError(f"model {name!r} comes from module {module!r}, which is not imported: name it with "
                        f"--import {module} (in Python: import_modules=[{module!r}])")
    factory = _resolve(module, qualname)
    if factory is None or not callable(factory):
        raise UserError(f"model {name!r}: module {module!r} has no {qualname!r} (renamed or moved?)")
    return builder_of(factory)
