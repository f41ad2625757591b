from pathlib import Path

import pytest
import yaml

from pipeline import config as C
from pipeline.errors import PipelineError

MINIMAL = {"competition": {"name": "digits", "task": "classification"}, "data": {"layout": "pixel_columns"}}


def write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def load_error(tmp_path: Path, raw: dict, overrides: list[str] = ()) -> str:
    with pytest.raises(PipelineError) as info:
        C.load(write(tmp_path, raw), overrides)
    return str(info.value)


def test_each_section_owns_its_defaults(tmp_path):
    cfg = C.load(write(tmp_path, MINIMAL))
    assert cfg.data.dir == Path("data/digits")
    assert cfg.data.train_csv == "train.csv" and cfg.data.pixel_max == "auto"
    assert cfg.folds.kind == "stratified" and cfg.folds.n_splits == 5
    keypoints = C.load(
        write(
            tmp_path, {**MINIMAL, "competition": {"name": "f", "task": "keypoints"}, "data": {"layout": "pixel_string"}}
        )
    )
    assert keypoints.folds.kind == "stratified_binned" and keypoints.data.train_csv == "training.csv"


def test_overrides_are_typed_by_yaml(tmp_path):
    cfg = C.load(write(tmp_path, MINIMAL), ["train.epochs=2", "model.name=resnet34", "data.image_shape=[4,16]"])
    assert cfg.train.epochs == 2 and cfg.model.name == "resnet34" and cfg.data.image_shape == (4, 16)


def test_bare_on_and_off_stay_words(tmp_path):
    """YAML 1.1 reads on/off as booleans; the settings spelled with them still take them."""
    cfg = C.load(write(tmp_path, MINIMAL), ["train.device_aug=off", "train.amp=off"])
    assert cfg.train.device_aug == "off" and cfg.train.amp == "off"
    path = tmp_path / "on.yaml"
    path.write_text(yaml.safe_dump(MINIMAL) + "train:\n  device_aug: on\n")
    assert C.load(path).train.device_aug == "on"
    assert "train.amp" in load_error(tmp_path, MINIMAL, ["train.amp=on"])


def test_unknown_key_in_file_names_key_and_allowed(tmp_path):
    message = load_error(tmp_path, {**MINIMAL, "train": {"epoch": 3}})
    assert "'train.epoch'" in message and "epochs" in message and "batch_size" in message


def test_unknown_key_in_override_names_key(tmp_path):
    message = load_error(tmp_path, MINIMAL, ["folds.n_split=3"])
    assert "'folds.n_split'" in message and "n_splits" in message and "overrides" in message


def test_unknown_section_lists_sections(tmp_path):
    message = load_error(tmp_path, {**MINIMAL, "trian": {}})
    assert "'trian'" in message and "train" in message and "top level" in message


def test_layout_specific_keys(tmp_path):
    message = load_error(tmp_path, {**MINIMAL, "data": {"layout": "pixel_columns", "train_dir": "x"}})
    assert "'data.train_dir'" in message and "pixel_prefix" in message
    assert "'nope'" in load_error(tmp_path, {**MINIMAL, "data": {"layout": "nope"}})


def test_wrong_type_names_key_and_value(tmp_path):
    message = load_error(tmp_path, MINIMAL, ["train.epochs=many"])
    assert "'train.epochs'" in message and "'many'" in message


def test_missing_required_key(tmp_path):
    assert "'competition.task'" in load_error(tmp_path, {**MINIMAL, "competition": {"name": "x"}})


def test_regex_is_checked_when_the_config_is_built(tmp_path):
    message = load_error(tmp_path, {**MINIMAL, "data": {"layout": "filename_regex", "pattern": "(.+)_\\d+"}})
    assert "'data.pattern'" in message and "label" in message


def test_bad_files(tmp_path):
    with pytest.raises(PipelineError, match="does not exist"):
        C.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("competition: [unclosed")
    with pytest.raises(PipelineError, match="not valid YAML"):
        C.load(bad)
    with pytest.raises(PipelineError, match="key=value"):
        C.load(write(tmp_path, MINIMAL), ["train.epochs"])


def test_resolved_config_round_trips(tmp_path):
    cfg = C.load(write(tmp_path, MINIMAL), ["train.lr=0.01"])
    C.save_resolved(cfg, tmp_path / "resolved.yaml")
    assert C.load(tmp_path / "resolved.yaml") == cfg


