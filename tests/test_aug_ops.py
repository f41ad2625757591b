"""The augmentation registry: each op's keypoint mapping against its image, the two executors
against each other, and what the config and the tune space make of the registry."""

import albumentations as A
import numpy as np
import pytest
import torch
from conftest import make_config

from pipeline import config as C
from pipeline.augment import aug_ops, transforms
from pipeline.augment.aug_ops import Context, Setting
from pipeline.augment.batch_aug import BatchAugment, Warp
from pipeline.config import Aug
from pipeline.errors import PipelineError
from pipeline.learn.device import Normalise
from pipeline.stages import tune
from pipeline.tasks.keypoints import Keypoints, flip_permutation, keypoint_params, point_names, unit_points

DATA = {"layout": "image_csv", "dir": "data/x"}
SIDE = 48
GREY = Normalise((0.0,), (1 / 255,))  # keeps 0-255 values
STRONG = Aug(hflip=1.0, vflip=1.0, rotate=30, shift=0.1, scale=0.2, shear=10, perspective=0.1, random_resized_crop=0.6)
GEOMETRIC = [op for op in aug_ops.OPS if op.geometric]
BATCHED = [op for op in aug_ops.OPS if op.batched]


def forced(op: aug_ops.Op, aug: Aug = STRONG) -> Setting:
    """The op's setting from `aug`, applied to every image."""
    return Setting(1.0, op.setting(aug).ranges)


def batched(op: aug_ops.Op, setting: Setting, task: Keypoints | None = None) -> BatchAugment:
    """The batched executor of `op` alone, drawing from `setting`, moving `task`'s points."""
    on = {k.name: getattr(STRONG, k.name) or 0.1 for k in op.keys if not k.default}
    augment = BatchAugment(Aug(**on), GREY, task)
    augment.settings = [setting]
    return augment


def dot(x: float, y: float) -> np.ndarray:
    """(SIDE, SIDE, 1) uint8: a Gaussian dot centred on pixel coordinates (x, y)."""
    grid_y, grid_x = np.mgrid[:SIDE, :SIDE]
    blob = np.exp(-((grid_x - x) ** 2 + (grid_y - y) ** 2) / (2 * 1.5**2))
    return (255 * blob).astype(np.uint8)[..., None]


def found(image: np.ndarray) -> np.ndarray:
    """The dot's centre in pixel coordinates: the centroid of what is above half its peak."""
    image = np.asarray(image, dtype=np.float64).reshape(SIDE, SIDE)
    weight = np.where(image > image.max() / 2, image, 0.0)
    grid_y, grid_x = np.mgrid[:SIDE, :SIDE]
    return np.array([(weight * grid_x).sum(), (weight * grid_y).sum()]) / weight.sum()


def smooth_image(seed: int = 0) -> np.ndarray:
    """(SIDE, SIDE, 1) uint8 with gentle gradients: interpolation differs by less than a grey level."""
    import cv2

    noise = np.random.default_rng(seed).uniform(0, 255, (SIDE, SIDE)).astype(np.float32)
    blurred = cv2.GaussianBlur(noise, (0, 0), 2.5)
    return np.round(255 * (blurred - blurred.min()) / np.ptp(blurred)).astype(np.uint8)[..., None]


@pytest.mark.parametrize("op", GEOMETRIC, ids=lambda op: type(op).__name__)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_image_keypoint_mapping_lands_on_the_dot(op, seed):
    point = np.array([[21.3, 26.6]])
    steps = transforms.compose([op.per_image(forced(op), Context(1, SIDE))], keypoint_params(), seed=seed)
    moved = steps(image=dot(*point[0]), keypoints=point, present=[True])
    np.testing.assert_allclose(np.asarray(moved["keypoints"])[0, :2], found(moved["image"]), atol=0.5)


