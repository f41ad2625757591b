"""The blend stage: weights for several experiments, found on their out-of-fold predictions,
scored by nested CV; and the blended submission, from each member's kept test predictions.

    make blend [BLEND="a b c"]    -> runs/<name>/blends/<blend>.yaml
    make predict BLEND=<blend>    -> a submission and a ledger row naming members and weights

Every member validated on the same folds (folds.validation_plan), so each OOF row is predicted
by every member from a model that never saw it. The weights the submission uses are fitted on
every OOF row; the score it states is the nested CV: per fold, weights fitted on the other
folds' rows, scored on that fold's.
"""

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from pipeline import config as C
from pipeline import ensemble, plan, submission
from pipeline.errors import PipelineError
from pipeline.folds import validation_plan
from pipeline.inference import TestPredictions, oof_frames
from pipeline.paths import Paths
from pipeline.records import CV, Blend, Scores, StatedCV
from pipeline.tasks import HIGHER_IS_BETTER

SMOOTH = ("log_loss", "rmse")  # metrics the optimiser minimises directly


def run(cfg: C.Config) -> None:
    """`make blend`: fit, score by nested CV, save, and print the members beside the blend."""
    paths = Paths.of(cfg)
    names = cfg.blend.experiments or paths.experiments()
    if len(names) < 2:
        raise PipelineError(f"a blend needs two or more finished experiments; {paths.runs} has {names or 'none'}")
    setup, folds = plan.prepare(cfg, paths)
    members = {name: member_cv(paths, name, validation_plan(folds)) for name in names}
    stack, target, fold_of_row = out_of_fold(cfg, paths, members, setup, folds)
    method = _method(cfg, setup.task.metric)
    weights = ensemble.fit_weights(method, stack, target)
    per_fold, pooled = ensemble.nested_scores(method, stack, target, fold_of_row)
    blend = Blend(
        name=cfg.blend.name or ("blend" if not cfg.blend.experiments else "+".join(names)),
        metric=target.metric,
        method=method,
        models=cfg.blend.models,
        space=cfg.blend.space,
        tta=list(cfg.predict.tta),
        validation_plan=validation_plan(folds),
        weights={name: float(w) for name, w in zip(names, weights, strict=True)},
        member_scores={name: target.score(s) for name, s in zip(names, stack, strict=True)},
        nested=Scores.of(per_fold, pooled),
        in_sample=target.score(ensemble.blend(stack, weights)),
    )
    blend.save(paths.blend(blend.name))
    print("\n".join(describe(blend, len(fold_of_row))) + f"\n-> {paths.blend(blend.name)}")


def member_cv(paths: Paths, name: str, plan_now: str) -> CV:
    """The experiment's CV summary, refused when its OOF cannot be blended with the others'."""
    cv = CV.load(paths.of_experiment(name).cv_json)
    if cv.validation_plan != plan_now:
        raise PipelineError(
            f"experiment {name} validated on other folds than {paths.folds_csv} (or before they were recorded): "
            f"its OOF cannot be blended; train it again (`make train EXP={name}`)"
        )
    return cv


def out_of_fold(cfg: C.Config, paths: Paths, members: dict[str, CV], setup, folds: pd.DataFrame):
    """(stack (members, rows, outputs) in the competition's units, the target, each row's fold),
    rows in the same order for every member: every fold's validation rows in turn."""
    fold_ids = sorted(int(f) for f in folds["fold"].unique() if f >= 0)
    stacked, frame = [], None
    for name, cv in members.items():
        if sorted(cv.fold_ids) != fold_ids:
            raise PipelineError(f"experiment {name} trained folds {cv.fold_ids} of {fold_ids}: a blend needs them all")
        frames = oof_frames(cfg, paths.of_experiment(name), fold_ids, _epoch(cfg, name, cv), setup, folds)
        frame = pd.concat(frames, ignore_index=True)
        stacked.append(in_space(cfg.blend.space, frame[setup.task.prediction_columns()].to_numpy(np.float64)))
    truth = setup.task.encode(frame, plan.target_columns(folds))  # class indices, or pixels with NaN
    return np.stack(stacked), ensemble.Target(setup.task.metric, truth), frame["fold"].to_numpy()


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


def in_space(space: str, predictions: np.ndarray) -> np.ndarray:
    """blend.space=ranks: each class column as ranks in (0, 1]."""
    if space == "probabilities":
        return predictions
    return np.column_stack([rankdata(c) / len(c) for c in predictions.T])


def _method(cfg: C.Config, metric: str) -> str:
    if cfg.blend.space == "ranks" and (cfg.competition.task == "keypoints" or metric == "log_loss"):
        raise PipelineError(f"blend.space=ranks is for classification scored by ranks; {metric} needs probabilities")
    if cfg.blend.method != "auto":
        return cfg.blend.method
    return "optimise" if metric in SMOOTH else "hill_climb"


def describe(blend: Blend, rows: int) -> list[str]:
    higher = HIGHER_IS_BETTER[blend.metric]
    best = (max if higher else min)(blend.member_scores, key=blend.member_scores.get)
    lines = [f"blend {blend.name}: {blend.method} weights on {rows} out-of-fold rows, {blend.metric}"]
    scores = blend.member_scores
    lines += [f"  {name:<24} OOF {scores[name]:.5f}  weight {weight:.3f}" for name, weight in blend.weights.items()]
    nested = blend.nested
    lines.append(
        f"nested CV {nested.oof:.5f} (per fold {nested.mean:.5f} ± {nested.std:.5f}): weights fitted on the other "
        f"folds, scored on the held-out one; in-sample {blend.in_sample:.5f} (scored on the rows that chose them)"
    )
    gain = nested.oof - blend.member_scores[best]
    if (gain if higher else -gain) <= 0:
        lines.append(f"note: the blend does not beat its best member, {best} ({blend.member_scores[best]:.5f})")
    return lines


# --- the blended submission --------------------------------------------------------------------


def predict(cfg: C.Config) -> None:
    """`make predict BLEND=<blend>`: the members' kept test predictions, weighted."""
    paths = Paths.of(cfg)
    blend = Blend.load(paths.blend(cfg.predict.blend))
    if blend.validation_plan != validation_plan(plan.read_folds(paths)):
        raise PipelineError(f"blend {blend.name} was fitted on other folds than {paths.folds_csv}: run `make blend`")
    cfg = C.with_overrides(cfg, {"predict.tta": blend.tta}, f"blend {blend.name}")
    test = TestPredictions(cfg, paths)
    total = 0.0
    for name, weight in blend.weights.items():
        member = paths.of_experiment(name)
        cv = CV.load(member.cv_json)
        fits = [member.fold(k) for k in cv.fold_ids] if blend.models == "folds" else [member.full]
        predictions = test.blend([(fit, 1.0 / len(fits)) for fit in fits])
        total = total + weight * in_space(blend.space, predictions)
    stated = StatedCV(
        blend.metric,
        blend.nested.oof,
        blend.nested.std,
        f"nested CV of blend {blend.name} ({blend.method}, {blend.models} models; in-sample {blend.in_sample:.5f})",
        f"blend-{blend.name}",
        blend.describe_members(),
    )
    path = submission.write(cfg, paths, test.table, total, test.task, stated)
    print(f"submission {path}: blend {blend.name} ({stated.experiment}), CV {blend.metric} {stated.score:.5f}")
