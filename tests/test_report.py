import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from conftest import run, tiny
from PIL import Image

from pipeline import config, plots
from pipeline.records import CV, Scores
from pipeline.stages import lr_find, report, train


def nonblank_png(path) -> bool:
    with Image.open(path) as image:
        return path.stat().st_size > 1000 and np.asarray(image.convert("L")).std() > 1


@pytest.mark.parametrize(
    ("name", "figure"),
    [
        (
            "curves",
            lambda: plots.plot_learning_curves(
                {
                    "fold0": pd.DataFrame(
                        {"epoch": [1, 2], "train_loss": [1.0, 0.5], "valid_loss": [1.1, 0.7], "accuracy": [0.5, 0.8]}
                    )
                },
                "accuracy",
            ),
        ),
        ("schedule", lambda: plots.plot_schedule([1e-3 * (1 - s / 300) for s in range(300)], 100, "onecycle")),
        ("confusion", lambda: plots.plot_confusion(np.array([[5, 1], [2, 7]]), ["a", "b"])),
        ("bars", lambda: plots.plot_bars(pd.Series([0.9, 0.7], index=["a", "b"]), "accuracy", "class")),
        (
            "stacked",
            lambda: plots.plot_stacked(pd.DataFrame({"kept": [3, 1], "corrupt": [1, 2]}, index=["a", "b"]), "scrape"),
        ),
        (
            "grid",
            lambda: plots.plot_grid(
                [np.full((8, 8, 1), 200, np.uint8), np.zeros((8, 8, 3), np.uint8)],
                ["one", "two"],
                [(np.array([[2.0, 3.0]]), np.array([[4.0, 4.0]]))],
            ),
        ),
        (
            "scores",
            lambda: plots.plot_scores(
                pd.DataFrame(
                    {
                        "cv_score": [0.9, 0.95],
                        "cv_std": [0.01, 0.02],
                        "local_score": [0.88, 0.94],
                        "public_score": [None, 0.93],
                    }
                )
            ),
        ),
        (
            "best_and_last",
            lambda: plots.plot_best_and_last(
                CV(
                    "accuracy",
                    True,
                    "last",
                    10,
                    [0, 1],
                    [50, 50],
                    [4, 9],
                    Scores.of([0.98, 1.0], 0.99),
                    Scores.of([0.96, 1.0], 0.98),
                )
            ),
        ),
    ],
)
def test_each_plot_writes_a_png(name, figure, tmp_path):
    path = plots.save(figure(), tmp_path / f"{name}.png")
    assert nonblank_png(path)


def referenced_images(index) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', index.read_text())


def plotted(monkeypatch, *names: str) -> dict[str, list]:
    """What each named plot function was given, call by call."""
    calls = {name: [] for name in names}
    for name in names:
        original = getattr(plots, name)

        def recording(*args, _name=name, _original=original, **kwargs):
            calls[_name].append(args)
            return _original(*args, **kwargs)

        monkeypatch.setattr(plots, name, recording)
    return calls


