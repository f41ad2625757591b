"""`make submissions`: the ledger as a table, best CV first, each file's stated CV beside its local
and public scores and the gaps between them."""

import numpy as np
import pandas as pd

from pipeline import tasks
from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.kaggle.submission import read_ledger
from pipeline.paths import SUBMISSIONS


def _higher_is_better(metric: str) -> bool | None:
    try:
        return tasks.higher_is_better(metric)
    except PipelineError:  # a ledger row from an older version, or hand-made
        return None


def show(cfg: Config) -> None:
    """The ledger as a table, best CV first: the CV each file states beside its local and public
    scores, and the gap between them (score - CV)."""
    ledger = read_ledger()
    if ledger.empty:
        print(f"{SUBMISSIONS.ledger} is empty: run `make predict`")
        return
    higher = ledger["cv_metric"].map(_higher_is_better).fillna(True)
    cv = pd.to_numeric(ledger["cv_score"], errors="coerce")
    for column in ("local", "public"):
        ledger[f"{column}_gap"] = pd.to_numeric(ledger[f"{column}_score"], errors="coerce") - cv
    ledger = ledger.assign(_key=np.where(higher, -cv, cv)).sort_values("_key")
    columns = ["file", "models", "tta", "cv_metric", "cv_score", "cv_std", "local_score", "local_gap"]
    columns += ["public_score", "public_gap", "config_hash"]
    print(ledger[columns].to_string(index=False, na_rep="", float_format=lambda v: f"{v:.5f}"))
