import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.augment import transforms
from pipeline.config import Aug
from pipeline.data.images import FileSource, MemoryImages, open_images
from pipeline.errors import PipelineError
from pipeline.learn.loader import ImageDataset
from pipeline.tasks.keypoints import Keypoints, flip_permutation, keypoint_params, point_names

COLUMNS = ["left_eye_x", "left_eye_y", "right_eye_x", "right_eye_y", "nose_tip_x", "nose_tip_y"]


def test_flip_moves_every_point_and_swaps_the_pairs():
    names = point_names(COLUMNS)
    swap = flip_permutation(names, "auto")
    assert names == ["left_eye", "right_eye", "nose_tip"] and swap.tolist() == [1, 0, 2]
    flip = transforms.compose(transforms.augmentations(Aug(hflip=1.0), 1, 10, swap), keypoint_params(), seed=0)
    image = np.zeros((8, 10, 1), np.uint8)
    image[2, 3] = 255  # a mark at the left eye
    points = np.array([[3.0, 2.0], [7.0, 2.5], [5.0, 6.0]])  # left eye, right eye, nose
    out = flip(image=image, keypoints=points, present=np.ones(3, bool))
    moved = np.asarray(out["keypoints"])[:, :2]
    # x -> width - 1 - x for every point, then left and right trade places
    np.testing.assert_allclose(moved, [[10 - 1 - 7.0, 2.5], [10 - 1 - 3.0, 2.0], [10 - 1 - 5.0, 6.0]])
    assert out["image"][2, 10 - 1 - 3, 0] == 255  # the image moved the same way


def test_flip_in_normalised_coordinates_is_negation():
    swap = flip_permutation(point_names(COLUMNS), "auto")
    augment = transforms.compose(transforms.augmentations(Aug(hflip=1.0), 1, 12, swap), keypoint_params(), seed=0)
    finish = transforms.finish(12)
    target = np.array([[3.0, 2.0, np.nan, np.nan, 5.0, 6.0]], np.float32)  # the right eye is not labelled
    image = MemoryImages([np.zeros((8, 12, 1), np.uint8)])
    flipped = ImageDataset(image, [0], target, augment, finish, Keypoints(COLUMNS))[0][1]
    plain = ImageDataset(image, [0], target, None, finish, Keypoints(COLUMNS))[0][1]
    points, plain_points = flipped.numpy().reshape(3, 2), plain.numpy().reshape(3, 2)
    np.testing.assert_allclose(points[[1, 0, 2]], plain_points * [-1, 1], atol=1e-6)
    assert np.isnan(points[0]).all() and not np.isnan(points[1:]).any()  # the missing point moved with its pair


def test_explicit_pairs_must_name_points():
    with pytest.raises(PipelineError, match="'left_ear'"):
        flip_permutation(["left_eye", "right_eye"], [("left_ear", "right_ear")])
    with pytest.raises(PipelineError, match="x, y pairs"):
        point_names(["a_x", "b_y"])


def test_geometric_augmentation_keeps_every_point():
    augment = transforms.compose(
        transforms.augmentations(Aug(rotate=30, shift=0.2, scale=0.2, p=1.0), 1, 16), keypoint_params(), seed=0
    )
    points = np.array([[0.0, 0.0], [15.0, 15.0], [8.0, 8.0]])
    for _ in range(20):
        moved = augment(image=np.zeros((16, 16, 1), np.uint8), keypoints=points, present=np.ones(3, bool))
        assert len(moved["keypoints"]) == 3


def test_nan_mask_keeps_loss_and_gradients_finite_and_unaffected():
    task = Keypoints(COLUMNS, "l1")
    outputs = torch.randn(2, 6, requires_grad=True)
    target = torch.tensor([[0.1, 0.2, 0.3, 0.4, np.nan, np.nan], [0.5, np.nan, 0.1, 0.1, 0.2, 0.2]])
    loss = task.loss(outputs, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(outputs.grad).all()
    assert (outputs.grad[torch.isnan(target)] == 0).all()
    present = ~torch.isnan(target)
    expected = (outputs.detach() - torch.nan_to_num(target)).abs()[present].mean()
    torch.testing.assert_close(loss.detach(), expected)
    changed = target.clone()
    changed[0, 4:] = 0.9  # labelling a missing point changes the loss; its NaN did not
    assert task.loss(outputs, changed) != loss


def test_metrics_in_pixels_of_the_original_image():
    task = Keypoints(COLUMNS[:2])
    sizes = np.array([[100.0, 200.0]])  # height, width
    target = np.array([[0.0, 0.0]])
    prediction = np.array([[0.05, 0.005]])  # 5 px off in x (half width 100), 0.25 px in y (half height 50)
    metrics = task.metrics(prediction, target, sizes)
    assert metrics["rmse"] == pytest.approx(np.sqrt((5.0**2 + 0.25**2) / 2))
    assert metrics["acc_0.1"] == 1.0 and metrics["acc_0.01"] == 0.5
    np.testing.assert_allclose(task.to_units(np.array([[-1.0, 1.0]]), sizes), [[-0.5, 99.5]])


def test_grayscale_refuses_colour_augmentations():
    with pytest.raises(PipelineError, match="RGB"):
        transforms.augmentations(Aug(hue=0.1), channels=1, size=8)
    assert all(
        isinstance(t, A.BasicTransform)
        for t in transforms.augmentations(
            Aug(
                hflip=0.5,
                vflip=0.5,
                rotate=5,
                perspective=0.1,
                brightness=0.1,
                contrast=0.1,
                hue=0.1,
                saturation=0.1,
                blur=3,
                noise=0.05,
                cutout=0.2,
                random_resized_crop=0.5,
            ),
            channels=3,
            size=8,
        )
    )


def test_keypoints_without_augmentation_say_nothing(recwarn, capsys):
    augment = transforms.compose(transforms.augmentations(Aug(), 1, 8), keypoint_params(), seed=0)
    images = MemoryImages(np.zeros((1, 8, 8, 1), np.uint8))
    dataset = ImageDataset(
        images, np.array([0]), np.array([[1.0, 2.0]]), augment, transforms.finish(8), Keypoints(["p_x", "p_y"])
    )
    dataset[0]
    assert not recwarn.list and capsys.readouterr() == ("", "")


def test_points_in_the_files_pixels_land_where_they_were_on_a_smaller_cached_image(tmp_path):
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(tmp_path / "wide.png")
    images = open_images(FileSource((tmp_path / "wide.png",), 1), tmp_path / "cache", side=20)
    assert images[0].shape == (20, 30, 1)  # half the file's size
    target = np.array([[30.0, 10.0]], np.float32)  # x, y in the file's pixels
    _, moved, size = ImageDataset(images, [0], target, None, transforms.finish(16), Keypoints(["p_x", "p_y"]))[0]
    np.testing.assert_allclose(moved.numpy(), [30.5 / 30 - 1, 10.5 / 20 - 1], atol=1e-6)
    assert size.tolist() == [40, 60]  # predictions go back to the file's pixels
