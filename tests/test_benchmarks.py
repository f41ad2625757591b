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
        "loader_speed.py",
        "scaling.py",
        "device_path.py",
        "blend_speed.py",
        "kornia_aug.py",
        pytest.param("demo.py", marks=pytest.mark.slow),
        pytest.param("tune_demo.py", marks=pytest.mark.slow),
        pytest.param("cv_vs_held_out.py", marks=pytest.mark.slow),
        pytest.param("first_run.py", marks=pytest.mark.slow),
        pytest.param("blend_demo.py", marks=pytest.mark.slow),
        pytest.param("package_demo.py", marks=pytest.mark.slow),
        pytest.param("hands_demo.py", marks=pytest.mark.slow),
        pytest.param("real_size.py", marks=pytest.mark.slow),
        pytest.param("new_tasks.py", marks=pytest.mark.slow),
        pytest.param("segmentation.py", marks=pytest.mark.slow),
        pytest.param("winners_recipe.py", marks=pytest.mark.slow),
    ],
)
def test_benchmark_runs_in_tiny_mode(script):
    run = subprocess.run([sys.executable, str(BENCHMARKS / script), "--tiny"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    table = [line for line in run.stdout.splitlines() if line.startswith("|")]
    assert len(table) >= 3 and all(row.count("|") == table[0].count("|") for row in table)


def bench(target: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(BENCHMARKS / "_run.py"), "--file", str(target), *args]
    return subprocess.run(command, capture_output=True, text=True)


def test_make_bench_rewrites_only_the_tables(tmp_path):
    before, after = "# Benchmarks\n\nProse with a figure, 0.97, that stays.\n\n", "\n\nMore prose.\n"
    commands = "predict_speed.py; predict_speed.py --batch-size 64"
    block = f"<!-- bench: {commands} -->\n| old |\n|---|\n| stale |\n<!-- /bench -->"
    target = tmp_path / "BENCHMARKS.md"
    target.write_text(before + block + after)
    run = bench(target, "--tiny")
    assert run.returncode == 0, run.stderr[-2000:]
    rewritten = target.read_text()
    assert rewritten.startswith(before + "<!-- bench: predict_speed.py;") and rewritten.endswith("/bench -->" + after)
    rows = [line for line in rewritten.splitlines() if line.startswith("|")]
    assert "| stale |" not in rows and len(rows) == 4 and "Run 20" in rewritten  # header, rule, a row per command
    target.write_text(before + block.replace("predict_speed.py;", "gone.py;") + after)
    run = bench(target)
    assert run.returncode != 0 and "names 'gone.py', which is not a script" in run.stderr
    assert "| stale |" in target.read_text()  # untouched
