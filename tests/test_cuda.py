"""The GPU path on a real CUDA device: mixed precision (bf16, fp16 with loss scaling),
channels_last, torch.compile, device-resident batches, prediction, and DDP over NCCL.

Skipped where there is no CUDA device (CI); `make gpu-check` runs them where there is one.
"""

import numpy as np
import pytest
import torch
from conftest import run, tiny

from pipeline import config
from pipeline.augment import batch_aug
from pipeline.augment.batch_aug import BatchAugment, DeviceBatches
from pipeline.config import Aug
from pipeline.learn import selection
from pipeline.learn.device import Normalise
from pipeline.learn.inference import PredictionsOnTest
from pipeline.paths import Paths
from pipeline.records import CV
from pipeline.tasks.keypoints import Keypoints

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

EVERYTHING = Aug(rotate=20, shift=0.1, scale=0.1, shear=5, hflip=0.5, brightness=0.2, contrast=0.2, cutout=0.3, p=0.8)
NORMALISE = Normalise((0.5,), (0.25,))


def blobs(blobs_dir, **train_keys) -> config.Config:
    data = {"layout": "pixel_columns", "dir": str(blobs_dir), "sample_submission": None}
    return tiny(data, **{"epochs": 6, "full_fit": True, "device": "cuda", **train_keys})


@pytest.mark.parametrize(
    ("amp", "device_aug", "compiled"),
    [("bf16", "on", False), ("fp16", "on", False), ("fp16", "off", False), ("off", "off", False), ("bf16", "on", True)],
)
def test_training_on_cuda_learns(blobs_dir, tmp_path, monkeypatch, capsys, amp, device_aug, compiled):
    """The blobs are learnable: every precision and batch path must reach near-perfect folds."""
    cv = run(blobs(blobs_dir, amp=amp, device_aug=device_aug, compile=compiled), tmp_path, monkeypatch)
    assert cv["score"] >= 0.9, cv
    out = capsys.readouterr().out
    assert ("images resident on cuda" in out) == (device_aug == "on")
    saved = torch.load(tmp_path / "runs/tiny/tiny/full/model.pt", map_location="cpu", weights_only=True)
    assert all(v.device.type == "cpu" and torch.isfinite(v.float()).all() for v in saved["state_dict"].values())


@pytest.mark.parametrize("device_aug", ["on", "off"])
def test_a_student_learns_online_from_its_teacher_on_cuda(blobs_dir, tmp_path, monkeypatch, capsys, device_aug):
    """The teacher's models on the GPU read the student's batches, bf16 and resident or not."""
    run(blobs(blobs_dir, amp="bf16"), tmp_path, monkeypatch)
    student = blobs(blobs_dir, amp="bf16", device_aug=device_aug, experiment="student", distill={"teacher": "tiny"})
    cv = run(student, tmp_path, monkeypatch)
    assert "online: its predictions on each augmented batch" in capsys.readouterr().out
    assert cv["score"] > 0.9


def test_channels_last_and_autocast_are_in_force(blobs_dir, tmp_path, monkeypatch):
    from pipeline.learn import fit, plan
    from pipeline.stages import folds

    monkeypatch.chdir(tmp_path)
    cfg = blobs(blobs_dir, amp="bf16")
    folds.run(cfg)
    setup, _ = plan.prepare(cfg, Paths.of(cfg))
    parts = fit.assemble(setup, np.arange(64), np.arange(64, 96))
    conv = next(m for m in parts.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_cuda and conv.weight.is_contiguous(memory_format=torch.channels_last)
    images, _, _ = next(iter(parts.train_batches(0)))
    with parts.device.autocast():
        assert parts.model(images.to(memory_format=torch.channels_last)).dtype == torch.bfloat16


def test_device_batches_on_cuda_equal_those_made_on_the_cpu():
    """A seed gives the same batches on any device: the draws are made on a CPU generator."""
    batch = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (40, 1, 24, 24), dtype=np.uint8))
    targets = torch.arange(40)
    augment = BatchAugment(EVERYTHING, NORMALISE)
    on_cpu = list(DeviceBatches(batch, targets, augment, batch_size=16, seed=5))
    on_cuda = list(DeviceBatches(batch.cuda(), targets.cuda(), augment, batch_size=16, seed=5))
    for cpu, cuda in zip(on_cpu, on_cuda, strict=True):
        assert torch.equal(cpu[1], cuda[1].cpu())
        torch.testing.assert_close(cuda[0].cpu(), cpu[0], atol=2e-3, rtol=0)  # a grey level is 0.016


