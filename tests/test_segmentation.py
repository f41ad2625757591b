"""The segmentation task: its targets, strata, items, loss, metrics and post-processing."""

from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_report import nonblank_png, referenced_images

from pipeline.augment import transforms
from pipeline.cli import main
from pipeline.data import rle
from pipeline.learn.loader import ImageDataset
from pipeline.records import CV
from pipeline.tasks import mask_rules
from pipeline.tasks.segmentation import Segmentation

SHAPE = (20, 30)  # an image file's (height, width)


class Store(list):
    """Images as an image store serves them, with their files' sizes."""

    def __init__(self, images: list[np.ndarray], originals: list[tuple[int, int]]):
        super().__init__(images)
        self.original_sizes = np.array(originals)


def square(top: int, left: int, side: int, shape=SHAPE) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[top : top + side, left : left + side] = 1
    return mask


def test_codes_columns_are_claimed_and_detected_and_labels_are_not():
    table = pd.DataFrame({"id": ["a", "b", "c"], "rle": ["1 3 10 2", "", "5 1"], "kind": ["x", "y", "x"]})
    assert Segmentation.claim_columns(table, ["rle", "kind"]) == ["rle"]
    assert "run-length codes" in Segmentation.detect("image_csv", ["rle"], table)
    assert Segmentation.detect("image_csv", ["kind"], table) is None
    numbers = pd.DataFrame({"v": ["3 1", "2 1"]})  # decreasing starts within a cell would not be a code
    assert Segmentation.claim_columns(numbers, ["v"]) == ["v"]


def test_strata_share_out_empty_images_and_small_and_large_masks():
    codes = ["", "1 2", "1 20", "", "1 200", "1 3", "1 25", "1 300", ""]
    strata = Segmentation.strata(pd.DataFrame({"m": codes}), ["m"])
    assert strata.tolist() == ["0", "1-0", "1-1", "0", "1-2", "1-0", "1-1", "1-2", "0"]
    two = Segmentation.strata(pd.DataFrame({"a": ["", "1 2"], "b": ["4 4", ""]}), ["a", "b"])
    assert two.tolist() == ["01", "10"]


def dataset(task: Segmentation, augment, side: int = 40) -> ImageDataset:
    """One image whose pixels are its mask drawn white, cached at twice its file's size."""
    mask = square(4, 6, 8)
    cached = np.repeat(np.repeat(mask * 255, 2, axis=0), 2, axis=1)[..., None].astype(np.uint8)
    codes = np.array([[rle.encode(mask, "column")]], dtype=object)
    store = Store([cached], [SHAPE])
    return ImageDataset(store, np.array([0]), codes, augment, transforms.finish(side), task)


@pytest.mark.parametrize("flip", [False, True])
def test_an_item_is_the_image_and_its_mask_at_the_model_side_moved_together(flip):
    augment = A.Compose([A.HorizontalFlip(p=1.0)], seed=0) if flip else None
    image, mask, size = dataset(Segmentation(["m"]), augment)[0]
    assert image.shape == (1, 40, 40) and mask.shape == (1, 40, 40) and mask.dtype == torch.uint8
    assert torch.equal(image[0] > 127, mask[0] > 0) and 0 < (mask > 0).sum() < 40 * 40 / 4 and mask.max() == 255
    columns = torch.nonzero(mask[0])[:, 1].float().mean()  # the square lies in the file's left third
    assert (columns > 20) if flip else (columns < 20)
    assert size.tolist() == list(SHAPE)


def test_resident_masks_are_resized_as_the_resident_images():
    task = Segmentation(["a", "b"])
    codes = np.array([[rle.encode(square(0, 0, 10), "column"), ""]], dtype=object)
    masks = task.device_targets(codes, np.array([SHAPE]), 10)
    assert masks.shape == (1, 2, 10, 10)
    assert masks[0, 0, :5, :3].all() and masks[0, 0].sum() == 5 * 3 * 255  # 10 of 20 rows, 10 of 30 columns, 0-255
    assert not masks[0, 1].any()


