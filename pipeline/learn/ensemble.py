"""What averaging adds: an ensemble's expected score from its members' CV scores and from how
much they disagree on the test images.

For squared error the decomposition is exact (Krogh & Vedelsby, 1995). With weights w summing
to 1 and the blend b = sum_i w_i f_i, at every image and coordinate

    (b - y)^2 = sum_i w_i (f_i - y)^2 - sum_i w_i (f_i - b)^2,

the members' weighted squared error less their spread, and the spread needs no labels. So an
RMSE ensemble scores sqrt(sum_i w_i s_i^2 - spread), with s_i each member's CV RMSE and the
spread measured on the test images themselves. No OOF score can show this gain: each OOF row
is predicted by one model. No such identity holds for accuracy, log loss or F1; there the
members' OOF stays the estimate, which leaves the averaging gain out.
"""

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.tasks.base import Task


def spread(predictions: list[np.ndarray], weights: list[float]) -> float:
    """sum_i w_i (f_i - b)^2 averaged over rows and outputs; each member's predictions (N, D)."""
    stack = np.stack(predictions)  # (members, N, D)
    w = np.asarray(weights, dtype=np.float64)[:, None, None]
    blend = (w * stack).sum(axis=0)
    return float((w * (stack - blend) ** 2).sum(axis=0).mean())


def blend_rmse(scores: list[float], weights: list[float], members_spread: float) -> float:
    """The blend's RMSE from its members' RMSEs and their spread."""
    mean_square = math.fsum(w * s * s for s, w in zip(scores, weights, strict=True))
    return math.sqrt(max(mean_square - members_spread, 0.0))


# --- blend weights found on out-of-fold predictions ---------------------------------------------


@dataclass(frozen=True)
class Target:
    """The out-of-fold truth a blend is scored against, in the competition's units, and the task
    that scores predictions against it (Task.truth)."""

    task: Task
    truth: np.ndarray

    @property
    def metric(self) -> str:
        return self.task.metric

    @property
    def higher_is_better(self) -> bool:
        return self.task.higher_is_better

    def rows(self, rows: np.ndarray) -> "Target":
        return Target(self.task, self.truth[rows])

    def score(self, blended: np.ndarray) -> float:
        """The metric of blended predictions (N, D)."""
        return self.task.score(blended, self.truth)

    def fitted(self, blended: np.ndarray) -> Task:
        """The task with its decision rule fitted on blended predictions of these rows."""
        return self.task.fit_decision(blended, self.truth)

    def loss(self, blended: np.ndarray) -> float:
        """The task's smooth loss, which the optimiser minimises."""
        return self.task.smooth_loss(blended, self.truth)

    def loss_gradient(self, stack: np.ndarray, blended: np.ndarray) -> np.ndarray:
        """d loss / d w_i for blended = sum_i w_i stack[i]; stack (M, N, D)."""
        return self.task.smooth_loss_gradient(stack, blended, self.truth)


def in_space(space: str, predictions: np.ndarray) -> np.ndarray:
    """blend.space=ranks: each class column as ranks in (0, 1]."""
    if space == "probabilities":
        return predictions
    return pd.DataFrame(predictions).rank(method="average").to_numpy() / len(predictions)


def weighted_sum(task: Task, weights: list[float], each: list[np.ndarray]) -> np.ndarray:
    """sum_i w_i each[i], the members' predictions first made addable by the task (Task.aligned)."""
    return sum(w * predictions for w, predictions in zip(weights, task.aligned(each), strict=True))


def blend(stack: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_i w_i stack[i]: (M, N, D), (M,) -> (N, D)."""
    return np.tensordot(np.asarray(weights, dtype=np.float64), stack, axes=1)


def hill_climb(stack: np.ndarray, target: Target, rounds: int = 50) -> np.ndarray:
    """Greedy ensemble selection with replacement (Caruana et al., 2004): start from the best
    single model, add whichever model most improves the blend, and keep the best blend seen.
    Ties on the metric (accuracy moves in steps) go to the lower smooth loss."""

    def best_of(candidates: list[np.ndarray]) -> tuple[int, tuple[float, float]]:
        """The candidate ranked highest by (metric, -loss); the loss only where the metric ties."""
        signed = [s if target.higher_is_better else -s for s in map(target.score, candidates)]
        tied = [m for m, s in enumerate(signed) if s == max(signed)]
        losses = {m: target.loss(candidates[m]) for m in tied}
        chosen = min(tied, key=losses.get)
        return chosen, (signed[chosen], -losses[chosen])

    counts = np.zeros(len(stack))
    first, best_rank = best_of(list(stack))
    counts[first], total = 1, stack[first].astype(np.float64)
    best_counts = counts.copy()
    for _ in range(rounds):
        n = counts.sum() + 1
        chosen, rank = best_of([(total + member) / n for member in stack])
        counts[chosen] += 1
        total = total + stack[chosen]
        if rank > best_rank:
            best_counts, best_rank = counts.copy(), rank
    return best_counts / best_counts.sum()


def optimise(stack: np.ndarray, target: Target) -> np.ndarray:
    """Non-negative weights summing to 1 that minimise the smooth loss (SLSQP)."""
    from scipy.optimize import minimize

    members = len(stack)

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        blended = blend(stack, w)
        return target.loss(blended), target.loss_gradient(stack, blended)

    found = minimize(
        objective,
        np.full(members, 1.0 / members),
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * members,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
    )
    weights = np.clip(found.x, 0.0, None)
    return weights / weights.sum()


METHODS = ("hill_climb", "optimise")


def fit_weights(method: str, stack: np.ndarray, target: Target, *, rounds: int = 50) -> np.ndarray:
    """The members' weights by `method`; `rounds`: hill_climb's additions (blend.rounds)."""
    return hill_climb(stack, target, rounds) if method == "hill_climb" else optimise(stack, target)


def nested_scores(
    method: str, stack: np.ndarray, target: Target, fold_of_row: np.ndarray, *, rounds: int = 50
) -> tuple[list[float], float]:
    """Each fold's score under weights, and a decision rule, fitted on the other folds' rows, and
    the score of those held-out blends pooled: the blend's CV, never scored on the rows that
    chose its weights or its thresholds."""
    pooled = np.empty(stack.shape[1:])
    per_fold = []
    for fold in np.unique(fold_of_row):
        held_out = fold_of_row == fold
        fitting = target.rows(~held_out)
        weights = fit_weights(method, stack[:, ~held_out], fitting, rounds=rounds)
        decided = fitting.fitted(blend(stack[:, ~held_out], weights))
        pooled[held_out] = decided.decide(blend(stack[:, held_out], weights))
        per_fold.append(target.rows(held_out).score(pooled[held_out]))
    return per_fold, target.score(pooled)
