"""The hands demo: drawn here, read as any image_csv keypoint competition, and named so that a
horizontal flip must swap its points."""

import numpy as np
import pytest

from pipeline import config as C
from pipeline.data import hands, sources
from pipeline.tasks.keypoints import flip_permutation, point_names


@pytest.fixture
def hands_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(hands, "N_TRAIN", 30)
    monkeypatch.setattr(hands, "N_TEST", 6)
    hands.build_hands(tmp_path / "hands")
    return tmp_path / "hands"


def test_the_demo_is_a_keypoint_competition_with_missing_points(hands_dir):
    cfg = C.load("configs/hands.yaml", [f"data.dir={hands_dir}"])
    data = sources.read(cfg)
    assert len(data.train.table) == 30 and len(data.test.table) == 6 and list(data.targets) == hands.COLUMNS
    points = data.train.table[hands.COLUMNS].to_numpy(float)
    assert np.isnan(points).any() and np.nanmin(points) >= 0 and np.nanmax(points) <= hands.SIDE - 1
    assert (hands_dir / "sample_submission.csv").exists() and (hands_dir / "solution.csv").exists()


def test_a_flip_swaps_the_points_named_by_their_place_from_the_left():
    """Finger bases lie on a line across the palm: base_1 to base_4 run left to right in every
    image, left hands and right; mirrored, they do so again only once flip_pairs are swapped."""
    names = point_names(hands.COLUMNS)
    swap = flip_permutation(names, C.load("configs/hands.yaml").aug.flip_pairs)
    rng = np.random.default_rng(0)
    for _ in range(20):
        _, points = hands.draw_hand(rng)
        bases = [names.index(f"base_{k}") for k in range(1, 5)]
        mirrored = points.copy()
        mirrored[:, 0] = hands.SIDE - 1 - mirrored[:, 0]
        assert np.all(np.diff(points[bases, 0]) > 0)
        assert np.all(np.diff(mirrored[bases, 0]) < 0)
        assert np.all(np.diff(mirrored[swap][bases, 0]) > 0)
