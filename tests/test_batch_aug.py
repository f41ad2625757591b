"""The batched, device-resident augmentation path (train.device_aug), checked on the CPU."""

import albumentations as A
import numpy as np
import pytest
import torch
from conftest import run, tiny

from pipeline import config as C
from pipeline.augment import batch_aug, transforms
from pipeline.augment.batch_aug import BatchAugment, DeviceBatches, Draws, ResidentBatches
from pipeline.config import Aug
from pipeline.data.images import MemoryImages
from pipeline.errors import PipelineError
from pipeline.learn.device import Device, Normalise
from pipeline.learn.loader import ImageDataset, create_loader

NORMALISE = Normalise((0.5,), (0.25,))
EVERYTHING = Aug(rotate=20, shift=0.1, scale=0.1, shear=5, hflip=0.5, brightness=0.2, contrast=0.2, cutout=0.3, p=0.8)


def images(n: int = 10, side: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 1), dtype=np.uint8)


def as_tensor(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(batch).permute(0, 3, 1, 2)


@pytest.mark.parametrize(
    ("aug", "same_as"),
    [(Aug(), None), (Aug(hflip=1.0), A.HorizontalFlip(p=1.0)), (Aug(vflip=1.0), A.VerticalFlip(p=1.0))],
)
def test_exact_ops_match_the_per_image_albumentations_path(aug, same_as):
    batch = images()
    steps = transforms.compose([same_as] if same_as else [], {}, 0)
    per_image = ImageDataset(MemoryImages(batch), np.arange(len(batch)), None, steps, transforms.finish(16))
    expected = NORMALISE(torch.stack([per_image[i][0] for i in range(len(batch))]))
    augment = BatchAugment(aug, NORMALISE)
    got = augment.apply(as_tensor(batch), augment.draw(len(batch), np.random.default_rng(0)))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)  # one grey level is 0.016 here


def test_a_whole_pixel_shift_moves_the_image_exactly():
    batch = images(2)
    forward = torch.tensor([[1.0, 0.0, 2 * 3 / 16], [0.0, 1.0, -2 * 2 / 16]]).expand(2, 2, 3)  # 3 px right, 2 up
    theta = torch.linalg.inv(torch.cat([forward, torch.tensor([[[0.0, 0.0, 1.0]]] * 2)], dim=1))[:, :2]
    got = BatchAugment(Aug(shift=0.2), Normalise((0.0,), (1.0,))).apply(as_tensor(batch), Draws(theta, forward, ({},)))
    expected = np.zeros_like(batch)
    expected[:, :-2, 3:] = batch[:, 2:, :-3]
    torch.testing.assert_close(got * 255, as_tensor(expected).float(), atol=1e-3, rtol=0)


def test_device_batches_are_the_per_image_ops_in_the_served_order():
    """The batched gather and ops give what each image, augmented alone with its own draws,
    gives: the same batches for the same seed, whichever way (or device) they are made."""
    batch, targets = images(10), torch.arange(10)
    augment = BatchAugment(EVERYTHING, NORMALISE)
    served = list(DeviceBatches(as_tensor(batch), targets, augment, batch_size=4, seed=7))
    assert len(served) == 2 and all(len(b[0]) == 4 for b in served)  # the last partial batch dropped
    rng = np.random.default_rng(7)
    order = torch.from_numpy(rng.permutation(10))
    draws = augment.draw(10, rng)
    alone = [
        augment.apply(as_tensor(batch[[int(r)]]), draws.rows(torch.tensor([i]), torch.device("cpu")))
        for i, r in enumerate(order[:8])
    ]
    torch.testing.assert_close(torch.cat([b[0] for b in served]), torch.cat(alone), atol=1e-6, rtol=0)
    assert torch.equal(torch.cat([b[1] for b in served]), order[:8])
    again = list(DeviceBatches(as_tensor(batch), targets, augment, batch_size=4, seed=7))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(served, again, strict=True))
    other = next(iter(DeviceBatches(as_tensor(batch), targets, augment, batch_size=4, seed=8)))
    assert not torch.equal(other[0], served[0][0])


