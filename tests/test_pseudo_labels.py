"""train.pseudo_labels: the test images (or the scraped ones) join each fit's training rows under a
teacher's labels, fold k's from the teacher's fold-k model, so the CV stays honest."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import add_scraped, pixel_frame, run, tiny

from pipeline import config as C
from pipeline.data import rle
from pipeline.errors import PipelineError
from pipeline.learn import engine, plan, pseudo_labels
from pipeline.learn.device import Device, Normalise
from pipeline.paths import Paths
from pipeline.stages import train

DIGITS = {"layout": "pixel_columns", "sample_submission": None}
NO_AUG = {"rotate": 0, "shift": 0, "hflip": 0.0}


@pytest.fixture
def copies_dir(tmp_path):
    """48 noise images with arbitrary labels, and a test set that is every one of them again: a
    model learns a row's label only by having seen it, through the test copy or itself."""
    rng = np.random.default_rng(0)
    frame = pixel_frame(rng, 48, 1024, 255)
    folder = tmp_path / "copies"
    folder.mkdir()
    frame.to_csv(folder / "test.csv", index=False)
    frame.insert(0, "label", rng.permutation(np.arange(48) % 3))
    frame.to_csv(folder / "train.csv", index=False)
    return folder


def config(folder, experiment: str, epochs: int, **train_keys) -> C.Config:
    cfg = tiny({**DIGITS, "dir": str(folder)}, epochs=epochs, experiment=experiment, **train_keys)
    return C.with_overrides(cfg, {f"aug.{k}": v for k, v in NO_AUG.items()}, "test")


def memorising_teacher(folder, tmp_path, monkeypatch) -> dict:
    return run(config(folder, "teacher", epochs=12, lr=0.003), tmp_path, monkeypatch)


def test_a_memorising_teachers_labels_do_not_raise_the_students_cv(copies_dir, tmp_path, monkeypatch):
    """The teacher's full fit knows every training label, so its labels on the test copies tell
    each validation row's answer; its fold-k models know none of fold k's. Routed by fold, the
    student stays at chance; given the full fit's labels (the leak), it reads its answers."""
    teacher = memorising_teacher(copies_dir, tmp_path, monkeypatch)
    assert teacher["score"] < 0.6  # noise: the teacher itself cannot generalise
    student = config(copies_dir, "student", epochs=12, lr=0.003, pseudo_labels={"teacher": "teacher", "soft": False})
    honest = run(student, tmp_path, monkeypatch)
    assert honest["score"] < 0.6

    full_fit_for_every_fold = pseudo_labels.Teacher.fits

    def leaking(self, paths, fold):
        return full_fit_for_every_fold(self, paths, None)

    monkeypatch.setattr(pseudo_labels.Teacher, "fits", leaking)
    leaked = run(C.with_overrides(student, {"train.experiment": "leaked"}, "test"), tmp_path, monkeypatch)
    assert leaked["score"] > 0.9  # the test is able to see a leak


def test_each_fold_learns_from_its_own_teacher_fold_and_the_full_fit_from_the_teachers(
    digits_dir, tmp_path, monkeypatch, capsys
):
    run(config(digits_dir, "teacher", epochs=1), tmp_path, monkeypatch)
    capsys.readouterr()
    student = config(digits_dir, "student", epochs=1, pseudo_labels={"teacher": "teacher", "weight": 2.0})
    run(student, tmp_path, monkeypatch)
    out = capsys.readouterr().out
    for fit, teacher in (("fold 0", "teacher/fold0"), ("fold 1", "teacher/fold1"), ("full", "teacher/full")):
        assert f"{fit}: 5 of 5 unlabelled images join training labelled by {teacher} (soft" in out


def test_a_retrained_teacher_retrains_the_student(digits_dir, tmp_path, monkeypatch, capsys):
    run(config(digits_dir, "teacher", epochs=1), tmp_path, monkeypatch)
    student = config(digits_dir, "student", epochs=1, pseudo_labels={"teacher": "teacher"})
    run(student, tmp_path, monkeypatch)
    capsys.readouterr()
    run(student, tmp_path, monkeypatch)
    assert "fold 0: finished before" in capsys.readouterr().out
    run(config(digits_dir, "teacher", epochs=2), tmp_path, monkeypatch)
    capsys.readouterr()
    run(student, tmp_path, monkeypatch)
    assert "fold 0: the config changed since it was trained" in capsys.readouterr().out


