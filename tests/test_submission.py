import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import KEYPOINTS, make_config

from pipeline.errors import PipelineError
from pipeline.kaggle import submission
from pipeline.paths import Paths
from pipeline.records import StatedCV
from pipeline.stages import score, submissions
from pipeline.tasks.classification import Classification
from pipeline.tasks.keypoints import Keypoints

CV = StatedCV("accuracy", 0.98765, 0.01, "OOF of the fold models (last epochs)", "folds", "tiny")


def digits_cfg(folder: Path, **predict):
    return make_config({"layout": "pixel_columns", "dir": str(folder)}, predict=predict)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_label_format_round_trips_with_the_samples_dtype(in_tmp):
    pd.DataFrame({"ImageId": [3, 1, 2], "Label": 0}).to_csv(in_tmp / "sample_submission.csv", index=False)
    cfg = digits_cfg(in_tmp)
    table = pd.DataFrame({"id": [1, 2, 3]})
    probabilities = np.eye(3)[[2, 0, 1]]
    path = submission.write(cfg, Paths.of(cfg), table, probabilities, Classification(["0", "1", "2"]), CV)
    written = pd.read_csv(path)
    assert list(written.columns) == ["ImageId", "Label"] and written["ImageId"].tolist() == [3, 1, 2]  # sample order
    assert written.set_index("ImageId")["Label"].to_dict() == {1: 2, 2: 0, 3: 1}
    assert path.parent == Path("submissions/tiny") and path.name.endswith("_0.98765.csv")


def test_two_submissions_in_one_second_keep_both_files(in_tmp):
    pd.DataFrame({"ImageId": [1, 2], "Label": 0}).to_csv(in_tmp / "sample_submission.csv", index=False)
    cfg = digits_cfg(in_tmp)
    table, probabilities = pd.DataFrame({"id": [1, 2]}), np.eye(2)
    first, second = (
        submission.write(cfg, Paths.of(cfg), table, probabilities, Classification(["0", "1"]), CV) for _ in range(2)
    )
    assert first != second and first.exists() and second.exists() and second.name.endswith("_0.98765.csv")
    assert pd.read_csv("submissions/ledger.csv")["file"].tolist() == [str(first), str(second)]


def test_probability_format_takes_the_header_from_the_sample(in_tmp):
    pd.DataFrame({"id": ["a", "b"], "dog": 0.5, "cat": 0.5}).to_csv(in_tmp / "sample.csv", index=False)
    cfg = make_config({"layout": "class_folders", "dir": str(in_tmp), "sample_submission": "sample.csv"})
    probabilities = np.array([[0.9, 0.1], [0.3, 0.7]])  # classes cat, dog
    path = submission.write(
        cfg, Paths.of(cfg), pd.DataFrame({"id": ["a", "b"]}), probabilities, Classification(["cat", "dog"]), CV
    )
    written = pd.read_csv(path)
    assert list(written.columns) == ["id", "dog", "cat"]
    np.testing.assert_allclose(written[["cat", "dog"]].to_numpy(), probabilities)


def test_keypoints_long_through_the_lookup_table(faces_dir, in_tmp):
    cfg = make_config({"layout": "pixel_string", "dir": str(faces_dir)}, task="keypoints")
    pixels = np.arange(12, dtype=float).reshape(3, 4)  # images 1..3 x the 4 keypoint columns
    task = Keypoints.of_labels(cfg, KEYPOINTS)  # the config's lookup table names the rows
    path = submission.write(cfg, Paths.of(cfg), pd.DataFrame({"id": [1, 2, 3]}), pixels, task, CV)
    written = pd.read_csv(path)
    assert list(written.columns) == ["RowId", "Location"]
    assert written["Location"].tolist() == [0.0, 1.0, 7.0, 8.0, 10.0]  # only the features each image asks for


def test_keypoints_wide(tmp_path, in_tmp):
    pd.DataFrame({"image": ["p", "q"], **dict.fromkeys(KEYPOINTS, 0.0)}).to_csv(tmp_path / "s.csv", index=False)
    cfg = make_config(
        {"layout": "image_csv", "dir": str(tmp_path), "sample_submission": "s.csv", "label_columns": KEYPOINTS},
        task="keypoints",
    )
    pixels = np.array([[1.0, 2, 3, 4], [5, 6, 7, 8]])
    path = submission.write(cfg, Paths.of(cfg), pd.DataFrame({"id": ["p", "q"]}), pixels, Keypoints(KEYPOINTS), CV)
    np.testing.assert_allclose(pd.read_csv(path)[KEYPOINTS].to_numpy(), pixels)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"ImageId": [1, 2], "label": [0, 1]}), "columns"),
        (pd.DataFrame({"ImageId": [1, 4], "Label": [0, 1]}), "'2' is missing"),
        (pd.DataFrame({"ImageId": [1, 1], "Label": [0, 1]}), "appears twice"),
        (pd.DataFrame({"ImageId": [1, 2], "Label": [0.0, np.nan]}), "row 2, column 'Label'"),
        (pd.DataFrame({"ImageId": [1, 2], "Label": [0, 7]}), "label 7 is not a known class"),
        (pd.DataFrame({"ImageId": [1, 2], "Label": ["zero", "one"]}), "column 'Label' is object"),
    ],
)
def test_every_validation_failure_names_its_rule(frame, message):
    sample = pd.DataFrame({"ImageId": [1, 2], "Label": [0, 0]})
    with pytest.raises(PipelineError, match=message):
        submission.validate(frame, sample, known_labels=[0, 1, 2])


