"""`make report`: what the model gets wrong, in pictures, from the files the stages wrote.

runs/<name>/report/index.html shows the key numbers and every plot: learning curves and the
learning-rate schedule, the CV table and CV against held-out or public scores, the confusion
matrix, most confused pairs, per-class accuracy and top losses (classification), true (green)
and predicted (red) keypoints, RMSE per keypoint and the worst images (keypoints), the lr-find
curve, the scrape summary and the tuning history, each where its stage has run.
"""

import html
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pipeline import config as C
from pipeline import engine, experiments, plan
from pipeline.files import atomic_path, write_text
from pipeline.images import decode
from pipeline.paths import Paths
from pipeline.records import CV

Section = tuple[str, str]  # (title, HTML)


# --- plots: plain inputs in, a Figure out ------------------------------------------------------


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


def plot_schedule(train: C.Train, epochs: int, steps_per_epoch: int = 100) -> Figure:
    total = epochs * steps_per_epoch
    lr = [train.lr * engine.lr_factor(s, total, train, steps_per_epoch) for s in range(total)]
    figure = Figure(figsize=(6, 3))
    axes = figure.subplots()
    axes.plot(np.arange(total) / steps_per_epoch, lr)
    axes.set(xlabel="epoch", ylabel="learning rate", title=f"{train.scheduler} schedule")
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


# --- sections: what a run's files say ----------------------------------------------------------


def _img(name: str, alt: str) -> str:
    return f'<img src="{html.escape(name)}" alt="{html.escape(alt)}">'


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.5f}", border=0, classes="numbers")


def cv_section(cv: CV, out: Path) -> Section:
    table = pd.DataFrame(
        {
            "fold": cv.fold_ids,
            "best epoch": cv.best_epochs,
            f"{cv.metric} at best": cv.best.folds,
            f"{cv.metric} at last": cv.last.folds,
        }
    )
    direction = "higher" if cv.higher_is_better else "lower"
    summary = (
        f"<p class='headline'>CV {html.escape(cv.metric)} {cv.last.mean:.5f} ± {cv.last.std:.5f} at the last epoch, "
        f"the full fit's recipe (out of fold {cv.last.oof:.5f}); {cv.best.mean:.5f} ± {cv.best.std:.5f} at the "
        f"best epochs (out of fold {cv.best.oof:.5f}); {direction} is better. The fold models keep the {cv.kept} "
        f"epoch of {cv.epochs}.</p>"
    )
    if cv.unstable:
        summary += "<p><b>" + html.escape(cv.describe()[-1]) + "</b></p>"
    save(plot_best_and_last(cv), out / "best_and_last.png")
    return "Cross-validation", summary + _table(table) + _img("best_and_last.png", "best against last epoch per fold")


def experiments_section(paths: Paths, out: Path, cv: CV) -> Section | None:
    table = experiments.table(paths)
    if len(table) < 2:
        return None
    save(plot_experiments(table, cv.metric), out / "experiments.png")
    return "Experiments", _img("experiments.png", "experiments") + _table(table)


def curves_section(paths: Paths, cv: CV, out: Path, cfg: C.Config) -> Section:
    fits = {f"fold{k}": paths.fold(k) for k in cv.fold_ids} | {"full": paths.full}
    histories = {name: pd.read_csv(files.metrics) for name, files in fits.items() if files.metrics.exists()}
    save(plot_learning_curves(histories, cv.metric), out / "learning_curves.png")
    save(plot_schedule(cfg.train, cfg.train.epochs), out / "lr_schedule.png")
    return "Learning curves", _img("learning_curves.png", "learning curves") + _img("lr_schedule.png", "lr schedule")


def ledger_section(paths: Paths, out: Path, cfg: C.Config) -> Section | None:
    from pipeline.submission import read_ledger

    ledger = read_ledger()
    ledger = ledger[ledger["competition"] == cfg.competition.name]
    if ledger.empty:
        return None
    cv = pd.to_numeric(ledger["cv_score"], errors="coerce")
    gaps = {f"{c}_gap": pd.to_numeric(ledger[f"{c}_score"], errors="coerce") - cv for c in ("local", "public")}
    ledger = ledger.assign(**gaps)
    columns = ["file", "models", "tta", "cv_metric", "cv_score", "cv_std", "local_score", "local_gap"]
    body = _table(ledger[[*columns, "public_score", "public_gap", "cv_method"]])
    if ledger[["local_score", "public_score"]].apply(pd.to_numeric, errors="coerce").notna().any().any():
        save(plot_scores(ledger), out / "cv_vs_leaderboard.png")
        body += _img("cv_vs_leaderboard.png", "CV against held-out and public scores")
    return "Submissions", body


