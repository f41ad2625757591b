"""The blend's RMSE from its members' RMSEs and their spread: exact for squared error."""

import numpy as np
import pytest

from pipeline import ensemble


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
