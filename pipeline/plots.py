"""The report's plots (plain inputs in, a Figure out) and its HTML pieces."""

import html
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pipeline.files import atomic_path
from pipeline.records import CV

Section = tuple[str, str]  # (title, HTML)


def save(figure: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
    return path


def plot_learning_curves(histories: dict[str, pd.DataFrame], metric: str) -> Figure:
    """Per fold: train and valid loss, and the metric, per epoch."""
    figure = Figure(figsize=(11, 4))
    loss, score = figure.subplots(1, 2)
    for name, history in histories.items():
        line = loss.plot(history["epoch"], history["train_loss"], label=f"{name} train")[0]
        if "valid_loss" in history:
            loss.plot(history["epoch"], history["valid_loss"], "--", color=line.get_color(), label=f"{name} valid")
        if metric in history:
            score.plot(history["epoch"], history[metric], color=line.get_color(), label=name)
    loss.set(xlabel="epoch", ylabel="loss", title="loss (solid: train, dashed: valid)")
    score.set(xlabel="epoch", ylabel=metric, title=f"valid {metric}")
    loss.legend(fontsize=7)
    score.legend(fontsize=7)
    return figure


def plot_schedule(lr: Sequence[float], steps_per_epoch: int, scheduler: str) -> Figure:
    """The learning rate of each step."""
    figure = Figure(figsize=(6, 3))
    axes = figure.subplots()
    axes.plot(np.arange(len(lr)) / steps_per_epoch, lr)
    axes.set(xlabel="epoch", ylabel="learning rate", title=f"{scheduler} schedule")
    return figure


def plot_confusion(confusion: np.ndarray, classes: Sequence[str]) -> Figure:
    side = max(4.0, 0.45 * len(classes) + 2)
    figure = Figure(figsize=(side, side))
    axes = figure.subplots()
    axes.imshow(confusion, cmap="Blues")
    ticks = np.arange(len(classes))
    axes.set(xticks=ticks, yticks=ticks, xlabel="predicted", ylabel="actual", title="confusion matrix (out of fold)")
    axes.set_xticklabels(classes, rotation=90)
    axes.set_yticklabels(classes)
    if len(classes) <= 20:
        for (i, j), count in np.ndenumerate(confusion):
            axes.text(
                j,
                i,
                str(count),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if count > confusion.max() / 2 else "black",
            )
    return figure


def plot_bars(values: pd.Series, title: str, xlabel: str) -> Figure:
    figure = Figure(figsize=(max(5.0, 0.35 * len(values) + 2), 3.5))
    axes = figure.subplots()
    axes.bar([str(i) for i in values.index], values.to_numpy())
    axes.set(title=title, xlabel=xlabel)
    axes.tick_params(axis="x", rotation=90)
    return figure


def plot_stacked(counts: pd.DataFrame, title: str) -> Figure:
    figure = Figure(figsize=(max(5.0, 0.4 * len(counts) + 3), 4))
    axes = figure.subplots()
    bottom = np.zeros(len(counts))
    for column in counts.columns:
        axes.bar([str(i) for i in counts.index], counts[column].to_numpy(), bottom=bottom, label=str(column))
        bottom += counts[column].to_numpy()
    axes.set(title=title, xlabel="label")
    axes.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    return figure


def plot_grid(
    images: Sequence[np.ndarray],
    captions: Sequence[str],
    points: Sequence[tuple] = (),
    sizes: Sequence[tuple[int, int]] = (),
    columns: int = 4,
) -> Figure:
    """Images with captions; for keypoints, (true, predicted) (K, 2) pixel arrays per image, in
    pixels of the image files, whose (height, width)s `sizes` gives (a cached image may be smaller)."""
    rows = max(1, int(np.ceil(len(images) / columns)))
    figure = Figure(figsize=(2.6 * columns, 2.9 * rows))
    for i, axes in enumerate(np.atleast_1d(figure.subplots(rows, columns)).ravel()):
        axes.axis("off")
        if i >= len(images):
            continue
        image = np.asarray(images[i])
        height, width = sizes[i] if i < len(sizes) else image.shape[:2]
        extent = (-0.5, width - 0.5, height - 0.5, -0.5)
        axes.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", extent=extent)
        axes.set_title(captions[i], fontsize=7)
        if i < len(points):
            truth, predicted = points[i]
            axes.scatter(truth[:, 0], truth[:, 1], s=12, c="lime", label="true")
            axes.scatter(predicted[:, 0], predicted[:, 1], s=12, c="red", marker="x", label="predicted")
    return figure


def plot_scores(ledger: pd.DataFrame) -> Figure:
    """Each submission's stated CV (± its folds' spread) against its held-out and public scores;
    on the diagonal, the CV predicted the score exactly."""
    figure = Figure(figsize=(5, 4))
    axes = figure.subplots()
    cv, spread = pd.to_numeric(ledger["cv_score"]), pd.to_numeric(ledger["cv_std"]).fillna(0.0)
    for column, marker in (("local_score", "o"), ("public_score", "s")):
        score = pd.to_numeric(ledger[column], errors="coerce")
        scored = score.notna()
        axes.errorbar(cv[scored], score[scored], xerr=spread[scored], fmt=marker, capsize=3, label=column)
    low, high = axes.get_xlim()
    axes.plot([low, high], [low, high], color="grey", linewidth=0.8, label="score = CV")
    axes.set(xlabel="stated CV (± folds' spread)", ylabel="held-out / public score", title="CV against the leaderboard")
    axes.legend(fontsize=7)
    return figure


def plot_best_and_last(cv: CV) -> Figure:
    """Each fold's score at its best epoch and at its last: far apart, the schedule ends past its best."""
    figure = Figure(figsize=(6, 3.5))
    axes = figure.subplots()
    x = np.arange(len(cv.fold_ids))
    axes.bar(x - 0.2, cv.best.folds, width=0.4, label="best epoch")
    axes.bar(x + 0.2, cv.last.folds, width=0.4, label="last epoch (the full fit's recipe)")
    low = min(cv.best.folds + cv.last.folds)
    high = max(cv.best.folds + cv.last.folds)
    margin = max(high - low, 1e-3)
    axes.set_ylim(low - margin, high + margin / 2)
    axes.set_xticks(x, [f"fold {k}" for k in cv.fold_ids])
    axes.set(ylabel=cv.metric, title="best against last epoch per fold")
    axes.legend(fontsize=7)
    return figure


def plot_experiments(table: pd.DataFrame, metric: str) -> Figure:
    """Each experiment's CV at the last epoch (± the folds' spread) and at the best epochs."""
    figure = Figure(figsize=(max(5.0, 0.6 * len(table) + 2), 3.5))
    axes = figure.subplots()
    x = np.arange(len(table))
    axes.errorbar(x, table["cv_last"], yerr=table["std_last"], fmt="o", capsize=3, label="last epoch ± folds' spread")
    axes.scatter(x, table["cv_best"], marker="_", s=200, color="grey", label="best epochs")
    axes.set_xticks(x, table["experiment"], rotation=90)
    axes.set(ylabel=metric, title="experiments")
    axes.legend(fontsize=7)
    return figure


def img(name: str, alt: str) -> str:
    return f'<img src="{html.escape(name)}" alt="{html.escape(alt)}">'


def table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.5f}", border=0, classes="numbers")


