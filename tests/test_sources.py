from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import KEYPOINTS, make_config, write_image

from pipeline.data import sources
from pipeline.data.images import ArraySource, FileSource
from pipeline.errors import PipelineError


def read(data: dict, task: str = "classification") -> sources.CompetitionData:
    return sources.read(make_config(data, task))


def error(data: dict, task: str = "classification") -> str:
    with pytest.raises(PipelineError) as info:
        read(data, task)
    return str(info.value)


# --- every layout on tiny files ------------------------------------------------------------------


def test_pixel_columns_infers_side_and_range(pixel_columns_dir):
    data = read({"layout": "pixel_columns", "dir": str(pixel_columns_dir)})
    assert list(data.train.table.columns[:3]) == ["id", "image", "label"]
    assert data.train.table["id"].tolist() == list(range(1, 31)) and data.targets == ["label"]
    assert data.test.table["id"].tolist() == list(range(1, 7))
    assert data.train.images.images.shape == (30, 8, 8, 1)
    raw = pd.read_csv(pixel_columns_dir / "train.csv").iloc[0, 1:].to_numpy()
    np.testing.assert_array_equal(data.train.images.images[0].ravel(), np.rint(raw * 255 / 16))


def test_pixel_columns_non_square_needs_shape(tmp_path, rng):
    frame = pd.DataFrame(rng.integers(0, 256, (4, 12)), columns=[f"pixel{i}" for i in range(12)])
    frame.insert(0, "label", [0, 1, 0, 1])
    frame.to_csv(tmp_path / "train.csv", index=False)
    frame.drop(columns="label").to_csv(tmp_path / "test.csv", index=False)
    data = {"layout": "pixel_columns", "dir": str(tmp_path), "sample_submission": None}
    assert "set data.image_shape" in error(data)
    assert read({**data, "image_shape": [3, 4]}).train.images.images.shape == (4, 3, 4, 1)


def test_pixel_string_keypoints(pixel_string_dir):
    data = read({"layout": "pixel_string", "dir": str(pixel_string_dir)}, "keypoints")
    assert data.targets == KEYPOINTS
    assert data.train.images.images.shape == (20, 6, 6, 1)
    assert data.train.table[KEYPOINTS[2]].isna().sum() == 7  # missing points stay NaN, rows are kept
    assert data.test.table["id"].tolist() == [1, 2, 3, 4]


def test_image_csv(image_csv_dir):
    data = read({"layout": "image_csv", "dir": str(image_csv_dir)})
    table = data.train.table
    assert table["image"].tolist()[:2] == ["train/img00.jpg", "train/img01.png"]
    assert isinstance(data.train.images, FileSource) and len(data.test.images) == 2


def test_class_folders_takes_sample_ids_with_extension(class_folders_dir):
    data = read({"layout": "class_folders", "dir": str(class_folders_dir)})
    assert sorted(data.train.table["label"].unique()) == ["maize", "wheat"]
    assert data.train.table["id"].tolist()[:2] == ["m0", "m1"]
    assert data.test.table["id"].tolist() == ["a.png", "b.png"]


def test_filename_regex(filename_regex_dir):
    data = read({"layout": "filename_regex", "dir": str(filename_regex_dir)})
    table = data.train.table.set_index("id")
    assert table.loc["great_pyrenees_100", "label"] == "great_pyrenees"
    assert table.loc["Abyssinian_103", "label"] == "Abyssinian"
    assert len(data.test.table) == 0


# --- bad input: the message names the culprit ----------------------------------------------------


def test_missing_file(pixel_columns_dir):
    (pixel_columns_dir / "test.csv").unlink()
    assert "test.csv does not exist" in error({"layout": "pixel_columns", "dir": str(pixel_columns_dir)})


def test_missing_column(pixel_columns_dir):
    message = error({"layout": "pixel_columns", "dir": str(pixel_columns_dir), "label_column": "digit"})
    assert "train.csv" in message and "'digit'" in message


def test_row_with_wrong_pixel_count(pixel_columns_dir):
    path = pixel_columns_dir / "train.csv"
    lines = path.read_text().splitlines()
    lines[4] = lines[4].rsplit(",", 1)[0]  # one pixel short
    path.write_text("\n".join(lines) + "\n")
    message = error({"layout": "pixel_columns", "dir": str(pixel_columns_dir)})
    assert "train.csv line 5" in message and "63 pixels, expected 64" in message


def test_non_numeric_pixel(pixel_columns_dir):
    frame = pd.read_csv(pixel_columns_dir / "test.csv")
    frame["pixel7"] = frame["pixel7"].astype(object)
    frame.loc[2, "pixel7"] = "x"
    frame.to_csv(pixel_columns_dir / "test.csv", index=False)
    message = error({"layout": "pixel_columns", "dir": str(pixel_columns_dir)})
    assert "test.csv line 4" in message and "'pixel7'" in message and "'x'" in message


def test_non_numeric_pixel_string(pixel_string_dir):
    frame = pd.read_csv(pixel_string_dir / "training.csv")
    frame.loc[5, "Image"] = frame.loc[5, "Image"].replace(" ", " ? ", 1)
    frame.to_csv(pixel_string_dir / "training.csv", index=False)
    message = error({"layout": "pixel_string", "dir": str(pixel_string_dir)}, "keypoints")
    assert "training.csv line 7" in message and "'Image'" in message and "'?'" in message


