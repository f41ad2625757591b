"""Split strategies -> runs/<name>/folds.csv with columns id, the targets, fold.

Rows from scraped extra data get fold -1: they train every fold and validate none,
so the CV score is measured on competition data only.

Every experiment of a competition validates on the same folds, so that their out-of-fold
predictions can be blended: once one has trained, other folds are refused.
"""

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

from pipeline import config as C
from pipeline import tasks
from pipeline.data import sources
from pipeline.errors import PipelineError
from pipeline.files import write_csv
from pipeline.learn.validation import EXTRA_FOLD, read_folds, validation_plan
from pipeline.paths import Paths


def assign_folds(table: pd.DataFrame, targets: list[str], cfg: C.Folds, task: str) -> np.ndarray:
    """The fold (0..n_splits-1) of every row of `table`."""
    if len(table) < cfg.n_splits:
        raise PipelineError(f"folds.n_splits={cfg.n_splits} is more than the {len(table)} training rows")
    folds = np.full(len(table), -1, dtype=np.int64)
    try:
        for fold, (_, valid) in enumerate(_splitter(table, targets, cfg, task)):
            folds[valid] = fold
    except ValueError as exc:  # scikit-learn's splitters state their rule (a class smaller than n_splits)
        raise PipelineError(f"folds.n_splits={cfg.n_splits} (folds.kind={cfg.kind}): {exc}") from None
    return folds


def strata(table: pd.DataFrame, targets: list[str], cfg: C.Folds, task: str) -> pd.Series | pd.DataFrame:
    """What each fold must get its share of: the task's strata (the class), the bin of
    stratified_binned, or each label's positive rows (a 0/1 column each) for a multilabel split."""
    found = tasks.get(task)
    return STRATA[found.fold_kind_of(cfg.kind)](table, targets, cfg, found)


def _task_strata(table: pd.DataFrame, targets: list[str], cfg: C.Folds, found) -> pd.Series:
    classes = found.strata(table, targets)
    return pd.Series("all", index=table.index) if classes is None else classes


def _binned_strata(table: pd.DataFrame, targets: list[str], cfg: C.Folds, found) -> pd.Series:
    return _bins(table, targets, cfg, found.stratify_on if cfg.stratify_on == "auto" else cfg.stratify_on)


def _label_strata(table: pd.DataFrame, targets: list[str], cfg: C.Folds, found) -> pd.DataFrame:
    return pd.DataFrame(found.label_matrix(table, targets), columns=found.labels_of(table, targets))


def _splitter(table: pd.DataFrame, targets: list[str], cfg: C.Folds, task: str):
    cfg = cfg.model_copy(update={"kind": tasks.get(task).fold_kind_of(cfg.kind)})
    return SPLITS[cfg.kind](table, targets, cfg, task, np.zeros(len(table)))


def _kfold(table, targets, cfg: C.Folds, task: str, index: np.ndarray):
    return KFold(cfg.n_splits, shuffle=True, random_state=cfg.seed).split(index)


def _multilabel(table, targets, cfg: C.Folds, task: str, index: np.ndarray):
    labels = tasks.get(task).label_matrix(table, targets)
    return MultilabelStratifiedKFold(n_splits=cfg.n_splits, shuffle=True, random_state=cfg.seed).split(index, labels)


def _group(table, targets, cfg: C.Folds, task: str, index: np.ndarray):
    groups, by_task = _groups(table, cfg), tasks.get(task).strata(table, targets)
    if by_task is not None:
        return StratifiedGroupKFold(cfg.n_splits, shuffle=True, random_state=cfg.seed).split(index, by_task, groups)
    return GroupKFold(cfg.n_splits, shuffle=True, random_state=cfg.seed).split(index, groups=groups)


def _stratified(table, targets, cfg: C.Folds, task: str, index: np.ndarray):
    if tasks.get(task).strata(table, targets) is None:
        raise PipelineError(
            f"folds.kind=stratified needs strata the task defines, and {task} has none; "
            "use stratified_binned, or multilabel for several label columns"
        )
    return _stratified_on_strata(table, targets, cfg, task, index)


def _stratified_on_strata(table, targets, cfg: C.Folds, task: str, index: np.ndarray):
    """StratifiedKFold on what folds.kind stratifies on (STRATA)."""
    with warnings.catch_warnings():  # small classes are reported by the stage, in its own words
        warnings.simplefilter("ignore", UserWarning)
        splitter = StratifiedKFold(cfg.n_splits, shuffle=True, random_state=cfg.seed)
        return list(splitter.split(index, strata(table, targets, cfg, task)))


SPLITS = {
    "kfold": _kfold,
    "multilabel": _multilabel,
    "group": _group,
    "stratified": _stratified,
    "stratified_binned": _stratified_on_strata,
}
STRATA = {  # what each kind's folds get their share of, as the stage reports them
    "kfold": _task_strata,
    "multilabel": _label_strata,
    "group": _task_strata,
    "stratified": _task_strata,
    "stratified_binned": _binned_strata,
}


def _groups(table: pd.DataFrame, cfg: C.Folds) -> pd.Series:
    if cfg.group_column is None:
        raise PipelineError(
            "folds.kind=group needs folds.group_column (the column that names a photo's person or object)"
        )
    if cfg.group_column not in table.columns:
        raise PipelineError(
            f"folds.group_column={cfg.group_column!r} is not a column of the train table; "
            f"columns: {', '.join(map(str, table.columns))}"
        )
    groups = table[cfg.group_column]
    if groups.isna().any():
        raise PipelineError(f"folds.group_column={cfg.group_column!r} is empty in {int(groups.isna().sum())} rows")
    if groups.nunique() < cfg.n_splits:
        raise PipelineError(
            f"folds.group_column={cfg.group_column!r} has {groups.nunique()} groups, "
            f"fewer than folds.n_splits={cfg.n_splits}"
        )
    return groups.astype(str)


