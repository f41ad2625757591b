"""Which of an experiment's models go into the submission (predict.models, `auto` decided by their
CVs) and the CV that describes exactly those models; or, with predict.blend, a blend of experiments
(weights and nested CV from the blend stage) from each member's kept test predictions. The predict
stage writes what this plans; the package stage bundles the same models, so the two agree."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import tasks
from pipeline.config import Config, with_overrides
from pipeline.errors import PipelineError
from pipeline.files import sha256_file
from pipeline.learn import ensemble, plan, stacking
from pipeline.learn.inference import PredictionsOnTest, out_of_fold
from pipeline.learn.validation import read_folds, target_columns, validation_plan
from pipeline.paths import FitFiles, Paths
from pipeline.records import CV, Blend, Scores, StatedCV, trained_state
from pipeline.tasks.base import Task

# --- which models, and the CV that describes them ----------------------------------------------


@dataclass(frozen=True)
class Member:
    fit: FitFiles
    weight: float  # the members' weights sum to 1
    score: float  # its CV estimate


@dataclass(frozen=True)
class Choice:
    """The models a submission holds, their weights, and the CV estimate of exactly them."""

    models: str  # "full", "folds" or "both"
    members: list[Member]
    score: float
    std: float  # the folds' spread
    method: str  # how the estimate was made
    decision: dict  # Task.decision fitted on the OOF predictions the estimate scores


def choose(cfg: Config, paths: Paths, cv: CV, test: PredictionsOnTest) -> Choice:
    """predict.models, `auto` resolved, with the CV of what it takes."""
    models = cfg.predict.models
    if models in ("full", "both") and not paths.full.model.exists():
        raise PipelineError(
            f"predict.models={models} needs {paths.full.model}, which was not trained: train.full_fit=false, or a "
            "time budget left the full fit for a later run (the train log names its command); train it, or set "
            "predict.models=folds"
        )
    fold_scores, tta = fold_models_estimate(cfg, paths, cv)
    if models != "auto":
        return option(cfg, paths, cv, models, fold_scores, tta, test)
    folds = option(cfg, paths, cv, "folds", fold_scores, tta, test)
    full = option(cfg, paths, cv, "full", fold_scores, tta, test) if paths.full.model.exists() else None
    chosen, reason = auto_models(cv, full, folds)
    print(f"predict.models=auto: {chosen.models}, {reason}")
    return chosen


def auto_models(cv: CV, full: Choice | None, folds: Choice) -> tuple[Choice, str]:
    """The full model when its recipe's CV is within noise of the fold models', else the folds."""
    if full is None:
        return folds, "there is no full fit"
    figures = f"the fold models {folds.score:.5f}, the full fit's recipe (last epochs) {full.score:.5f}"
    if cv.gain(folds.score, full.score) <= cv.noise():
        return full, f"its recipe is within the folds' noise {cv.noise():.5f} of the fold models ({figures})"
    return folds, f"the fold models beat its recipe by more than the folds' noise {cv.noise():.5f} ({figures})"


def option(
    cfg: Config, paths: Paths, cv: CV, models: str, fold_scores: Scores, tta: str, test: PredictionsOnTest
) -> Choice:
    """One set of models and its CV: their OOF score, and for RMSE the averaging gain measured
    on the test images (ensemble.py)."""
    if models == "full" and cv.kept == "best":
        untested = "; its TTA unmeasured: the folds keep their best epochs" if cfg.predict.tta else ""
        estimate, method = cv.recipe, f"OOF of the folds' last epochs, the full fit's recipe{untested}"
    else:
        estimate, method = (
            fold_scores,
            {
                "full": f"OOF of the folds' last epochs, the full fit's recipe{tta}",
                "folds": f"OOF of the fold models ({cv.kept} epochs){tta}",
                "both": f"OOF of the fold models ({cv.kept} epochs){tta}; the full model, their recipe, joins them",
            }[models],
        )
    members, score = _members(cfg, paths, cv, models, estimate), estimate.oof
    if tasks.measures_averaging(cv.metric) and len(members) > 1:
        weights = [m.weight for m in members]
        members_spread = ensemble.spread([test.in_units(m.fit) for m in members], weights)
        score = ensemble.blend_rmse([m.score for m in members], weights, members_spread)
        method += (
            f"; less the members' spread on the test images ({members_spread:.5f}, in squared units): the blend's RMSE"
        )
    return Choice(models, members, score, estimate.std, method, estimate.decision)


def fold_models_estimate(cfg: Config, paths: Paths, cv: CV) -> tuple[Scores, str]:
    """The fold models' OOF score with predict.tta: cv.json's without TTA; with it, each fold
    model predicts its validation rows through the same views as the test images."""
    if not cfg.predict.tta:
        return cv.fold_models, ""
    setup, folds = plan.prepare(cfg, paths)
    targets = target_columns(folds)
    oof = out_of_fold(cfg, paths, cv.fold_ids, cv.kept, setup, folds)
    return Scores.of(*setup.task.oof_scores(oof, targets)), f", TTA {' '.join(cfg.predict.tta)}"


def _members(cfg: Config, paths: Paths, cv: CV, models: str, estimate: Scores) -> list[Member]:
    """The models, each with its CV score and its weight (predict.weights)."""
    folds = [(paths.fold(k), s) for k, s in zip(cv.fold_ids, estimate.folds, strict=True)]
    full = [(paths.full, (cv.recipe if cv.kept == "best" else estimate).oof)]
    chosen = {"full": full, "folds": folds, "both": folds + full}[models]
    if cfg.predict.weights == "equal":
        weights = np.ones(len(chosen))
    else:
        scores = np.array([s for _, s in chosen])
        weights = scores if cv.higher_is_better else 1.0 / np.maximum(scores, 1e-12)
    return [Member(fit, float(w), s) for (fit, s), w in zip(chosen, weights / weights.sum(), strict=True)]


# --- the stage ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One experiment's share of a submission: its models' test predictions averaged with their
    own weights, taken in `space` (blend.space), then weighted."""

    weight: float
    space: str
    models: list[tuple[FitFiles, float]]