def test_scraped_images_are_relabelled_in_place_of_their_scraped_labels(digits_dir, tmp_path, monkeypatch, rng):
    add_scraped(digits_dir, rng)
    run(config(digits_dir, "teacher", epochs=1), tmp_path, monkeypatch)
    student = config(digits_dir, "student", epochs=1, pseudo_labels={"teacher": "teacher", "rows": "both"})
    setup, folds = plan.prepare(student, Paths.of(student))
    setup = pseudo_labels.prepare(setup, folds, Paths.of(student))
    scraped = np.flatnonzero(folds["fold"] == -1)
    training = np.flatnonzero(folds["fold"] != 0)  # fold 1's rows and the scraped ones
    joined, rows = pseudo_labels.join(setup, training, 0, "fold 0")
    assert len(scraped) == 4 and not np.isin(scraped, rows).any()  # their scraped labels no longer train
    pseudo = rows[rows >= len(folds)]
    assert len(pseudo) == 5 + 4 and joined.targets.shape == (len(folds) + 9, 3)  # soft: every target a row
    assert np.array_equal(joined.rows[-4:], setup.rows[scraped])  # the same images, under the teacher's labels
    assert np.allclose(joined.targets[-9:].sum(axis=1), 1.0)
    assert joined.targets[np.flatnonzero(folds["fold"] == 1)].max(axis=1).min() == 1.0  # labels: one-hot, unsmoothed


def test_min_confidence_keeps_the_rows_the_teacher_is_sure_of(digits_dir, tmp_path, monkeypatch, capsys):
    run(config(digits_dir, "teacher", epochs=1), tmp_path, monkeypatch)
    capsys.readouterr()
    student = config(digits_dir, "student", epochs=1, pseudo_labels={"teacher": "teacher", "min_confidence": 0.99})
    run(student, tmp_path, monkeypatch)
    assert "fold 0: 0 of 5 unlabelled images join training" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("teacher", "message"),
    [
        ("student", "teacher=student is this experiment"),
        ("nobody", "experiment nobody has not trained"),
    ],
)
def test_a_teacher_that_cannot_teach_is_refused_before_any_fit(digits_dir, tmp_path, monkeypatch, teacher, message):
    student = config(digits_dir, "student", epochs=1, pseudo_labels={"teacher": teacher})
    with pytest.raises(PipelineError, match=message):
        run(student, tmp_path, monkeypatch)
    assert not (tmp_path / "runs/tiny/student/fold0").exists()


def test_a_teacher_trained_on_other_folds_is_refused(digits_dir, tmp_path, monkeypatch):
    run(config(digits_dir, "teacher", epochs=1), tmp_path, monkeypatch)
    folds_csv = tmp_path / Paths.of(config(digits_dir, "teacher", epochs=1)).folds_csv
    folds = pd.read_csv(folds_csv)
    folds["fold"] = 1 - folds["fold"]
    folds.to_csv(folds_csv, index=False)
    student = config(digits_dir, "student", epochs=1, pseudo_labels={"teacher": "teacher"})
    with pytest.raises(PipelineError, match="teacher was trained on other folds"):
        train.run(student)  # `make folds` refuses to remake them under a trained experiment; by hand, train does


def test_a_student_trains_the_folds_its_teacher_trained(digits_dir, tmp_path, monkeypatch, capsys):
    """A teacher the time budget stopped after some folds teaches those folds: the student plans
    them alone, where it would have trained the others first and failed at the first it lacks."""
    run(config(digits_dir, "teacher", epochs=1, folds=[1]), tmp_path, monkeypatch)
    capsys.readouterr()
    cv = run(config(digits_dir, "student", epochs=1, distill={"teacher": "teacher"}), tmp_path, monkeypatch)
    assert "train.distill.teacher=teacher trained folds [1] alone: the student trains those" in capsys.readouterr().out
    assert cv["fold_ids"] == [1]
    named_keys = {"experiment": "named", "distill": {"teacher": "teacher"}, "folds": [0, 1]}
    named = tiny({**DIGITS, "dir": str(digits_dir)}, epochs=1, **named_keys)  # model.pretrained left to decide
    with pytest.raises(PipelineError, match=r"teacher=teacher has no model of fold 0, one of the folds \[0, 1\]"):
        run(named, tmp_path, monkeypatch)
    assert not (tmp_path / "runs/tiny/named").exists()  # nothing written, its pretrained source neither


