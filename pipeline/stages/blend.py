"""The blend stage: weights for several experiments, found on their out-of-fold predictions,
or trees on those and the tabular columns (METHOD=stack, learn.stacking), scored by nested CV.
The blended submission is predict.py's (`make predict BLEND=<blend>`).

    make blend [BLEND="a b c"] [METHOD=stack]   -> runs/<name>/blends/<blend>.yaml (+ <blend>.stack.pkl)

Every member validated on the same folds (validation.validation_plan), so each OOF row is predicted
by every member from a model that never saw it. The weights (or trees) the submission uses are
fitted on every OOF row; the score it states is the nested CV: per fold, weights (or trees) and
the task's decision fitted on the other folds' rows, scored on that fold's.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import config as C
from pipeline import tasks
from pipeline.data import sources
from pipeline.errors import PipelineError
from pipeline.files import sha256_file
from pipeline.learn import ensemble, stacking
from pipeline.learn.validation import read_folds, target_columns, validation_plan, validation_rows
from pipeline.paths import FitFiles, Paths
from pipeline.predictions import OutOfFold, Raw
from pipeline.records import CV, Blend, Scores, trained_state
from pipeline.tasks.base import Task


def run(cfg: C.Config) -> None:
    """`make blend`: fit, score by nested CV, save, and print the members beside the blend."""
    paths = Paths.of(cfg)
    names = cfg.blend.experiments or paths.experiments()
    fewest = 1 if cfg.blend.method == "stack" else 2  # one experiment stacks with the tabular columns
    if len(names) < fewest:
        raise PipelineError(
            f"blend.method={cfg.blend.method} needs {fewest} or more finished experiments; "
            f"{paths.runs} has {names or 'none'}"
        )
    folds, data = read_folds(paths.folds_csv), sources.read(cfg)
    members = {name: member_cv(paths, name, validation_plan(folds)) for name in names}
    stack, target, rows = out_of_fold(cfg, paths, data, members, folds)
    method = _method(cfg, target.task)
    name = cfg.blend.name or ("blend" if not cfg.blend.experiments else "+".join(names))
    fold_of_row = rows["fold"].to_numpy()
    if method == "stack":
        features = data.train.table.set_index("id").loc[rows["id"], data.features]
        fitted = _stacked(stack, target, fold_of_row, features, paths.blend_model(name))
    else:
        fitted = _weighted(method, stack, target, fold_of_row, cfg.blend.rounds)
    blend = Blend(
        name=name,
        metric=target.metric,
        method=method,
        models=cfg.blend.models,
        space=cfg.blend.space,
        tta=list(cfg.predict.tta),
        validation_plan=validation_plan(folds),
        weights={name: float(w) for name, w in zip(names, fitted.weights, strict=True)},
        trained={name: trained_state(paths.of_experiment(name).cv_json) for name in names},
        member_scores={
            name: target.task.held_out_scores(s, target.truth, fold_of_row)[1]
            for name, s in zip(names, stack, strict=True)
        },
        nested=Scores.of(fitted.per_fold, fitted.pooled, fitted.decision),
        in_sample=fitted.in_sample,
        features=list(data.features) if method == "stack" else [],
        second_level=sha256_file(paths.blend_model(name)) if method == "stack" else "",
    )
    blend.save(paths.blend(blend.name))
    print("\n".join(describe(blend, len(fold_of_row))) + f"\n-> {paths.blend(blend.name)}")


@dataclass(frozen=True)
class Fitted:
    """A blend's members' shares, its nested CV, its decision and its in-sample score."""

    weights: np.ndarray
    per_fold: list[float]
    pooled: float
    decision: dict
    in_sample: float


def _weighted(method: str, stack: np.ndarray, target: ensemble.Target, fold_of_row: np.ndarray, rounds: int) -> Fitted:
    weights = ensemble.fit_weights(method, stack, target, rounds=rounds)
    per_fold, pooled = ensemble.nested_scores(method, stack, target, fold_of_row, rounds=rounds)
    blended = ensemble.blend(stack, weights)
    decided = target.fitted(blended)
    return Fitted(weights, per_fold, pooled, decided.decision(), target.score(decided.decide(blended)))


def _stacked(
    stack: np.ndarray, target: ensemble.Target, fold_of_row: np.ndarray, features: pd.DataFrame, saved: Path
) -> Fitted:
    """Trees on the members' predictions and the tabular columns (learn.stacking), saved to
    `saved`; the decision fitted on their held-out predictions, as an experiment's on its OOF."""
    task, truth = target.task, target.truth
    held_out = stacking.nested_predictions(task, stack, features, truth, fold_of_row)
    per_fold, pooled = task.held_out_scores(held_out, truth, fold_of_row)
    stacker = stacking.Stacker.fit(task, stack, features, truth)
    stacker.save(saved)
    in_sample = stacker.predict(stack, features)
    decided = task.fit_decision(in_sample, truth)
    weights = np.full(len(stack), 1.0 / len(stack))
    return Fitted(
        weights,
        per_fold,
        pooled,
        task.fit_decision(held_out, truth).decision(),
        target.score(decided.decide(in_sample)),
    )


def member_cv(paths: Paths, name: str, plan_now: str) -> CV:
    """The experiment's CV summary, refused when its OOF cannot be blended with the others'."""
    cv = CV.load(paths.of_experiment(name).cv_json)
    if cv.validation_plan != plan_now:
        raise PipelineError(
            f"experiment {name} validated on other folds than {paths.folds_csv} (or before they were recorded): "
            f"its OOF cannot be blended; train it again (`make train EXP={name}`)"
        )
    return cv