def test_keypoints_move_alike_on_cuda_and_on_the_cpu():
    batch = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (40, 1, 24, 24), dtype=np.uint8))
    points = torch.from_numpy(np.random.default_rng(1).uniform(-0.8, 0.8, (40, 6)).astype(np.float32))
    points[::5, 2:4] = float("nan")
    augment = BatchAugment(
        EVERYTHING, NORMALISE, Keypoints(["left_x", "left_y", "right_x", "right_y", "nose_x", "nose_y"])
    )
    on_cpu = list(DeviceBatches(batch, points, augment, batch_size=16, seed=5))
    on_cuda = list(DeviceBatches(batch.cuda(), points.cuda(), augment, batch_size=16, seed=5))
    for cpu, cuda in zip(on_cpu, on_cuda, strict=True):
        torch.testing.assert_close(cuda[1].cpu(), cpu[1], atol=1e-5, rtol=0, equal_nan=True)


def test_resident_images_fit_the_gpu_memory_rule():
    cuda = torch.device("cuda")
    assert batch_aug.should_use("auto", Aug(), cuda, 1000, 3, 32)
    assert not batch_aug.should_use("auto", Aug(), cuda, 10**9, 3, 224)


def test_cuda_predictions_match_the_cpu(blobs_dir, tmp_path, monkeypatch):
    cfg = blobs(blobs_dir, epochs=2, amp="off")
    run(cfg, tmp_path, monkeypatch)
    paths = Paths.of(cfg)
    cfg.predict.tta = ["hflip", "shift:0.05"]
    members = selection.choose(cfg, paths, CV.load(paths.cv_json), PredictionsOnTest(cfg, paths, keep=False)).members
    weighted = [(m.fit, m.weight) for m in members]
    on_cuda = PredictionsOnTest(cfg, paths, keep=False).blend(weighted)
    cpu = config.with_overrides(cfg, {"train.device": "cpu"}, "test")
    on_cpu = PredictionsOnTest(cpu, paths, keep=False).blend(weighted)
    np.testing.assert_allclose(on_cuda, on_cpu, atol=1e-3)
    bf16 = config.with_overrides(cfg, {"train.amp": "bf16"}, "test")
    on_bf16 = PredictionsOnTest(bf16, paths, keep=False).blend(weighted)
    assert (on_bf16.argmax(1) == on_cpu.argmax(1)).all() and np.abs(on_bf16 - on_cpu).max() < 0.05


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP over NCCL needs two GPUs")
def test_ddp_over_nccl_matches_one_gpu(blobs_dir, tmp_path, monkeypatch):
    import json

    from pipeline.stages import folds
    from pipeline.stages import train as launch

    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    single = run(blobs(blobs_dir, amp="off"), tmp_path / "one", monkeypatch)
    monkeypatch.chdir(tmp_path / "two")
    cfg = blobs(blobs_dir, amp="off", distributed="ddp", sync_bn=True)
    folds.run(cfg)
    launch.run(cfg, gpus="0,1")
    ddp = json.loads((tmp_path / "two/runs/tiny/tiny/cv.json").read_text())
    assert abs(ddp["score"] - single["score"]) <= 0.05, (ddp["score"], single["score"])
