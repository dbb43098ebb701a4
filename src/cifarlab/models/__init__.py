"""The models and their registry: importing this package registers every model factory.

`cifarlab.models.registry.create_model(name, **kw)`, `list_models()`; this package imports each model
module (plain imports), whose `@register_model` decorators fill the registry.
"""
from cifarlab.models import convnet, custom_resnet, fastnet, resnet  # noqa: F401  (registration)
from cifarlab.models.registry import build_model, create_model, list_models, register_model

__all__ = ["build_model", "create_model", "list_models", "register_model"]
