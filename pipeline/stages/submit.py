"""`make submit`: a submission uploaded with the Kaggle CLI, its CV in the message, refused when
the file changed after `make predict` wrote it; its public score read back into the ledger."""

from pathlib import Path

from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.files import sha256_file
from pipeline.kaggle import kaggle_cli
from pipeline.kaggle.submission import checked_file, ledger_row_of, newest, update_ledger


def submit(cfg: Config, file: str | None = None) -> None:
    if not cfg.competition.kaggle:
        raise PipelineError("competition.kaggle is not set: no Kaggle competition to submit to")
    path = newest(cfg, file)
    checked_file(cfg, path)
    row = ledger_row_of(path)
    if row is not None and isinstance(row["sha256"], str) and row["sha256"] != sha256_file(Path(path)):
        raise PipelineError(f"{path} was changed after `make predict` wrote it: its ledger row's CV is not its")
    message = (
        f"CV {row['cv_metric']} {row['cv_score']:.5f} config {row['config_hash']}" if row is not None else "pipeline"
    )
    kaggle_cli.submit(cfg.competition.kaggle, Path(path), message)
    print(f"submitted {path} to {cfg.competition.kaggle}: {message}")
    if cfg.predict.submit_wait:
        public = kaggle_cli.public_score(cfg.competition.kaggle, Path(path).name, cfg.predict.submit_wait)
        update_ledger(path, public_score=public)
        print(f"public score {public}")