@pytest.mark.parametrize("op", [op for op in GEOMETRIC if op.batched], ids=lambda op: type(op).__name__)
def test_batched_keypoint_mapping_lands_on_the_dot(op):
    points = np.array([[21.3, 26.6], [30.2, 17.5], [24.0, 24.0], [15.7, 29.9]])
    augment = batched(op, forced(op), Keypoints(["p_x", "p_y"]))  # one point per image
    draws = augment.draw(len(points), np.random.default_rng(0))
    images = torch.from_numpy(np.stack([dot(*p) for p in points])).permute(0, 3, 1, 2)
    moved_images = augment.apply(images, draws)
    targets = torch.from_numpy(unit_points(points[:, None, :], np.full((len(points), 2), SIDE)).reshape(-1, 2))
    moved = augment.targets(targets, draws).numpy()
    for image, unit in zip(moved_images, moved, strict=True):
        np.testing.assert_allclose((unit + 1) * SIDE / 2 - 0.5, found(image.numpy()), atol=0.5)


@pytest.mark.parametrize(
    ("op", "ranges"),
    [
        (aug_ops.HorizontalFlip(), {}),
        (aug_ops.VerticalFlip(), {}),
        (aug_ops.Affine(), {"rotate": (20, 20), "shift": (0.125, 0.125), "scale": (1.1, 1.1), "shear": (5, 5)}),
        (aug_ops.Affine(), {"rotate": (-35, -35), "shift": (-0.25, -0.25), "scale": (0.8, 0.8), "shear": (-9, -9)}),
        (aug_ops.BrightnessContrast(), {"brightness": (0.1, 0.1), "contrast": (-0.2, -0.2)}),
    ],
    ids=lambda x: type(x).__name__ if isinstance(x, aug_ops.Op) else "",
)
def test_batched_and_per_image_executors_agree_within_a_grey_level(op, ranges):
    """The ops both executors share, each drawing the one value its ranges allow (the affine
    shift a whole number of pixels: albumentations rounds it to one). Cutout is left out: where
    its holes fall is drawn inside albumentations."""
    image, setting = smooth_image(), Setting(1.0, ranges)
    per_image = A.Compose([op.per_image(setting, Context(1, SIDE))], seed=0)(image=image)["image"]
    augment = batched(op, setting)
    got = augment.apply(torch.from_numpy(image).permute(2, 0, 1)[None], augment.draw(1, np.random.default_rng(0)))
    np.testing.assert_allclose(got[0, 0].numpy(), np.asarray(per_image, dtype=np.float32).reshape(SIDE, SIDE), atol=1)


def test_every_batched_op_but_cutout_is_compared_above():
    compared = {"HorizontalFlip", "VerticalFlip", "Affine", "BrightnessContrast"}
    assert {type(op).__name__ for op in BATCHED} - compared == {"Cutout"}


def test_a_flip_swaps_left_and_right_names_on_both_paths():
    columns = ["left_eye_x", "left_eye_y", "right_eye_x", "right_eye_y", "nose_x", "nose_y"]
    swap = flip_permutation(point_names(columns), "auto")
    points = np.array([[10.0, 20.0], [36.0, 21.0], [23.0, 30.0]])  # the left eye on the image's left
    steps = transforms.compose(transforms.augmentations(Aug(hflip=1.0), 1, SIDE, swap), keypoint_params(), seed=0)
    per_image = np.asarray(steps(image=dot(0, 0), keypoints=points, present=[True] * 3)["keypoints"])[:, :2]
    np.testing.assert_allclose(per_image, [[SIDE - 1 - 36.0, 21.0], [SIDE - 1 - 10.0, 20.0], [SIDE - 1 - 23.0, 30.0]])
    augment = BatchAugment(Aug(hflip=1.0), GREY, Keypoints(columns))
    targets = torch.from_numpy(unit_points(points, np.array([SIDE, SIDE])).reshape(1, -1))
    moved = augment.targets(targets, augment.draw(1, np.random.default_rng(0))).reshape(-1, 2).numpy()
    np.testing.assert_allclose((moved + 1) * SIDE / 2 - 0.5, per_image, atol=1e-4)


