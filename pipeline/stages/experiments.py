"""`make experiments`: one row per experiment of the competition that finished training, best
CV first, with what sets it apart from the competition's first experiment."""

import pandas as pd

from pipeline import config as C
from pipeline.learn.experiments import table
from pipeline.paths import Paths


def show(cfg: C.Config) -> None:
    paths = Paths.of(cfg)
    frame = table(paths)
    if frame.empty:
        print(f"no experiment of {cfg.competition.name} has finished training: run `make train`")
        return
    with pd.option_context("display.width", 250, "display.max_colwidth", 80, "display.float_format", "{:.5f}".format):
        print(frame.to_string(index=False))