def plot_predicted_vs_true(truth: np.ndarray, predicted: np.ndarray, names: Sequence[str]) -> Figure:
    """Per target (the first 4): predicted against true, the diagonal drawn, and the residuals
    against the prediction."""
    shown = list(names)[:4]
    figure = Figure(figsize=(8, 3.6 * len(shown)))
    for row, axes in enumerate(np.atleast_2d(figure.subplots(len(shown), 2))):
        present = ~np.isnan(truth[:, row])
        true, guess = truth[present, row], predicted[present, row]
        low, high = float(min(true.min(), guess.min())), float(max(true.max(), guess.max()))
        axes[0].scatter(true, guess, s=6, alpha=0.5)
        axes[0].plot([low, high], [low, high], color="gray", linewidth=1)
        axes[0].set(xlabel=f"true {shown[row]}", ylabel="predicted", title=f"{shown[row]} (out of fold)")
        axes[1].scatter(guess, guess - true, s=6, alpha=0.5)
        axes[1].axhline(0.0, color="gray", linewidth=1)
        axes[1].set(xlabel="predicted", ylabel="predicted - true", title="residuals")
    return figure


def overlay_masks(image: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 image with (H, W) 0/1 masks tinted on it: true green, predicted red,
    both yellow."""
    grey = np.asarray(image, dtype=np.float32).mean(axis=2, keepdims=True).repeat(3, axis=2) * 0.6
    tint = np.stack([predicted, truth, np.zeros_like(truth)], axis=2).astype(np.float32) * 100
    return np.clip(grey + tint, 0, 255).astype(np.uint8)


def plot_dice_by_area(area: np.ndarray, dice: np.ndarray, name: str) -> Figure:
    """Each image's Dice against its true mask's share of the image (0: no mask)."""
    figure = Figure(figsize=(5, 3.6))
    axes = figure.subplots()
    axes.scatter(area, dice, s=6, alpha=0.5)
    axes.set(xlabel=f"true {name} area (share of the image)", ylabel="Dice at 0.5", title="Dice by mask area (OOF)")
    return figure
