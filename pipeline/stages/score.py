"""`make score`: a submission's competition metric against the local answers (data.solution), stored
in its ledger row."""

from pathlib import Path

from pipeline import tasks
from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.kaggle.submission import ledger_row_of, newest, read_submission, update_ledger, validate


def score(cfg: Config, file: str | None = None) -> float:
    """The competition metric of a submission against the solution file, stored in the ledger."""
    if cfg.data.solution is None:
        raise PipelineError("data.solution is not set: this competition has no local answers to score against")
    path = newest(cfg, file)
    solution = read_submission(Path(cfg.data.dir) / cfg.data.solution)
    submitted = validate(read_submission(Path(path)), solution)
    row = ledger_row_of(path)
    metric = row["cv_metric"] if row is not None else tasks.metric_of(cfg)
    value = tasks.get(cfg.competition.task).score_file(metric, submitted, solution)
    update_ledger(path, local_score=value)
    print(f"{path}: {metric} {value:.5f} on the held-out answers in {cfg.data.solution}")
    return value
