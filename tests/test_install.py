"""`make demo` installs the plain package: the demo's whole path (train, evaluate, report) imports no extra."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from _folders import needs_fashion
from _runs import SRC

ROOT = Path(__file__).resolve().parents[1]
IMPORT_NAMES = {"mlflow-skinny": "mlflow", "psycopg2-binary": "psycopg2", "optuna-dashboard": "optuna_dashboard"}


def extra_modules() -> list[str]:
    """The import names of every optional dependency in pyproject.toml (the `test` extra only names others)."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()
             for requirements in extras.values() for requirement in requirements}
    return sorted(IMPORT_NAMES.get(name, name.replace("-", "_")) for name in names if name != "cifarlab")


@needs_fashion
@pytest.mark.slow
def test_the_demo_path_runs_with_no_extra_importable(tmp_path):
    blocked = extra_modules()
    assert "onnx" in blocked and "pytest" in blocked
    # A module set to None in sys.modules cannot be imported: as if the extras were not installed.
    script = (f"import sys; sys.modules.update(dict.fromkeys({blocked!r})); from cifarlab.cli import main; "
              "raise SystemExit(main(sys.argv[1:]))")
    # What `cifarlab demo` trains where CIFAR-10 cannot be downloaded (trying to would wait on the network).
    done = subprocess.run([sys.executable, "-c", script, "train", "fmnist-quick", "train.epochs=1",
                           "data.train_subset=500", "data.test_subset=200", f"output.dir={tmp_path}",
                           "train.threads=1", "output.progress=none"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(SRC), "CIFARLAB_DATA": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = [path.parent for path in tmp_path.glob("*/*/summary.json")]
    assert (run_dir / "report.html").is_file() and (run_dir / "plots" / "curves.png").is_file()
