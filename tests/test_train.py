import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import KEYPOINTS, add_scraped, run, run_killed_after, tiny

from pipeline import config as C
from pipeline.errors import PipelineError
from pipeline.learn import engine, plan
from pipeline.learn import fit as fit_module
from pipeline.paths import Paths
from pipeline.stages import folds, train


def test_classification_writes_oof_cv_and_full_model(digits_dir, tmp_path, monkeypatch):
    cfg = tiny(
        {"layout": "pixel_columns", "dir": str(digits_dir), "sample_submission": None},
        mixup_alpha=0.2,
        label_smoothing=0.1,
        ema_decay=0.9,
    )
    cv = run(cfg, tmp_path, monkeypatch)
    assert cv["metric"] == "accuracy" and len(cv["folds"]) == 2 and cv["best_epochs"] == [1, 1]
    assert 0.0 <= cv["score"] <= 1.0
    runs = tmp_path / "runs/tiny/tiny"
    oof = pd.concat([pd.read_csv(runs / f"fold{k}/oof.csv") for k in (0, 1)])
    assert sorted(oof["id"]) == list(range(1, 37))
    assert np.allclose(oof[["prob_0", "prob_1", "prob_2"]].sum(axis=1), 1.0, atol=1e-4)
    metrics = pd.read_csv(runs / "fold0/metrics.csv")
    assert {"train_loss", "valid_loss", "accuracy", "log_loss", "macro_f1", "lr", "images_per_s", "data_wait"} <= set(
        metrics
    )
    assert (metrics["data_wait"] > 0).all() and (metrics["data_wait"] < 1).all()
    assert (runs / "full/model.pt").exists() and not (runs / "fold0/last.pt").exists()


@pytest.mark.parametrize("device_aug", ["on", "off"])  # batched (auto's choice here), then per image
def test_keypoints_with_missing_points(faces_dir, tmp_path, monkeypatch, capsys, device_aug):
    cfg = tiny(
        {"layout": "pixel_string", "dir": str(faces_dir), "sample_submission": None, "lookup_table": None},
        task="keypoints",
        device_aug=device_aug,
    )
    cv = run(cfg, tmp_path, monkeypatch)
    said = capsys.readouterr()
    assert ("augmented there" in said.out) == (device_aug == "on")
    assert "it/s" not in said.err  # progress bars only on a terminal: logs stay readable
    assert cv["metric"] == "rmse" and cv["higher_is_better"] is False and np.isfinite(cv["score"])
    oof = pd.read_csv(tmp_path / "runs/tiny/tiny/fold0/oof.csv")
    assert [f"pred_{c}" for c in KEYPOINTS] == [c for c in oof.columns if c.startswith("pred_")]
    assert oof[[f"pred_{c}" for c in KEYPOINTS]].notna().all().all()
    metrics = pd.read_csv(tmp_path / "runs/tiny/tiny/fold0/metrics.csv")
    assert {"rmse", "acc_0.1", "acc_0.01"} <= set(metrics)


@pytest.mark.parametrize("device_aug", ["on", "off"])  # batched (auto's choice here), then per image
def test_killed_run_resumes_to_the_same_cv(digits_dir, tmp_path, monkeypatch, device_aug):
    data = {"layout": "pixel_columns", "dir": str(digits_dir), "sample_submission": None}
    cfg = tiny(data, epochs=2, full_fit=False, device_aug=device_aug)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    uninterrupted = run(cfg, tmp_path / "a", monkeypatch)

    run_killed_after(cfg, tmp_path / "b", monkeypatch, checkpoints=1)
    assert (tmp_path / "b/runs/tiny/tiny/fold0/last.pt").exists()
    resumed = run(cfg, tmp_path / "b", monkeypatch)
    assert resumed == uninterrupted
    history = pd.read_csv(tmp_path / "b/runs/tiny/tiny/fold0/metrics.csv")
    assert history["epoch"].tolist() == [1, 2]