def out_of_fold(paths: Paths, cv: CV) -> pd.DataFrame:
    frames = [pd.read_csv(paths.fold(k).oof, dtype={"id": str}) for k in cv.fold_ids]
    return pd.concat(frames, ignore_index=True)


def classification_sections(paths: Paths, out: Path, oof: pd.DataFrame, image_of: Callable) -> list[Section]:
    columns = [c for c in oof.columns if c.startswith("prob_")]
    classes = [c.removeprefix("prob_") for c in columns]
    target = next(c for c in oof.columns if c not in ("id", "fold", *columns))
    actual = oof[target].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy()
    probabilities = oof[columns].to_numpy()
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    np.add.at(confusion, (actual, predicted), 1)
    save(plot_confusion(confusion, classes), out / "confusion.png")
    pairs = [(classes[i], classes[j], confusion[i, j]) for i, j in zip(*np.nonzero(confusion), strict=True) if i != j]
    confused = pd.DataFrame(sorted(pairs, key=lambda p: -p[2])[:10], columns=["actual", "predicted", "count"])
    per_class = pd.Series(np.diag(confusion) / np.maximum(confusion.sum(axis=1), 1), index=classes)
    save(plot_bars(per_class, "accuracy per class (out of fold)", "class"), out / "per_class.png")
    p_actual = probabilities[np.arange(len(oof)), actual]
    worst = np.argsort(p_actual)[:16]  # the lowest probability of the actual class: the highest loss
    captions = [
        f"{classes[predicted[i]]}/{classes[actual[i]]} loss {-np.log(max(p_actual[i], 1e-15)):.2f} p {p_actual[i]:.2f}"
        for i in worst
    ]
    save(plot_grid([image_of(oof["id"].iloc[i]) for i in worst], captions), out / "top_losses.png")
    return [
        ("Confusion", _img("confusion.png", "confusion matrix") + "<h3>Most confused</h3>" + _table(confused)),
        ("Accuracy per class", _img("per_class.png", "accuracy per class")),
        (
            "Top losses",
            "<p>predicted/actual, loss, probability of the actual class</p>" + _img("top_losses.png", "top losses"),
        ),
    ]


def keypoint_sections(
    paths: Paths, out: Path, oof: pd.DataFrame, image_of: Callable, size_of: Callable
) -> list[Section]:
    predicted_columns = [c for c in oof.columns if c.startswith("pred_")]
    columns = [c.removeprefix("pred_") for c in predicted_columns]
    truth, predicted = oof[columns].to_numpy(float), oof[predicted_columns].to_numpy(float)
    squared = (predicted - truth) ** 2
    names = [c[:-2] for c in columns[0::2]]
    per_point = pd.Series(np.sqrt(np.nanmean(squared[:, 0::2] + squared[:, 1::2], axis=0)), index=names)
    save(plot_bars(per_point, "RMSE per keypoint (pixels, out of fold)", "keypoint"), out / "rmse_per_keypoint.png")
    per_image = np.sqrt(np.nanmean(squared, axis=1))
    rng = np.random.default_rng(0)
    for name, rows in (
        ("samples", rng.choice(len(oof), size=min(12, len(oof)), replace=False)),
        ("worst", np.argsort(-np.nan_to_num(per_image))[:12]),
    ):
        points = [(truth[i].reshape(-1, 2), predicted[i].reshape(-1, 2)) for i in rows]
        captions = [f"id {oof['id'].iloc[i]}: RMSE {per_image[i]:.2f} px" for i in rows]
        ids = oof["id"].iloc[rows]
        grid = plot_grid([image_of(i) for i in ids], captions, points, [size_of(i) for i in ids])
        save(grid, out / f"keypoints_{name}.png")
    return [
        ("Keypoints", "<p>green: true, red: predicted</p>" + _img("keypoints_samples.png", "keypoint samples")),
        ("RMSE per keypoint", _img("rmse_per_keypoint.png", "RMSE per keypoint")),
        ("Worst images", _img("keypoints_worst.png", "worst keypoint images")),
    ]