def test_short_pixel_string(pixel_string_dir):
    frame = pd.read_csv(pixel_string_dir / "training.csv")
    frame.loc[3, "Image"] = frame.loc[3, "Image"].rsplit(" ", 1)[0]
    frame.to_csv(pixel_string_dir / "training.csv", index=False)
    message = error({"layout": "pixel_string", "dir": str(pixel_string_dir)}, "keypoints")
    assert "training.csv line 5" in message and "35 pixels, expected 36" in message


def test_missing_label(pixel_columns_dir):
    frame = pd.read_csv(pixel_columns_dir / "train.csv")
    frame["label"] = frame["label"].astype(object)
    frame.loc[9, "label"] = None
    frame.to_csv(pixel_columns_dir / "train.csv", index=False)
    message = error({"layout": "pixel_columns", "dir": str(pixel_columns_dir)})
    assert "train.csv line 11" in message and "missing label" in message and "'label'" in message


def test_non_numeric_keypoint(pixel_string_dir):
    frame = pd.read_csv(pixel_string_dir / "training.csv")
    frame[KEYPOINTS[0]] = frame[KEYPOINTS[0]].astype(object)
    frame.loc[1, KEYPOINTS[0]] = "left"
    frame.to_csv(pixel_string_dir / "training.csv", index=False)
    message = error({"layout": "pixel_string", "dir": str(pixel_string_dir)}, "keypoints")
    assert "line 3" in message and KEYPOINTS[0] in message


def test_duplicate_ids(image_csv_dir):
    frame = pd.read_csv(image_csv_dir / "train.csv")
    frame.loc[5, "id"] = frame.loc[2, "id"]
    frame.to_csv(image_csv_dir / "train.csv", index=False)
    message = error({"layout": "image_csv", "dir": str(image_csv_dir)})
    assert "lines 4 and 7" in message and "'img02'" in message


def test_a_stem_in_two_class_folders_names_the_images_by_class_and_in_one_is_refused(class_folders_dir, rng):
    write_image(class_folders_dir / "train" / "wheat" / "m0.png", rng)
    ids = read({"layout": "class_folders", "dir": str(class_folders_dir)}).train.table["id"]
    assert "maize/m0" in set(ids) and "wheat/m0" in set(ids)
    write_image(class_folders_dir / "train" / "wheat" / "w0.jpg", rng)
    assert "duplicate id 'wheat/w0'" in error({"layout": "class_folders", "dir": str(class_folders_dir)})


def test_missing_image_file(image_csv_dir):
    (image_csv_dir / "train" / "img03.png").unlink()
    message = error({"layout": "image_csv", "dir": str(image_csv_dir)})
    assert "train.csv line 5" in message and "'img03'" in message


def test_non_image_file_in_class_folder_is_left_out_with_a_warning(class_folders_dir, capsys):
    (class_folders_dir / "train" / "maize" / "notes.mat").write_text("hi")
    data = read({"layout": "class_folders", "dir": str(class_folders_dir)})
    assert len(data.train.table) == 10
    err = capsys.readouterr().err
    assert "left out 1 file(s)" in err and "notes.mat" in err


def test_file_name_not_matching_pattern(filename_regex_dir, rng):
    write_image(filename_regex_dir / "images" / "README.jpg", rng)
    assert "README.jpg" in error({"layout": "filename_regex", "dir": str(filename_regex_dir)})


def test_test_ids_not_in_sample(pixel_columns_dir):
    pd.DataFrame({"ImageId": range(1, 6), "Label": 0}).to_csv(pixel_columns_dir / "sample_submission.csv", index=False)
    message = error({"layout": "pixel_columns", "dir": str(pixel_columns_dir)})
    assert "sample_submission.csv" in message and "'6'" in message


def test_lookup_table_asks_for_unknown_image(pixel_string_dir):
    lookup = pd.read_csv(pixel_string_dir / "IdLookupTable.csv")
    lookup.loc[3, "ImageId"] = 99
    lookup.to_csv(pixel_string_dir / "IdLookupTable.csv", index=False)
    message = error({"layout": "pixel_string", "dir": str(pixel_string_dir)}, "keypoints")
    assert "IdLookupTable.csv line 5" in message and "99" in message


def test_sources_are_array_or_files(pixel_columns_dir):
    data = read({"layout": "pixel_columns", "dir": str(pixel_columns_dir)})
    assert isinstance(data.train.images, ArraySource)
    assert Path(data.train.table["image"][0]).name == "train.csv:2"


def test_a_renamed_test_file_is_named_on_both_sides(class_folders_dir):
    (class_folders_dir / "test/b.png").rename(class_folders_dir / "test/c.png")
    message = error({"layout": "class_folders", "dir": str(class_folders_dir)})
    assert "1 missing, 1 unexpected" in message
    assert "'b.png' is in the sample but not the test set, and 'c.png' is in the test set but not" in message


@pytest.mark.parametrize("table", ["train.csv", "test.csv"])
def test_a_header_only_table_is_an_error(pixel_columns_dir, table):
    path = pixel_columns_dir / table
    path.write_text(path.read_text().splitlines()[0] + "\n")
    assert error({"layout": "pixel_columns", "dir": str(pixel_columns_dir)}) == f"{path} has a header but no rows"
