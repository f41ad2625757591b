import json
import os
import re
import stat
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import KEYPOINTS, run, tiny

from pipeline.augment import tta
from pipeline.cli import main
from pipeline.config import Train
from pipeline.errors import PipelineError
from pipeline.learn import inference
from pipeline.learn.device import Device
from pipeline.predictions import Raw
from pipeline.stages import predict, score, submit
from pipeline.tasks.keypoints import Keypoints


class BrightestPoints(torch.nn.Module):
    """A flip-equivariant 'model': the left point is the brightest pixel in the left half of the
    image, the right point the brightest in the right half, in [-1, 1] pixel-centre coordinates."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        half = width // 2
        points = []
        for part, offset in ((images[..., :half], 0), (images[..., half:], half)):
            flat = part[:, 0].reshape(batch, -1).argmax(dim=1)
            x, y = flat % half + offset, flat // half
            points += [(x + 0.5) / (width / 2) - 1, (y + 0.5) / (height / 2) - 1]
        return torch.stack(points, dim=1).float()


def test_keypoint_tta_maps_points_back_exactly():
    images = torch.zeros(3, 1, 16, 16)
    points = [(2, 3, 12, 9), (5, 2, 10, 13), (4, 11, 13, 4)]  # away from the borders and the half line
    for i, (lx, ly, rx, ry) in enumerate(points):
        images[i, 0, ly, lx], images[i, 0, ry, rx] = 1.0, 0.8
    batches = [(images, torch.zeros(3), torch.full((3, 2), 16.0))]
    task, device = Keypoints(KEYPOINTS), Device.choose(Train(device="cpu"))
    assert task.flip_swap.tolist() == [1, 0]
    plain, _ = inference.predict_images(BrightestPoints(), task, batches, device, tta.views([]))
    for named in (["hflip"], ["vflip"], ["shift:0.0625"], ["hflip", "vflip", "shift:0.0625"]):
        with_tta, _ = inference.predict_images(BrightestPoints(), task, batches, device, tta.views(named))
        np.testing.assert_allclose(with_tta, plain, atol=1e-5, err_msg=str(named))


def test_views_are_exact_inverses_of_their_maps():
    points = torch.tensor([[[0.25, -0.5], [-0.75, 0.125]]])
    for view in tta.views(["hflip", "vflip", "shift:0.1", "scale:1.25"]):
        inverse = torch.linalg.inv(torch.cat([view.theta, torch.tensor([[0.0, 0, 1]])]))[:2]
        moved = tta.View(inverse).to_image(points)
        torch.testing.assert_close(tta.View(view.theta).to_image(moved), points)


def test_predict_stage_with_fold_and_full_models_and_tta(digits_dir, tmp_path, monkeypatch, capsys):
    cfg = tiny({"layout": "pixel_columns", "dir": str(digits_dir), "solution": "solution.csv"})
    cfg.predict.models, cfg.predict.weights, cfg.predict.tta = "both", "score", ["shift:0.05"]
    run(cfg, tmp_path, monkeypatch)
    predict.run(cfg)
    submissions = list((tmp_path / "submissions/tiny").glob("*.csv"))
    assert len(submissions) == 1
    written = pd.read_csv(submissions[0])
    assert list(written.columns) == ["ImageId", "Label"]
    out = capsys.readouterr().out
    assert out.count("predicted 5 test images") == 3  # two folds and the full model
    # the labels are those of the models' TTA predictions averaged with the weights predict states
    weights = {
        m[1]: float(m[2])
        for m in re.finditer(r"runs/tiny/tiny/(\w+)/model\.pt in the submission, weight ([\d.]+)", out)
    }
    assert sorted(weights) == ["fold0", "fold1", "full"] and sum(weights.values()) == pytest.approx(1.0, abs=2e-3)
    runs = tmp_path / "runs/tiny/tiny"
    averaged = sum(w * Raw.load(runs / fit / "test_shift0.05.npz").predictions for fit, w in weights.items())
    np.testing.assert_array_equal(written["Label"].to_numpy(), averaged.argmax(axis=1))

    truth = pd.read_csv(digits_dir / "solution.csv")["Label"].to_numpy()
    assert score.score(cfg) == pytest.approx((written["Label"].to_numpy() == truth).mean())


def test_keypoint_submission_is_clipped_to_the_image(faces_dir, tmp_path, monkeypatch):
    cfg = tiny({"layout": "pixel_string", "dir": str(faces_dir)}, task="keypoints")
    cfg.predict.tta = ["hflip"]
    run(cfg, tmp_path, monkeypatch)
    predict.run(cfg)
    written = pd.read_csv(next((tmp_path / "submissions/tiny").glob("*.csv")))
    assert written["RowId"].tolist() == [1, 2, 3, 4, 5]
    assert written["Location"].between(0, 31).all()


def test_predict_before_train_is_a_clear_error(digits_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError, match="run `make train` first"):
        predict.run(tiny({"layout": "pixel_columns", "dir": str(digits_dir)}))


FAKE_KAGGLE = """\
    #!{python}
    # A stand-in for the Kaggle CLI (the service cannot be reached from here): it records its
    # arguments, answers `submissions --csv` with a scored row, and `download` with a zip.
    import json, os, sys, zipfile
    with open(os.environ["FAKE_KAGGLE_LOG"], "a") as log:
        log.write(json.dumps(sys.argv[1:]) + "\\n")
    if os.environ.get("FAKE_KAGGLE_OFFLINE"):  # requests' words when kaggle.com's name does not resolve
        print("ConnectionError: Max retries exceeded with url: /api/v1/competitions/submissions/url", file=sys.stderr)
        print("Failed to establish a new connection: [Errno -3] Temporary failure in name resolution", file=sys.stderr)
        sys.exit(1)
    if os.environ.get("FAKE_KAGGLE_UNCHECKED"):  # a token it could not check, offline
        print("You must authenticate before you can call the Kaggle API.", file=sys.stderr)
        sys.exit(1)
    if not any(os.environ.get(k) for k in ("KAGGLE_KEY", "KAGGLE_API_TOKEN")):
        print("Authentication required to call the Kaggle API.", file=sys.stderr)
        print("Option A: export KAGGLE_API_TOKEN=...", file=sys.stderr)
        sys.exit(1)
    if sys.argv[2] == "submissions":  # the real 2.x CLI warns on stdout before the CSV
        print("Warning: Your Kaggle API key is readable by other users on this system!")
        print("Warning: Looks like you're using an outdated API Version, please consider updating")
        print("fileName,date,description,status,publicScore,privateScore")
        print(f"{{os.environ['FAKE_KAGGLE_FILE']}},2026-11-22,x,complete,0.97321,")
    elif sys.argv[2] == "download":
        folder = sys.argv[sys.argv.index("-p") + 1]
        with zipfile.ZipFile(os.path.join(folder, "comp.zip"), "w") as z:
            rows = ["label,pixel0,pixel1,pixel2,pixel3", "0,0,1,2,3", "1,3,2,1,0", "0,1,1,1,1", "1,2,2,2,2"]
            z.writestr("train.csv", "\\n".join(rows) + "\\n")
            z.writestr("test.csv", "pixel0,pixel1,pixel2,pixel3\\n0,0,0,0\\n")
    elif sys.argv[2] == "submit" and os.environ.get("FAKE_KAGGLE_FAIL"):
        token = os.environ.get("KAGGLE_API_TOKEN") or os.environ["KAGGLE_KEY"]
        print("403 - Forbidden: token " + token + " rejected", file=sys.stderr)
        sys.exit(1)
