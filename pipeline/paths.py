"""Where each stage reads and writes, derived from the config alone: every artifact's name is
spelled here and nowhere else."""

from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Config


@dataclass(frozen=True)
class FitFiles:
    """What one fit (a fold, or the full fit) leaves in its folder."""

    root: Path

    @property
    def model(self) -> Path:
        """The weights predict uses (the epoch train.checkpoint keeps) and what rebuilds the model."""
        return self.root / "model.pt"

    @property
    def checkpoint(self) -> Path:
        """The whole training state after the last completed epoch, for resuming; removed when done."""
        return self.root / "last.pt"

    @property
    def result(self) -> Path:
        """Written last: its presence means the fit finished."""
        return self.root / "result.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def oof(self) -> Path:
        """id, fold, targets and the kept epoch's predictions, in the competition's units."""
        return self.root / "oof.csv"

    def valid_predictions(self, epoch: str) -> Path:
        """Raw predictions on the validation rows at the "best" or the "last" epoch, with sizes."""
        return self.root / f"valid_{epoch}.npy"


@dataclass(frozen=True)
class Paths:
    data: Path  # the competition's files, as it ships them (+ extra/ from scraping)
    runs: Path  # everything the stages produce

    @classmethod
    def of(cls, cfg: Config) -> "Paths":
        return cls(data=Path(cfg.data.dir), runs=cfg.runs_dir)

    @property
    def extra_csv(self) -> Path:
        return self.data / "extra.csv"

    @property
    def folds_csv(self) -> Path:
        return self.runs / "folds.csv"

    @property
    def cv_json(self) -> Path:
        """The train stage's summary, written last: its presence means the stage finished."""
        return self.runs / "cv.json"

    def fold(self, k: int) -> FitFiles:
        return FitFiles(self.runs / _fold_dir(k))

    @property
    def full(self) -> FitFiles:
        return FitFiles(self.runs / "full")

    @property
    def budget_json(self) -> Path:
        """train.time_budget's decision: the epochs that fit, kept for re-runs of the same config."""
        return self.runs / "budget.json"

    @property
    def budget_probe(self) -> FitFiles:
        """The timed epoch's fit, removed once timed."""
        return FitFiles(self.runs / "budget-probe")

    @property
    def tune_dir(self) -> Path:
        return self.runs / "tune"

    @property
    def best_yaml(self) -> Path:
        """The best trial's overrides, merged into the config by train, predict and report."""
        return self.tune_dir / "best.yaml"

    def trial(self, number: int) -> Path:
        """A tuning trial's config and, per fold, its fit's files (weights removed when it ends)."""
        return self.tune_dir / f"trial-{number}"

    def trial_fold(self, number: int, k: int) -> FitFiles:
        return FitFiles(self.trial(number) / _fold_dir(k))

    @property
    def report_dir(self) -> Path:
        return self.runs / "report"

    @property
    def stamps(self) -> Path:
        """One file per stage holding the config it depends on, rewritten only when that changes."""
        return self.runs / ".stamps"

    def cache(self, split: str) -> Path:
        return self.runs / "cache" / split

    def resolved(self, stage: str) -> Path:
        """The resolved config, saved beside what `stage` produced."""
        return self.runs / f"{stage}.config.yaml"


def _fold_dir(k: int) -> str:
    return f"fold{k}"
