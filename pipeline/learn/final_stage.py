"""train.final_size: after the main schedule, each fit (every fold and the full fit alike) goes on
for a few epochs at a larger input side, from the weights the main schedule kept; the weights,
validation predictions and CV of the fit are the last stage's, so TTA and predict read them at
that side (a saved model's meta carries its side).

The main schedule trains in the fit's `main/` folder (FitFiles.main_stage) with its own
checkpoint and result, so a killed run resumes either stage where it stopped. The last stage
trains everything at `lr`, cosine down with no warm-up, and averages nothing (train.average is
the main schedule's). Tuning trials train the main schedule alone.
"""

import dataclasses

import numpy as np
import pandas as pd

from pipeline import config as C
from pipeline.errors import PipelineError
from pipeline.files import write_csv
from pipeline.learn import distributed
from pipeline.learn.fit import fit
from pipeline.learn.fit_setup import Setup
from pipeline.paths import FitFiles
from pipeline.records import FitResult


def fit_in_stages(
    setup: Setup,
    train_rows: np.ndarray,
    valid_rows: np.ndarray | None,
    out: FitFiles,
    epochs: int,
    fingerprint: str,
    name: str,
    on_checkpoint=None,
    stop_after: int | None = None,
) -> FitResult:
    """fit(), then with train.final_size its last stage; a head start (`stop_after`) stops in the
    main schedule."""
    final, hooks = setup.cfg.train.final_size, {"on_checkpoint": on_checkpoint}
    if final is None:
        return fit(setup, train_rows, valid_rows, out, epochs, fingerprint, name, **hooks, stop_after=stop_after)
    main = out.main_stage
    done = FitResult.read(main.result)
    if done is None or done.fingerprint != fingerprint:
        done = fit(setup, train_rows, valid_rows, main, epochs, fingerprint, name, **hooks, stop_after=stop_after)
        if stop_after is not None:
            return done
        done.save(main.result)
    larger, named = at_final_size(setup), f"{name} at {final.image_size} px"
    last = fit(larger, train_rows, valid_rows, out, final.epochs, fingerprint, named, **hooks, init_from=main.model)
    if distributed.is_main():
        _join_histories(main, out, {"main": setup.image_size, "last": final.image_size}, epochs)
    return dataclasses.replace(last, best_epoch=last.best_epoch + epochs, last_epoch=last.last_epoch + epochs)


def _join_histories(main: FitFiles, out: FitFiles, sides: dict[str, int], epochs: int) -> None:
    """The fit's metrics.csv as one history: the main schedule's epochs, then the last stage's
    numbered on from them, each row with its side."""
    first, last = pd.read_csv(main.metrics), pd.read_csv(out.metrics)
    joined = pd.concat(
        [first.assign(image_size=sides["main"]), last.assign(epoch=last["epoch"] + epochs, image_size=sides["last"])]
    )
    write_csv(out.metrics, joined)


def total_epochs(cfg: C.Config) -> int:
    """The epochs a fit trains: the main schedule's, then the last stage's."""
    final = cfg.train.final_size
    return cfg.train.epochs + (final.epochs if final is not None else 0)


def check(setup: Setup) -> None:
    """The last stage's settings, checked before any fit trains."""
    if setup.cfg.train.final_size is not None:
        at_final_size(setup)


def at_final_size(setup: Setup) -> Setup:
    """The setup the last stage trains with: the larger side, its epochs and learning rate, on a
    cosine with no warm-up, nothing frozen, no weights loaded but the main schedule's."""
    final = setup.cfg.train.final_size
    if final.image_size <= setup.image_size:
        raise PipelineError(
            f"train.final_size.image_size={final.image_size} is not larger than the {setup.image_size} px the main "
            "schedule trains at: the last stage goes up in size"
        )
    overrides = {
        "model.image_size": final.image_size,
        "model.pretrained": "none",
        "model.freeze_depth": 0,
        "model.freeze_blocks": 0,
        "model.unfreeze_epoch": None,
        "train.epochs": final.epochs,
        "train.lr": final.lr,
        "train.scheduler": "cosine",
        "train.warmup_epochs": 0,
        "train.average": None,
        "train.final_size": None,
    }
    cfg = C.with_overrides(setup.cfg, overrides, f"train.final_size={final.model_dump()}")
    return dataclasses.replace(setup, cfg=cfg, image_size=final.image_size)
