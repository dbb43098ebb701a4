"""The GPU speed benchmark stays runnable: its CPU smoke mode builds every case (the GPU ones too) and
prints the comparison table. The figures themselves are for `make bench-gpu`, not for tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # builds and profiles every benchmark case
def test_gpu_speed_smoke_prints_the_table_for_every_cpu_case():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_speed.py"), "--smoke"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "img/s" not in line]
    assert len(rows) >= 2 and all(row.count("|") == 13 for row in rows), done.stdout
    assert "syncs/step fit (bare)" in done.stdout
