"""`make init`: every layout detected, a config that reads the competition, ambiguity refused."""

import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import KEYPOINTS
from PIL import Image

from pipeline import cli
from pipeline import config as C
from pipeline.data import layout_detection, sources, survey
from pipeline.errors import PipelineError
from pipeline.stages import init

EXPECTED = {
    "pixel_columns_dir": ("pixel_columns", "classification", ["label"], 30),
    "pixel_string_dir": ("pixel_string", "keypoints", KEYPOINTS, 20),
    "image_csv_dir": ("image_csv", "classification", ["label"], 12),
    "class_folders_dir": ("class_folders", "classification", ["label"], 10),
    "filename_regex_dir": ("filename_regex", "classification", ["label"], 12),
}


@pytest.mark.parametrize("fixture", EXPECTED)
def test_every_layout_gets_a_config_that_reads_it(fixture, request, tmp_path, capsys):
    folder = request.getfixturevalue(fixture)
    output = tmp_path / "configs" / "x.yaml"
    init.run(folder, output)
    cfg = C.load(output)
    layout, task, targets, rows = EXPECTED[fixture]
    assert (cfg.data.layout, cfg.competition.task) == (layout, task)
    data = sources.read(cfg)
    assert data.targets == targets and len(data.train.table) == rows
    text = output.read_text()
    assert f"layout: {layout}  # " in text and f"task: {task}  # " in text
    assert f"{rows} training rows" in capsys.readouterr().out


def test_class_balance_sizes_and_sample_format_are_found(image_csv_dir, tmp_path):
    (image_csv_dir / "test_labels.csv").write_text("id,label\n")  # a header-only extra table is surveyed too
    found = survey.survey(image_csv_dir)
    assert found.found[1] == "3 classes, 4 to 4 rows each (balanced)"
    assert found.found[2:] == ["images: 10x12, colour", "preset: medium", "time budget: 20m"]
    assert found.raw()["predict"] == {"format": "label"} and found.raw()["data"]["channels"] == 3
    assert found.raw()["train"] == {"preset": "medium", "time_budget": "20m"}  # no GPU here: minutes
    assert survey.suggested_preset(50_000, 224).value == "fast"
    assert survey.suggested_preset(50_000, 224, gpu=True).value == "medium"  # the budget trades instead


def test_a_gpu_gets_a_budget_of_hours(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "NVIDIA H100")
    budget, gpu = survey.machine_budget()
    assert gpu and budget.value == "2h" and "one GPU here (NVIDIA H100)" in budget.why