def test_soft_labels_with_mixup_mix_the_targets_as_the_images():
    cfg = C.Train(mixup_alpha=1.0, batch_size=4)
    np.random.seed(0)
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 2, 2).clone()
    targets = torch.eye(3)[[0, 1, 2, 0]] * 0.8 + 0.2 / 3
    mixed, mixed_targets = engine.create_mixup(cfg, 3, soft_targets=True)(images.clone(), targets)
    share = mixed[:, 0, 0, 0] - images.flip(0)[:, 0, 0, 0]  # lam * (x_i - x_flip(i))
    lam = share[0] / (images[0, 0, 0, 0] - images[3, 0, 0, 0])
    assert 0 < lam < 1
    assert torch.allclose(mixed_targets, lam * targets + (1 - lam) * targets.flip(0), atol=1e-6)
    assert torch.allclose(mixed_targets.sum(dim=1), torch.ones(4))


def test_the_joined_rows_are_weighted_by_repeats_and_a_seeded_share():
    weighted = pseudo_labels._weighted(np.arange(10), 1.5, seed=0)
    assert len(weighted) == 15 and set(weighted) == set(range(10))
    assert np.array_equal(weighted, pseudo_labels._weighted(np.arange(10), 1.5, seed=0))


def test_regression_refuses_a_confidence_it_does_not_have():
    from pipeline import tasks

    regression = tasks.get("regression")(["y"])
    with pytest.raises(PipelineError, match="min_confidence=0.5: a regression model's predictions carry no"):
        regression.check_pseudo_labels(0.5, soft=True)


# --- train.distill -------------------------------------------------------------------------------


@pytest.mark.parametrize("online", [True, False])
def test_each_fold_distils_from_its_own_teacher_fold(digits_dir, tmp_path, monkeypatch, capsys, online):
    """Online (the default for classes) each fit loads its teacher's models and they predict its
    batches; else the teacher predicts each training image once, before the fit."""
    teacher = C.with_overrides(config(digits_dir, "teacher", epochs=1), {"model.image_size": 48}, "test")
    run(teacher, tmp_path, monkeypatch)  # at 48 px, where the student learns at 32
    capsys.readouterr()
    settings = {"teacher": "teacher", "alpha": 0.7, **({} if online else {"online": False})}
    cv = run(config(digits_dir, "student", epochs=1, distill=settings), tmp_path, monkeypatch)
    out = capsys.readouterr().out
    for fit, teacher in (("fold 0", "teacher/fold0"), ("fold 1", "teacher/fold1"), ("full", "teacher/full")):
        said = f"{fit}: {36 if fit == 'full' else 18} training rows learn from {teacher} (alpha 0.7, temperature 2.0"
        assert f"{said}{', online' if online else ')'}" in out
    assert len(cv["folds"]) == 2 and 0.0 <= cv["score"] <= 1.0  # validated on the labels, as any fit