def scrape_section(paths: Paths, out: Path) -> Section | None:
    if not paths.extra_csv.exists():
        return None
    manifest = pd.read_csv(paths.extra_csv, dtype=str, keep_default_na=False)
    images = manifest[manifest["kind"] == "image"]
    if images.empty:  # `make scrape` with no sources: nothing to show
        return None
    save(
        plot_stacked(pd.crosstab(images["label"], images["status"]), "scraped image links by outcome"),
        out / "scrape.png",
    )
    kept = images[images["status"] == "kept"].head(16)
    shown = images[(images["status"] != "kept") & (images["path"] != "")].groupby("status").head(4).head(16)
    body = _img("scrape.png", "scrape outcomes")
    for name, rows in (("kept", kept), ("rejected", shown)):
        grid = [decode(paths.data / p, 3) for p in rows["path"]]
        captions = [f"{status}: {label}" for status, label in zip(rows["status"], rows["label"], strict=True)]
        save(plot_grid(grid, captions), out / f"scrape_{name}.png")
        body += f"<h3>{name.capitalize()} samples</h3>" + _img(f"scrape_{name}.png", f"{name} samples")
    unreadable = images[(images["path"] == "") & ~images["status"].isin(["kept", "pending"])]
    table = _table(unreadable[["label", "status", "detail", "url"]].head(20))
    return "Scraped images", body + "<h3>Rejected and never stored (links and reasons)</h3>" + table


def tune_section(cfg: C.Config, paths: Paths, out: Path) -> Section | None:
    if not paths.best_yaml.exists():
        return None
    import optuna
    from optuna.visualization.matplotlib import plot_optimization_history

    from pipeline.tune import load_study

    study = load_study(cfg, paths)
    axes = plot_optimization_history(study)
    save(axes.figure, out / "tune_history.png")
    body = _img("tune_history.png", "optimization history")
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) >= 2:
        importances = pd.Series(optuna.importance.get_param_importances(study))
        save(plot_bars(importances, "parameter importances", "parameter"), out / "tune_importances.png")
        body += _img("tune_importances.png", "parameter importances")
    return "Tuning", f"<pre>{html.escape(paths.best_yaml.read_text())}</pre>" + body


# --- the page ----------------------------------------------------------------------------------

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1200px; }}
img {{ max-width: 100%; display: block; margin: 0.5em 0 1.5em; border: 1px solid #ddd; }}
table.numbers {{ border-collapse: collapse; margin: 0.5em 0 1em; }}
table.numbers td, table.numbers th {{ padding: 2px 10px; border-bottom: 1px solid #eee; text-align: right; }}
.headline {{ font-size: 1.3em; font-weight: bold; }}
</style></head>
<body>
<h1>{title}</h1>
<p id="image-check">images not checked yet</p>
{body}
<script>
// A line anyone (and the test in a headless browser) can read: did every picture load?
window.addEventListener("load", () => {{
  const images = [...document.images];
  const loaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.getElementById("image-check").textContent = `${{loaded}} of ${{images.length}} images loaded`;
}});
</script>
</body></html>
"""


def render(title: str, sections: list[Section]) -> str:
    body = "\n".join(f"<h2>{html.escape(name)}</h2>\n{content}" for name, content in sections)
    return PAGE.format(title=html.escape(title), body=body)


def run(cfg: C.Config) -> None:
    paths = Paths.of(cfg)
    cv = CV.load(paths.cv_json)  # a clear error before anything is removed, when there is none
    setup, folds = plan.prepare(cfg, paths)
    cfg = setup.cfg
    out = paths.report_dir
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    row_of = {i: n for n, i in enumerate(folds["id"].astype(str))}
    image_of = lambda image_id: setup.images[setup.rows[row_of[str(image_id)]]]  # noqa: E731
    size_of = lambda image_id: setup.images.original_sizes[setup.rows[row_of[str(image_id)]]]  # noqa: E731
    oof = out_of_fold(paths, cv)
    sections = [cv_section(cv, out), curves_section(paths, cv, out, cfg)]
    if setup.task.kind == "classification":
        sections += classification_sections(paths, out, oof, image_of)
    else:
        sections += keypoint_sections(paths, out, oof, image_of, size_of)
    if paths.lr_find("png").exists():
        shutil.copy(paths.lr_find("png"), out / "lr_find.png")
        sections.append(("Learning-rate finder", _img("lr_find.png", "lr find")))
    sections += [
        s
        for s in (
            experiments_section(paths, out, cv),
            ledger_section(paths, out, cfg),
            scrape_section(paths, out),
            tune_section(cfg, paths, out),
        )
        if s is not None
    ]
    write_text(out / "index.html", render(f"{cfg.competition.name}: run report", sections))
    print(f"report: {len(list(out.glob('*.png')))} plots -> {out / 'index.html'}")