def test_validation_from_resident_images_is_the_per_image_loaders():
    batch, rows = images(10, side=12), np.array([3, 1, 4, 1, 5, 9, 2])  # 12 px resized to 16 on both paths
    targets = np.arange(10) * 10
    cpu = Device(torch.device("cpu"), None, False)
    per_image = ImageDataset(MemoryImages(batch), rows, targets[rows], None, transforms.finish(16))
    expected = list(create_loader(per_image, 4, False, 0, 0, cpu, NORMALISE))
    resident = batch_aug.resident_images(MemoryImages(batch), np.arange(10), 16, cpu.device).images
    sizes = torch.full((len(rows), 2), 12.0)
    got = list(ResidentBatches(resident, torch.as_tensor(rows), torch.as_tensor(targets[rows]), sizes, 4, NORMALISE))
    assert len(got) == len(expected) == 2
    for ours, theirs in zip(got, expected, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_draws_follow_the_probabilities():
    augment = BatchAugment(Aug(hflip=0.5, rotate=10, p=0.3), NORMALISE)
    draws = augment.draw(4000, np.random.default_rng(0))
    flipped = draws.theta[:, 0, 0] < 0
    warped = (draws.theta[:, 0, 1].abs() > 1e-6) | ~torch.isclose(draws.theta[:, 0, 0].abs(), torch.tensor(1.0))
    assert abs(flipped.float().mean() - 0.5) < 0.03 and abs(warped.float().mean() - 0.3) < 0.03
    assert len(draws.ops) == 2  # the flip and the affine map; no cutout asked for


def test_what_it_cannot_do_is_named():
    with pytest.raises(PipelineError, match=r"aug\.blur=3.*aug\.noise=0\.1"):
        BatchAugment(Aug(blur=3, noise=0.1, rotate=5), NORMALISE)
    cpu = torch.device("cpu")
    with pytest.raises(PipelineError, match=r"with 10000000000 images of 1x16x16 \(more than 25% of cpu's memory\)"):
        batch_aug.should_use("on", Aug(), cpu, 10**10, 1, 16)
    assert not batch_aug.should_use("auto", Aug(), cpu, 10**10, 1, 16)
    assert not batch_aug.should_use("auto", Aug(blur=3), cpu, 10, 1, 16)
    assert batch_aug.should_use("auto", Aug(), cpu, 10, 1, 16)


def test_an_impossible_device_aug_on_stops_train_before_any_fold_is_touched(digits_dir, tmp_path, monkeypatch):
    data = {"layout": "pixel_columns", "dir": str(digits_dir), "sample_submission": None}
    cfg = tiny(data, full_fit=False)
    run(cfg, tmp_path, monkeypatch)
    before = (tmp_path / "runs/tiny/tiny/fold0/result.json").read_text()
    impossible = C.with_overrides(cfg, {"train.device_aug": "on", "aug.blur": 3}, "test")
    with pytest.raises(PipelineError, match=r"device_aug=on cannot be used with aug\.blur=3"):
        run(impossible, tmp_path, monkeypatch)
    assert (tmp_path / "runs/tiny/tiny/fold0/result.json").read_text() == before


def test_training_with_device_aug_on_the_cpu(digits_dir, tmp_path, monkeypatch, capsys):
    data = {"layout": "pixel_columns", "dir": str(digits_dir), "sample_submission": None}
    cv = run(tiny(data, epochs=2, full_fit=False, device_aug="on"), tmp_path, monkeypatch)  # 28px digits, 32px input
    assert capsys.readouterr().out.count("images resident on cpu, augmented there") == 1  # shared by the folds
    assert np.isfinite(cv["score"])


def test_two_ranks_share_out_the_same_epoch(monkeypatch):
    """Under DDP each rank serves every other image of the one-process order, with the same
    draws, in its half of each batch."""
    batch, targets = as_tensor(images(16)), torch.arange(16)
    augment = BatchAugment(EVERYTHING, NORMALISE)
    whole = list(DeviceBatches(batch, targets, augment, batch_size=8, seed=3))
    monkeypatch.setenv("WORLD_SIZE", "2")
    ranks = []
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        ranks.append(list(DeviceBatches(batch, targets, augment, batch_size=8, seed=3)))
    served = torch.cat([b[1] for b in whole])
    assert all(len(b[0]) == 4 for r in ranks for b in r) and len(ranks[0]) == len(whole) == 2
    for rank, batches in enumerate(ranks):
        assert torch.equal(torch.cat([b[1] for b in batches]), served[rank::2])
        images_served = torch.cat([b[0] for b in whole])[rank::2]
        torch.testing.assert_close(torch.cat([b[0] for b in batches]), images_served, atol=1e-6, rtol=0)