def test_an_online_teacher_reads_the_students_batch_at_its_own_side_and_normalisation():
    from pipeline import tasks
    from pipeline.config import Distill
    from pipeline.learn.distillation import Member, OnlineTeacher

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    own, student = Normalise((0.5, 0.4, 0.3), (0.2, 0.25, 0.3)), Normalise((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    pixels = torch.randint(0, 256, (4, 3, 16, 16)).float()
    batch = student(pixels.clone())
    seen_by_teacher = own(torch.nn.functional.interpolate(pixels, size=(24, 24), mode="bilinear").clone())
    member = Member.of(model, 1.0, 24, own, student)
    assert torch.allclose(member.logits(batch), model(seen_by_teacher), atol=1e-4)

    task = tasks.get("classification")([0, 1, 2], distill=Distill(teacher="t", temperature=2.0))
    target = torch.tensor(task.untaught_targets(np.array([0, 1, 2, 0])))
    taught = OnlineTeacher([member], task, 2.0, Device.choose(C.Train(device="cpu")))(batch, target)
    probabilities = torch.softmax(model(seen_by_teacher), dim=1).detach().numpy()
    assert torch.equal(taught[:, :3], target[:, :3])  # the label half stays
    assert np.allclose(taught[:, 3:].numpy(), task.softened(probabilities, 2.0), atol=1e-5)


def test_the_teacher_sees_the_batch_the_student_trains_on_mixed():
    from pipeline import tasks
    from pipeline.config import Distill

    task, seen = tasks.get("classification")([0, 1, 2], distill=Distill(teacher="t")), {}
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    model.register_forward_pre_hook(lambda _, args: seen.setdefault("student", args[0].clone()))

    def teacher(images, target):
        seen["teacher"] = images.clone()
        return target

    cfg = C.Train(mixup_alpha=1.0, batch_size=4, device="cpu")
    state = engine.Step(torch.optim.SGD(model.parameters(), lr=0.1), torch.amp.GradScaler(enabled=False), cfg, 1)
    state.mixup, state.teacher = engine.create_mixup(cfg, 3, soft_targets=True), teacher
    targets = torch.tensor(task.untaught_targets(np.array([0, 1, 2, 0])))
    batches = [(torch.rand(4, 3, 2, 2), targets, torch.zeros(4, 2))]
    engine.train_one_epoch(model, batches, task, state, Device.choose(cfg))
    assert torch.equal(seen["teacher"], seen["student"])  # mixed once, then taught and trained alike


def test_a_taught_target_is_the_label_beside_the_softened_teacher():
    from pipeline import tasks

    classes = tasks.get("classification")([0, 1, 2])
    teacher = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    labels = np.array([0, 1])
    plain = classes.distilled_targets(labels, teacher, alpha=0.5, temperature=1.0)
    assert plain.shape == (2, 6) and np.allclose(plain, np.hstack([np.eye(3)[[0, 1]], teacher]))
    hot = classes.distilled_targets(labels, teacher, alpha=0.5, temperature=1e6)
    assert np.allclose(hot[:, 3:], 1 / 3, atol=1e-4)  # a high temperature says nothing but the classes
    untaught = classes.untaught_targets(labels)
    assert np.allclose(untaught, np.hstack([np.eye(3)[[0, 1]]] * 2))
    assert classes.metrics(np.eye(3)[[0, 2]], untaught)["accuracy"] == 0.5  # scored on the label half


def _gradient(task, outputs: np.ndarray, target: np.ndarray) -> np.ndarray:
    import torch

    logits = torch.tensor(outputs, dtype=torch.float32, requires_grad=True)
    task.loss(logits, torch.tensor(target, dtype=torch.float32)).backward()
    return logits.grad.numpy()


@pytest.mark.parametrize("name", ["classification", "multilabel"])
def test_a_student_learns_the_teachers_own_confidence_not_its_softened_one(name):
    """Hinton's loss is still where the student's outputs are the teacher's, at T = 1: the
    student softens its own outputs as the teacher's were. A student that learnt the softened
    teacher as its target would settle on the softened, less sure, probabilities."""
    from pipeline import tasks
    from pipeline.config import Distill

    task = tasks.get(name)(["a", "b", "c"], distill=Distill(teacher="t", alpha=1.0, temperature=3.0))
    teacher = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]) if name == "classification" else np.array([[0.9, 0.2, 0.6]])
    logits = np.log(teacher) if name == "classification" else np.log(teacher / (1 - teacher))
    labels = np.zeros(len(teacher), dtype=np.int64) if name == "classification" else np.ones_like(teacher)
    target = task.distilled_targets(labels, teacher, alpha=1.0, temperature=3.0)
    assert np.allclose(_gradient(task, logits, target), 0.0, atol=1e-6)
    softened_logits = np.log(target[:, 3:]) if name == "classification" else logits / 3.0
    assert np.abs(_gradient(task, softened_logits, target)).max() > 1e-3