def test_finished_folds_are_skipped_and_tuned_settings_merged(digits_dir, tmp_path, monkeypatch, capsys):
    cfg = tiny({"layout": "pixel_columns", "dir": str(digits_dir), "sample_submission": None}, full_fit=False)
    run(cfg, tmp_path, monkeypatch)
    train.run(cfg)
    assert capsys.readouterr().out.count("finished before") == 2
    (tmp_path / "runs/tiny/tiny/tune").mkdir()
    (tmp_path / "runs/tiny/tiny/tune/best.yaml").write_text(yaml.safe_dump({"train.lr": 0.002, "aug.rotate": 5.0}))
    train.run(cfg)
    out = capsys.readouterr().out
    assert "using the tuned settings" in out and "train.lr=0.002" in out and "training it again" in out
    resolved = yaml.safe_load((tmp_path / "runs/tiny/tiny/train.config.yaml").read_text())
    assert resolved["train"]["lr"] == 0.002 and resolved["aug"]["rotate"] == 5.0
    train.run(C.with_overrides(cfg, {"train.experiment": "copy", "train.tuned_from": "tiny"}, "test"))
    assert "using the tuned settings in runs/tiny/tiny/tune/best.yaml" in capsys.readouterr().out
    with pytest.raises(PipelineError, match="train.tuned_from=nowhere: runs/tiny/nowhere/tune/best.yaml does not"):
        train.run(C.with_overrides(cfg, {"train.tuned_from": "nowhere"}, "test"))


def test_a_fold_whose_weights_are_lost_or_damaged_trains_again(digits_dir, tmp_path, monkeypatch, capsys):
    from pipeline import cli
    from pipeline.stages import predict

    cfg = tiny({"layout": "pixel_columns", "dir": str(digits_dir), "sample_submission": None}, full_fit=False)
    run(cfg, tmp_path, monkeypatch)
    runs = tmp_path / "runs/tiny/tiny"
    (runs / "fold1/model.pt").unlink()
    with pytest.raises(PipelineError, match=r"fold1/model.pt does not exist: `make train` trains its fit again$"):
        predict.run(cfg)
    damaged = (runs / "fold0/model.pt").read_bytes()
    (runs / "fold0/model.pt").write_bytes(damaged[: len(damaged) // 2])
    stamp = Paths.of(cfg).stamp("train")
    cli.makevars(cfg, str(tmp_path / "vars.mk"))
    assert stamp.stat().st_mtime > (runs / "cv.json").stat().st_mtime  # Make sees train out of date
    capsys.readouterr()
    train.run(cfg)
    assert capsys.readouterr().out.count("is missing or does not load; training it again") == 2
    assert all(torch.load(runs / f"fold{k}/model.pt", weights_only=True) for k in (0, 1))
    train.run(cfg)
    assert capsys.readouterr().out.count("finished before") == 2


def test_experiments_live_side_by_side_on_shared_folds(digits_dir, tmp_path, monkeypatch, capsys):
    data = {"layout": "pixel_columns", "dir": str(digits_dir), "sample_submission": None}
    first, second = (tiny(data, full_fit=False, experiment=name) for name in ("first", "second"))
    run(first, tmp_path, monkeypatch)
    train.run(second)
    experiment = tmp_path / "runs/tiny/first"
    before = {p: p.read_bytes() for p in experiment.rglob("*") if p.is_file()}
    train.run(tiny(data, full_fit=False, experiment="second", lr=0.02))
    assert "training it again" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in experiment.rglob("*") if p.is_file()} == before
    assert Paths.of(first).experiments() == ["first", "second"]
    with pytest.raises(PipelineError, match="the experiments first, second validated on these folds"):
        folds.run(C.with_overrides(first, {"folds.seed": 7}, "test"))


def test_lr_find_sweeps_plots_and_suggests(digits_dir, tmp_path, monkeypatch, capsys):
    from pipeline.stages import lr_find

    lrs = np.logspace(-5, 0, 50)
    losses = 2.0 - np.tanh(np.log10(lrs) + 3) + np.where(lrs > 0.3, 5.0, 0.0)  # falls fastest at 1e-3
    assert lr_find.suggest(lrs, losses) == pytest.approx(1e-3, rel=0.3)
    cfg = tiny({"layout": "pixel_columns", "dir": str(digits_dir), "sample_submission": None})
    monkeypatch.chdir(tmp_path)
    folds.run(cfg)
    lr_find.run(cfg)
    curve = pd.read_csv(tmp_path / "runs/tiny/tiny/lr_find.csv")
    assert len(curve) > 5 and curve["lr"].is_monotonic_increasing
    assert (tmp_path / "runs/tiny/tiny/lr_find.png").stat().st_size > 1000
    assert "lr-find: steepest descent at lr" in capsys.readouterr().out


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_and_optimizer_options(digits_dir, tmp_path, monkeypatch, amp):
    """The autocast and loss-scaler path, run on the CPU; with SGD, cosine, accumulation,
    clipping, discriminative learning rates and a frozen stem that unfreezes."""
    cfg = tiny(
        {"layout": "pixel_columns", "dir": str(digits_dir), "sample_submission": None},
        epochs=2,
        full_fit=False,
        amp=amp,
        optimizer="sgd",
        scheduler="cosine",
        accumulate=2,
        clip_grad=1.0,
        layer_decay=0.7,
        head_lr_mult=5.0,
    )
    cfg.model.freeze_depth, cfg.model.unfreeze_epoch = 2, 2
    seen = spy_on_the_optimisation(monkeypatch)
    cv = run(cfg, tmp_path, monkeypatch)
    assert np.isfinite(cv["score"]) and len(cv["folds"]) == 2
    assert seen["loss_dtypes"] == {torch.bfloat16 if amp == "bf16" else torch.float16}  # autocast's outputs
    assert seen["scaler_enabled"] == {amp == "fp16"}  # loss scaling for fp16 only
    assert seen["optimizers"] == {"SGD"}
    # 18 training rows a fold in full batches of 8: 2 an epoch, one optimiser step for both (accumulate=2)
    assert seen["steps"] == 2 * 2 * 1 and seen["clipped"] == [1.0] * seen["steps"]
    lrs = pd.read_csv(tmp_path / "runs/tiny/tiny/fold0/metrics.csv")["lr"].to_numpy()
    expected = [cfg.train.lr * engine.lr_factor(step, 2, cfg.train, 1) for step in (0, 1)]  # each epoch's step
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)  # cosine: warmup then decay, not onecycle's