@dataclass(frozen=True)
class Plan:
    """What a submission holds, and the CV that describes exactly that."""

    cfg: Config  # predict.tta as the models predict with
    parts: list[Part]
    stated: StatedCV
    decision: dict  # Task.decision, fitted on the out-of-fold predictions of what the parts hold
    second_level: Path | None = None  # a stacked blend's trees, which combine the parts instead of weights
    features: tuple[str, ...] = ()  # the tabular columns the trees read beside the parts


def combine(test: PredictionsOnTest, plan: Plan) -> tuple[np.ndarray, Task]:
    """The submission's predictions in the competition's units, and the task that writes them
    (under the decision fitted out of fold)."""
    each = [ensemble.in_space(part.space, test.blend(part.models)) for part in plan.parts]
    if plan.second_level is None:
        predictions = ensemble.weighted_sum(test.task, [part.weight for part in plan.parts], each)
    else:
        features = test.table[list(plan.features)]
        predictions = stacking.Stacker.load(plan.second_level).predict(np.stack(each), features)
    return predictions, test.task.with_decision(plan.decision)


def plan_submission(cfg: Config, paths: Paths) -> tuple[Plan, PredictionsOnTest]:
    """predict.blend's members, or predict.models' (`auto` decided), and the test predictions
    their choice was made with."""
    return _blend_plan(cfg, paths) if cfg.predict.blend else _models_plan(cfg, paths)


def _models_plan(cfg: Config, paths: Paths) -> tuple[Plan, PredictionsOnTest]:
    cv = CV.load(paths.cv_json)
    test = PredictionsOnTest(cfg, paths)
    choice = choose(cfg, paths, cv, test)
    for member in choice.members:
        print(f"{member.fit.model} in the submission, weight {member.weight:.3f}")
    stated = StatedCV(cv.metric, choice.score, choice.std, choice.method, choice.models, cfg.train.experiment)
    models = [(m.fit, m.weight) for m in choice.members]
    return Plan(cfg, [Part(1.0, "probabilities", models)], stated, choice.decision), test


def _blend_plan(cfg: Config, paths: Paths) -> tuple[Plan, PredictionsOnTest]:
    """The members' kept test predictions, weighted as `make blend` fitted them."""
    blend = Blend.load(paths.blend(cfg.predict.blend))
    if blend.validation_plan != validation_plan(read_folds(paths.folds_csv)):
        raise PipelineError(f"blend {blend.name} was fitted on other folds than {paths.folds_csv}: run `make blend`")
    cfg = with_overrides(cfg, {"predict.tta": blend.tta}, f"blend {blend.name}")
    members = {name: CV.load(paths.of_experiment(name).cv_json) for name in blend.weights}
    retrained = [n for n in members if trained_state(paths.of_experiment(n).cv_json) != blend.trained[n]]
    if retrained:
        raise PipelineError(
            f"blend {blend.name}: experiment {retrained[0]} trained again after `make blend` weighed its out-of-fold"
            " predictions; run `make blend` again"
        )
    parts = []
    for name, weight in blend.weights.items():
        member, cv = paths.of_experiment(name), members[name]
        fits = [member.fold(k) for k in cv.fold_ids] if blend.models == "folds" else [member.full]
        parts.append(Part(weight, blend.space, [(fit, 1.0 / len(fits)) for fit in fits]))
    test = PredictionsOnTest(cfg, paths)
    score, method = blend_estimate(blend, paths, next(iter(members.values())).fold_ids, test)
    stated = StatedCV(blend.metric, score, blend.nested.std, method, f"blend-{blend.name}", blend.describe_members())
    return Plan(cfg, parts, stated, blend.nested.decision, *_second_level(blend, paths)), test


def _second_level(blend: Blend, paths: Paths) -> tuple[Path | None, tuple[str, ...]]:
    """A stacked blend's trees and the columns they read, checked to be the ones `make blend` fitted."""
    if blend.method != "stack":
        return None, ()
    saved = paths.blend_model(blend.name)
    if not saved.exists() or sha256_file(saved) != blend.second_level:
        raise PipelineError(f"{saved} is not the second level blend {blend.name} fitted: run `make blend` again")
    return saved, tuple(blend.features)


def blend_estimate(blend: Blend, paths: Paths, fold_ids: list[int], test: PredictionsOnTest) -> tuple[float, str]:
    """The blend's nested CV; for RMSE of fold models, less the spread on the test images of its
    fold blends (fold k's models weighted as their experiments are), the averaging over folds
    that an OOF row, predicted by one fold's models, cannot show: as a single experiment's."""
    how = f"nested CV of blend {blend.name} ({blend.method}, {blend.models} models; in-sample {blend.in_sample:.5f})"
    if not tasks.measures_averaging(blend.metric) or blend.models != "folds" or blend.method == "stack":
        return blend.nested.oof, how
    fold_blends = [
        test.blend([(paths.of_experiment(n).fold(k), w) for n, w in blend.weights.items()]) for k in fold_ids
    ]
    equal = [1.0 / len(fold_ids)] * len(fold_ids)
    spread = ensemble.spread(fold_blends, equal)
    score = ensemble.blend_rmse([blend.nested.oof] * len(fold_ids), equal, spread)
    return (
        score,
        f"{how}; less its fold blends' spread on the test images ({spread:.5f}, in squared units): the blend's RMSE",
    )