def test_keypoint_columns_and_gray_png_files(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    table = pd.DataFrame(rng.uniform(0, 20, (8, 4)), columns=["nose_x", "nose_y", "tail_x", "tail_y"])
    table.insert(0, "image_id", [f"a{i}" for i in range(8)])
    table.loc[0, "tail_x"] = np.nan
    for split, ids in (("train", table["image_id"]), ("test", ["b0", "b1"])):
        for image_id in ids:
            Image.fromarray(rng.integers(0, 256, (20, 24), dtype=np.uint8)).convert("RGB").save(
                tmp_path / split / f"{image_id}.png"
            )
    table.to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame({"image_id": ["b0", "b1"]}).to_csv(tmp_path / "test.csv", index=False)
    found = survey.survey(tmp_path)
    data = found.raw()["data"]
    assert found.raw()["competition"]["task"] == "keypoints"
    assert data["label_columns"] == ["nose_x", "nose_y", "tail_x", "tail_y"] and data["id_column"] == "image_id"
    assert data["channels"] == 1  # RGB files whose three channels are equal
    assert found.found[1] == "2 points; 7 of 8 rows have all of them"


def test_two_label_columns_are_refused_with_the_key_to_set(image_csv_dir):
    extra = pd.read_csv(image_csv_dir / "train.csv").assign(source=["a", "b"] * 6)
    extra.to_csv(image_csv_dir / "train.csv", index=False)
    with pytest.raises(PipelineError, match=r"2 candidates for data.label_columns: \['label', 'source'\]; pick one"):
        survey.survey(image_csv_dir)
    decided = survey.survey(image_csv_dir, given={"data.label_columns": ["source"]}).raw()  # the advice, followed
    assert decided["data"]["label_columns"] == ["source"]


def test_two_layouts_are_refused(class_folders_dir, rng):
    train = pd.DataFrame(rng.integers(0, 256, (4, 64)), columns=[f"pixel{i}" for i in range(64)])
    train.assign(label=[0, 1, 0, 1]).to_csv(class_folders_dir / "digits_train.csv", index=False)
    train.to_csv(class_folders_dir / "digits_test.csv", index=False)
    with pytest.raises(PipelineError, match=r"fits the layouts \['class_folders', 'pixel_columns'\]; pick one"):
        survey.survey(class_folders_dir)
    assert (
        survey.survey(class_folders_dir, given={"data.layout": "class_folders"}).raw()["data"]["train_dir"] == "train"
    )


def test_a_folder_of_nothing_and_an_existing_config(tmp_path, image_csv_dir, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="fits none of the layouts"):
        survey.survey(tmp_path / "empty")
    output = tmp_path / "mine.yaml"
    output.write_text("# my own\n")
    assert cli.main(["init", str(image_csv_dir), "-o", str(output)]) == 2
    assert "never overwrites" in capsys.readouterr().err and output.read_text() == "# my own\n"
    assert cli.main(["init"]) == 2 and "one competition folder" in capsys.readouterr().err


def test_the_name_is_the_folders_and_the_config_lands_in_configs(image_csv_dir, tmp_path, monkeypatch):
    folder = tmp_path / "work" / "My Competition!"
    for name in ("train", "test"):
        shutil.copytree(image_csv_dir / name, folder / name)
        shutil.copy(image_csv_dir / f"{name}.csv", folder)
    monkeypatch.chdir(tmp_path / "work")
    assert cli.main(["init", "My Competition!"]) == 0
    written = yaml.safe_load((tmp_path / "work" / "configs" / "My-Competition.yaml").read_text())
    assert written["competition"]["name"] == "My-Competition"


def test_an_image_that_does_not_decode_is_named(image_csv_dir):
    (image_csv_dir / "train" / "img01.png").write_bytes(b"not a png")
    with pytest.raises(PipelineError, match=r"img01.png cannot be decoded"):
        survey.survey(image_csv_dir)


@pytest.mark.parametrize(
    "train_name",
    [
        "tr\nscrape: {allow_private_addresses: true}\nx: y",  # would end the comment and write live keys
        "tr\u2028scrape: {allow_private_addresses: true}",  # a line break to YAML 1.1 too
    ],
)
def test_a_folder_name_cannot_write_config_keys(class_folders_dir, tmp_path, train_name):
    (class_folders_dir / "train").rename(class_folders_dir / train_name)
    output = tmp_path / "configs" / "x.yaml"
    init.run(class_folders_dir, output)
    cfg = C.load(output)
    assert cfg.data.train_dir == train_name and cfg.scrape.allow_private_addresses is False
    assert len(sources.read(cfg).train.table) == 10  # the config still reads the competition


def test_a_config_that_does_not_read_back_as_decided_is_refused_and_not_written(tmp_path):
    decided = survey.Survey("x", [layout_detection.Decision("data.layout", "image_csv", "why")], [])
    with pytest.raises(PipelineError, match=r"^init: a file or folder name under .* does not survive YAML"):
        init.parsed_back(decided, "data: {layout: class_folders}\n", tmp_path)


def test_init_takes_keys_and_names_the_key_for_a_csv_beside_its_version_two(image_csv_dir, tmp_path, capsys):
    shutil.copy(image_csv_dir / "train.csv", image_csv_dir / "train_v2.csv")
    with pytest.raises(PipelineError, match=r"candidates for data.train_csv: \['train.csv', 'train_v2.csv'\]; pick"):
        survey.survey(image_csv_dir)
    output = tmp_path / "c.yaml"
    given = ["data.train_csv=train_v2.csv", "train.time_budget=1h"]
    assert cli.main(["init", str(image_csv_dir), *given, "-o", str(output)]) == 0
    cfg = C.load(output)
    assert cfg.data.train_csv == "train_v2.csv" and cfg.train.time_budget == "1h"
    assert "time budget: 1h" in capsys.readouterr().out and "given to `make init`" in output.read_text()
    assert cli.main(["init", str(image_csv_dir), "data.layout=bogus", "-o", str(tmp_path / "d.yaml")]) == 2
    assert "data.layout='bogus' is not a layout" in capsys.readouterr().err


def test_without_test_csv_the_sample_names_the_test_images(image_csv_dir, tmp_path):
    (image_csv_dir / "test.csv").unlink()
    cfg = C.load(init.run(image_csv_dir, tmp_path / "a.yaml"))
    assert cfg.data.test_csv is None and list(sources.read(cfg).test.table["id"]) == ["t1", "t2"]


def test_a_pixel_string_folder_without_lookup_table(pixel_string_dir, tmp_path):
    (pixel_string_dir / "IdLookupTable.csv").unlink()
    (pixel_string_dir / "SampleSubmission.csv").unlink()
    cfg = C.load(init.run(pixel_string_dir, tmp_path / "b.yaml"))
    assert cfg.data.lookup_table is None and len(sources.read(cfg).test.table) == 4


def test_class_folders_sharing_file_names_name_their_images_by_class(tmp_path, rng):
    from conftest import write_image

    for label in ("cat", "dog"):
        for i in range(3):
            write_image(tmp_path / "train" / label / f"{i}.png", rng)
    write_image(tmp_path / "test" / "x.png", rng)
    data = sources.read(C.load(init.run(tmp_path, tmp_path / "c.yaml")))
    assert list(data.train.table["id"]) == ["cat/0", "cat/1", "cat/2", "dog/0", "dog/1", "dog/2"]
