"""`make report`: what the model gets wrong, in pictures, from the files the stages wrote.

runs/<name>/report/index.html shows the key numbers and every plot: learning curves and the
learning-rate schedule, the CV table and CV against held-out or public scores, the confusion
matrix, most confused pairs, per-class accuracy and top losses (classification), true (green)
and predicted (red) keypoints, RMSE per keypoint and the worst images (keypoints), the lr-find
curve, the scrape summary and the tuning history, each where its stage has run.
"""

import html
import shutil
from pathlib import Path

import pandas as pd

from pipeline import config as C
from pipeline import plots
from pipeline.data.images import decode
from pipeline.files import write_text
from pipeline.learn import engine, experiments, plan
from pipeline.paths import Paths
from pipeline.plots import Section
from pipeline.records import CV

# --- sections: what a run's files say ----------------------------------------------------------


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
    plots.save(plots.plot_best_and_last(cv), out / "best_and_last.png")
    return "Cross-validation", summary + plots.table(table) + plots.img(
        "best_and_last.png", "best against last epoch per fold"
    )


def experiments_section(paths: Paths, out: Path, cv: CV) -> Section | None:
    table = experiments.table(paths)
    if len(table) < 2:
        return None
    plots.save(plots.plot_experiments(table, cv.metric), out / "experiments.png")
    return "Experiments", plots.img("experiments.png", "experiments") + plots.table(table)


def curves_section(paths: Paths, cv: CV, out: Path, cfg: C.Config) -> Section:
    fits = {f"fold{k}": paths.fold(k) for k in cv.fold_ids} | {"full": paths.full}
    histories = {name: pd.read_csv(files.metrics) for name, files in fits.items() if files.metrics.exists()}
    plots.save(plots.plot_learning_curves(histories, cv.metric), out / "learning_curves.png")
    total, steps_per_epoch = cfg.train.epochs * 100, 100
    lr = [cfg.train.lr * engine.lr_factor(s, total, cfg.train, steps_per_epoch) for s in range(total)]
    plots.save(plots.plot_schedule(lr, steps_per_epoch, cfg.train.scheduler), out / "lr_schedule.png")
    return "Learning curves", plots.img("learning_curves.png", "learning curves") + plots.img(
        "lr_schedule.png", "lr schedule"
    )


def ledger_section(paths: Paths, out: Path, cfg: C.Config) -> Section | None:
    from pipeline.kaggle.submission import read_ledger

    ledger = read_ledger()
    ledger = ledger[ledger["competition"] == cfg.competition.name]
    if ledger.empty:
        return None
    cv = pd.to_numeric(ledger["cv_score"], errors="coerce")
    gaps = {f"{c}_gap": pd.to_numeric(ledger[f"{c}_score"], errors="coerce") - cv for c in ("local", "public")}
    ledger = ledger.assign(**gaps)
    columns = ["file", "models", "tta", "cv_metric", "cv_score", "cv_std", "local_score", "local_gap"]
    body = plots.table(ledger[[*columns, "public_score", "public_gap", "cv_method"]])
    if ledger[["local_score", "public_score"]].apply(pd.to_numeric, errors="coerce").notna().any().any():
        plots.save(plots.plot_scores(ledger), out / "cv_vs_leaderboard.png")
        body += plots.img("cv_vs_leaderboard.png", "CV against held-out and public scores")
    return "Submissions", body


def out_of_fold(paths: Paths, cv: CV) -> pd.DataFrame:
    frames = [pd.read_csv(paths.fold(k).oof, dtype={"id": str}) for k in cv.fold_ids]
    return pd.concat(frames, ignore_index=True)


def scrape_section(paths: Paths, out: Path) -> Section | None:
    if not paths.extra_csv.exists():
        return None
    manifest = pd.read_csv(paths.extra_csv, dtype=str, keep_default_na=False)
    images = manifest[manifest["kind"] == "image"]
    if images.empty:  # `make scrape` with no sources: nothing to show
        return None
    plots.save(
        plots.plot_stacked(pd.crosstab(images["label"], images["status"]), "scraped image links by outcome"),
        out / "scrape.png",
    )
    kept = images[images["status"] == "kept"].head(16)
    shown = images[(images["status"] != "kept") & (images["path"] != "")].groupby("status").head(4).head(16)
    body = plots.img("scrape.png", "scrape outcomes")
    for name, rows in (("kept", kept), ("rejected", shown)):
        grid = [decode(paths.data / p, 3) for p in rows["path"]]
        captions = [f"{status}: {label}" for status, label in zip(rows["status"], rows["label"], strict=True)]
        plots.save(plots.plot_grid(grid, captions), out / f"scrape_{name}.png")
        body += f"<h3>{name.capitalize()} samples</h3>" + plots.img(f"scrape_{name}.png", f"{name} samples")
    unreadable = images[(images["path"] == "") & ~images["status"].isin(["kept", "pending"])]
    table = plots.table(unreadable[["label", "status", "detail", "url"]].head(20))
    return "Scraped images", body + "<h3>Rejected and never stored (links and reasons)</h3>" + table


def tune_section(cfg: C.Config, paths: Paths, out: Path) -> Section | None:
    if not paths.best_yaml.exists():
        return None
    import optuna
    from optuna.visualization.matplotlib import plot_optimization_history

    from pipeline.study import load_study

    study = load_study(cfg, paths)
    axes = plot_optimization_history(study)
    plots.save(axes.figure, out / "tune_history.png")
    body = plots.img("tune_history.png", "optimization history")
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) >= 2:
        importances = pd.Series(optuna.importance.get_param_importances(study))
        plots.save(plots.plot_bars(importances, "parameter importances", "parameter"), out / "tune_importances.png")
        body += plots.img("tune_importances.png", "parameter importances")
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
    sections += setup.task.report_sections(oof, out, image_of, size_of)
    if paths.lr_find("png").exists():
        shutil.copy(paths.lr_find("png"), out / "lr_find.png")
        sections.append(("Learning-rate finder", plots.img("lr_find.png", "lr find")))
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
