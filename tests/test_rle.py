import numpy as np
import pytest

from pipeline.data import rle
from pipeline.errors import PipelineError

WHERE = "train.csv line 2, column 'rle_mask'"


@pytest.mark.parametrize("order", ["column", "row"])
def test_a_code_decodes_to_the_mask_it_encodes(order):
    masks = np.random.default_rng(0).random((20, 7, 5)) < 0.4
    for mask in [*masks, np.zeros((7, 5), bool), np.ones((7, 5), bool)]:
        code = rle.encode(mask, order)
        assert np.array_equal(rle.decode(code, mask.shape, order, WHERE), mask)


def test_columns_count_first_in_kaggle_order_and_rows_in_the_row_variant():
    mask = np.zeros((3, 4), np.uint8)
    mask[:, 0] = 1  # the first column: pixels 1, 2, 3 top to bottom
    mask[0, 1] = 1  # top of the second column: pixel 4, then pixel 2 in row order
    assert rle.encode(mask, "column") == "1 4"
    assert rle.encode(mask, "row") == "1 2 5 1 9 1"
    assert rle.decode("1 4", (3, 4), "column", WHERE).tolist() == mask.tolist()


@pytest.mark.parametrize("empty", ["", "  ", float("nan"), None])
def test_an_empty_code_is_an_empty_mask(empty):
    assert not rle.decode(empty, (4, 6), "column", WHERE).any()
    assert rle.encode(np.zeros((4, 6)), "column") == ""


@pytest.mark.parametrize(
    ("code", "says"),
    [
        ("1 3 x 2", "does not parse: 'x'"),
        ("1 3 2.5 2", "does not parse: '2.5'"),
        ("1 3 5", "has 3 numbers"),
        ("0 3", "starts and lengths are 1 or more"),
        ("2 0", "starts and lengths are 1 or more"),
        ("1 3 3 2", "overlaps itself: the run at pixel 3"),
        ("5 2 1 1", "overlaps itself: the run at pixel 1"),
        ("11 3", "runs past the image: its last run ends at pixel 13, and a 3x4 image has 12"),
        (7, "a run-length code is text, got 7"),
    ],
)
def test_a_bad_code_is_one_line_naming_its_row(code, says):
    with pytest.raises(PipelineError, match="^train.csv line 2, column 'rle_mask': ") as caught:
        rle.decode(code, (3, 4), "column", WHERE)
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_run_may_end_on_the_last_pixel():
    assert rle.decode("10 3", (3, 4), "column", WHERE)[:, -1].tolist() == [1, 1, 1]
