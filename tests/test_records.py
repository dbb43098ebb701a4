"""Records travel as types: outside run/ (the records' owner) and the writers (the file edge), no module reads
a record's field by string key, and adding a metric is one EpochRow field.

The scan (`string_key_reads`) is an AST pass over each module. It flags `x["name"]` and `x.get("name")` where
`name` is a field of a record (EpochRow, Summary, EarlyStopped, DivergedAt, SavedCheckpoint, StoredOutcome,
TrialRecord) and `x` is an expression that holds a record:
- an attribute named for one (`state.history`, `state.window`, `run.summary`, `state.early_stop`,
  `state.diverged_at`, `state.process.last_checkpoint`), an item of one (`state.history[-1]`), or what a
  record function returns (`state.best()`, `read_summary(...)`, `read_metrics(...)`, `best_row(...)`);
- a local name bound to such an expression in the same function: `row = state.history[-1]`, `best = state.best()
  or {}`, `for row in state.history`, comprehension targets over one.
So `payload["epoch"]` of a checkpoint mapping, `cfg["train"]` or `row["class"]` of a CSV table are not
flagged (their objects are not records), while `best["test_acc"]` with `best = state.best()` is.
"""
from __future__ import annotations

import ast
from dataclasses import fields
from pathlib import Path

import pytest

from cifarlab.run.checkpoint import StoredOutcome
from cifarlab.run.evaluation import Evaluation
from cifarlab.run.metrics import METRIC_COLUMNS, EpochRow, csv_cells, lower_is_better, read_metrics
from cifarlab.run.outcomes import DivergedAt, EarlyStopped, SavedCheckpoint
from cifarlab.run.summary import Summary, display
from cifarlab.sweep.trial import TrialRecord

SRC = Path(__file__).resolve().parents[1] / "src" / "cifarlab"
# The records' owner and the file edge: json/csv/torch.save mappings are read and written here only.
ALLOWED = ("run/", "trainer/writers/")
RECORDS = (EpochRow, Summary, EarlyStopped, DivergedAt, SavedCheckpoint, StoredOutcome, TrialRecord, Evaluation)
FIELD_NAMES = frozenset(f.name for record in RECORDS for f in fields(record))
RECORD_ATTRIBUTES = frozenset({"history", "window", "summary", "early_stop", "diverged_at", "last_checkpoint"})
RECORD_FUNCTIONS = frozenset({"best", "best_row", "ranked", "read_summary", "read_metrics", "write_summary",
                              "evaluate_checkpoint", "evaluate_model_file", "evaluate"})


def _called(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call):
        func = node.func
        return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    return None


class _Reads(ast.NodeVisitor):
    """Collects (line, key) of string-key reads of record fields on record expressions, function by function."""

    def __init__(self):
        self.found: list[tuple[int, str]] = []
        self.records: set[str] = set()  # local names bound to a record (or a list of them) in this function

    def is_record(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Attribute):
            return node.attr in RECORD_ATTRIBUTES
        if isinstance(node, ast.Name):
            return node.id in self.records
        if isinstance(node, ast.Subscript):  # history[-1], rows[0]
            return self.is_record(node.value) and not _string(node.slice)
        if isinstance(node, ast.BoolOp):  # state.best() or {}
            return any(self.is_record(value) for value in node.values)
        if isinstance(node, ast.IfExp):
            return self.is_record(node.body) or self.is_record(node.orelse)
        if isinstance(node, ast.Call):
            return _called(node) in RECORD_FUNCTIONS or (_called(node) in ("list", "reversed", "sorted")
                                                          and bool(node.args) and self.is_record(node.args[0]))
        if isinstance(node, (ast.ListComp, ast.GeneratorExp)):
            return self.is_record(node.elt)
        return False

    def _bind(self, target: ast.AST, value_is_record: bool) -> None:
        if isinstance(target, ast.Name):
            (self.records.add if value_is_record else self.records.discard)(target.id)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self._bind(element, False)

    def visit_FunctionDef(self, node):
        outer, self.records = self.records, set()
        self.generic_visit(node)
        self.records = outer

    visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef

    def visit_Assign(self, node):
        self.visit(node.value)
        for target in node.targets:
            self._bind(target, self.is_record(node.value))
            self.visit(target)

    def visit_For(self, node):
        self.visit(node.iter)
        self._bind(node.target, self.is_record(node.iter))
        for child in node.body + node.orelse:
            self.visit(child)

    def _comprehension(self, node):
        for generator in node.generators:
            self.visit(generator.iter)
            self._bind(generator.target, self.is_record(generator.iter))
            for condition in generator.ifs:
                self.visit(condition)
        for part in ("elt", "key", "value"):
            if hasattr(node, part):
                self.visit(getattr(node, part))

    visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_DictComp = _comprehension

    def visit_Subscript(self, node):
        key = _string(node.slice)
        if isinstance(node.ctx, ast.Load) and key in FIELD_NAMES and self.is_record(node.value):
            self.found.append((node.lineno, key))
        self.generic_visit(node)

    def visit_Call(self, node):
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "get" and node.args and self.is_record(func.value):
            key = _string(node.args[0])
            if key in FIELD_NAMES:
                self.found.append((node.lineno, key))
        self.generic_visit(node)


