"""Where each stage reads and writes, derived from the config alone: every artifact's name is
spelled here and nowhere else."""

from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Config
from pipeline.stage_table import STAGES


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
    def main_stage(self) -> "FitFiles":
        """With train.final_size: the main schedule's fit, which the last stage goes on from."""
        return FitFiles(self.root / "main")

    @property
    def previous(self) -> "FitFiles":
        """Where an earlier fit of another config waits until this one's first checkpoint."""
        return FitFiles(self.root.with_name(self.root.name + ".previous"))

    def ingredient(self, epoch: int) -> Path:
        """train.average=greedy_soup: the weights of one of the last epochs, offered to the soup."""
        return self.root / "ingredients" / f"epoch{epoch}.pt"

    @property
    def soup(self) -> Path:
        """train.average=greedy_soup: the epochs averaged into model.pt and the folds that chose them."""
        return self.root / "soup.json"

    @property
    def oof(self) -> Path:
        """id, fold, targets and the kept epoch's predictions, in the competition's units."""
        return self.root / "oof.csv"

    def valid_predictions(self, epoch: str) -> Path:
        """Raw predictions on the validation rows, with sizes (predictions.Raw): at the "best" or
        the "last" epoch, or the kept epoch's through TTA views (inference.views_key)."""
        return self.root / f"valid_{epoch}.npz"

    def test_predictions(self, views: str) -> Path:
        """Raw predictions on the test images through TTA views (inference.views_key), with sizes
        and the test ids they belong to."""
        return self.root / f"test_{views}.npz"


@dataclass(frozen=True)
class DatasetFiles:
    """A packaged Kaggle dataset: the submitted models and what the notebook reads them with."""

    root: Path

    @property
    def metadata(self) -> Path:
        return self.root / "dataset-metadata.json"

    @property
    def bundle(self) -> Path:
        """How the models combine into the submission, and the CV it states."""
        return self.root / "bundle.yaml"

    @property
    def config(self) -> Path:
        """The config the models predict with."""
        return self.root / "config.yaml"

    @property
    def wheels(self) -> Path:
        return self.root / "wheels"

    @property
    def second_level(self) -> Path:
        """A stacked blend's trees (learn.stacking.Stacker)."""
        return self.root / "second_level.pkl"

    def model(self, experiment: str, fit: FitFiles) -> FitFiles:
        """A submitted model's copy: models/<experiment>/<fold or full>/model.pt."""
        return FitFiles(self.root / "models" / experiment / fit.root.name)


@dataclass(frozen=True)
class PackageFiles:
    """package/<name>/: for a code competition, a Kaggle dataset (the models) and a Kaggle
    kernel (the inference notebook)."""

    root: Path

    @property
    def dataset(self) -> DatasetFiles:
        return DatasetFiles(self.root / "dataset")

    @property
    def kernel(self) -> Path:
        return self.root / "kernel"

    @property
    def kernel_metadata(self) -> Path:
        return self.kernel / "kernel-metadata.json"

    def notebook(self, slug: str) -> Path:
        return self.kernel / f"{slug}.ipynb"

    @property
    def rehearsal(self) -> Path:
        """The last passing rehearsal's figures and the sha256 of every file it ran: `make push`
        uploads only what was rehearsed."""
        return self.root / "rehearsal.json"

    @property
    def expected_submission(self) -> Path:
        """What `make predict` writes for the packaged models: the notebook's must equal it."""
        return self.root / "expected_submission.csv"


@dataclass(frozen=True)
class SubmissionFiles:
    """submissions/: every competition's submission files, and the one ledger that records them."""

    root: Path = Path("submissions")

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.csv"

    @property
    def ledger_lock(self) -> Path:
        """Held by every ledger update: two `make predict` at once must not drop a row."""
        return self.root / ".ledger.lock"

    def folder(self, competition: str) -> Path:
        return self.root / competition


SUBMISSIONS = SubmissionFiles()


