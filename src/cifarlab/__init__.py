"""cifarlab: train and analyse image classifiers on CIFAR-10-class datasets.

    import cifarlab
    run = cifarlab.train("fmnist-quick", ["train.epochs=2"])
    print(run.best_test_acc, run.run_dir)

Nothing heavy happens at import time; the API functions import their modules when called.
"""
from cifarlab._version import __version__


def __getattr__(name):
    """`cifarlab.register_model` on first use: the registry imports torch and the built-in models, which
    `cifarlab --version`, `--help` and a mistyped command have no use for (PEP 562)."""
    if name == "register_model":
        from cifarlab.models.registry import register_model

        return register_model
    raise AttributeError(f"module 'cifarlab' has no attribute {name!r}")


def train(config=None, overrides=(), run_dir=None, data=None, callbacks=(), model=None):
    """Train a recipe name, YAML path or `Config` with `key=value` overrides; returns the `Run`.

    `data=(x_train, y_train, x_test, y_test[, classes])` trains on arrays or tensors instead of
    `data.dataset`, `data=(train_dataset, test_dataset[, classes])` on torch Datasets or DataLoaders
    (`cifarlab.data.torch_dataset`); `model=` an `nn.Module` instance, class or factory instead of
    `model.name` (`cifarlab.models.python_objects`); `callbacks=[...]` adds your own
    `cifarlab.trainer.callbacks.Callback`s."""
    from cifarlab.experiment import train as _train

    with _supplied(model):
        return _train(config, overrides, run_dir, data=data, callbacks=callbacks, model=model)


def resume(run_dir, data=None, callbacks=(), epochs=None, import_modules=(), model=None, more=None):
    """Continue a run directory from its last checkpoint; `epochs=N` extends it (finished or not) to N
    epochs in all, `more=N` by N epochs beyond its planned ones; `import_modules=["mypkg.nets"]` registers
    your own model first; `model=MyNet()` rebuilds a model that was passed to `train` as an object.
    Returns the `Run`."""
    from cifarlab.experiment import resume as _resume
    from cifarlab.models.registry import import_user_modules

    import_user_modules(import_modules)
    with _supplied(model):
        return _resume(run_dir, data=data, callbacks=callbacks, epochs=epochs, more=more)


def load_model(checkpoint, device=None, precision=None, import_modules=(), model=None):
    """A `LoadedModel`, an `nn.Module` in eval mode (`model(x)` gives logits of normalised input) with
    `.card`, `.precision`, and `.classes`, `.mean`, `.std`, `.image_size`, `.in_channels`, `.tta`. Default
    device: CUDA if there is one, else the CPU; default precision: the run's own (as `cifarlab predict` and
    `eval` use it). `checkpoint` may also be a model folder from `cifarlab export --format hf`.
    `import_modules=["mypkg.nets"]`: modules to import first, which register your own model (a
    checkpoint's own config is never imported). `model=MyNet()`: the module (instance, class or factory)
    the weights are loaded into, for a run whose card says only load_state_dict can rebuild its model."""
    from cifarlab.models.registry import import_user_modules
    from cifarlab.use.load import load_model as _load_model

    import_user_modules(import_modules)
    with _supplied(model):
        return _load_model(checkpoint, device, precision)


def rebuild_with(model):
    """`with cifarlab.rebuild_with(MyNet()): ...`: every loader in the block (report, export, eval) builds
    its model from `model` and loads the checkpoint's weights into it."""
    from cifarlab.models.python_objects import rebuild_with as _rebuild_with

    return _rebuild_with(model)


def _supplied(model):
    import contextlib

    return contextlib.nullcontext() if model is None else rebuild_with(model)


def predict(model_or_checkpoint, images, top=3, tta=None, import_modules=()):
    """Top-`top` (class, probability) per image: paths, PIL images, arrays or tensors of any size."""
    from cifarlab.models.registry import import_user_modules
    from cifarlab.use.predict import predict as _predict

    import_user_modules(import_modules)
    return _predict(model_or_checkpoint, images, top=top, tta=tta)


def load_config(recipe=None, overrides=()):
    from cifarlab.config import load_config as _load

    return _load(recipe, list(overrides))


__all__ = ["train", "resume", "load_model", "predict", "load_config", "register_model", "rebuild_with",
           "__version__"]
