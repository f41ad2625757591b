"""A second level over the experiments: gradient-boosted trees (scikit-learn's
HistGradientBoosting) on every member's out-of-fold predictions plus the competition's tabular
columns (data.feature_columns), as the ISIC 2024 winners stacked their image models with the
patients' metadata.

Each output of the task is one target of the trees, as the task's `stack_target` says: the
class (one classifier over the classes), a label (one binary classifier each) or a value (one
regressor each, rows without it left out). Missing values and text columns are handled as the
library handles them: NaN as missing, text as categories (those of the training rows; an
unseen one is missing).

Its CV is the blend's nested CV: per fold, the trees fitted on the other folds' rows predict the
held-out one.
"""

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.files import atomic_path
from pipeline.tasks.base import Task

# small second-level data: shallow trees, strong regularisation, a fixed number of rounds
TREES = {"max_iter": 150, "learning_rate": 0.05, "max_leaf_nodes": 15, "min_samples_leaf": 20}
TREES |= {"l2_regularization": 1.0, "early_stopping": False, "random_state": 0}


@dataclass(frozen=True)
class Trees:
    """How a task's outputs are the trees' targets."""

    together: bool  # one classifier over all the outputs (the classes), else a model per output
    classify: bool  # classifiers (probabilities), else regressors (values)


TREES_OF = {"class": Trees(together=True, classify=True), "labels": Trees(together=False, classify=True)}
TREES_OF |= {"values": Trees(together=False, classify=False)}  # by Task.stack_target


@dataclass
class Stacker:
    """Trees fitted on (members' predictions, tabular columns) -> the task's outputs."""

    trees: Trees
    outputs: int
    categories: dict[str, list]  # a text column -> the categories of the training rows
    models: list  # one per output; a constant (float or probability row) where one value was seen

    @classmethod
    def fit(cls, task: Task, stack: np.ndarray, features: pd.DataFrame, truth: np.ndarray) -> "Stacker":
        """`stack` (members, N, outputs) in the competition's units, `features` N rows, `truth` as
        Task.truth gives it."""
        categories = {c: sorted(features[c].dropna().astype(str).unique()) for c in _text_columns(features)}
        trees = TREES_OF[task.stack_target]
        stacker = cls(trees, stack.shape[2], categories, [])
        inputs = stacker.inputs(stack, features)
        if trees.together:
            stacker.models = [_fitted(inputs, truth, classify=True)]
        else:
            stacker.models = [_fitted(inputs, truth[:, j], classify=trees.classify) for j in range(stacker.outputs)]
        return stacker

    def inputs(self, stack: np.ndarray, features: pd.DataFrame) -> pd.DataFrame:
        """The trees' inputs: each member's outputs as columns, then the tabular columns."""
        members = stack.transpose(1, 0, 2).reshape(stack.shape[1], -1)
        frame = pd.DataFrame(members, columns=[f"member{i}" for i in range(members.shape[1])])
        for column in features.columns:
            values = features[column].reset_index(drop=True)
            if column in self.categories:
                values = pd.Categorical(values.astype("string"), categories=self.categories[column])
            frame[f"feature_{column}"] = values
        return frame

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            pickle.dump(self, f)

    @classmethod
    def load(cls, path: Path) -> "Stacker":
        """The trees at `path` (written by `make blend` here: a pickle, trusted as our own)."""
        try:
            with open(path, "rb") as f:
                return pickle.load(f)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as exc:
            raise PipelineError(f"{path} cannot be read ({exc}): run `make blend` again") from None

    def predict(self, stack: np.ndarray, features: pd.DataFrame) -> np.ndarray:
        """(N, outputs) in the competition's units: probabilities per class or label, or values."""
        inputs = self.inputs(stack, features)
        if self.trees.together:
            return _probabilities(self.models[0], inputs, self.outputs)
        columns = [
            _probabilities(m, inputs, 2)[:, 1] if self.trees.classify else _values(m, inputs) for m in self.models
        ]
        return np.column_stack(columns)


def _text_columns(features: pd.DataFrame) -> list[str]:
    return [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]


def _fitted(inputs: pd.DataFrame, target: np.ndarray, *, classify: bool):
    """Trees for one target; where the rows hold one value only, that value."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    known = ~pd.isna(target)
    inputs, target = inputs[known], target[known]
    if classify:
        target = target.astype(np.int64)
        if len(np.unique(target)) < 2:
            return int(target[0]) if len(target) else 0
        return HistGradientBoostingClassifier(**TREES, categorical_features="from_dtype").fit(inputs, target)
    if len(target) == 0 or np.ptp(target) == 0:
        return float(target[0]) if len(target) else 0.0
    return HistGradientBoostingRegressor(**TREES, categorical_features="from_dtype").fit(inputs, target)


def _probabilities(model, inputs: pd.DataFrame, outputs: int) -> np.ndarray:
    """(N, outputs): the model's class probabilities in the columns of their class indices."""
    full = np.zeros((len(inputs), outputs))
    if isinstance(model, int):  # one class seen: certain of it
        full[:, model] = 1.0
        return full
    full[:, model.classes_] = model.predict_proba(inputs)
    return full


def _values(model, inputs: pd.DataFrame) -> np.ndarray:
    return np.full(len(inputs), model) if isinstance(model, float) else model.predict(inputs)


def nested_predictions(
    task: Task, stack: np.ndarray, features: pd.DataFrame, truth: np.ndarray, fold_of_row: np.ndarray
) -> np.ndarray:
    """(N, outputs): each fold's rows predicted by trees fitted on the other folds' rows."""
    predictions, rows = np.empty((stack.shape[1], stack.shape[2])), features.reset_index(drop=True)
    for fold in np.unique(fold_of_row):
        held_out = fold_of_row == fold
        stacker = Stacker.fit(task, stack[:, ~held_out], rows[~held_out], truth[~held_out])
        predictions[held_out] = stacker.predict(stack[:, held_out], rows[held_out])
    return predictions