def out_of_fold(
    cfg: C.Config, paths: Paths, data: sources.CompetitionData, members: dict[str, CV], folds: pd.DataFrame
):
    """(stack (members, rows, outputs) in the competition's units, the target, each row's id and
    fold), rows in the same order for every member: every fold's validation rows in turn. The
    folds are those the members trained, the same in each (a time budget may have left one out)."""
    task, read = tasks.get(cfg.competition.task).of_data(cfg, data.train.table, data.targets), _oof_reader(cfg, paths)
    first = next(iter(members))
    fold_ids = sorted(members[first].fold_ids)
    if len(fold_ids) < 2:
        raise PipelineError(f"experiment {first} trained fold {fold_ids}: a blend's nested CV needs two or more folds")
    stacked, oof = [], None
    for name, cv in members.items():
        if sorted(cv.fold_ids) != fold_ids:
            raise PipelineError(
                f"experiment {name} trained folds {sorted(cv.fold_ids)} and {first} folds {fold_ids}: a blend needs "
                "the same folds in every member (`make train EXP=<name> ARGS=train.folds=...`)"
            )
        epoch, fits, parts = _epoch(cfg, name, cv), paths.of_experiment(name), []
        for k in fold_ids:
            rows = validation_rows(folds, k)
            parts.append(task.out_of_fold(folds, rows, read(fits.fold(k), rows, epoch)))
        oof = OutOfFold.concat(parts)
        stacked.append(oof.predictions)
    stack = np.stack([ensemble.in_space(cfg.blend.space, p.astype(np.float64)) for p in task.aligned(stacked)])
    truth = task.truth(OutOfFold(oof.table, stack[-1], oof.sizes), target_columns(folds))
    return stack, ensemble.Target(task, truth), oof.table[["id", "fold"]]


def _oof_reader(cfg: C.Config, paths: Paths):
    """read(fit, rows, epoch): a member fold's raw predictions on its validation rows, as
    training saved them; with predict.tta, through its model (made once and kept)."""
    if not cfg.predict.tta:
        return lambda fit, rows, epoch: Raw.load(fit.valid_predictions(epoch))
    # torch and timm take seconds to import: only TTA, which runs the models, needs them
    from pipeline.learn import inference, plan

    setup, _ = plan.prepare(cfg, paths)

    def read(fit: FitFiles, rows: np.ndarray, epoch: str) -> Raw:
        return inference.fold_oof(cfg, fit, setup, rows, epoch)

    return read


def _epoch(cfg: C.Config, name: str, cv: CV) -> str:
    """Whose OOF describes the member's models: the kept epoch's for its fold models, the last
    epoch's (the recipe) for its full fit."""
    if cfg.blend.models == "folds":
        return cv.kept
    if cfg.predict.tta and cv.kept == "best":
        raise PipelineError(
            f"blend.models=full with predict.tta: experiment {name}'s fold models keep their best epochs, so its "
            "recipe's TTA predictions were never made; use blend.models=folds"
        )
    return "last"


def _method(cfg: C.Config, task: Task) -> str:
    if cfg.blend.space == "ranks" and not task.ranks_blend():
        raise PipelineError(
            f"blend.space=ranks is for metrics of ranks; {task.name} scored by {task.metric} needs its predictions"
        )
    if cfg.blend.method == "stack" and cfg.blend.space == "ranks":
        raise PipelineError(
            "blend.method=stack reads the members' predictions as they are; use blend.space=probabilities"
        )
    if cfg.blend.method != "auto":
        return cfg.blend.method
    return "optimise" if task.metric in task.SMOOTH_METRICS else "hill_climb"


def describe(blend: Blend, rows: int) -> list[str]:
    higher = tasks.higher_is_better(blend.metric)
    best = (max if higher else min)(blend.member_scores, key=blend.member_scores.get)
    scores, nested, stacked = blend.member_scores, blend.nested, blend.method == "stack"
    if stacked:
        columns = f" and the columns {', '.join(blend.features)}" if blend.features else ""
        lines = [
            f"blend {blend.name}: trees on the members' predictions{columns}, {rows} out-of-fold rows, {blend.metric}"
        ]
        lines += [f"  {name:<24} OOF {scores[name]:.5f}" for name in blend.weights]
    else:
        lines = [f"blend {blend.name}: {blend.method} weights on {rows} out-of-fold rows, {blend.metric}"]
        lines += [f"  {name:<24} OOF {scores[name]:.5f}  weight {weight:.3f}" for name, weight in blend.weights.items()]
    fitted = "trees" if stacked else "weights"
    lines.append(
        f"nested CV {nested.oof:.5f} (per fold {nested.mean:.5f} ± {nested.std:.5f}): {fitted} fitted on the other "
        f"folds, scored on the held-out one; in-sample {blend.in_sample:.5f} (scored on the rows that chose them)"
    )
    if nested.decision:
        lines.append(f"decision fitted on every out-of-fold row of the blend: {nested.decision['summary']}")
    gain = nested.oof - blend.member_scores[best]
    if (gain if higher else -gain) <= 0:
        lines.append(f"note: the blend does not beat its best member, {best} ({blend.member_scores[best]:.5f})")
    return lines