def spy_on_the_optimisation(monkeypatch) -> dict:
    """What training did: the dtype of the outputs the loss saw, whether the loss scaler was on,
    the optimiser, its steps and each step's gradient clipping."""
    from pipeline.tasks.classification import Classification

    seen = {"loss_dtypes": set(), "scaler_enabled": set(), "optimizers": set(), "steps": 0, "clipped": []}
    loss, step, clip = Classification.loss, torch.amp.GradScaler.step, torch.nn.utils.clip_grad_norm_

    def observed_loss(self, outputs, target):
        seen["loss_dtypes"].add(outputs.dtype)
        return loss(self, outputs, target)

    def observed_step(self, optimizer, *args, **kwargs):
        seen["scaler_enabled"].add(self.is_enabled())
        seen["optimizers"].add(type(optimizer).__name__)
        seen["steps"] += 1
        return step(self, optimizer, *args, **kwargs)

    def observed_clip(parameters, max_norm, **kwargs):
        seen["clipped"].append(max_norm)
        return clip(parameters, max_norm, **kwargs)

    monkeypatch.setattr(Classification, "loss", observed_loss)
    monkeypatch.setattr(torch.amp.GradScaler, "step", observed_step)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", observed_clip)
    return seen


def test_scraped_rows_train_but_never_validate(digits_dir, tmp_path, monkeypatch, rng):
    add_scraped(digits_dir, rng)
    cfg = tiny({"layout": "pixel_columns", "dir": str(digits_dir), "sample_submission": None}, full_fit=False)
    run(cfg, tmp_path, monkeypatch)
    fold_table = pd.read_csv(tmp_path / "runs/tiny/folds.csv")
    assert (fold_table["fold"] == -1).sum() == 4
    oof = pd.concat([pd.read_csv(tmp_path / f"runs/tiny/tiny/fold{k}/oof.csv") for k in (0, 1)])
    assert len(oof) == 36 and not oof["id"].astype(str).str.startswith("extra/").any()