@pytest.mark.parametrize("loss", Segmentation.LOSSES)
def test_every_loss_is_lower_for_the_right_logits(loss):
    task = Segmentation(["m"], loss=loss)
    target = torch.from_numpy(square(2, 2, 6, (12, 12)))[None, None]
    right, wrong = (target.float() * 2 - 1) * 4, (1 - target.float() * 2) * 4
    target = target * 255  # the loader's 0-255 maps (tasks.mask_targets)
    assert task.loss(right, target) < task.loss(wrong, target)


def test_metrics_count_empty_against_empty_as_right():
    task = Segmentation(["a", "b"])
    truth = np.zeros((2, 2, 8, 8), np.uint8)
    truth[0, 0, :4, :4] = 1
    metrics = task.metrics(truth.astype(np.float32), truth, np.full((2, 2), 8))
    assert metrics == {"dice": 1.0, "iou": 1.0, "empty_accuracy": 1.0}
    missed = task.metrics(np.zeros_like(truth, np.float32), truth, np.full((2, 2), 8))
    assert missed["dice"] == 0.75 and missed["empty_accuracy"] == 0.75


def test_the_fitted_post_processing_is_idempotent_and_scored_nested(rng):
    from test_mask_rules import blobs

    probability, truth = blobs(rng, 24)
    predictions, truth = probability[:, None], truth[:, None].astype(np.uint8)
    task = Segmentation(["m"])
    assert task.score(truth * 255, truth) == 1.0  # decided masks are 0/255: scored as masks, not as counts
    expected = np.mean(mask_rules.dice(probability >= 128, truth[:, 0] > 0))
    assert task.score(predictions, truth) == pytest.approx(expected)
    fitted = task.fit_decision(predictions, truth)
    assert fitted.rules[0] != task.rules[0]
    decided = fitted.decide(predictions)
    assert np.array_equal(fitted.decide(decided), decided)
    assert fitted.score(decided, truth) == fitted.score(predictions, truth) > task.score(predictions, truth)
    again = task.with_decision(fitted.decision())
    assert again.rules == fitted.rules and "post-processing m: threshold" in fitted.decision()["summary"]
    per_fold, pooled = task.held_out_scores(predictions, truth, np.arange(24) % 3)
    assert len(per_fold) == 3 and pooled <= fitted.score(predictions, truth)
    alone, _ = task.held_out_scores(predictions, truth, np.zeros(24))  # train.folds=[0]: no other rows
    assert alone == [task.score(predictions, truth)]


# --- the chain on the cells demo ----------------------------------------------------------------


