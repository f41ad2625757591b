"""Where each stage reads and writes, derived from the config alone."""

from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Config


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
    def stamps(self) -> Path:
        """One file per stage holding the config it depends on, rewritten only when that changes."""
        return self.runs / ".stamps"

    def cache(self, split: str) -> Path:
        return self.runs / "cache" / split

    def resolved(self, stage: str) -> Path:
        """The resolved config, saved beside what `stage` produced."""
        return self.runs / f"{stage}.config.yaml"