"""


@pytest.fixture
def fake_kaggle(tmp_path, monkeypatch):
    """Puts a fake `kaggle` executable first on PATH (see FAKE_KAGGLE); returns its log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "kaggle"
    script.write_text(textwrap.dedent(FAKE_KAGGLE.format(python=sys.executable)))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "kaggle.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KAGGLE_LOG", str(log))
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "s3cr3tk3y")
    return log


def two_digit_competition(folder, **predict):
    """Digit Recognizer's files, two training rows of labels 0 and 1, two test rows."""
    from conftest import make_config

    pd.DataFrame({"label": [0, 1], "pixel0": [0, 255]}).to_csv(folder / "train.csv", index=False)
    pd.DataFrame({"pixel0": [0, 255]}).to_csv(folder / "test.csv", index=False)
    pd.DataFrame({"ImageId": [1, 2], "Label": 0}).to_csv(folder / "sample_submission.csv", index=False)
    cfg = make_config({"layout": "pixel_columns", "dir": str(folder)}, predict=predict)
    cfg.competition.kaggle = "digit-recognizer"
    return cfg


@pytest.mark.parametrize(
    ("content", "refused"),
    [
        ("ImageId,Label\n1,0\n3,1\n", "submission ids differ from the sample's 'ImageId' column: '2' is missing"),
        ("ImageId,Label\n1,0\n2,7\n", "submission label 7 is not a known class"),
        ("id,label\n1,0\n2,1\n", "submission columns ['id', 'label'] differ from the sample's"),
        ("", "cannot be read as CSV"),
        ("ImageId,Label\n1,0\n2,1\n".encode("utf-16"), "cannot be read as CSV"),
        ('\x00garbage\x7f,\n"', "cannot be read as CSV"),
    ],
)
def test_submit_checks_the_file_as_predict_would_before_the_upload(
    fake_kaggle, tmp_path, monkeypatch, content, refused
):

    monkeypatch.chdir(tmp_path)
    cfg = two_digit_competition(tmp_path)
    bad = tmp_path / "mine.csv"
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(PipelineError, match=re.escape(refused)):
        submit.submit(cfg, str(bad))
    assert not fake_kaggle.exists()  # no upload: no daily submission burnt


