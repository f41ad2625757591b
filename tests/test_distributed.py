"""Several processes for training, on the CPU: DDP over gloo under torchrun, and a fold per process."""

import json
import re

import pandas as pd
import pytest
import torch
from conftest import run, tiny

from pipeline import config as C
from pipeline.errors import PipelineError
from pipeline.files import write_text
from pipeline.learn import distributed
from pipeline.stages import folds
from pipeline.stages import train as launch


def blobs_config(blobs_dir, **train_keys):
    data = {"layout": "pixel_columns", "dir": str(blobs_dir), "sample_submission": None}
    # 6 epochs: with 4, some seeds leave a fold at chance, and then one ulp decides between runs
    return tiny(data, **{"epochs": 6, "full_fit": True, "device": "cpu", **train_keys})


def one_then_two_processes(
    blobs_dir, tmp_path, monkeypatch, capfd, mode: str, overrides: dict | None = None
) -> tuple[dict, dict, str]:
    """The CV of one process, then of `make train GPUS=0,1` with train.distributed=mode, and what it printed.
    The one process uses as many threads as each of the two will: float sums split over another
    number of threads round differently, and a few epochs of AdamW make that visible."""
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
    threads = torch.get_num_threads()
    torch.set_num_threads(int(distributed.worker_env(["0"], 2)["OMP_NUM_THREADS"]))
    given = C.with_overrides(blobs_config(blobs_dir), overrides or {}, "test")
    try:
        single = run(given, tmp_path / "one", monkeypatch)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.chdir(tmp_path / "two")
    cfg = C.with_overrides(given, {"train.distributed": mode}, "test")
    folds.run(cfg)
    capfd.readouterr()
    launch.run(cfg, gpus="0,1")
    return single, json.loads((tmp_path / "two/runs/tiny/tiny/cv.json").read_text()), capfd.readouterr().out


def test_ddp_on_two_processes_trains_every_fold_and_the_full_fit_and_rank_0_alone_speaks(
    blobs_dir, tmp_path, monkeypatch, capfd
):
    """The plumbing; that its steps are one process's is the next test's (here each rank's
    BatchNorm sees half the batch, so the two runs differ)."""
    single, ddp, out = one_then_two_processes(blobs_dir, tmp_path, monkeypatch, capfd, "ddp")
    assert "train on 2 CPU processes (GPUS=0,1, train.device=cpu): ddp" in out
    assert ddp["fold_ids"] == single["fold_ids"] and ddp["epochs"] == single["epochs"]
    assert out.count("fold 0 epoch 6 ") == 1  # rank 1 printed nothing
    metrics = pd.read_csv(tmp_path / "two/runs/tiny/tiny/fold0/metrics.csv")
    assert list(metrics["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "two/runs/tiny/tiny/full/model.pt").exists()
    assert not list((tmp_path / "two/runs").rglob("*.tmp"))
    changed = blobs_config(blobs_dir, distributed="ddp", epochs=2)  # every fold stale: rank 0 alone removes it
    launch.run(changed, gpus="0,1")
    assert list(pd.read_csv(tmp_path / "two/runs/tiny/tiny/fold1/metrics.csv")["epoch"]) == [1, 2]


def test_ddp_takes_the_steps_one_process_takes(blobs_dir, tmp_path, monkeypatch, capfd):
    """With nothing random but the data order (no augmentation, mixup or dropout), no BatchNorm
    (test_convnext: LayerNorm) and the whole fold in one batch, a DDP step over 2 ranks is one
    process's step: the same weights and predictions to float rounding. Broken sharding, global
    batch or gradient averaging each move them far more."""
    steps = {
        "model.name": "test_convnext",
        "aug.p": 0.0,
        "aug.hflip": 0.0,
        "aug.rotate": 0.0,
        "aug.shift": 0.0,
        "train.mixup_alpha": 0.0,
        "train.cutmix_alpha": 0.0,
        "train.batch_size": 48,  # each fold's 48 training rows: one step an epoch
        "train.epochs": 3,
        "train.full_fit": False,
    }
    single, ddp, out = one_then_two_processes(blobs_dir, tmp_path, monkeypatch, capfd, "ddp", steps)
    assert "ddp" in out
    for k in (0, 1):
        one, two = (torch.load(tmp_path / run / f"runs/tiny/tiny/fold{k}/model.pt") for run in ("one", "two"))
        for name, weights in one["state_dict"].items():
            torch.testing.assert_close(two["state_dict"][name], weights, rtol=1e-4, atol=1e-5, msg=name)
    oof = [pd.read_csv(tmp_path / run / "runs/tiny/tiny/fold0/oof.csv") for run in ("one", "two")]
    pd.testing.assert_frame_equal(oof[0], oof[1], rtol=1e-4)


def test_a_fold_per_process_gives_the_sequential_cv(blobs_dir, tmp_path, monkeypatch, capfd):
    single, parallel, out = one_then_two_processes(blobs_dir, tmp_path, monkeypatch, capfd, "folds")
    assert "train on 2 CPU processes (GPUS=0,1, train.device=cpu): folds" in out
    assert parallel["folds"] == pytest.approx(single["folds"], abs=1e-6)
    assert parallel["best_epochs"] == single["best_epochs"]


def test_only_rank_0_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    write_text(tmp_path / "cv.json", "{}")
    assert not list(tmp_path.iterdir())
    monkeypatch.setenv("RANK", "0")
    write_text(tmp_path / "cv.json", "{}")
    assert (tmp_path / "cv.json").read_text() == "{}"


def test_the_launch_mode_follows_the_dataset():
    assert distributed.launch_mode("auto", 5_000, 4) == "folds" and distributed.launch_mode("auto", 50_000, 4) == "ddp"
    assert distributed.launch_mode("ddp", 5_000, 4) == "ddp" and distributed.launch_mode("ddp", 50_000, 1) == "folds"
    with pytest.raises(PipelineError, match=r"GPUS='0,x'"):
        distributed.parse_gpus("0,x")


def test_the_global_batch_must_divide_among_the_ranks(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert distributed.rank_batch(66) == 22
    with pytest.raises(PipelineError, match=r"train.batch_size=64 is the global batch .* among 3 processes"):
        distributed.rank_batch(64)


def test_ddp_refuses_a_batch_that_does_not_divide_before_starting(blobs_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = blobs_config(blobs_dir, distributed="ddp")
    folds.run(cfg)
    with pytest.raises(PipelineError, match=r"train.batch_size=8 is the global batch .* among 3 processes"):
        launch.run(cfg, gpus="0,1,2")


def test_a_time_budget_on_several_gpus_is_refused_before_anything_starts(blobs_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = blobs_config(blobs_dir, time_budget="20m")
    with pytest.raises(PipelineError, match=r"train.time_budget=20m plans the fits of one process .* GPUS=0,1"):
        launch.run(cfg, gpus="0,1")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("gpus_here", "refused"), [(0, "this machine has no CUDA GPU"), (2, "this machine has 2 (GPUS=0 to 1)")]
)
def test_gpus_the_machine_lacks_are_refused_naming_what_it_has(monkeypatch, gpus_here, refused):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus_here)
    with pytest.raises(PipelineError, match=rf"^GPUS=0,2: GPU [02] does not exist, {re.escape(refused)}; leave GPUS"):
        distributed.devices("auto", ["0", "2"])
    assert distributed.devices("cpu", ["0", "2"]).startswith("2 CPU processes")