def _string(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def string_key_reads(source: str) -> list[tuple[int, str]]:
    """(line, field) of every string-key read of a record field on a record expression in `source`."""
    reads = _Reads()
    reads.visit(ast.parse(source))
    return reads.found


def _modules() -> list[Path]:
    return [path for path in sorted(SRC.rglob("*.py"))
            if not path.relative_to(SRC).as_posix().startswith(ALLOWED)]


# ------------------------------------------------------------------ the scan itself

@pytest.mark.parametrize("source, expected", [
    ("def f(state):\n    return state.history[-1]['test_acc']", [(2, "test_acc")]),
    ("def f(state):\n    best = state.best() or {}\n    return best.get('epoch')", [(3, "epoch")]),
    ("def f(state):\n    return [row['lr'] for row in state.history]", [(2, "lr")]),
    ("def f(d):\n    for row in read_metrics(d):\n        if row['kind'] == 'epoch':\n            yield row['val_acc']",
     [(3, "kind"), (4, "val_acc")]),
    ("def f(run):\n    return run.summary['status']", [(2, "status")]),
    ("def f(state):\n    return state.diverged_at['step'], state.process.last_checkpoint['path']",
     [(2, "step"), (2, "path")]),
])
def test_the_scan_finds_string_key_reads_of_records(source, expected):
    assert string_key_reads(source) == expected


@pytest.mark.parametrize("source", [
    "def f(cfg):\n    return cfg['train']['epochs'], cfg.get('seed')",  # a config mapping
    "def f(payload):\n    return payload['epoch'], payload.get('step')",  # a checkpoint's file mapping
    "def f(rows):\n    return [row['class'] for row in rows]",  # a CSV table's rows
    "def f(state):\n    row = state.history[-1]\n    row = {}\n    return row['epoch']",  # rebound to a dict
    "def f(state):\n    return state.history[-1].test_acc, state.best().value('val_loss')",  # typed reads
])
def test_the_scan_leaves_other_mappings_and_typed_reads_alone(source):
    assert string_key_reads(source) == []


# ------------------------------------------------------------------ the codebase

def test_no_module_outside_run_and_the_writers_reads_a_record_field_by_string_key():
    found = [f"{path.relative_to(SRC)}:{line} [{key!r}]" for path in _modules()
             for line, key in string_key_reads(path.read_text())]
    assert not found, "read the record's attribute instead:\n" + "\n".join(found)


def test_the_lower_is_better_rule_and_the_default_monitor_are_said_once():
    """`*loss` lower, accuracies higher: EpochRow's field metadata; what null selects: the config."""
    texts = {path.relative_to(SRC).as_posix(): path.read_text() for path in SRC.rglob("*.py")}
    suffix_rules = [name for name, text in texts.items() if 'endswith("loss")' in text or 'endswith("_loss")' in text]
    assert suffix_rules == [], suffix_rules
    defaults = [name for name, text in texts.items()
                if '"val_acc" if' in text or 'or "test_acc"' in text or 'or "test_loss"' in text]
    assert defaults == ["config/schema.py"], defaults


# ------------------------------------------------------------------ the records' metadata

def test_better_and_display_come_from_the_fields():
    assert lower_is_better("val_loss") and lower_is_better("train_loss") and not lower_is_better("test_acc")
    with pytest.raises(KeyError):
        lower_is_better("lr")  # not a score
    assert display("test_acc", 0.918) == "91.80%" and display("best_test_acc", 0.918) == "91.80%"
    assert display("lr", 0.0187) == "1.87E-02" and display("wall_seconds", 3723.0) == "1:02:03"
    assert display("num_params", 6573130) == "6,573,130" and display("final_test_loss", 0.27) == "0.2700"
    assert display("mfu", 0.1234) == "12.3%" and display("test_acc", None) == "—"


def test_a_metrics_row_round_trips_through_metrics_csv(tmp_path):
    row = EpochRow(epoch=2, step=16, lr=0.05, train_loss=1.25, train_acc=0.5, test_loss=1.5, test_acc=0.4375,
                   elapsed_seconds=3.5, images_per_second=1000.0, kind="epoch")
    cells = csv_cells(row)
    assert list(cells) == list(METRIC_COLUMNS) and cells["kind"] == "epoch" and cells["val_acc"] == ""
    (tmp_path / "metrics.csv").write_text(",".join(METRIC_COLUMNS) + "\n" + ",".join(cells.values()) + "\n")
    assert read_metrics(tmp_path) == [row] and read_metrics(tmp_path, kind="step") == []


def test_summary_json_keeps_its_keys_and_nested_records():
    data = {"status": "completed", "epochs_completed": 3, "best_test_acc": 0.5, "versions": {"torch": "2"},
            "early_stop": {"epoch": 3, "best_epoch": 1, "reason": "no improvement"}, "unknown_key": 1}
    summary = Summary.from_json(data)
    assert summary.early_stop == EarlyStopped(3, 1, "no improvement") and summary.early_stop.pruned_by is None
    again = summary.to_json()
    assert again["early_stop"] == data["early_stop"]  # no pruned_by key unless a pruner stopped it
    assert {key: again[key] for key in data if key != "unknown_key"} == {k: v for k, v in data.items()
                                                                        if k != "unknown_key"}
    pruned = Summary(status="completed", early_stop=EarlyStopped(2, 2, "pruned by the median pruner", "median"))
    assert Summary.from_json(pruned.to_json()).early_stop.pruned_by == "median"
    assert Summary.from_json({"diverged_at": {"step": 7, "lr": 0.5}}).diverged_at == DivergedAt(7, 0.5)
