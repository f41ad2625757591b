"""The three shapes Kaggle ships masks in, read into one canonical table of run-length codes."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_image
from PIL import Image

from pipeline import config as C
from pipeline.data import masks, rle
from pipeline.errors import PipelineError

SHAPE = (12, 10)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Mask folders' codes kept under tmp_path, not in the home folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def layout(folder: Path, **keys) -> C.ImageCsv:
    return C.ImageCsv(layout="image_csv", dir=folder, **keys)


def decoded(code: str) -> np.ndarray:
    return rle.decode(code, SHAPE, "column", "test")


def table_of(frame: pd.DataFrame, folder: Path, **keys) -> tuple[pd.DataFrame, list[str]]:
    return masks.training_table(frame, layout(folder, **keys), folder / "train.csv")


def test_a_code_column_beside_the_id_is_read_as_it_is_with_empty_cells_empty(tmp_path):
    frame = pd.DataFrame({"id": ["a", "b", "c"], "rle_mask": ["1 5", np.nan, " -1 "], "depth": [1, 2, 3]})
    table, targets = table_of(frame, tmp_path, label_columns=["rle_mask"])
    assert targets == ["rle_mask"]
    assert table["rle_mask"].tolist() == ["1 5", "", ""]
    assert table["depth"].tolist() == [1, 2, 3]


def test_a_row_per_image_and_class_gives_a_column_per_class_and_empty_masks_to_images_without_rows(tmp_path, rng):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write_image(tmp_path / "train" / name, rng, SHAPE)
    frame = pd.DataFrame(
        {"ImageId": ["a.jpg", "a.jpg", "c.jpg"], "ClassId": [3, 1, 3], "EncodedPixels": ["1 4", "9 2", "5 5"]}
    )
    table, targets = table_of(
        frame, tmp_path, id_column="ImageId", label_columns=["EncodedPixels"], class_column="ClassId"
    )
    assert targets == ["1", "3"]
    assert table.to_dict("list") == {
        "ImageId": ["a.jpg", "b.jpg", "c.jpg"],
        "1": ["9 2", "", ""],
        "3": ["1 4", "", "5 5"],
    }


def test_a_row_per_object_adds_to_its_images_mask(tmp_path, rng):
    objects = ["1 3 20 5", "3 4 40 2", "25 10", "-1"]
    frame = pd.DataFrame({"ImageId": ["a", "a", "a", "b"], "EncodedPixels": objects})
    table, targets = table_of(frame, tmp_path, id_column="ImageId", label_columns=["EncodedPixels"])
    assert targets == ["EncodedPixels"] and table["ImageId"].tolist() == ["a", "b"]
    expected = decoded(objects[0]) | decoded(objects[1]) | decoded(objects[2])
    assert np.array_equal(decoded(table["EncodedPixels"][0]), expected)
    assert table["EncodedPixels"][0] == rle.encode(expected, "column")  # touching runs merge into one
    assert table["EncodedPixels"][1] == ""


def test_the_union_of_random_codes_is_the_union_of_their_masks(rng):
    shape = (9, 11)
    drawn = rng.random((5, *shape)) < 0.3
    codes = [rle.encode(mask, "column") for mask in drawn]
    code = masks.union(codes, ["test"] * len(codes))
    assert np.array_equal(rle.decode(code, shape, "column", "test"), drawn.any(axis=0))


def test_a_mask_folder_is_read_as_codes_in_the_configured_order(tmp_path, rng):
    drawn = rng.random((2, *SHAPE)) < 0.5
    for name, mask in zip(("a", "b"), drawn, strict=True):
        (tmp_path / "masks").mkdir(exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "masks" / f"{name}.png")
    frame = pd.DataFrame({"id": ["a", "b"]})
    table, targets = table_of(frame, tmp_path, mask_dir="masks", rle_order="row")
    assert targets == ["mask"]
    for code, mask in zip(table["mask"], drawn, strict=True):
        assert np.array_equal(rle.decode(code, SHAPE, "row", "test"), mask)


@pytest.mark.parametrize(
    ("frame", "keys", "says"),
    [
        (
            pd.DataFrame({"ImageId": ["a", "a"], "EncodedPixels": ["1 3", "5 x"]}),
            {},
            "train.csv line 3, column 'EncodedPixels': the run-length code does not parse: 'x'",
        ),
        (
            pd.DataFrame({"ImageId": ["a", "b"], "EncodedPixels": ["1 3", "5 2 4 1"]}),
            {},
            "train.csv line 3, column 'EncodedPixels': the run-length code overlaps itself",
        ),
        (
            pd.DataFrame({"ImageId": ["a.jpg", "z.jpg"], "ClassId": [1, 2], "EncodedPixels": ["1 3", "5 2"]}),
            {"class_column": "ClassId"},
            "train.csv line 3: id 'z.jpg' has no training image",
        ),
        (
            pd.DataFrame({"ImageId": ["a", "a"], "ClassId": [1, 1]}),
            {"class_column": "ClassId"},
            "missing column(s) 'EncodedPixels'",
        ),
    ],
)
def test_a_bad_mask_table_is_one_line_naming_the_row(tmp_path, rng, frame, keys, says):
    write_image(tmp_path / "train" / "a.jpg", rng, SHAPE)
    with pytest.raises(PipelineError) as caught:
        table_of(frame, tmp_path, id_column="ImageId", label_columns=["EncodedPixels"], **keys)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_a_missing_mask_image_names_the_id(tmp_path):
    (tmp_path / "masks").mkdir()
    with pytest.raises(PipelineError, match="masks: no mask image for training id 'a'"):
        table_of(pd.DataFrame({"id": ["a"]}), tmp_path, mask_dir="masks")


def test_mask_keys_are_refused_for_a_task_without_masks():
    from conftest import make_config

    with pytest.raises(PipelineError, match="data.mask_dir says where masks are; a classification competition"):
        make_config({"layout": "image_csv", "mask_dir": "masks"}, "classification")


def test_a_class_in_its_own_column_and_joined_to_the_id_at_once_is_refused():
    from conftest import make_config

    with pytest.raises(PipelineError, match="both say where a row's mask class is: set one"):
        make_config({"layout": "image_csv", "class_column": "ClassId", "class_separator": "_"}, "segmentation")


# --- make init finds each shape --------------------------------------------------------------


@pytest.fixture
def segmentation_registered(monkeypatch):
    from pipeline import tasks
    from pipeline.tasks.segmentation import Segmentation

    monkeypatch.setitem(tasks._registered, "segmentation", Segmentation)


def images(folder: Path, names: list[str], rng) -> None:
    for name in names:
        write_image(folder / name, rng, SHAPE)


def test_init_finds_a_code_column_beside_images_in_a_nested_folder(tmp_path, rng, segmentation_registered):
    from pipeline.data import sources, survey

    images(tmp_path / "train" / "images", [f"t{i}.png" for i in range(6)], rng)
    images(tmp_path / "test" / "images", ["u0.png", "u1.png"], rng)
    long = " ".join(f"{start} 2" for start in range(1, 64, 4))  # 32 numbers: as long as a pixel string
    codes = [long, "", "3 4 20 2", "", "7 7", "1 5"]  # the first cell decides what a column looks like
    pd.DataFrame({"id": [f"t{i}" for i in range(6)], "rle_mask": codes}).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame({"id": ["u0", "u1"], "rle_mask": ""}).to_csv(tmp_path / "sample_submission.csv", index=False)
    pd.DataFrame({"id": ["u0", "u1"], "rle_mask": [long, ""]}).to_csv(tmp_path / "solution.csv", index=False)
    found = survey.survey(tmp_path)
    raw = found.raw()
    assert raw["competition"]["task"] == "segmentation"
    assert (raw["data"]["label_columns"], raw["data"]["train_dir"]) == (["rle_mask"], "train/images")
    assert raw["data"]["test_dir"] == "test/images"
    assert "1 mask class(es), run-length codes; of 6 images rle_mask: 2 empty" in found.found
    data = sources.read(C.validate(raw))
    assert data.targets == ["rle_mask"] and data.train.table["rle_mask"].tolist() == codes


def test_init_finds_a_row_per_image_and_class(tmp_path, rng, segmentation_registered):
    from pipeline.data import sources, survey

    images(tmp_path / "train_images", ["a.jpg", "b.jpg", "c.jpg"], rng)
    images(tmp_path / "test_images", ["d.jpg"], rng)
    table = {"ImageId": ["a.jpg", "a.jpg", "c.jpg"], "ClassId": [1, 3, 3], "EncodedPixels": ["1 4", "9 2", "5 5"]}
    pd.DataFrame(table).to_csv(tmp_path / "train.csv", index=False)
    sample = {"ImageId": ["d.jpg"], "EncodedPixels": ["1 1"], "ClassId": [1]}
    pd.DataFrame(sample).to_csv(tmp_path / "sample_submission.csv", index=False)
    raw = survey.survey(tmp_path).raw()
    assert raw["competition"]["task"] == "segmentation"
    assert (raw["data"]["label_columns"], raw["data"]["class_column"]) == (["EncodedPixels"], "ClassId")
    data = sources.read(C.validate(raw))
    assert data.targets == ["1", "3"] and len(data.train.table) == 3


def test_init_finds_a_folder_of_mask_images(tmp_path, rng, segmentation_registered):
    from pipeline.data import sources, survey

    ids = [f"car{i}" for i in range(4)]
    images(tmp_path / "train", [f"{i}.jpg" for i in ids], rng)
    images(tmp_path / "test", ["car9.jpg"], rng)
    (tmp_path / "train_masks").mkdir()
    for name in ids:
        Image.fromarray(square_mask()).save(tmp_path / "train_masks" / f"{name}_mask.gif")
    pd.DataFrame({"img": ids}).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame({"img": ["car9"]}).to_csv(tmp_path / "test.csv", index=False)
    raw = survey.survey(tmp_path).raw()
    assert raw["competition"]["task"] == "segmentation"
    assert (raw["data"]["mask_dir"], raw["data"]["label_columns"]) == ("train_masks", [])
    data = sources.read(C.validate(raw))
    assert data.targets == ["mask"] and (data.train.table["mask"] == rle.encode(square_mask(), "column")).all()


def square_mask() -> np.ndarray:
    mask = np.zeros(SHAPE, np.uint8)
    mask[2:6, 3:8] = 255
    return mask


def test_a_mask_folder_is_decoded_once_and_again_only_where_a_file_changed(tmp_path, rng, monkeypatch):
    (tmp_path / "masks").mkdir()
    for name in ("a", "b"):
        Image.fromarray(square_mask()).save(tmp_path / "masks" / f"{name}.png")
    decoded = []
    monkeypatch.setattr(
        masks, "read_mask", lambda path: decoded.append(path.name) or (np.asarray(Image.open(path)) > 0)
    )
    frame = pd.DataFrame({"id": ["a", "b"]})
    first, _ = table_of(frame, tmp_path, mask_dir="masks")
    again, _ = table_of(frame, tmp_path, mask_dir="masks")
    assert decoded == ["a.png", "b.png"] and again["mask"].tolist() == first["mask"].tolist()
    changed = np.zeros(SHAPE, np.uint8)
    changed[0, 0] = 255
    Image.fromarray(changed).save(tmp_path / "masks" / "b.png")
    os.utime(tmp_path / "masks" / "b.png", ns=(1, 1))  # a new time, whatever the clock's resolution
    third, _ = table_of(frame, tmp_path, mask_dir="masks")
    assert decoded == ["a.png", "b.png", "b.png"] and third["mask"].tolist() == [first["mask"][0], "1 1"]


def test_a_mask_of_another_size_than_its_image_names_both(tmp_path, rng):
    images(tmp_path / "train", ["a.png", "b.png"], rng)
    (tmp_path / "masks").mkdir()
    Image.fromarray(square_mask()).save(tmp_path / "masks" / "a.png")
    Image.fromarray(square_mask()[:-1]).save(tmp_path / "masks" / "b.png")  # a row short: no code runs past
    with pytest.raises(
        PipelineError, match=r"mask of training id 'b' is 11x10 \(height x width\), its image .*b.png is 12x10"
    ):
        table_of(pd.DataFrame({"id": ["a", "b"]}), tmp_path, mask_dir="masks")


def test_init_finds_ids_joined_with_their_class(tmp_path, rng, segmentation_registered):
    from pipeline.data import sources, survey

    images(tmp_path / "train_images", ["a.jpg", "b.jpg"], rng)
    images(tmp_path / "test_images", ["d.jpg", "e.jpg"], rng)
    keys = ["a.jpg_1", "a.jpg_2", "b.jpg_1", "b.jpg_2"]
    pd.DataFrame({"ImageId_ClassId": keys, "EncodedPixels": ["1 4", "", "", "5 5"]}).to_csv(
        tmp_path / "train.csv", index=False
    )
    sample = {"ImageId_ClassId": ["e.jpg_1", "e.jpg_2", "d.jpg_1", "d.jpg_2"], "EncodedPixels": ""}
    pd.DataFrame(sample).to_csv(tmp_path / "sample_submission.csv", index=False)
    raw = survey.survey(tmp_path).raw()
    assert (raw["competition"]["task"], raw["data"]["class_separator"]) == ("segmentation", "_")
    data = sources.read(C.validate(raw))
    assert data.targets == ["1", "2"] and data.train.table[["1", "2"]].to_numpy().tolist() == [["1 4", ""], ["", "5 5"]]
    assert data.test.table["id"].tolist() == ["e.jpg", "d.jpg"]


def test_a_sample_with_a_row_per_image_and_class_lists_each_test_image_once(tmp_path, rng, segmentation_registered):
    from pipeline.data import sources

    images(tmp_path / "train_images", ["a.jpg"], rng)
    images(tmp_path / "test_images", ["d.jpg", "e.jpg"], rng)
    pd.DataFrame({"ImageId": ["a.jpg"], "ClassId": [2], "EncodedPixels": ["1 4"]}).to_csv(
        tmp_path / "train.csv", index=False
    )
    sample = {"ImageId": ["e.jpg", "e.jpg", "d.jpg", "d.jpg"], "EncodedPixels": "1 1", "ClassId": [1, 2, 1, 2]}
    pd.DataFrame(sample).to_csv(tmp_path / "sample_submission.csv", index=False)
    keys = {"train_dir": "train_images", "test_dir": "test_images", "test_csv": None, "class_column": "ClassId"}
    severstal = layout(tmp_path, id_column="ImageId", label_columns=["EncodedPixels"], **keys)
    assert sources.read_image_csv(severstal, "segmentation").test.table["id"].tolist() == ["e.jpg", "d.jpg"]
