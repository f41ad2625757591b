"""Defaults that fit the data: unset keys decided from the facts, set keys kept, presets scale."""

import pytest
import yaml
from conftest import make_config

from pipeline import config as C
from pipeline.learn import defaults
from pipeline.learn.defaults import Facts

DIGITS = Facts(task="classification", rows=1400, side=8, channels=1, n_folds=5)
PHOTOS = Facts(task="classification", rows=150, side=64, channels=3, n_folds=5)
FACES = ["left_eye_x", "left_eye_y", "right_eye_x", "right_eye_y", "nose_x", "nose_y"]
CORNERS = ["a_x", "a_y", "b_x", "b_y"]


def bare(task: str = "classification", **sections) -> C.Config:
    return make_config({"layout": "image_csv"}, task, **sections)


def test_tiny_grayscale_images_train_a_resnet_from_scratch_at_32_px_without_flips():
    cfg, decided = defaults.resolve(bare(), DIGITS)
    assert (cfg.model.name, cfg.model.pretrained, cfg.model.image_size) == ("resnet18", "none", 32)
    assert cfg.model.freeze_depth == 0 and cfg.model.unfreeze_epoch is None
    assert cfg.aug.hflip == 0 and cfg.aug.vflip == 0 and cfg.aug.rotate == 10
    assert 20 <= cfg.train.epochs <= 60 and cfg.train.label_smoothing == 0.1
    assert any("no flips" in line for line in defaults.describe(decided))


def test_photos_fine_tune_the_packaged_pretrained_backbone_fastai_style():
    cfg, _ = defaults.resolve(bare(), PHOTOS)
    assert (cfg.model.name, cfg.model.pretrained) == ("efficientnet_lite0", "efficientnet_lite0")
    assert cfg.model.image_size == 96
    assert cfg.model.freeze_depth >= 5 and cfg.model.unfreeze_epoch == 2 and cfg.train.layer_decay == 0.7
    assert cfg.aug.hflip == 0.5 and cfg.train.batch_size == 16 and cfg.train.lr == 1e-3


def test_what_the_config_sets_is_kept_and_resolving_twice_changes_nothing():
    cfg = bare(model={"name": "test_resnet"}, train={"epochs": 3}, aug={"rotate": 0, "hflip": 0})
    resolved, decided = defaults.resolve(cfg, PHOTOS)
    assert (resolved.model.name, resolved.train.epochs, resolved.aug.rotate, resolved.aug.hflip) == (
        "test_resnet",
        3,
        0,
        0,
    )
    assert resolved.model.pretrained == "none"  # no hub (offline) and no packaged weights for it
    assert resolved.aug.brightness == 0.2 and not any(d.key in ("model.name", "train.epochs") for d in decided)
    assert defaults.resolve(resolved, PHOTOS) == (resolved, [])


def test_keypoint_flips_only_with_left_right_pairs():
    faces, _ = defaults.resolve(bare("keypoints"), Facts("keypoints", 500, 96, 1, 5, tuple(FACES)))
    corners, decided = defaults.resolve(bare("keypoints"), Facts("keypoints", 500, 96, 1, 5, tuple(CORNERS)))
    assert faces.aug.hflip == 0.5 and corners.aug.hflip == 0
    assert any("no left/right pairs" in line for line in defaults.describe(decided))
    paired, _ = defaults.resolve(
        bare("keypoints", aug={"flip_pairs": [["a", "b"]]}), Facts("keypoints", 500, 96, 1, 5, tuple(CORNERS))
    )
    assert paired.aug.hflip == 0.5


@pytest.mark.parametrize("facts", [DIGITS, PHOTOS])
def test_presets_trade_epochs_and_size(facts):
    resolved = {p: defaults.resolve(bare(train={"preset": p}), facts)[0] for p in ("fast", "medium", "best")}
    epochs = [resolved[p].train.epochs for p in ("fast", "medium", "best")]
    assert epochs[0] < epochs[1] < epochs[2]
    large = Facts("classification", 3000, 512, 3, 5)
    sizes = [defaults.resolve(bare(train={"preset": p}), large)[0].model.image_size for p in ("fast", "medium", "best")]
    assert sizes == [96, 160, 256]


def test_a_config_saved_as_given_resolves_the_same_in_another_process(tmp_path):
    cfg = bare(train={"epochs": 4}, aug={"rotate": 5})
    C.save_given(cfg, tmp_path / "given.yaml")
    written = yaml.safe_load((tmp_path / "given.yaml").read_text())
    assert "model" not in written and written["train"] == {"epochs": 4, "experiment": "tiny"}  # not the file's stem
    again = C.load(tmp_path / "given.yaml")
    assert defaults.resolve(again, PHOTOS)[0] == defaults.resolve(cfg, PHOTOS)[0]


def test_time_budget_is_a_duration():
    assert bare(train={"time_budget": "20m"}).train.time_budget == "20m"
    with pytest.raises(Exception, match="train.time_budget"):
        bare(train={"time_budget": "soon"})


def test_many_small_grayscale_images_train_from_scratch_few_fine_tune():
    many, _ = defaults.resolve(bare("keypoints"), Facts("keypoints", 1000, 48, 1, 5, tuple(CORNERS)))
    few, _ = defaults.resolve(bare(), Facts("classification", 200, 48, 1, 5))
    assert (many.model.name, many.model.pretrained, many.model.image_size) == ("resnet18", "none", 48)
    assert (few.model.name, few.model.pretrained, few.model.image_size) == (
        "efficientnet_lite0",
        "efficientnet_lite0",
        96,
    )


def test_a_freezing_plan_of_ones_own_is_kept_whole():
    cfg, _ = defaults.resolve(bare(model={"freeze_depth": 3}), PHOTOS)
    assert cfg.model.freeze_depth == 3 and cfg.model.unfreeze_epoch is None and cfg.train.layer_decay == 0.7
