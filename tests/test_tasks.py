"""The task protocol: a problem type is one module. A toy task registered here trains, predicts
and writes a submission through the ordinary stages; and outside pipeline/tasks/ no module
compares task names."""

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from brightness_task import Brightness
from PIL import Image

from pipeline import tasks
from pipeline.cli import main

PIPELINE = Path(__file__).resolve().parents[1] / "pipeline"


def brightness_competition(root: Path, rng: np.random.Generator) -> None:
    """image_csv: 32x32 gray images whose target is their mean brightness; the answers beside."""
    for split, n in (("train", 48), ("test", 16)):
        (root / split).mkdir(parents=True)
        rows = []
        for i in range(n):
            level = rng.uniform(0.1, 0.9)
            pixels = np.clip(rng.normal(255 * level, 20, (32, 32)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / split / f"{split}{i}.png")
            rows.append({"id": f"{split}{i}", "brightness": pixels.mean() / 255})
        table = pd.DataFrame(rows)
        if split == "train":
            table.to_csv(root / "train.csv", index=False)
        else:
            table[["id"]].to_csv(root / "test.csv", index=False)
            table.assign(brightness=0.5).to_csv(root / "sample_submission.csv", index=False)
            table.to_csv(root / "solution.csv", index=False)


def test_a_toy_task_in_one_module_trains_predicts_and_submits(tmp_path, monkeypatch, capsys):
    tasks.register(Brightness)
    brightness_competition(tmp_path / "data/bright", np.random.default_rng(0))
    config = tmp_path / "bright.yaml"
    raw = {
        "competition": {"name": "bright", "task": "brightness"},
        "data": {"layout": "image_csv", "label_columns": ["brightness"], "channels": 1, "solution": "solution.csv"},
        "folds": {"n_splits": 2},
        "model": {"name": "test_resnet", "image_size": 32, "pretrained": "none"},
        "train": {"epochs": 3, "batch_size": 8, "workers": 0, "lr": 0.01, "device": "cpu"},
    }
    config.write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    for stage in ("data", "folds", "train", "predict", "score"):
        assert main([stage, "-c", str(config)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "brightness: geometry only" in out  # the task's own aug preset was taken
    folds = pd.read_csv("runs/bright/folds.csv")
    assert sorted(folds["fold"].unique()) == [0, 1]  # folds.kind=auto: the protocol's kfold
    submitted = pd.read_csv(next(Path("submissions/bright").glob("*.csv")))
    solution = pd.read_csv("data/bright/solution.csv")
    assert list(submitted.columns) == ["id", "brightness"] and set(submitted["id"]) == set(solution["id"])
    ledger = pd.read_csv("submissions/ledger.csv")
    assert ledger["cv_metric"].iloc[-1] == "rmse" and np.isfinite(ledger["local_score"].iloc[-1])


def task_name_comparisons(path: Path) -> list[str]:
    """Comparisons in `path` against a task's name, as `lineno: source`."""
    names = set(tasks.BUILT_IN)
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            constants = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant)]
            if names & {c for c in constants if isinstance(c, str)} or any(
                isinstance(c, tuple) and names & set(c) for c in constants
            ):
                found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_outside_the_tasks_compares_task_names():
    outside = [p for p in PIPELINE.rglob("*.py") if "tasks" not in p.relative_to(PIPELINE).parts]
    found = {str(p.relative_to(PIPELINE)): task_name_comparisons(p) for p in outside}
    assert {p: lines for p, lines in found.items() if lines} == {}
