"""The stage table, written once: each stage's name, what it does, the config sections whose
change re-runs it, its entry point and options. The CLI, the Make stamps, Paths, the training
plan, the tune study and the experiments table all read it."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    help: str
    sections: tuple[str, ...]  # config sections whose change re-runs the stage
    entry: str  # "module:function"
    options: tuple[str, ...] = ()  # the command-line options it takes: "file", "workers", "gpus"
    shared: bool = False  # its output serves every experiment of the competition (runs/<name>/)


STAGES = {
    "data": Stage(
        "build the demo or check the competition files; decode and cache the images",
        ("competition", "data"),
        "pipeline.stages.data:run",
        shared=True,
    ),
    "scrape": Stage(
        "download extra training images from scrape.sources -> data/<name>/extra/, extra.csv",
        ("competition", "data", "scrape"),
        "pipeline.stages.scrape:run",
        shared=True,
    ),
    "folds": Stage(
        "split the training rows into folds -> runs/<name>/folds.csv",
        ("competition", "data", "folds"),
        "pipeline.stages.folds:run",
        shared=True,
    ),
    "tune": Stage(
        "Optuna search over freeze depth and augmentations -> runs/<name>/<exp>/tune/best.yaml",
        ("competition", "data", "folds", "model", "train", "aug", "tune"),
        "pipeline.stages.tune:run",
        options=("workers",),
    ),
    "tune-report": Stage(
        "the study's trials, parameter importances and history plot -> runs/<name>/<exp>/tune/",
        ("competition", "data", "folds", "model", "train", "aug", "tune"),
        "pipeline.stages.tune:report",
    ),
    "train": Stage(
        "train per fold (OOF, CV score), then on all data",
        ("competition", "data", "folds", "model", "train", "aug"),
        "pipeline.stages.train:run",
        options=("gpus",),
    ),
    "lr-find": Stage(
        "fastai's learning-rate finder on fold 0 -> runs/<name>/<exp>/lr_find.png and a suggestion",
        ("competition", "data", "folds", "model", "train", "aug"),
        "pipeline.stages.lr_find:run",
    ),
    "experiments": Stage(
        "the competition's experiments, best CV first: backbone, size, epochs, CVs, time, what differs",
        ("competition",),
        "pipeline.stages.experiments:show",
    ),
    "blend": Stage(
        "weights for several experiments on their OOF, nested-CV score -> runs/<name>/blends/<blend>.yaml",
        ("competition", "data", "folds", "predict", "blend"),
        "pipeline.stages.blend:run",
    ),
    "predict": Stage(
        "predict the test set (or predict.blend) -> submissions/<name>/<stamp>_<models>_<cv>.csv, a ledger row",
        ("competition", "data", "model", "aug", "predict"),
        "pipeline.stages.predict:run",
    ),
    "package": Stage(
        "Kaggle code competitions: the models predict would submit, as a dataset and an offline notebook "
        "-> package/<name>/",
        ("competition", "data", "model", "aug", "predict", "package"),
        "pipeline.stages.package:run",
    ),
    "rehearse": Stage(
        "run the packaged notebook here as Kaggle would: offline, its image's packages only; check it",
        ("competition", "data", "package"),
        "pipeline.stages.rehearse:run",
    ),
    "push": Stage(
        "upload the rehearsed package with the Kaggle CLI: dataset, kernel, then submit that kernel version",
        ("competition", "package"),
        "pipeline.stages.push:run",
    ),
    "score": Stage(
        "score a submission (default: the newest) against the competition's solution file",
        ("competition",),
        "pipeline.stages.score:score",
        options=("file",),
    ),
    "submissions": Stage(
        "print submissions/ledger.csv, best CV first", ("competition",), "pipeline.stages.submissions:show"
    ),
    "submit": Stage(
        "upload a submission (default: the newest) with the Kaggle CLI",
        ("competition",),
        "pipeline.stages.submit:submit",
        options=("file",),
    ),
    "report": Stage(
        "plots and the run report -> runs/<name>/report/index.html", ("competition",), "pipeline.stages.report:run"
    ),
}


INIT_ENTRY = "pipeline.stages.init:run"  # `python -m pipeline init DIR`: no config yet, so not a Make stage


def sections(stage: str) -> tuple[str, ...]:
    """The config sections whose change re-runs `stage`."""
    return STAGES[stage].sections


def training_sections() -> tuple[str, ...]:
    """What a trained model depends on: the sections the tune study searches and plan fingerprints."""
    return sections("train")


def experiment_sections() -> tuple[str, ...]:
    """What one experiment may change over another: training's sections less those of the shared stages."""
    shared = {s for stage in STAGES.values() if stage.shared for s in stage.sections}
    return tuple(s for s in training_sections() if s not in shared)
