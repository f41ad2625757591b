import numpy as np
import pytest

from pipeline.tasks import mask_rules
from pipeline.tasks.mask_rules import Rule


def blobs(rng: np.random.Generator, n: int, side: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Truth: a square on two images of three, none on the third. Probabilities: the square
    blurred, and specks of noise on every image."""
    truth = np.zeros((n, side, side), bool)
    for i in range(n):
        if i % 3:
            y, x, s = rng.integers(2, side // 2, 3)
            truth[i, y : y + s, x : x + s] = True
    probability = truth * rng.uniform(0.55, 0.95, truth.shape) + ~truth * rng.uniform(0.0, 0.45, truth.shape)
    specks = rng.random(truth.shape) < 0.004
    probability[specks] = 0.9
    return np.round(probability * 255).astype(np.uint8), truth


def test_dice_and_iou_count_an_empty_prediction_of_an_empty_mask_as_one():
    truth = np.array([[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], bool).reshape(4, 2, 2)
    predicted = np.array([[0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], bool).reshape(4, 2, 2)
    assert mask_rules.dice(predicted, truth).tolist() == [1.0, 2 * 1 / 3, 0.0, 0.0]
    assert mask_rules.iou(predicted, truth).tolist() == [1.0, 0.5, 0.0, 0.0]


@pytest.mark.parametrize("rule", [Rule(), Rule(0.4, 0.001, 0.0), Rule(0.6, 0.005, 0.02), Rule(0.3, 0.0, 0.04)])
def test_the_fitting_shortcut_scores_each_rule_as_applying_it_does(rng, rule):
    probability, truth = blobs(rng, 12)
    applied = np.stack([rule.apply(p) for p in probability])
    components = mask_rules.Components.of(probability, truth, rule.threshold)
    shortcut = components.scores(rule.min_component, np.array([rule.min_total]))[0]
    np.testing.assert_allclose(shortcut, mask_rules.dice(applied, truth))


def test_the_fitted_rule_drops_the_specks_and_beats_a_fixed_half(rng):
    probability, truth = blobs(rng, 30)
    rule, fitted = mask_rules.fit(probability, truth)
    fixed = mask_rules.dice(probability >= 128, truth).mean()
    assert rule.min_component > 0 or rule.min_total > 0
    assert fitted > fixed + 0.2
    assert fitted == pytest.approx(mask_rules.dice(np.stack([rule.apply(p) for p in probability]), truth).mean())


def test_a_clean_prediction_keeps_the_plain_rule(rng):
    probability, truth = blobs(rng, 9)
    clean = np.where(truth, 230, 20).astype(np.uint8)
    rule, fitted = mask_rules.fit(clean, truth)
    assert rule == Rule() and fitted == 1.0
