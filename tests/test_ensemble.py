"""The blend's RMSE from its members' RMSEs and their spread: exact for squared error."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from pipeline.learn import ensemble
from pipeline.tasks.classification import Classification
from pipeline.tasks.keypoints import Keypoints


def target_of(metric: str, truth: np.ndarray) -> ensemble.Target:
    """What a blend scores against: keypoint pixels for RMSE, else class indices of 4 classes."""
    task = Keypoints(["p_x", "p_y"]) if metric == "rmse" else Classification(range(4), metric=metric)
    return ensemble.Target(task, truth)


def test_the_members_rmse_less_their_spread_is_the_blends_rmse():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(200, 8))
    members = [truth + rng.normal(scale=s, size=truth.shape) + b for s, b in ((1.0, 0.2), (0.5, -0.1), (2.0, 0.0))]
    weights = [0.5, 0.3, 0.2]
    rmse = [float(np.sqrt(np.mean((m - truth) ** 2))) for m in members]
    blend = sum(w * m for w, m in zip(weights, members, strict=True))
    estimated = ensemble.blend_rmse(rmse, weights, ensemble.spread(members, weights))
    assert estimated == pytest.approx(np.sqrt(np.mean((blend - truth) ** 2)), rel=1e-9)
    assert estimated < np.dot(weights, rmse)  # averaging beats the members' weighted mean
    identical = ensemble.spread([members[0]] * 3, [0.2, 0.3, 0.5])
    assert identical == pytest.approx(0.0, abs=1e-12)  # identical members: no gain


def keypoint_mixture(rng, rows=2000):
    """Truth that is exactly 0.6 of the first member and 0.4 of the second; the third is noise."""
    members = rng.normal(size=(3, rows, 6)) * 10
    truth = 0.6 * members[0] + 0.4 * members[1]
    truth[rng.random(truth.shape) < 0.2] = np.nan  # missing points are masked
    return members, target_of("rmse", truth)


def class_mixture(rng, rows=20000):
    """Labels drawn from 0.7 of the first member's probabilities and 0.3 of the second's."""
    members = rng.dirichlet(np.ones(4) * 0.5, size=(3, rows))
    mixed = 0.7 * members[0] + 0.3 * members[1]
    labels = (rng.random((rows, 1)) > mixed.cumsum(axis=1)).sum(axis=1)
    return members, labels


def test_blend_weights_recover_a_known_mixture():
    rng = np.random.default_rng(0)
    members, target = keypoint_mixture(rng)
    assert ensemble.optimise(members, target) == pytest.approx([0.6, 0.4, 0.0], abs=1e-3)
    assert ensemble.hill_climb(members, target) == pytest.approx([0.6, 0.4, 0.0], abs=0.03)
    probabilities, labels = class_mixture(rng)
    weights = ensemble.optimise(probabilities, target_of("log_loss", labels))
    assert weights == pytest.approx([0.7, 0.3, 0.0], abs=0.05)
    accuracy = target_of("accuracy", labels)
    climbed = ensemble.hill_climb(probabilities, accuracy)
    assert accuracy.score(ensemble.blend(probabilities, climbed)) >= max(accuracy.score(p) for p in probabilities)
    assert target_of("macro_f1", labels).score(probabilities[0]) == pytest.approx(
        f1_score(labels, probabilities[0].argmax(axis=1), average="macro")
    )


def test_the_nested_cv_score_is_never_the_in_sample_one():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(300, 4))
    members = truth + rng.normal(size=(8, 300, 4)) * np.linspace(1.0, 1.4, 8)[:, None, None]
    target, folds = target_of("rmse", truth), np.arange(300) % 5
    for method in ensemble.METHODS:
        in_sample = target.score(ensemble.blend(members, ensemble.fit_weights(method, members, target)))
        per_fold, pooled = ensemble.nested_scores(method, members, target, folds)
        assert len(per_fold) == 5 and pooled > in_sample  # weights fitted on the rows they score flatter them


def folds_whose_weights_saw_their_own_rows(nested_scores, monkeypatch) -> list[int]:
    """Runs `nested_scores` on rows whose truth is their own index, recording the rows each
    fit_weights call was given; the held-out folds, in order, whose fit saw any of their rows."""
    fitted_on = []
    fit = ensemble.fit_weights

    def recording(method, stack, target, **options):
        fitted_on.append(set(target.truth[:, 0].astype(int)))
        return fit(method, stack, target, **options)

    monkeypatch.setattr(ensemble, "fit_weights", recording)
    rng = np.random.default_rng(3)
    truth = np.arange(100.0)[:, None]
    members = truth + rng.normal(size=(3, 100, 1))
    fold_of_row = np.arange(100) % 5
    nested_scores("optimise", members, target_of("rmse", truth), fold_of_row)
    return [k for k, rows in zip(range(5), fitted_on, strict=True) if rows & set(np.flatnonzero(fold_of_row == k))]


def test_the_nested_cv_never_fits_weights_on_a_row_it_scores(monkeypatch):
    """Each fold's weights are fitted on the other folds' rows alone. A planted partial leak,
    half the held-out fold's rows in its own fit, is caught."""
    assert folds_whose_weights_saw_their_own_rows(ensemble.nested_scores, monkeypatch) == []

    def half_leaky(method, stack, target, fold_of_row, *, rounds=50):
        pooled, per_fold = np.empty(stack.shape[1:]), []
        for fold in np.unique(fold_of_row):
            held_out = fold_of_row == fold
            fitted = ~held_out | (held_out & (np.arange(len(held_out)) % 2 == 0))
            weights = ensemble.fit_weights(method, stack[:, fitted], target.rows(fitted), rounds=rounds)
            pooled[held_out] = ensemble.blend(stack[:, held_out], weights)
            per_fold.append(target.rows(held_out).score(pooled[held_out]))
        return per_fold, target.score(pooled)

    assert folds_whose_weights_saw_their_own_rows(half_leaky, monkeypatch) == [0, 1, 2, 3, 4]


def test_hill_climbing_takes_blend_rounds_additions():
    rng = np.random.default_rng(2)
    truth = rng.normal(size=(200, 2))
    members = truth + rng.normal(size=(8, 200, 2))
    target = target_of("rmse", truth)
    assert np.count_nonzero(ensemble.fit_weights("hill_climb", members, target, rounds=1)) <= 2
    assert np.count_nonzero(ensemble.fit_weights("hill_climb", members, target, rounds=50)) > 2
