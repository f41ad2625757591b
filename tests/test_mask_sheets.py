"""The three layouts of a segmentation sheet: a submission written in each, checked against its
sample, scored against its solution, and the test images a sample lists."""

import pandas as pd
import pytest

from pipeline.data.mask_sheets import Sheet
from pipeline.errors import PipelineError
from pipeline.kaggle.submission import read_submission, validate
from pipeline.tasks.segmentation import Segmentation

CODES = {"1": ["1 3", ""], "3": ["", "5 2"]}  # class -> a code per image
IDS = ["a.jpg", "b.jpg"]


@pytest.fixture
def sheet_of(tmp_path):
    def read(text: str) -> pd.DataFrame:
        (tmp_path / "sheet.csv").write_text(text)
        return read_submission(tmp_path / "sheet.csv")

    return read


LONG_SAMPLE = "ImageId,EncodedPixels,ClassId\nb.jpg,1 1,1\nb.jpg,1 1,3\na.jpg,1 1,1\na.jpg,1 1,3\n"
JOINED_SAMPLE = "ImageId_ClassId,EncodedPixels\nb.jpg_1,\nb.jpg_3,\na.jpg_1,\na.jpg_3,\n"


def test_a_wide_sheet_has_a_code_column_per_class_named_as_the_sample(sheet_of):
    written = Sheet().written(CODES, IDS, sheet_of("id,first,third\nb.jpg,,\na.jpg,,\n"))
    assert written.to_dict("list") == {"id": IDS, "first": ["1 3", ""], "third": ["", "5 2"]}


def test_a_long_sheet_has_a_row_per_image_and_class_and_the_samples_class_type(sheet_of):
    sample = sheet_of(LONG_SAMPLE)
    written = validate(Sheet(class_column="ClassId").written(CODES, IDS, sample), sample)
    assert list(written.columns) == ["ImageId", "EncodedPixels", "ClassId"]
    assert written.to_numpy().tolist() == [
        ["b.jpg", "", 1],
        ["b.jpg", "5 2", 3],
        ["a.jpg", "1 3", 1],
        ["a.jpg", "", 3],
    ]


def test_a_joined_sheet_keys_each_row_by_image_and_class(sheet_of):
    sample = sheet_of(JOINED_SAMPLE)
    written = validate(Sheet(separator="_").written(CODES, IDS, sample), sample)
    assert written.to_numpy().tolist() == [["b.jpg_1", ""], ["b.jpg_3", "5 2"], ["a.jpg_1", "1 3"], ["a.jpg_3", ""]]


@pytest.mark.parametrize(
    ("sheet", "sample"), [(Sheet(class_column="ClassId"), LONG_SAMPLE), (Sheet(separator="_"), JOINED_SAMPLE)]
)
def test_a_sample_lists_each_test_image_once_in_its_order(sheet, sample, sheet_of):
    assert sheet.image_ids(sheet_of(sample), "sample.csv").tolist() == ["b.jpg", "a.jpg"]


def test_a_long_submission_missing_a_class_row_names_it(sheet_of):
    sample = sheet_of(LONG_SAMPLE)
    short = Sheet(class_column="ClassId").written({"1": CODES["1"]}, IDS, sample)
    with pytest.raises(PipelineError, match=r"columns \(ImageId, ClassId\): \('a.jpg', '3'\) is missing"):
        validate(short, sample)


def test_a_key_without_the_separator_is_one_line_naming_it(sheet_of):
    with pytest.raises(PipelineError, match="sample.csv line 3: 'c.jpg' is not <image>_<class>"):
        Sheet(separator="_").image_ids(sheet_of("Image_Label,EncodedPixels\na.jpg_1,\nc.jpg,\n"), "sample.csv")


def test_a_wide_sample_with_other_columns_than_classes_is_refused(sheet_of):
    with pytest.raises(PipelineError, match="the sample submission has 1 column"):
        Sheet().written(CODES, IDS, sheet_of("id,rle\na.jpg,\n"))


@pytest.mark.parametrize(
    ("sheet", "sample"), [(Sheet(class_column="ClassId"), LONG_SAMPLE), (Sheet(separator="_"), JOINED_SAMPLE)]
)
def test_every_layout_scores_the_mean_over_images_and_classes(sheet, sample, sheet_of):
    sample = sheet_of(sample)
    solution = validate(sheet.written(CODES, IDS, sample), sample)
    guessed = {"1": ["1 3", "4 1"], "3": ["", "5 1"]}  # right, wrong (empty truth), right, half
    submitted = validate(sheet.written(guessed, IDS, sample), sample)
    assert Segmentation.score_file("dice", submitted, solution) == pytest.approx((1 + 0 + 1 + 2 / 3) / 4)