def test_failed_check_leaves_no_file_and_no_ledger_row(in_tmp):
    pd.DataFrame({"ImageId": [1, 2, 3], "Label": 0}).to_csv(in_tmp / "sample_submission.csv", index=False)
    cfg = digits_cfg(in_tmp)
    with pytest.raises(PipelineError, match="'3' is missing"):
        submission.write(cfg, Paths.of(cfg), pd.DataFrame({"id": [1, 2]}), np.eye(3)[:2], Classification([0, 1, 2]), CV)
    assert not Path("submissions").exists()


def test_a_submission_and_its_ledger_row_are_written_together_or_not_at_all(in_tmp, monkeypatch):
    pd.DataFrame({"ImageId": [1, 2], "Label": 0}).to_csv(in_tmp / "sample_submission.csv", index=False)
    cfg = digits_cfg(in_tmp)

    def ledger_fails(row):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(submission, "_append", ledger_fails)
    with pytest.raises(OSError, match="No space left"):
        submission.write(cfg, Paths.of(cfg), pd.DataFrame({"id": [1, 2]}), np.eye(2), Classification([0, 1]), CV)
    assert not any(Path("submissions").rglob("*.csv"))


def test_a_submissions_folder_that_cannot_be_written_is_said_before_anything_is_written(in_tmp):
    pd.DataFrame({"ImageId": [1, 2], "Label": 0}).to_csv(in_tmp / "sample_submission.csv", index=False)
    cfg = digits_cfg(in_tmp)
    Path("submissions").write_text("")  # a file where the folder belongs: unwritable even for root
    with pytest.raises(PipelineError, match="submissions/ cannot be written"):
        submission.write(cfg, Paths.of(cfg), pd.DataFrame({"id": [1, 2]}), np.eye(2), Classification([0, 1]), CV)


def test_two_processes_appending_to_the_ledger_lose_no_row(in_tmp):
    append = (
        "import sys; from pipeline.kaggle import submission\n"
        "for i in range(20):\n"
        "    submission.add_to_ledger({'file': f'{sys.argv[1]}{i}', 'competition': 'tiny', 'utc_time': '2026-12-06'})"
    )
    writers = [subprocess.Popen([sys.executable, "-c", append, name], cwd=in_tmp) for name in ("a", "b")]
    assert [w.wait() for w in writers] == [0, 0]
    files = pd.read_csv("submissions/ledger.csv")["file"]
    assert sorted(files) == sorted(f"{name}{i}" for name in "ab" for i in range(20))


def test_scoring_a_deleted_submission_names_it(in_tmp):
    pd.DataFrame({"ImageId": [1, 2], "Label": 0}).to_csv(in_tmp / "sample_submission.csv", index=False)
    pd.DataFrame({"ImageId": [1, 2], "Label": [1, 0]}).to_csv(in_tmp / "solution.csv", index=False)
    cfg = make_config({"layout": "pixel_columns", "dir": str(in_tmp), "solution": "solution.csv"})
    path = submission.write(cfg, Paths.of(cfg), pd.DataFrame({"id": [1, 2]}), np.eye(2), Classification([0, 1]), CV)
    path.unlink()
    with pytest.raises(PipelineError, match=f"the newest submission in submissions/ledger.csv, {path}, no longer"):
        score.score(cfg)


def test_ledger_gets_one_row_per_submission(in_tmp, capsys):
    pd.DataFrame({"ImageId": [1, 2], "Label": 0}).to_csv(in_tmp / "sample_submission.csv", index=False)
    cfg = digits_cfg(in_tmp, tta=["hflip"])
    files = []
    for stated in (0.9, 0.95):
        files.append(
            submission.write(
                cfg,
                Paths.of(cfg),
                pd.DataFrame({"id": [1, 2]}),
                np.eye(2),
                Classification([0, 1]),
                dataclasses.replace(CV, score=stated),
            )
        )
    ledger = pd.read_csv("submissions/ledger.csv")
    assert ledger["file"].tolist() == [str(f) for f in files]
    assert ledger["tta"].tolist() == ["hflip", "hflip"] and ledger["cv_score"].tolist() == [0.9, 0.95]
    assert ledger["sha256"].str.len().eq(64).all() and ledger["config_hash"].notna().all()
    submissions.show(cfg)
    table = capsys.readouterr().out.splitlines()
    assert "0.95" in table[1] and "0.9" in table[2]  # best CV first