def test_classification_report_links_every_image(digits_dir, tmp_path, monkeypatch):
    cfg = tiny({"layout": "pixel_columns", "dir": str(digits_dir), "solution": "solution.csv"})
    run(cfg, tmp_path, monkeypatch)
    train.run(config.with_overrides(cfg, {"train.experiment": "other", "train.lr": 0.02}, "test"))
    lr_find.run(cfg)
    calls = plotted(monkeypatch, "plot_confusion", "plot_bars", "plot_grid")
    report.run(cfg)
    # the figures show the out-of-fold predictions, counted here by hand
    oof = pd.concat(pd.read_csv(tmp_path / f"runs/tiny/tiny/fold{k}/oof.csv") for k in (0, 1))
    probabilities = oof[["prob_0", "prob_1", "prob_2"]].to_numpy()
    confusion = pd.crosstab(oof["label"], probabilities.argmax(axis=1)).reindex(
        index=[0, 1, 2], columns=[0, 1, 2], fill_value=0
    )
    np.testing.assert_array_equal(calls["plot_confusion"][0][0], confusion.to_numpy())
    per_class = calls["plot_bars"][0][0]
    np.testing.assert_allclose(per_class.to_numpy(), np.diag(confusion) / confusion.sum(axis=1).clip(lower=1))
    losses = [float(c.split(" loss ")[1].split()[0]) for c in calls["plot_grid"][0][1]]
    expected = -np.log(np.sort(probabilities[np.arange(len(oof)), oof["label"]])[:16])
    np.testing.assert_allclose(losses, expected, atol=0.006)  # the highest losses, highest first, as printed
    index = tmp_path / "runs/tiny/report/index.html"
    images = referenced_images(index)
    for expected in (
        "experiments.png",
        "learning_curves.png",
        "lr_schedule.png",
        "confusion.png",
        "per_class.png",
        "top_losses.png",
        "lr_find.png",
        "best_and_last.png",
    ):
        assert expected in images
    assert all(nonblank_png(index.parent / name) for name in images)
    assert "CV accuracy" in index.read_text() and "Most confused" in index.read_text()


def test_keypoint_report_links_every_image(faces_dir, tmp_path, monkeypatch):
    cfg = tiny({"layout": "pixel_string", "dir": str(faces_dir)}, task="keypoints")
    run(cfg, tmp_path, monkeypatch)
    calls = plotted(monkeypatch, "plot_bars", "plot_grid")
    report.run(config.with_overrides(cfg, {"train.device": "cuda:7"}, "test"))  # a report needs no training device
    oof = pd.concat(pd.read_csv(tmp_path / f"runs/tiny/tiny/fold{k}/oof.csv") for k in (0, 1))
    for point in ("left_eye_center", "right_eye_center"):  # RMSE in pixels over the images that label it
        dx, dy = (oof[f"pred_{point}_{a}"] - oof[f"{point}_{a}"] for a in "xy")
        expected = np.sqrt(np.nanmean(dx**2 + dy**2))
        assert calls["plot_bars"][0][0][point] == pytest.approx(expected)
    worst = [float(c.split("RMSE ")[1].split()[0]) for c in calls["plot_grid"][1][1]]
    assert worst == sorted(worst, reverse=True)  # the worst images, worst first
    index = tmp_path / "runs/tiny/report/index.html"
    images = referenced_images(index)
    assert {"keypoints_samples.png", "rmse_per_keypoint.png", "keypoints_worst.png"} <= set(images)
    assert all(nonblank_png(index.parent / name) for name in images)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=5000",
    "--run-all-compositor-stages-before-draw",
]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium(digits_dir, tmp_path, monkeypatch):
    cfg = tiny({"layout": "pixel_columns", "dir": str(digits_dir)})
    run(cfg, tmp_path, monkeypatch)
    report.run(cfg)
    index = tmp_path / "runs/tiny/report/index.html"
    profile = [f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [CHROMIUM, *FLAGS, *profile, "--dump-dom", index.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    n = len(referenced_images(index))
    assert f"{n} of {n} images loaded" in dom
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, *FLAGS, *profile, f"--screenshot={shot}", "--window-size=1200,2400", index.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert nonblank_png(shot)


def test_an_empty_scrape_manifest_adds_no_scrape_section(tmp_path, monkeypatch):
    from conftest import make_config

    from pipeline.paths import Paths
    from pipeline.stages.scrape import COLUMNS

    monkeypatch.chdir(tmp_path)
    paths = Paths.of(make_config({"layout": "image_csv", "dir": "data/x"}))
    paths.extra_csv.parent.mkdir(parents=True)
    pd.DataFrame(columns=COLUMNS).to_csv(paths.extra_csv, index=False)
    assert report.scrape_section(paths, tmp_path) is None
