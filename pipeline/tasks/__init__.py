"""The problem types, one module each behind the `Task` protocol (base.py), found by the name
`competition.task` gives.

The built-in tasks load on first use, so that the config, which checks the name, need not
import them; a task of one's own is a module whose class is passed to `register`.
"""

import importlib

from pipeline.errors import PipelineError

# in the order `make init` asks them whether a competition is theirs: the most specific first
BUILT_IN = {
    "keypoints": "pipeline.tasks.keypoints",
    "segmentation": "pipeline.tasks.segmentation",
    "multilabel": "pipeline.tasks.multilabel",
    "regression": "pipeline.tasks.regression",
    "classification": "pipeline.tasks.classification",
}
_registered: dict[str, type] = {}


def register(task: type) -> type:
    """Make `task` (a `Task` subclass) the one `competition.task: <task.name>` names."""
    _registered[task.name] = task
    return task


def names() -> list[str]:
    """Every task, the registered ones first, then the built-in ones in the order init asks them."""
    return [*(n for n in _registered if n not in BUILT_IN), *BUILT_IN]


def get(name: str) -> type:
    """The `Task` class registered as `name`."""
    if name not in _registered and name in BUILT_IN:
        importlib.import_module(BUILT_IN[name])
    if name not in _registered:
        raise PipelineError(f"competition.task={name!r} is not a task; the tasks are {', '.join(names())}")
    return _registered[name]


def every() -> list[type]:
    return [get(name) for name in names()]


def higher_is_better(metric: str) -> bool:
    """Whether a larger `metric` is better, for a metric of any task (the ledger holds them all)."""
    for task in every():
        if metric in task.METRICS:
            return task.METRICS[metric]
    raise PipelineError(f"{metric!r} is not a metric of any task")


def measures_averaging(metric: str) -> bool:
    """Whether an ensemble's score follows from its members' scores and spread (a root mean
    squared error of any task), where an OOF score cannot show the averaging gain."""
    return any(metric in task.SQUARED_ERROR_METRICS for task in every())


def counts_rows(metric: str) -> bool:
    """Whether `metric` counts rows, so that one validation row moves it by at least 1/rows."""
    return any(metric in task.COUNTING_METRICS for task in every())


def metric_of(cfg) -> str:
    """The competition metric a config's experiments are scored by."""
    return get(cfg.competition.task).metric_of(cfg.train.metric)
