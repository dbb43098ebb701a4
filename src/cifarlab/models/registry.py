"""The model registry: the CLI, the docs table and the tests all iterate it.

Filled by plain imports: `cifarlab/models/__init__.py` imports every model module, each of which
registers its factories with `@register_model(name)`; importing this module imports that package first."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from cifarlab.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise RuntimeError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UserError(f"unknown {self.kind} {name!r}; choose from: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)


MODELS: Registry[Callable] = Registry("model")


def register_model(name: str):
    """Decorator: `@register_model("custom_resnet")` on a factory `(num_classes, in_channels, norm, dropout, **kw)`."""
    return MODELS.register(name)


def create_model(name: str, **kwargs):
    return MODELS.get(name)(**kwargs)


def list_models() -> list[str]:
    return MODELS.names()


def build_model(model_cfg, num_classes: int, in_channels: int):
    """The model a config's `model` section names, for `num_classes` classes of `in_channels`-channel images."""
    return create_model(model_cfg.name, num_classes=num_classes, in_channels=in_channels,
                        norm=model_cfg.norm, dropout=model_cfg.dropout, **model_cfg.options)