def test_a_point_pushed_out_of_the_image_and_a_missing_point_stay_in_the_targets():
    augment = batched(
        aug_ops.Affine(),
        Setting(1.0, {"rotate": (0, 0), "shift": (0.4, 0.4), "scale": (1, 1), "shear": (0, 0)}),
        Keypoints(["a_x", "a_y", "b_x", "b_y"]),
    )
    targets = torch.tensor([[0.9, 0.0, float("nan"), float("nan")]])
    moved = augment.targets(targets, augment.draw(1, np.random.default_rng(0)))
    assert moved[0, 0] == pytest.approx(1.7) and moved[0, 1] == pytest.approx(0.8) and moved[0, 2:].isnan().all()


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("rotate", 200, "less than or equal to 180"),
        ("scale", 1.0, "less than 1"),
        ("blur", 4, "odd kernel size"),
        ("cutout_holes", 0, "greater than or equal to 1"),
        ("hflip", -0.5, "greater than or equal to 0"),
    ],
)
def test_the_generated_aug_section_rejects_out_of_range_values_naming_them(key, value, rule):
    with pytest.raises(PipelineError, match=rf"aug\.{key}.*{rule}"):
        C.with_overrides(make_config(DATA), {f"aug.{key}": value}, "test")


def test_the_tune_space_searches_what_the_registry_offers():
    cfg = make_config(DATA | {"channels": 3})
    searched = {key for key in tune.default_space(cfg, n_stages=4) if key.startswith("aug.")}
    offered = {f"aug.{k.name}" for op in aug_ops.OPS for k in op.keys if k.search or k.choices}
    assert searched == offered
    grey_points = C.with_overrides(cfg, {"competition.task": "keypoints", "data.channels": 1}, "test")
    searched = {key for key in tune.default_space(grey_points, n_stages=4) if key.startswith("aug.")}
    assert searched == offered - {"aug.hue", "aug.saturation", "aug.random_resized_crop"}


def test_what_the_batched_path_cannot_do_is_every_op_without_a_batched_executor():
    everything = Aug(
        **{k.name: k.search[0] if k.search else (k.choices or (k.default,))[-1] for op in aug_ops.OPS for k in op.keys}
    )
    cannot = {entry.split("=")[0] for entry in aug_ops.not_batched(everything)}
    assert cannot == {f"aug.{k.name}" for op in aug_ops.OPS if not op.batched for k in op.keys}


def shape_and_mask(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(SIDE, SIDE, 1) uint8: a drawn ellipse and a square apart, white on black; and its 0/1 mask."""
    rng = np.random.default_rng(seed)
    grid_y, grid_x = np.mgrid[:SIDE, :SIDE]
    cy, cx, ry, rx = rng.uniform(12, 20), rng.uniform(12, 20), rng.uniform(5, 9), rng.uniform(4, 8)
    mask = ((grid_y - cy) / ry) ** 2 + ((grid_x - cx) / rx) ** 2 <= 1
    mask[30:40, 28:36] = True
    return (mask * 255).astype(np.uint8)[..., None], mask.astype(np.uint8)


def agreement(image: np.ndarray, mask: np.ndarray) -> float:
    """Intersection over union of the moved shape (the image over half grey) and its moved mask."""
    shape, mask = np.asarray(image).reshape(SIDE, SIDE) > 127, np.asarray(mask).reshape(SIDE, SIDE) > 0
    return (shape & mask).sum() / (shape | mask).sum()


@pytest.mark.parametrize("op", GEOMETRIC, ids=lambda op: type(op).__name__)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_image_a_mask_moves_as_its_drawn_shape(op, seed):
    image, mask = shape_and_mask(seed)
    moved = A.Compose([op.per_image(forced(op), Context(1, SIDE))], seed=seed)(image=image, mask=mask)
    assert set(np.unique(moved["mask"])) <= {0, 1}  # nearest neighbour: still a mask
    assert agreement(moved["image"], moved["mask"]) > 0.9


@pytest.mark.parametrize("op", [op for op in GEOMETRIC if op.batched], ids=lambda op: type(op).__name__)
def test_batched_a_mask_moves_as_its_drawn_shape(op):
    pairs = [shape_and_mask(seed) for seed in range(4)]
    augment = batched(op, forced(op))
    draws = augment.draw(len(pairs), np.random.default_rng(0))
    images = torch.from_numpy(np.stack([image for image, _ in pairs])).permute(0, 3, 1, 2)
    masks = torch.from_numpy(np.stack([mask for _, mask in pairs]))[:, None]
    moved_images = augment.apply(images, draws)
    moved_masks = Warp(augment.ops, draws, None).masks(masks)
    assert moved_masks.dtype == torch.uint8 and set(moved_masks.unique().tolist()) <= {0, 1}
    for image, mask in zip(moved_images, moved_masks, strict=True):
        assert agreement(image.numpy(), mask.numpy()) > 0.9