def test_compile_wraps_the_model_that_trains(digits_dir, tmp_path, monkeypatch):
    """torch.compile'd for training; saved, validated and averaged (EMA) unwrapped."""
    monkeypatch.chdir(tmp_path)
    cfg = tiny({"layout": "pixel_columns", "dir": str(digits_dir), "sample_submission": None}, compile=True)
    folds.run(cfg)
    setup, _ = plan.prepare(cfg, Paths.of(cfg))
    parts = fit_module.assemble(setup, np.arange(20), np.arange(20, 36))
    assert isinstance(parts.trained, torch._dynamo.eval_frame.OptimizedModule)
    assert engine.unwrap(parts.trained) is parts.model


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ({"model.name": "resnet9000"}, "model.name='resnet9000' is not a timm model"),
        ({"model.pretrained": "file:missing.pth"}, "pretrained weights file missing.pth does not exist"),
    ],
)
def test_a_config_mistake_is_said_before_finished_folds_are_touched(digits_dir, tmp_path, monkeypatch, override, error):
    cfg = tiny({"layout": "pixel_columns", "dir": str(digits_dir), "sample_submission": None}, full_fit=False)
    run(cfg, tmp_path, monkeypatch)
    experiment = tmp_path / "runs/tiny/tiny"
    before = {p: p.read_bytes() for p in experiment.rglob("*") if p.is_file()}
    with pytest.raises(PipelineError, match=error):
        train.run(C.with_overrides(cfg, override, "test"))
    assert {p: p.read_bytes() for p in experiment.rglob("*") if p.is_file()} == before


def test_an_earlier_fit_is_replaced_only_once_its_successor_has_a_checkpoint(digits_dir, tmp_path, monkeypatch, capsys):
    cfg = tiny({"layout": "pixel_columns", "dir": str(digits_dir), "sample_submission": None}, full_fit=False)
    run(cfg, tmp_path, monkeypatch)
    fold0 = tmp_path / "runs/tiny/tiny/fold0"
    before = {p.name: p.read_bytes() for p in fold0.iterdir()}

    def stopped_before_a_checkpoint(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_module.engine, "train_one_epoch", stopped_before_a_checkpoint)
    changed = C.with_overrides(cfg, {"train.lr": 0.02}, "test")
    with pytest.raises(KeyboardInterrupt):
        train.run(changed)
    assert {p.name: p.read_bytes() for p in fold0.iterdir()} == before
    assert not (tmp_path / "runs/tiny/tiny/fold0.previous").exists()

    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    save = fit_module.save_checkpoint

    def killed_after_the_first_checkpoint(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "save_checkpoint", killed_after_the_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train.run(changed)
    assert (fold0 / "last.pt").exists() and not (fold0 / "result.json").exists()
    assert not (tmp_path / "runs/tiny/tiny/fold0.previous").exists()
    assert "fold0.previous until then" in capsys.readouterr().out


def test_a_full_disk_while_saving_a_checkpoint_is_one_line(digits_dir, tmp_path, monkeypatch):
    cfg = tiny({"layout": "pixel_columns", "dir": str(digits_dir), "sample_submission": None}, full_fit=False)

    def disk_full(*args, **kwargs):  # what torch's zip writer raises when the disk fills
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 3145728 vs 3145620")

    monkeypatch.setattr(fit_module.torch, "save", disk_full)
    with pytest.raises(PipelineError, match=r"model.pt could not be written \(\d+ MiB free on its disk\): \[enforce"):
        run(cfg, tmp_path, monkeypatch)
    assert not list((tmp_path / "runs").rglob("*.tmp"))  # nothing half-written left behind


def test_the_pretrained_source_decided_first_is_kept_whatever_the_hub_says_later(
    digits_dir, tmp_path, monkeypatch, capsys
):
    from pipeline.learn import defaults

    monkeypatch.chdir(tmp_path)
    cfg = tiny({"layout": "pixel_columns", "dir": str(digits_dir), "sample_submission": None})
    folds.run(cfg)
    monkeypatch.setattr(defaults, "hub_weights_available", lambda name: True)
    assert plan.prepare(cfg, Paths.of(cfg))[0].cfg.model.pretrained == "hub"
    monkeypatch.setattr(defaults, "hub_weights_available", lambda name: False)  # the network went away
    setup, _ = plan.prepare(cfg, Paths.of(cfg))
    assert setup.cfg.model.pretrained == "hub" and "test_resnet's source as an earlier run decided it" in (
        capsys.readouterr().out
    )