def test_the_experiment_is_named_by_the_config_file_and_kept_when_saved(tmp_path):
    path = tmp_path / "effnet-96.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    assert C.load(path).train.experiment == "effnet-96"
    assert C.validate(MINIMAL).train.experiment == "digits"  # no file: the competition's name
    named = C.load(path, ["train.experiment=seed-1"])
    C.save_given(named, tmp_path / "launch.config.yaml")
    assert C.load(tmp_path / "launch.config.yaml").train.experiment == "seed-1"
    assert "names a folder the experiments share" in load_error(tmp_path, MINIMAL, ["train.experiment=blends"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=true", "key 'train.epochs' = True: a boolean is given where a number"),
        ("train.folds=[true]", "key 'train.folds' = [True]: a boolean"),
        ("train.folds=[0,0]", "key 'train.folds' = [0, 0]: names a fold twice; each fold counts once"),
        ("train.folds=[]", "key 'train.folds' = []: names no fold"),
        ("tune.folds=[9]", "tune.folds=[9]: fold 9 does not exist; folds.n_splits=5 makes folds 0 to 4"),
    ],
)
def test_repeats_and_booleans_where_numbers_belong_are_errors(tmp_path, override, message):
    assert message in load_error(tmp_path, MINIMAL, [override])


def test_a_yaml_syntax_error_names_its_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("competition:\n  name: x\n  task: [classification\ndata:\n  layout: pixel_columns\n")
    with pytest.raises(PipelineError, match=r"broken.yaml is not valid YAML at line 4, column 5"):
        C.load(path)


def test_an_augmentation_outside_its_tasks_is_refused_as_the_registry_says(tmp_path):
    keypoints = {**MINIMAL, "competition": {"name": "f", "task": "keypoints"}, "data": {"layout": "pixel_string"}}
    message = load_error(tmp_path, keypoints, ["aug.random_resized_crop=0.5"])
    assert "aug.random_resized_crop may cut the targets out of the image, which keypoints cannot have" in message


@pytest.mark.parametrize("budget", ["-5m", "0", "infs", "nan"])
def test_a_duration_is_a_finite_time_above_zero(tmp_path, budget):
    said = load_error(tmp_path, MINIMAL, [f"train.time_budget={budget}"])
    assert "train.time_budget" in said and "a finite time above zero" in said and "\n" not in said
    assert C.seconds("1.5m") == 90.0
    assert C.load(write(tmp_path, MINIMAL), ["train.time_budget=600"]).train.time_budget == 600  # seconds, as said


def test_a_key_named_on_the_command_line_is_pinned_against_the_tuned_settings(tmp_path, monkeypatch, capsys):
    from pipeline.learn import plan
    from pipeline.paths import Paths

    monkeypatch.chdir(tmp_path)
    cfg = C.load(write(tmp_path, MINIMAL), ["train.weight_decay=0.01", "train.experiment=a", "aug.rotate=5"])
    assert cfg.train.pinned == ["train.weight_decay", "aug.rotate"]
    paths = Paths.of(cfg)
    paths.tuned_yaml.parent.mkdir(parents=True)
    paths.tuned_yaml.write_text("train.weight_decay: 0.05\ntrain.lr: 0.002\n")
    assert plan.tuned_settings(cfg, paths) == {"train.lr": 0.002}
    said = capsys.readouterr().out
    assert "train.lr=0.002; kept as train.pinned (or the command line) sets them: train.weight_decay=0.01" in said
    assert plan.tuned_settings(C.load(write(tmp_path, MINIMAL), ["train.experiment=a"]), paths) == {
        "train.weight_decay": 0.05,
        "train.lr": 0.002,
    }
    assert "'train.weight_decy' is not a config key" in load_error(
        tmp_path, MINIMAL, ["train.pinned=[train.weight_decy]"]
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("predict.tta=[shift:inf]", "view 'shift:inf': shift's value is a number from 0.01 to 0.45"),
        ("predict.tta=[shift:0.5]", "shift's value is a number from 0.01 to 0.45"),
        ("predict.tta=[scale:nan]", "view 'scale:nan': scale's value is a number from 0.5 to 2"),
        ("predict.tta=[scale:0]", "scale's value is a number from 0.5 to 2"),
        ("model.image_size=7", "key 'model.image_size' = 7: a side of at least 16 pixels"),
        ("model.image_size=0", "a side of at least 16 pixels"),
    ],
)
def test_values_that_make_no_sense_are_refused_naming_the_rule(tmp_path, override, message):
    assert message in load_error(tmp_path, MINIMAL, [override])


def test_a_latin1_config_a_whole_section_override_and_a_stem_with_spaces(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("competition: {name: café, task: classification}\n".encode("latin-1"))
    with pytest.raises(PipelineError, match=r"latin.yaml is not UTF-8 text \(byte 0xe9 on line 1\): save it as UTF-8$"):
        C.load(latin)
    assert "override 'train=5' would replace the section 'train'" in load_error(tmp_path, MINIMAL, ["train=5"])
    spaced = tmp_path / "my digits (v2).yaml"
    spaced.write_text(yaml.safe_dump(MINIMAL))
    assert C.load(spaced).train.experiment == "my-digits-v2"
