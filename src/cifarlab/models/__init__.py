"""The model registry's entries: importing this package registers every model factory.

`cifarlab.registry.create_model(name, **kw)` and `list_models()` import it on first use.
"""
from cifarlab.models import convnet, custom_resnet, fastnet, resnet  # noqa: F401  (registration)