def test_submit_refuses_a_file_changed_since_predict_wrote_it(fake_kaggle, tmp_path, monkeypatch):
    from pipeline.kaggle import submission
    from pipeline.paths import Paths
    from pipeline.records import StatedCV
    from pipeline.tasks.classification import Classification

    monkeypatch.chdir(tmp_path)
    cfg = two_digit_competition(tmp_path)
    stated = StatedCV("accuracy", 0.99, 0.002, "OOF", "full", "tiny")
    path = submission.write(cfg, Paths.of(cfg), pd.DataFrame({"id": [1, 2]}), np.eye(2), Classification([0, 1]), stated)
    path.write_text("ImageId,Label\n1,1\n2,1\n")
    with pytest.raises(PipelineError, match="was changed after `make predict` wrote it"):
        submit.submit(cfg, f"./{path}")
    assert not fake_kaggle.exists()


def test_submit_calls_the_cli_and_stores_the_public_score(fake_kaggle, tmp_path, monkeypatch, capsys):

    from pipeline.kaggle import submission
    from pipeline.paths import Paths
    from pipeline.records import StatedCV
    from pipeline.tasks.classification import Classification

    monkeypatch.chdir(tmp_path)
    cfg = two_digit_competition(tmp_path, submit_wait=1)
    path = submission.write(
        cfg,
        Paths.of(cfg),
        pd.DataFrame({"id": [1, 2]}),
        np.eye(2),
        Classification([0, 1]),
        StatedCV("accuracy", 0.99, 0.002, "OOF of the folds' last epochs, the full fit's recipe", "full", "tiny"),
    )
    monkeypatch.setenv("FAKE_KAGGLE_FILE", path.name)
    submit.submit(cfg)
    calls = [json.loads(line) for line in fake_kaggle.read_text().splitlines()]
    assert calls[0] == [
        "competitions",
        "submit",
        "-c",
        "digit-recognizer",
        "-f",
        str(path),
        "-m",
        f"CV accuracy 0.99000 config {cfg.fingerprint()}",
    ]
    assert calls[1] == ["competitions", "submissions", "-c", "digit-recognizer", "--csv"]
    assert pd.read_csv("submissions/ledger.csv")["public_score"].tolist() == [0.97321]
    monkeypatch.setenv("FAKE_KAGGLE_FAIL", "1")
    for variable, secret in (("KAGGLE_KEY", "s3cr3tk3y"), ("KAGGLE_API_TOKEN", "KGAT_0123456789abcdef")):
        monkeypatch.setenv(variable, secret)
        with pytest.raises(PipelineError) as failure:
            submit.submit(cfg)
        out = capsys.readouterr()
        for text in (str(failure.value), out.out, out.err):
            assert secret not in text
        assert "403 - Forbidden: token *** rejected" in str(failure.value)