@dataclass(frozen=True)
class Paths:
    """runs/<name>/ holds what a competition's experiments share (the folds, the image cache,
    the blends, the report); runs/<name>/<experiment>/ what one experiment trained."""

    data: Path  # the competition's files, as it ships them (+ extra/ from scraping)
    runs: Path  # runs/<name>
    experiment_name: str
    tuned_from: str  # the experiment whose tuned settings this one's training merges

    @classmethod
    def of(cls, cfg: Config) -> "Paths":
        name = cfg.train.experiment
        return cls(Path(cfg.data.dir), cfg.runs_dir, name, cfg.train.tuned_from or name)

    def of_experiment(self, name: str) -> "Paths":
        return Paths(self.data, self.runs, name, name)

    @property
    def experiment(self) -> Path:
        return self.runs / self.experiment_name

    @property
    def extra_csv(self) -> Path:
        """The scrape stage's manifest, written when the stage finishes: Make's target."""
        return self.data / "extra.csv"

    @property
    def scrape_progress(self) -> Path:
        """The manifest as the scrape goes, which a re-run resumes from; never a Make target, so
        an interrupted scrape is neither deleted by Make nor taken for a finished one."""
        return self.data / "extra.progress.csv"

    @property
    def folds_csv(self) -> Path:
        return self.runs / "folds.csv"

    @property
    def cv_json(self) -> Path:
        """The train stage's summary, written last: its presence means the experiment finished."""
        return self.experiment / "cv.json"

    def fold(self, k: int) -> FitFiles:
        return FitFiles(self.experiment / _fold_dir(k))

    @property
    def full(self) -> FitFiles:
        return FitFiles(self.experiment / "full")

    def fits(self) -> list[FitFiles]:
        """The fold and full fits the experiment's folder holds."""
        folds = sorted(p for p in self.experiment.glob("fold*") if p.name.removeprefix("fold").isdigit())
        return [FitFiles(p) for p in folds] + ([self.full] if self.full.root.is_dir() else [])

    @property
    def sources_json(self) -> Path:
        """model.pretrained as first decided per model.name, kept for later runs (defaults.Facts)."""
        return self.experiment / "pretrained_sources.json"

    @property
    def budget_json(self) -> Path:
        """train.time_budget's decision: the epochs that fit, kept for re-runs of the same config."""
        return self.experiment / "budget.json"

    @property
    def budget_probe(self) -> FitFiles:
        """The timed epoch's fit, removed once timed."""
        return FitFiles(self.experiment / "budget-probe")

    @property
    def tune_dir(self) -> Path:
        return self.experiment / "tune"

    @property
    def best_yaml(self) -> Path:
        """The best trial's overrides, merged into the config by train, predict and report."""
        return self.tune_dir / "best.yaml"

    @property
    def tuned_yaml(self) -> Path:
        """The best.yaml that train merges: this experiment's own, or train.tuned_from's."""
        return self.of_experiment(self.tuned_from).best_yaml

    def tune_file(self, what: str) -> Path:
        """The search's own files: "journal" (the default storage), "config" (what its worker
        processes load), "trials", "importances", "history"."""
        names = {
            "journal": "journal.log",
            "config": "config.yaml",
            "trials": "trials.csv",
            "importances": "importances.json",
            "history": "history.png",
        }
        return self.tune_dir / names[what]

    def tune_lock(self, study: str) -> Path:
        return self.tune_dir / f"{study}.lock"

    def tune_heartbeat(self, worker: str) -> Path:
        """Touched by a tuning worker (host-pid-start) while it lives."""
        return self.tune_dir / "workers" / f"{worker}.alive"

    def trial(self, number: int) -> Path:
        """A tuning trial's config and, per fold, its fit's files (weights removed when it ends)."""
        return self.tune_dir / f"trial-{number}"

    def trial_config(self, number: int) -> Path:
        return self.trial(number) / "config.yaml"

    def trial_fold(self, number: int, k: int) -> FitFiles:
        return FitFiles(self.trial(number) / _fold_dir(k))

    def lr_find(self, suffix: str) -> Path:
        """The learning-rate finder's curve: "csv" or "png"."""
        return self.experiment / f"lr_find.{suffix}"

    @property
    def report_dir(self) -> Path:
        return self.runs / "report"

    @property
    def blends_dir(self) -> Path:
        return self.runs / "blends"

    def blend(self, name: str) -> Path:
        """A blend's members, weights and scores."""
        return self.blends_dir / f"{name}.yaml"

    def blend_model(self, name: str) -> Path:
        """A stacked blend's second level (learn.stacking.Stacker)."""
        return self.blends_dir / f"{name}.stack.pkl"

    @property
    def package(self) -> PackageFiles:
        return PackageFiles(Path("package") / self.runs.name)

    @property
    def inputs_stamp(self) -> Path:
        """The competition's files, a line each (inputs.py): the data stage's dependency on them."""
        return self.runs / ".stamps" / "inputs.tsv"

    @property
    def inputs_hashes(self) -> Path:
        """The tables' sha256 by size and time, so that only a changed table is hashed again."""
        return self.runs / ".stamps" / "inputs.hashes.json"

    def stamp(self, stage: str) -> Path:
        """The config `stage` depends on, rewritten only when that changes."""
        return self._home(stage) / ".stamps" / f"{stage}.yaml"

    def cache(self, split: str) -> Path:
        return self.runs / "cache" / split

    def resolved(self, stage: str) -> Path:
        """The resolved config, saved beside what `stage` produced."""
        return self._home(stage) / f"{stage}.config.yaml"

    def experiments(self) -> list[str]:
        """The competition's experiments that finished training, oldest first."""
        finished = [d for d in self.runs.iterdir() if (d / "cv.json").is_file()] if self.runs.is_dir() else []
        return [d.name for d in sorted(finished, key=lambda d: ((d / "cv.json").stat().st_mtime, d.name))]

    def _home(self, stage: str) -> Path:
        return self.runs if stage in STAGES and STAGES[stage].shared else self.experiment


def _fold_dir(k: int) -> str:
    return f"fold{k}"
