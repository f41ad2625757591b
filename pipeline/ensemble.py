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

import numpy as np

MEASURES_AVERAGING = ("rmse",)


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