def test_missing_cli_or_credentials(tmp_path, monkeypatch, fake_kaggle):
    """Credentials are the CLI's to find (2.x also takes KAGGLE_API_TOKEN, access_token files and
    its own OAuth cache); when it finds none, its words say so, on one line."""
    from pipeline.kaggle import kaggle_cli

    monkeypatch.delenv("KAGGLE_KEY")
    with pytest.raises(PipelineError, match=r"failed: Authentication required to call the Kaggle API\. \(kaggle auth"):
        kaggle_cli.submit("x", tmp_path / "f.csv", "m")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_0123456789abcdef")
    kaggle_cli.submit("x", tmp_path / "f.csv", "m")  # a credential the CLI accepts is not refused
    monkeypatch.setenv("FAKE_KAGGLE_OFFLINE", "1")
    with pytest.raises(PipelineError, match=r"failed: kaggle.com cannot be reached from here \(no network\?\): Failed"):
        kaggle_cli.submit("x", tmp_path / "f.csv", "m")
    monkeypatch.delenv("FAKE_KAGGLE_OFFLINE")
    monkeypatch.setenv("FAKE_KAGGLE_UNCHECKED", "1")
    monkeypatch.setattr(kaggle_cli, "reachable", lambda: False)  # a token here, and no network: not its fault
    with pytest.raises(PipelineError, match=r"cannot be reached from here \(no network\?\): You must authenticate"):
        kaggle_cli.submit("x", tmp_path / "f.csv", "m")
    monkeypatch.delenv("FAKE_KAGGLE_UNCHECKED")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))  # make runs .venv/bin/python off PATH
    kaggle_cli.submit("x", tmp_path / "f.csv", "m")  # the CLI beside it is found
    monkeypatch.setattr(sys, "executable", str(tmp_path / "empty" / "python"))
    with pytest.raises(PipelineError, match="Kaggle CLI is not installed"):
        kaggle_cli.submit("x", tmp_path / "f.csv", "m")


def test_credentials_in_the_clis_files_are_scrubbed_too(tmp_path, monkeypatch):
    from pipeline.kaggle import kaggle_cli

    for name in ("KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KAGGLE_CONFIG_DIR", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle/access_token").write_text("KGAT_fromafile\n")
    (tmp_path / ".config/kaggle").mkdir(parents=True)
    (tmp_path / ".config/kaggle/kaggle.json").write_text('{"username": "me", "key": "legacykey123"}')
    assert kaggle_cli._scrub("token KGAT_fromafile, key legacykey123") == "token ***, key ***"


def test_data_stage_downloads_a_kaggle_competition(fake_kaggle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(
        "competition: {name: dr, task: classification, kaggle: digit-recognizer}\n"
        "data: {layout: pixel_columns, sample_submission: null}\n"
    )
    assert main(["data", "-c", str(config)]) == 0
    assert json.loads(fake_kaggle.read_text().splitlines()[0]) == [
        "competitions",
        "download",
        "-c",
        "digit-recognizer",
        "-p",
        "data/dr",
    ]
    assert (tmp_path / "data/dr/train.csv").exists() and not list((tmp_path / "data/dr").glob("*.zip"))
    assert "4 train rows (2x2x1, cached)" in capsys.readouterr().out