def test_the_students_loss_weighs_the_teachers_term_by_alpha_and_t_squared():
    import torch
    import torch.nn.functional as F

    from pipeline import tasks
    from pipeline.config import Distill

    task = tasks.get("classification")([0, 1, 2], distill=Distill(teacher="t", alpha=0.25, temperature=2.0))
    teacher, labels = np.array([[0.7, 0.2, 0.1]]), np.array([1])
    outputs = torch.tensor([[0.3, -1.0, 2.0]])
    taught = torch.tensor(task.distilled_targets(labels, teacher, alpha=0.25, temperature=2.0))

    def hinton(teacher_half: torch.Tensor) -> torch.Tensor:
        softened_student = F.log_softmax(outputs / 2.0, dim=1)
        label_term = F.cross_entropy(outputs, torch.tensor(labels))
        kl = (torch.xlogy(teacher_half, teacher_half) - teacher_half * softened_student).sum()
        return 0.75 * label_term + 0.25 * 4.0 * kl

    assert torch.isclose(task.loss(outputs, taught), hinton(taught[:, 3:]))
    at_teacher = torch.log(taught[:, 3:]) * 2.0  # the student's outputs softened at T are the teacher's
    label_term = 0.75 * F.cross_entropy(at_teacher, torch.tensor(labels))
    assert torch.isclose(task.loss(at_teacher, taught), label_term, atol=1e-6)  # KL, not cross entropy: 0 there
    untaught = torch.tensor(task.untaught_targets(labels))  # the label stands for the teacher
    assert torch.isclose(task.loss(outputs, untaught), hinton(untaught[:, 3:]))


def test_pseudo_labelled_rows_join_a_students_targets_with_their_label_in_both_halves():
    from pipeline import tasks
    from pipeline.config import Distill

    classes = tasks.get("classification")([0, 1, 2], distill=Distill(teacher="t"))
    taught = classes.distilled_targets(np.array([0]), np.array([[0.6, 0.3, 0.1]]), alpha=0.5, temperature=2.0)
    joined = classes.joined_targets(taught, np.array([[0.2, 0.7, 0.1]], dtype=np.float32))
    assert joined.shape == (2, 6) and np.allclose(joined[1], [0.2, 0.7, 0.1] * 2)


def test_a_missing_keypoint_takes_the_teachers_point():
    from pipeline import tasks

    points = tasks.get("keypoints")(["a_x", "a_y"])
    labels = np.array([[10.0, np.nan]], dtype=np.float32)
    distilled = points.distilled_targets(labels, np.array([[14.0, 6.0]]), alpha=0.25, temperature=2.0)
    assert np.allclose(distilled, [[11.0, 6.0]])


def test_a_segmentation_teacher_teaches_codes_or_maps_and_a_student_its_label_blended_with_the_softened_map():
    from pipeline import tasks
    from pipeline.tasks.mask_targets import cell_map

    masks = tasks.get("segmentation")(["m"])
    units = np.zeros((1, 1, 4, 4))
    units[0, 0, :2, :2] = 230.0
    codes = masks.pseudo_targets(units, soft=False, sizes=np.array([[8, 8]]))
    assert codes.shape == (1, 1) and rle.decode(codes[0, 0], (8, 8), "column", "test")[:4, :4].all()
    assert masks.pseudo_confidence(units)[0] == pytest.approx((4 * 230 + 12 * 255) / 16 / 255)
    maps = masks.pseudo_targets(units, soft=True, sizes=np.array([[8, 8]]))
    assert np.array_equal(cell_map(maps[0, 0], np.array([8, 8]), (4, 4), "column", "test"), units[0, 0])
    label = np.zeros((8, 8), np.uint8)
    label[:, :4] = 1  # the label's left half, the teacher's top-left quarter at 230
    labelled = np.array([[rle.encode(label, "column")]], dtype=object)
    taught = masks.distilled_targets(labelled, units, alpha=0.25, temperature=1.0)
    read = cell_map(taught[0, 0], np.array([8, 8]), (4, 4), "column", "test").astype(float)
    assert read[0, 0] == pytest.approx(0.75 * 255 + 0.25 * 230, abs=1) and read[3, 0] == pytest.approx(
        0.75 * 255, abs=1
    )
    assert read[0, 3] == 0  # neither the label's nor the teacher's
    hotter = masks.distilled_targets(labelled, units, alpha=1.0, temperature=4.0)[0, 0].teacher
    assert 128 < hotter[0, 0] < 230 and 0 < hotter[3, 3] < 128  # softened towards 0.5 at T = 4
    lovasz = tasks.get("segmentation")(["m"], loss="lovasz")
    with pytest.raises(PipelineError, match="train.pseudo_labels.soft=true: train.loss=lovasz learns 0/1 masks"):
        lovasz.check_pseudo_labels(0.0, soft=True)
    with pytest.raises(PipelineError, match="train.distill: train.loss=lovasz learns 0/1 masks"):
        lovasz.check_distill()
