"""The benchmark scripts run in their tiny mode, so they cannot rot. No timing is checked here."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize(
    "script",
    [
        "loop_overhead.py",
        "predict_speed.py",
        pytest.param("demo.py", marks=pytest.mark.slow),
        pytest.param("tune_demo.py", marks=pytest.mark.slow),
    ],
)
def test_benchmark_runs_in_tiny_mode(script):
    run = subprocess.run([sys.executable, str(BENCHMARKS / script), "--tiny"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    table = [line for line in run.stdout.splitlines() if line.startswith("|")]
    assert len(table) >= 3 and all(row.count("|") == table[0].count("|") for row in table)