def _bins(table: pd.DataFrame, targets: list[str], cfg: C.Folds, stratify_on: str) -> pd.Series:
    """Keypoints: the pattern of labelled points (so every fold gets its share of partly labelled
    rows), or quantile bins of the targets' mean or of one column. Strata smaller than n_splits
    merge into one, which StratifiedKFold can then still spread."""
    if stratify_on == "missing_pattern":
        present = table[targets].notna().to_numpy()
        codes = pd.Series(["".join("1" if p else "0" for p in row) for row in present], index=table.index)
    else:
        column = stratify_on
        if column != "target_mean" and column not in table.columns:
            raise PipelineError(
                f"folds.stratify_on={column!r} is neither missing_pattern, target_mean nor a column of the train table"
            )
        values = (
            table[targets].mean(axis=1) if column == "target_mean" else pd.to_numeric(table[column], errors="coerce")
        )
        codes = pd.qcut(values, cfg.n_bins, labels=False, duplicates="drop").astype("Int64").astype(str)
    counts = codes.map(codes.value_counts())
    codes = codes.where(counts >= cfg.n_splits, "rare")
    if (codes == "rare").sum() < cfg.n_splits:
        codes = codes.replace("rare", codes.value_counts().idxmax())
    return codes


def read_extra(manifest: Path, targets: list[str]) -> pd.DataFrame:
    """Kept rows of the scrape manifest as training rows: id (path under the data folder), label."""
    frame = pd.read_csv(manifest)
    for column in ("status", "label", "path"):
        if column not in frame.columns:
            raise PipelineError(f"{manifest}: missing column {column!r} (is it a scrape manifest?)")
    kept = frame[frame["status"] == "kept"]
    return pd.DataFrame({"id": kept["path"].to_numpy(), targets[0]: kept["label"].to_numpy()})


def fold_table(table: pd.DataFrame, targets: list[str], folds: np.ndarray, extra: pd.DataFrame | None) -> pd.DataFrame:
    out = table[["id", *targets]].copy()
    out["fold"] = folds
    if extra is not None and len(extra):
        out = pd.concat([out, extra.assign(fold=EXTRA_FOLD)], ignore_index=True)
    return out


def counts_table(folds: pd.DataFrame, labels: pd.Series | pd.DataFrame) -> pd.DataFrame:
    """Rows per fold and stratum (class or bin), or per fold and label (its positive rows: what a
    multilabel split shares out), with a total column of rows."""
    if isinstance(labels, pd.DataFrame):
        counts = labels.groupby(folds["fold"].to_numpy()).sum().astype(int).rename_axis("fold")
    else:
        counts = pd.crosstab(folds["fold"], labels.rename("class"))
    counts["total"] = folds["fold"].value_counts().sort_index()
    return counts


def run(cfg: C.Config) -> None:
    paths = Paths.of(cfg)
    data = sources.read(cfg)
    table, targets, task = data.train.table, data.targets, cfg.competition.task
    folds = assign_folds(table, targets, cfg.folds, task)
    labels = strata(table, targets, cfg.folds, task)
    extra = _extra_rows(cfg, paths, table, targets)
    out = fold_table(table, targets, folds, extra)
    refuse_other_folds(paths, out)
    write_csv(paths.folds_csv, out)
    C.save_resolved(cfg, paths.resolved("folds"))
    _print_summary(out.iloc[: len(table)], labels, cfg.folds)
    extra_note = f" + {len(extra)} extra rows (fold -1)" if extra is not None else ""
    print(
        f"folds: {cfg.folds.n_splits} folds ({cfg.folds.kind}, seed {cfg.folds.seed}) of {len(table)} rows"
        f"{extra_note} -> {paths.folds_csv}"
    )


def refuse_other_folds(paths: Paths, new: pd.DataFrame) -> None:
    """Other validation folds would leave the trained experiments' OOF unblendable with new ones;
    scraped rows (fold -1) may come and go."""
    trained = paths.experiments()
    if not trained or not paths.folds_csv.exists():
        return
    if validation_plan(read_folds(paths.folds_csv)) != validation_plan(new):
        raise PipelineError(
            f"{paths.folds_csv}: the experiments {', '.join(trained)} validated on these folds, and the folds "
            f"settings now make others: keep the folds section as it was, or remove {paths.runs} to start over"
        )


def _extra_rows(cfg: C.Config, paths: Paths, table: pd.DataFrame, targets: list[str]) -> pd.DataFrame | None:
    if not (cfg.data.use_extra and paths.extra_csv.exists()):
        return None
    extra = read_extra(paths.extra_csv, targets)
    if extra.empty:  # `make scrape` with no sources: a keypoint competition's too
        return None
    return tasks.get(cfg.competition.task).label_extra(extra, table, targets, str(paths.extra_csv))


def _print_summary(folds: pd.DataFrame, labels: pd.Series, cfg: C.Folds) -> None:
    counts = counts_table(folds, labels.reset_index(drop=True))
    if counts.shape[1] <= 21:
        print(counts.to_string())
    else:
        per_class = counts.drop(columns="total")
        print(
            pd.DataFrame(
                {
                    "total": counts["total"],
                    "smallest class": per_class.min(axis=1),
                    "largest class": per_class.max(axis=1),
                }
            ).to_string()
        )
    rare = counts.drop(columns="total").sum() if isinstance(labels, pd.DataFrame) else labels.value_counts()
    for stratum, count in rare[rare < cfg.n_splits].items():
        print(
            f"warning: {stratum!r} has {count} rows, fewer than folds.n_splits={cfg.n_splits}; "
            "some folds cannot validate it"
        )
