"""The ecosystem around a run: `show --diff`, the report's configuration section, `compare` over folders
and globs with the config keys that differ, TensorBoard hparams, the MLflow logger, notebook progress
bars and the quickstart notebook, user callbacks as the README documents them, and subcommand help."""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

import cifarlab
from cifarlab.cli import build_parser, main
from cifarlab.config import list_recipes, load_config

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["train.device=cpu", "train.threads=1", "output.progress=none", "train.epochs=1", "schedule.peak_epoch=0.5"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two one-epoch smoke runs under one folder: `a` with TensorBoard and the report, `b` with another lr."""
    root = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    try:
        a = cifarlab.train("smoke", [f"output.dir={root}", *QUIET, "output.report=true"])
        b = cifarlab.train("smoke", [f"output.dir={root}", *QUIET, "output.tensorboard=false", "optim.lr=0.1"])
    finally:
        torch.set_num_threads(threads)
    return root, a, b


# ------------------------------------------------------------------------------ show --diff, report

@pytest.mark.parametrize("recipe", list(list_recipes()))
def test_show_diff_is_a_recipe_that_gives_the_same_config(recipe, tmp_path, capsys):
    assert main(["show", recipe, "--diff"]) == 0
    diff = capsys.readouterr().out
    path = tmp_path / "diff.yaml"
    path.write_text(diff)
    assert load_config(str(path)) == load_config(recipe)
    assert len(diff.splitlines()) < len(load_config(recipe).to_yaml().splitlines())


def test_show_diff_prints_only_values_that_differ_from_the_defaults(capsys):
    assert main(["show", "smoke", "optim.lr=0.1", "--diff"]) == 0
    diff = yaml.safe_load(capsys.readouterr().out)
    assert diff["optim"] == {"weight_decay": 0.0005}  # lr=0.1 and momentum 0.9 are the defaults: left out
    assert diff["train"]["epochs"] == 2 and "precision" not in diff["train"]
    assert diff["model"] == {"name": "convnet", "options": {"width": 8}}


@pytest.mark.slow
def test_report_shows_the_differences_on_top_and_folds_the_full_config(runs):
    _, a, _ = runs
    markdown = (a.run_dir / "report.md").read_text()
    section = markdown.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    differences, folded = section.split("<details>", 1)
    assert "| optim.lr | 0.05 | 0.1 |" in differences and "| model.name | convnet | custom_resnet |" in differences
    assert "nesterov" not in differences  # a default value: only in the folded config
    assert "<summary>Full configuration (config.yaml)</summary>" in folded and "nesterov: false" in folded
    assert folded.rstrip().endswith("</details>")
    html = (a.run_dir / "report.html").read_text()
    assert re.search(r"<details><summary>Full configuration \(config.yaml\)</summary>\s*<pre><code>name: smoke", html)
    assert html.index("<td>optim.lr</td>") < html.index("<details>")


# ------------------------------------------------------------------------------ compare

def _table_rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if not line.startswith("|---")]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["parent", "glob"])
def test_compare_a_folder_or_glob_shows_the_config_keys_that_differ(runs, tmp_path, capsys, how):
    root, a, b = runs
    target = str(root) if how == "parent" else str(root / "smoke" / "*")
    capsys.readouterr()
    assert main(["compare", target, "--out", str(tmp_path / "cmp")]) == 0
    header, *rows = _table_rows(capsys.readouterr().out)
    assert len(rows) == 2
    # The one config key that differs; output.* (here tensorboard, report) only says how a run reports.
    assert header[-2:] == ["Status", "optim.lr"]
    lr = header.index("optim.lr")
    assert {row[lr] for row in rows} == {"0.05", "0.1"}
    with open(tmp_path / "cmp" / "comparison.csv", newline="") as handle:
        assert sorted(row["optim.lr"] for row in csv.DictReader(handle)) == ["0.05", "0.1"]


@pytest.mark.parametrize("target, expected", [
    ("{tmp}/nothing-*", "matches no run directory"),
    ("{tmp}", "has no summary.json and no run directory below it"),
    ("{tmp}/missing", "does not exist"),
])
def test_compare_without_runs_is_one_line(tmp_path, capsys, target, expected):
    code = main(["compare", target.format(tmp=tmp_path), "--out", str(tmp_path / "cmp")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expected in err
    assert not (tmp_path / "cmp").exists()


# ------------------------------------------------------------------------------ TensorBoard hparams

@pytest.mark.slow
def test_tensorboard_hparams_hold_the_flat_config_and_the_final_metrics(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, a, _ = runs
    assert [p.name for p in (a.run_dir / "tb").iterdir() if p.is_dir()] == []  # one run in TensorBoard, not two
    events = EventAccumulator(str(a.run_dir / "tb"))
    events.Reload()
    assert events.Scalars("hparam/best_test_acc")[0].value == pytest.approx(a.summary["best_test_acc"])
    assert events.Scalars("hparam/final_test_loss")[0].value == pytest.approx(a.summary["final_test_loss"])
    content = events.PluginTagToContent("hparams")
    start = [plugin_data_pb2.HParamsPluginData.FromString(raw) for raw in content.values()]
    hparams = next(data.session_start_info.hparams for data in start if data.HasField("session_start_info"))
    assert hparams["optim.lr"].number_value == pytest.approx(0.05)
    assert hparams["model.name"].string_value == "convnet"
    assert hparams["data.mean"].string_value == "null"  # null and lists as text


@pytest.mark.slow
def test_an_extended_run_adds_its_newer_hparams_entry(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = cifarlab.train("smoke", [f"output.dir={tmp_path}", *QUIET])
    extended = cifarlab.resume(run.run_dir, epochs=2)
    events = EventAccumulator(str(run.run_dir / "tb"))
    events.Reload()
    *_, final = events.Scalars("hparam/final_test_acc")
    assert final.step == 16 and final.value == pytest.approx(extended.history[-1]["test_acc"])
    assert [e.step for e in events.Scalars("epoch/test_acc")] == [8, 16]


# ------------------------------------------------------------------------------ MLflow

@pytest.mark.slow  # two runs, each logging its model through torch.export: ~14 s on a shared 2-core CPU
def test_mlflow_logger_writes_params_metrics_and_status_offline_and_resume_extends_the_same_run(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run = cifarlab.train("smoke", [f"output.dir={tmp_path}", *QUIET, "output.tensorboard=false", "output.mlflow=true"])
    saved = json.loads((run.run_dir / "mlflow.json").read_text())
    assert saved["store"] == "mlruns"  # relative to the run directory: survives a move
    client = MlflowClient(tracking_uri=(run.run_dir / "mlruns").resolve().as_uri())
    logged = client.get_run(saved["run_id"])
    assert logged.info.status == "FINISHED"
    assert logged.data.params["optim.lr"] == "0.05" and logged.data.params["model.name"] == "convnet"
    (test_acc,) = client.get_metric_history(saved["run_id"], "epoch/test_acc")
    assert test_acc.value == pytest.approx(run.summary["best_test_acc"]) and test_acc.step == 8
    assert len(client.get_metric_history(saved["run_id"], "step/train_loss")) == 2  # windows at steps 4 and 8

    extended = cifarlab.resume(run.run_dir, epochs=2)
    assert json.loads((run.run_dir / "mlflow.json").read_text())["run_id"] == saved["run_id"]
    history = client.get_metric_history(saved["run_id"], "epoch/test_acc")
    assert [m.step for m in history] == [8, 16]
    assert history[-1].value == pytest.approx(extended.history[-1]["test_acc"])
    logged = client.get_run(saved["run_id"])
    assert logged.info.status == "FINISHED" and logged.data.tags["train.epochs"] == "2"


def test_mlflow_missing_is_one_line_before_any_run_directory(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    assert main(["train", "smoke", f"output.dir={tmp_path}", *QUIET, "output.mlflow=true"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("cifarlab train: error: output.mlflow=true needs MLflow: pip install 'cifarlab[mlflow]' "
                   "(or set output.mlflow=false)")
    assert not (tmp_path / "smoke").exists() or not any((tmp_path / "smoke").iterdir())


# ------------------------------------------------------------------------------ notebooks

def test_progress_uses_tqdm_auto_bars_in_a_jupyter_kernel(monkeypatch):
    import io

    import tqdm.auto

    from cifarlab.trainer.writers.progress_printer import ProgressPrinter

    assert not ProgressPrinter("auto", io.StringIO()).bars  # not a terminal, not a notebook: plain lines
    shell = types.SimpleNamespace(config={"IPKernelApp": {}})
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    progress = ProgressPrinter("auto", io.StringIO())
    assert progress.bars
    made = []
    monkeypatch.setattr(tqdm.auto, "tqdm", lambda **kwargs: made.append(kwargs) or types.SimpleNamespace())
    cfg = load_config("smoke")
    progress.on_epoch_start(types.SimpleNamespace(cfg=cfg, steps_per_epoch=8,
                                                  progress=types.SimpleNamespace(epoch=0, batch_in_epoch=0)))
    assert made and made[0]["total"] == 8 and made[0]["desc"] == "Epoch 1/2"


@pytest.mark.slow  # a Jupyter kernel runs the notebook
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    for module in ("nbclient", "nbformat", "ipykernel"):
        pytest.importorskip(module)
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    # The kernel is a new process: it finds this checkout's cifarlab through PYTHONPATH.
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "src"))
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    text = "".join(output.get("text", "") for output in outputs)
    assert "best test accuracy" in text and re.search(r"true\s+class\d: class\d \d+%", text)
    assert any("image/png" in output.get("data", {}) for output in outputs)  # the curves
    assert any("application/vnd.jupyter.widget-view+json" in output.get("data", {}) for output in outputs) \
        or importlib.util.find_spec("ipywidgets") is None  # a widget bar where ipywidgets is installed
    assert list((tmp_path / "runs" / "smoke").glob("*/checkpoints/best.pt"))


# ------------------------------------------------------------------------------ user callbacks

def test_the_readme_callback_example_runs_as_written(tmp_path, monkeypatch, capsys):
    page = (ROOT / "docs" / "python-api.md").read_text()
    block = page.split("## Your own callbacks", 1)[1]
    code = re.search(r"```python\n(.*?)```", block, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    code = code.replace('"fmnist-quick"', '"smoke"').replace('["train.epochs=2"]', repr(QUIET))
    namespace: dict = {}
    exec(compile(code, "docs/python-api.md", "exec"), namespace)  # the documented example, on the smoke recipe
    out = capsys.readouterr().out
    assert re.search(r"epoch 1: test accuracy \d+\.\d\d%", out)
    assert re.search(r"step 4: loss \d+\.\d+", out)
    assert namespace["recorder"].best_acc == pytest.approx(namespace["run"].history[-1]["test_acc"])


# ------------------------------------------------------------------------------ help

def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_subcommand_argument_has_help_and_every_subcommand_an_example():
    commands = _subcommands()
    assert {"train", "resume", "show", "compare", "eval", "predict", "gradcam", "export"} <= set(commands)
    missing = []
    for name, parser in commands.items():
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{name} {action.dest}")
        text = f"{parser.description or ''}\n{parser.epilog or ''}"
        if f"cifarlab {name}" not in text:
            missing.append(f"{name}: no example")
    assert not missing, missing


def test_subcommand_help_prints_its_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["resume", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--more N" in out and "--epochs TOTAL" in out
    assert "\n  cifarlab resume runs/fmnist-quick/20261121-120000 --more 2" in out


def test_differences_keep_a_section_switched_off_against_a_filled_default():
    from cifarlab.config_diff import MISSING, differences

    base = {"augment": {"crop": {"padding": 4}}, "model": {"options": {}}}
    ours = {"augment": {"crop": None}, "model": {"options": {"width": 8}}}
    assert differences(ours, base) == {"augment.crop": (None, MISSING), "augment.crop.padding": (MISSING, 4),
                                       "model.options.width": (8, MISSING)}
