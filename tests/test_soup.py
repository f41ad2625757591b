"""train.average=greedy_soup: the greedy recipe, chosen for each fold on the other folds alone,
and a train stage that keeps, states and resumes each fit's soup."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run, tiny

from pipeline import config as C
from pipeline.errors import PipelineError
from pipeline.learn import soup
from pipeline.learn.schedule import Fit, Speed, averaging_seconds
from pipeline.paths import Paths
from pipeline.records import Soup

DIGITS = {"layout": "pixel_columns", "sample_submission": None}


def test_the_greedy_soup_adds_each_epoch_in_order_of_its_score_while_the_soup_holds():
    scores = {(3,): 0.5, (4,): 0.7, (5,): 0.6, (4, 5): 0.72, (3, 4, 5): 0.71}
    asked = []

    def score(recipe):
        asked.append(recipe)
        return scores[recipe]

    assert soup.greedy([3, 4, 5], score, higher_is_better=True) == (4, 5)  # 3 lowers it: left out
    assert asked.index((4, 5)) < asked.index((3, 4, 5))  # the better epoch is offered first
    losses = {(3,): 0.5, (4,): 0.7, (5,): 0.6, (3, 5): 0.5, (3, 4, 5): 0.49}
    assert soup.greedy([3, 4, 5], losses.__getitem__, higher_is_better=False) == (3, 4, 5)
    assert soup.greedy([1, 2], {(1,): 0.5, (2,): 0.5, (1, 2): 0.4}.__getitem__, higher_is_better=True) == (2,)


def test_a_folds_recipe_is_chosen_without_its_own_validation_rows():
    class Tasting(soup.Kitchen):
        def score(self, fold, recipe):
            tasted.append(fold)
            return {0: 1.0, 1: 0.0, 2: 0.5}[fold] * len(recipe) + recipe[-1] / 100

    tasted = []
    setup = type("S", (), {"cfg": tiny(DIGITS, epochs=4, average={"kind": "greedy_soup", "k": 3}), "task": None})
    setup.task = type("T", (), {"higher_is_better": True})
    kitchen = Tasting(setup, lambda fold: None, lambda fold: None, "fp")
    assert kitchen.offered == [2, 3, 4]
    kitchen.choose([1, 2])
    assert set(tasted) == {1, 2}
    assert kitchen.choose([]) == (2, 3, 4)  # nothing to choose on: every epoch offered


def test_a_budget_counts_the_soups_each_fold_makes_and_an_averages_norm_pass():
    speed = Speed(side=32, frozen_s=0.01, unfrozen_s=0.01, valid_s=0.001, start_s=2.0, epoch_s=0.5)
    fold, full = Fit(fold=0, train_rows=800, valid_rows=200), Fit(fold=None, train_rows=1000, valid_rows=0)
    soups = C.Average(kind="greedy_soup", k=3)
    assert averaging_seconds(speed, fold, soups) == pytest.approx(3 * (2.0 + 1000 * 0.001))
    assert averaging_seconds(speed, full, soups) == pytest.approx(2.0 + 1000 * 0.001)
    assert averaging_seconds(speed, fold, C.Average(kind="swa")) == pytest.approx(800 * 0.001)
    assert averaging_seconds(speed, fold, None) == 0.0


def test_greedy_soup_with_a_last_stage_is_refused():
    with pytest.raises(PipelineError, match="greedy_soup chooses its epochs once every fold has trained"):
        tiny(DIGITS, average={"kind": "greedy_soup"}, final_size={"image_size": 48})


def test_each_fit_keeps_the_soup_the_other_folds_chose_and_a_rerun_keeps_it(digits_dir, tmp_path, monkeypatch, capsys):
    cfg = tiny({**DIGITS, "dir": str(digits_dir)}, epochs=3, average={"kind": "greedy_soup", "k": 3})
    cv = run(cfg, tmp_path, monkeypatch)
    paths = Paths.of(cfg)
    for k, other in ((0, 1), (1, 0)):
        served = Soup.read(paths.fold(k).soup)
        assert served.chosen_on == [other] and set(served.epochs) <= {1, 2, 3}
        assert cv["last"]["folds"][k] == pytest.approx(served.score)
        assert json.loads(paths.fold(k).result.read_text())["last_score"] == pytest.approx(served.score)
        kept = torch.load(paths.fold(k).model, weights_only=True)["state_dict"]
        ingredients = [torch.load(paths.fold(k).ingredient(e), weights_only=True) for e in served.epochs]
        conv = next(name for name, value in kept.items() if value.ndim == 4)
        assert torch.allclose(kept[conv], sum(i[conv] for i in ingredients) / len(ingredients), atol=1e-6)
        oof = pd.read_csv(paths.fold(k).oof)
        assert len(oof) == int((pd.read_csv(paths.folds_csv)["fold"] == k).sum())
    assert Soup.read(paths.full.soup).chosen_on == [0, 1]
    assert cv["averaged"].startswith("the last 3 epochs' weights offered to a greedy soup the other folds choose")
    said = capsys.readouterr().out
    assert "greedy soup of epochs" in said

    def cooked(*args):
        raise AssertionError("a served soup was made again")

    monkeypatch.setattr(soup.Kitchen, "cook", cooked)
    assert run(cfg, tmp_path, monkeypatch) == cv


def test_a_fold_alone_takes_every_epoch_offered(digits_dir, tmp_path, monkeypatch):
    cfg = tiny({**DIGITS, "dir": str(digits_dir)}, epochs=2, full_fit=False, folds=[1], average={"kind": "greedy_soup"})
    cv = run(cfg, tmp_path, monkeypatch)
    served = Soup.read(Paths.of(cfg).fold(1).soup)
    assert served.epochs == [1, 2] and served.chosen_on == [] and np.isfinite(served.score)
    assert "epochs' weights averaged, all of them (one fold: no other fold to choose a soup)" in cv["averaged"]


def test_a_run_killed_between_two_folds_soups_serves_the_rest_on_the_next(digits_dir, tmp_path, monkeypatch):
    cfg = tiny({**DIGITS, "dir": str(digits_dir)}, epochs=3, full_fit=False, average={"kind": "greedy_soup"})
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    uninterrupted = run(cfg, tmp_path / "a", monkeypatch)
    save = Soup.save

    def killed(self, path):
        save(self, path)
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(Soup, "save", killed)
        with pytest.raises(KeyboardInterrupt):
            run(cfg, tmp_path / "b", monkeypatch)
    assert run(cfg, tmp_path / "b", monkeypatch) == uninterrupted