def test_score_against_the_solution(in_tmp):
    pd.DataFrame({"ImageId": [1, 2], "Label": 0}).to_csv(in_tmp / "sample_submission.csv", index=False)
    pd.DataFrame({"ImageId": [1, 2], "Label": [1, 0]}).to_csv(in_tmp / "solution.csv", index=False)
    cfg = make_config({"layout": "pixel_columns", "dir": str(in_tmp), "solution": "solution.csv"})
    always_zero = np.array([[1.0, 0.0], [1.0, 0.0]])
    path = submission.write(cfg, Paths.of(cfg), pd.DataFrame({"id": [2, 1]}), always_zero, Classification([0, 1]), CV)
    assert score.score(cfg) == 0.5  # right for id 2, wrong for id 1
    ledger = pd.read_csv("submissions/ledger.csv").set_index("file")
    assert ledger.loc[str(path), "local_score"] == 0.5


def test_score_finds_the_ledger_row_whichever_path_names_the_file(in_tmp):
    pd.DataFrame({"ImageId": [1, 2], "Label": 0}).to_csv(in_tmp / "sample_submission.csv", index=False)
    pd.DataFrame({"ImageId": [1, 2], "Label": [1, 0]}).to_csv(in_tmp / "solution.csv", index=False)
    cfg = make_config({"layout": "pixel_columns", "dir": str(in_tmp), "solution": "solution.csv"})
    path = submission.write(cfg, Paths.of(cfg), pd.DataFrame({"id": [1, 2]}), np.eye(2), Classification([0, 1]), CV)
    for named, expected in ((f"./{path}", 0.0), (str(in_tmp / path), 0.0)):
        submission.update_ledger(str(path), local_score=None)
        assert score.score(cfg, named) == expected
        assert pd.read_csv("submissions/ledger.csv")["local_score"].tolist() == [expected]


def test_a_keypoint_file_outside_the_ledger_is_scored_by_its_tasks_metric(tmp_path, in_tmp):
    answers = pd.DataFrame({"image": ["p", "q"], **dict.fromkeys(KEYPOINTS, 10.0)})
    answers.to_csv(tmp_path / "solution.csv", index=False)
    answers.assign(**dict.fromkeys(KEYPOINTS, 0.0)).to_csv(tmp_path / "s.csv", index=False)
    cfg = make_config(
        {"layout": "image_csv", "dir": str(tmp_path), "sample_submission": "s.csv", "solution": "solution.csv"},
        task="keypoints",
    )
    answers.assign(**dict.fromkeys(KEYPOINTS, 13.0)).to_csv(tmp_path / "mine.csv", index=False)
    assert score.score(cfg, str(tmp_path / "mine.csv")) == pytest.approx(3.0)  # rmse, not accuracy


@pytest.mark.parametrize("content", [b"", b"ImageId,Label\n1,1\n2,0\n".decode().encode("utf-16"), b'1,"2\n'])
def test_scoring_a_file_that_is_not_a_csv_table_is_one_line(in_tmp, content):
    pd.DataFrame({"ImageId": [1, 2], "Label": [1, 0]}).to_csv(in_tmp / "solution.csv", index=False)
    cfg = make_config({"layout": "pixel_columns", "dir": str(in_tmp), "solution": "solution.csv"})
    (in_tmp / "mine.csv").write_bytes(content)
    with pytest.raises(PipelineError, match=r"mine\.csv cannot be read as CSV: [^\n]+$"):
        score.score(cfg, "mine.csv")


def test_a_ledger_with_conflict_markers_is_refused_naming_the_line(in_tmp):
    pd.DataFrame({"ImageId": [1, 2], "Label": 0}).to_csv(in_tmp / "sample_submission.csv", index=False)
    cfg = digits_cfg(in_tmp)
    submission.write(cfg, Paths.of(cfg), pd.DataFrame({"id": [1, 2]}), np.eye(2), Classification([0, 1]), CV)
    header, row = Path("submissions/ledger.csv").read_text().splitlines()
    Path("submissions/ledger.csv").write_text(f"{header}\n<<<<<<< HEAD\n{row}\n=======\n>>>>>>> other\n")
    with pytest.raises(PipelineError, match=r"ledger.csv line 2 is not a submission's row \(it starts '<<<<<<< HEAD'"):
        submissions.show(cfg)
