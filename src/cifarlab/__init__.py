"""cifarlab: train and analyse image classifiers on CIFAR-10-class datasets.

    import cifarlab
    run = cifarlab.train("fmnist-quick", ["train.epochs=2"])
    print(run.best_test_acc, run.run_dir)

Nothing heavy happens at import time; the API functions import their modules when called. Every command
of the `cifarlab` CLI is one call to a function here (`cifarlab/commands.py`), so the two cannot disagree.
"""
from cifarlab._version import __version__


def __getattr__(name):
    """`cifarlab.register_model` on first use: the registry imports torch and the built-in models, which
    `cifarlab --version`, `--help` and a mistyped command have no use for (PEP 562)."""
    if name == "register_model":
        from cifarlab.models.registry import register_model

        return register_model
    if name == "ReportOptions":
        from cifarlab.analysis.run_report import ReportOptions

        return ReportOptions
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


def train_or_continue(config=None, overrides=(), *, run_dir=None, data=None, callbacks=()):
    """Train into `run_dir` the first time, continue the run there every time after: what `cifarlab train
    ... --run-dir PATH` does, for a job that a scheduler may start again (docs/cluster.md). A run with a
    checkpoint continues as `resume` would; a finished one is returned as it is, not trained again; one
    stopped before its first checkpoint starts again; a run of another config is refused (UserError).
    Without `run_dir`, `train` into a new run folder."""
    if run_dir is None:
        return train(config, overrides, data=data, callbacks=callbacks)
    from cifarlab.cluster import train_or_continue as _train_or_continue

    return _train_or_continue(config, overrides, run_dir=run_dir, data=data, callbacks=callbacks)


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


def demo(overrides=()):
    """A real short run: `cifar10-quick` when CIFAR-10 is cached or can be downloaded, else `fmnist-quick`."""
    from cifarlab.experiment.demo import demo as _demo

    return _demo(overrides)


def sweep_recipe(recipe, arguments=(), **options):
    """An Optuna study of `recipe`'s runs; `arguments` are `key=value` overrides and at most one space file,
    `options` the flags of `cifarlab sweep` (grid, trials, seeds, workers, storage, ...: see
    `cifarlab.sweep.sweep_recipe`). Returns the exit code: 0 done,
    128 + the signal when stopped (130 Ctrl-C, 138 SIGUSR1; call again to continue)."""
    from cifarlab.sweep import sweep_recipe as _sweep_recipe

    return _sweep_recipe(recipe, arguments, **options)


def list_recipes():
    """Recipe name -> its one-line description."""
    from cifarlab.recipe_files import list_recipes as _list_recipes

    return _list_recipes()


def list_datasets(data_dir=None):
    """Dataset name -> where its images come from (cached under `data_dir`, downloaded, or your own)."""
    from cifarlab.data.sources import dataset_notes

    return dataset_notes(data_dir)


def parameter_counts():
    """Registered model name -> its parameters, built for 10 classes and 3 channels."""
    from cifarlab.models.registry import parameter_counts as _parameter_counts

    return _parameter_counts()


def config_yaml(recipe=None, overrides=(), diff=False):
    """The resolved config as YAML; `diff=True`: only what differs from the defaults (itself a recipe)."""
    from cifarlab.config_diff import config_yaml as _config_yaml

    return _config_yaml(recipe, overrides, diff)


def model_summary(model_name, settings=()):
    """Layers, output shapes, parameters and mult-adds of a registered model, as text; `settings` are
    `key=value` pairs: data.dataset, train.batch_size, model.norm, model.dropout, model.options.NAME."""
    from cifarlab.analysis.model_summary import summarize_model

    return summarize_model(model_name, settings)


def lr_find(recipe, overrides=(), out=None):
    """The LR range test of a recipe; returns its result, description, plot and data file (`out`: folder)."""
    from cifarlab.lr_range.search import lr_find as _lr_find

    return _lr_find(recipe, overrides, out)


def evaluate(checkpoint, precision=None, tta=None, data_dir=None):
    """Test loss, accuracy, top-5 accuracy, macro F1 and calibration error of a checkpoint (or exported model
    folder) on its run's test split, with the run's precision and TTA unless given (`tta=False`: none)."""
    from cifarlab.analysis.evaluation import evaluate_model_file

    return evaluate_model_file(checkpoint, precision, tta, data_dir)


def report(run_dir, data_dir=None, options=None):
    """Make a run directory's plots, tables and report.md/.html again; returns report.md. `options`: a
    `cifarlab.ReportOptions` (gallery size, Grad-CAM count, layer and method)."""
    from cifarlab.analysis.run_report import ReportOptions
    from cifarlab.analysis.run_report import report as _report

    return _report(run_dir, data_dir, options or ReportOptions())


def gradcam(checkpoint, images="misclassified", count=10, layer=None, method="gradcam", out=None, data_dir=None):
    """Write a Grad-CAM figure of a checkpoint and return its path: `images` "misclassified" (the `count`
    with the highest loss), test indices "3,17,42" or [3, 17, 42], or image files "a.png,b.jpg"; `method`
    "gradcam" or "gradcam++"."""
    from cifarlab.analysis.gradcam_figure import gradcam_figure

    return gradcam_figure(checkpoint, images, count, layer, method, out, data_dir)


def compare(run_dirs, out=None):
    """Runs side by side (run directories, folders of runs, globs): `.table` (markdown) and `.rows`; with
    `out` also comparison.md, .csv and .png (overlaid test curves) in that folder (`.files`)."""
    from cifarlab.analysis.compare import compare as _compare

    return _compare(run_dirs, out)


def export_checkpoint(checkpoint, export_format, out=None, tta=None):
    """Write a checkpoint's network as "safetensors", "torchscript", "onnx" (plus a JSON sidecar) or "hf"
    (a model folder); returns `.path`, `.metadata` (the sidecar) and `.note` (what the export leaves out)."""
    from cifarlab.export import export_checkpoint as _export_checkpoint

    return _export_checkpoint(checkpoint, export_format, out, tta)


def predict_files(model_or_checkpoint, paths, top=3, csv_out=None):
    """(image file, top-`top` (class, probability)) for every image file that `paths` name, folders searched
    recursively; `csv_out`: also a new CSV file of the same."""
    from cifarlab.use.predict import predict_files as _predict_files

    return _predict_files(model_or_checkpoint, paths, top, csv_out)


__all__ = ["train", "resume", "load_model", "predict", "load_config", "register_model", "rebuild_with",
           "train_or_continue", "demo", "sweep_recipe", "list_recipes", "list_datasets", "parameter_counts",
           "config_yaml", "model_summary", "lr_find", "evaluate", "report", "ReportOptions", "gradcam", "compare",
           "export_checkpoint", "predict_files", "__version__"]