def test_the_cells_demo_trains_predicts_and_scores_its_run_length_codes(cells_config, capsys):
    for stage in ("data", "folds", "train", "predict", "score"):
        assert main([stage, "-c", str(cells_config)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "post-processing rle_mask: threshold" in out and "the CV is nested" in out
    cv = CV.load(Path("runs/cells/cells/cv.json"))
    assert cv.metric == "dice" and "rules" in cv.last.decision
    oof = pd.read_csv(Path("runs/cells/cells/fold0/oof.csv"), keep_default_na=False)
    assert {"dice_rle_mask", "area_rle_mask", "predicted_area_rle_mask"} <= set(oof.columns)
    submitted = pd.read_csv(next(Path("submissions/cells").glob("*.csv")), keep_default_na=False)
    solution = pd.read_csv("data/cells/solution.csv", keep_default_na=False)
    assert list(submitted.columns) == ["id", "rle_mask"] and sorted(submitted["id"]) == sorted(solution["id"])
    for code in submitted["rle_mask"]:
        rle.decode(code, (64, 64), "column", "submission")  # every code fits its 64x64 image
    ledger = pd.read_csv("submissions/ledger.csv")
    assert ledger["cv_metric"].iloc[-1] == "dice" and 0 <= ledger["local_score"].iloc[-1] <= 1
    assert main(["report", "-c", str(cells_config)]) == 0, capsys.readouterr().err
    index = Path("runs/cells/report/index.html")
    images = referenced_images(index)
    assert {"masks_samples.png", "masks_worst.png", "dice_by_area.png"} <= set(images)
    assert all(nonblank_png(index.parent / name) for name in images)


def test_a_tta_view_of_a_mask_maps_back_onto_the_mask():
    from pipeline.augment.tta import apply_view, views

    mask = torch.from_numpy(square(10, 6, 12, (32, 32))).float()[None, None]
    for view in views(["hflip", "vflip", "shift:0.0625"]):
        back = Segmentation(["m"]).view_back(view, apply_view(view, mask))
        inside = (slice(None), slice(None), slice(4, -4), slice(4, -4))  # a shift leaves the border empty
        assert torch.allclose(back[inside], mask[inside], atol=1e-5), view


def test_two_experiments_of_different_sides_blend_teach_and_submit_with_tta(cells_config, capsys):
    for stage, extra in (
        ("data", []),
        ("folds", []),
        ("train", []),
        ("train", ["train.experiment=other", "train.lr=0.02", "model.image_size=48"]),
    ):
        assert main([stage, "-c", str(cells_config), *extra]) == 0, capsys.readouterr().err
    assert main(["blend", "-c", str(cells_config)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "nested CV" in out and "post-processing rle_mask" in out
    args = ["predict", "-c", str(cells_config), "predict.blend=blend", "predict.tta=[hflip]"]
    assert main(args) == 0, capsys.readouterr().err
    submitted = pd.read_csv(next(Path("submissions/cells").glob("*.csv")), keep_default_na=False)
    assert len(submitted) == 6 and list(submitted.columns) == ["id", "rle_mask"]
    student = ["train.experiment=student", "train.distill.teacher=blend", "train.pseudo_labels.teacher=blend"]
    assert main(["train", "-c", str(cells_config), *student, "train.pseudo_labels.soft=true"]) == 0
    out = capsys.readouterr().out
    assert "12 training rows learn from cells/fold1 + other/fold1" in out  # 32 px and 48 px maps, summed
    assert "6 of 6 unlabelled images join training labelled by cells/full + other/full (soft" in out


def test_a_code_past_its_image_is_one_line_from_make_data_naming_the_image(cells_config, capsys):
    assert main(["data", "-c", str(cells_config)]) == 0
    table = pd.read_csv("data/cells/train.csv", keep_default_na=False)
    table.loc[3, "rle_mask"] = "4090 10"  # a 64x64 image has 4096 pixels
    table.to_csv("data/cells/train.csv", index=False)
    capsys.readouterr()
    assert main(["data", "-c", str(cells_config)]) != 0
    error = capsys.readouterr().err.strip()
    assert "id 'tr0003', class 'rle_mask': the run-length code runs past the image" in error
    assert len(error.splitlines()) == 1


def relaid(table: pd.DataFrame, layout: str) -> pd.DataFrame:
    """The cells demo's `id,rle_mask` as Severstal lays a row per image and class out: class 1
    the cells, class 2 never present."""
    rows = pd.DataFrame(
        {
            "ImageId": np.repeat(table["id"].to_numpy(), 2),
            "EncodedPixels": [c for code in table["rle_mask"] for c in (code, "")],
            "ClassId": [1, 2] * len(table),
        }
    )
    if layout == "long":
        return rows
    return pd.DataFrame(
        {"ImageId_ClassId": rows["ImageId"] + "_" + rows["ClassId"].astype(str), **rows[["EncodedPixels"]]}
    )


@pytest.mark.parametrize(
    ("layout", "keys"),
    [
        ("long", ["data.id_column=ImageId", "data.class_column=ClassId"]),
        ("joined", ["data.id_column=ImageId_ClassId", "data.class_separator=_"]),
    ],
)
def test_severstals_layouts_train_and_submit_a_row_per_image_and_class(cells_config, capsys, layout, keys):
    assert main(["data", "-c", str(cells_config)]) == 0, capsys.readouterr().err
    for name in ("train.csv", "sample_submission.csv", "solution.csv"):
        path = Path("data/cells") / name
        relaid(pd.read_csv(path, keep_default_na=False), layout).to_csv(path, index=False)
    overrides = [*keys, "data.label_columns=[EncodedPixels]", "data.test_csv=null"]
    for stage in ("data", "folds", "train", "predict", "score"):
        assert main([stage, "-c", str(cells_config), *overrides]) == 0, capsys.readouterr().err
    assert "post-processing 1: threshold" in capsys.readouterr().out
    submitted = pd.read_csv(next(Path("submissions/cells").glob("*.csv")), keep_default_na=False)
    sample = pd.read_csv("data/cells/sample_submission.csv", keep_default_na=False)
    assert (
        list(submitted.columns) == list(sample.columns) and submitted.iloc[:, 0].tolist() == sample.iloc[:, 0].tolist()
    )
    ledger = pd.read_csv("submissions/ledger.csv")
    assert 0 <= ledger["local_score"].iloc[-1] <= 1


def test_the_search_over_freeze_depth_and_augmentations_and_the_lr_finder_run_on_masks(cells_config, capsys):
    space = {
        "model.freeze_depth": {"type": "int", "low": 0, "high": 2},
        "aug.rotate": {"type": "float", "low": 2, "high": 15, "optional": True},
    }
    tune = [f"tune.space={space}", "tune.n_trials=2", "tune.epochs=1", "tune.pruner=none", "train.full_fit=false"]
    for stage, extra in (("data", []), ("folds", []), ("tune", tune), ("lr-find", [])):
        assert main([stage, "-c", str(cells_config), *extra]) == 0, capsys.readouterr().err
    best = yaml.safe_load(Path("runs/cells/cells/tune/best.yaml").read_text())
    assert set(best) == {"model.freeze_depth", "aug.rotate"}
    assert "lr-find: steepest descent at lr" in capsys.readouterr().out


def test_the_test_images_join_training_under_a_teachers_masks_or_maps_and_a_student_distils_its_maps(
    cells_config, capsys
):
    for stage in ("data", "folds", "train"):
        assert main([stage, "-c", str(cells_config)]) == 0, capsys.readouterr().err
    student = ["train.experiment=student", "train.pseudo_labels.teacher=cells", "train.pseudo_labels.soft=false"]
    for stage in ("train", "predict"):
        assert main([stage, "-c", str(cells_config), *student]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    for fit, teacher in (("fold 0", "cells/fold0"), ("fold 1", "cells/fold1"), ("full", "cells/full")):
        assert f"{fit}: 6 of 6 unlabelled images join training labelled by {teacher} (hard" in out
    assert CV.load(Path("runs/cells/student/cv.json")).metric == "dice"
    soft = ["train.experiment=soft", "train.pseudo_labels.teacher=cells"]
    distilled = ["train.experiment=distilled", "train.distill.teacher=cells", "train.distill.temperature=3"]
    for student in (soft, distilled):
        assert main(["train", "-c", str(cells_config), *student]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "fold 0: 6 of 6 unlabelled images join training labelled by cells/fold0 (soft" in out
    assert "fold 1: 12 training rows learn from cells/fold1 (alpha 0.5, temperature 3.0)" in out
    assert "full: 24 training rows learn from cells/full" in out
    assert all(CV.load(Path(f"runs/cells/{name}/cv.json")).metric == "dice" for name in ("soft", "distilled"))
    online = ["train.experiment=online", "train.distill.teacher=cells", "train.distill.online=true"]
    assert main(["train", "-c", str(cells_config), *online]) != 0
    error = capsys.readouterr().err.strip()
    assert "train.distill.online=true is for classes and labels" in error and len(error.splitlines()) == 1
