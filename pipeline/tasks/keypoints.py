"""Points on the image as x/y pixel columns (NaN where a point is missing): a regression head in
[-1, 1] image coordinates, an L1, MSE or smooth-L1 loss over the labelled coordinates only,
RMSE in pixels, and points that move with every geometric augmentation and TTA view, a
horizontal flip swapping the left/right pairs.

Keypoint targets are pixels in the data and (x + 0.5) / (width / 2) - 1 for the network: the
coordinates of `grid_sample(align_corners=False)`, so pixel centres span [-1, 1] symmetrically,
a horizontal flip is x -> -x, and an affine map of the image maps the points exactly.
"""

import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from pipeline import plots
from pipeline.errors import PipelineError
from pipeline.tables import read_csv
from pipeline.tasks import register
from pipeline.tasks.base import Section, Task, masked_loss

COORDINATE = re.compile(r"_[xy]$", re.IGNORECASE)
AUG_PRESET = {"rotate": 10.0, "shift": 0.05, "scale": 0.1, "brightness": 0.2, "contrast": 0.2, "p": 0.8}


@register
class Keypoints(Task):
    name = "keypoints"
    METRICS: ClassVar[dict[str, bool]] = {"rmse": False}
    SMOOTH_METRICS = SQUARED_ERROR_METRICS = frozenset({"rmse"})
    LOSSES = ("l1", "mse", "smooth_l1")
    FORMATS = ("keypoints_wide", "keypoints_long")
    fold_kind = "stratified_binned"
    stratify_on = "missing_pattern"
    crops = False  # a crop would cut points out of the picture

    def __init__(
        self,
        columns: list[str],
        loss: str = "l1",
        *,
        tanh: bool = False,
        flip_pairs: str | list = "auto",
        lookup_table: Path | None = None,
    ):
        if len(columns) % 2:
            raise PipelineError(f"keypoint columns come in x/y pairs; got {len(columns)} columns")
        self.columns = self.labels = list(columns)
        self.metric, self.loss_name, self.tanh = "rmse", loss, tanh
        self.flip_swap = flip_permutation(point_names(self.columns), flip_pairs)
        self.lookup_table = lookup_table

    # --- what needs no labels --------------------------------------------------------------

    @classmethod
    def claim_columns(cls, table: pd.DataFrame, columns: list[str]) -> list[str]:
        return [c for c in columns if COORDINATE.search(c)]

    @classmethod
    def detect(cls, layout: str, label_columns: list[str], table: pd.DataFrame | None) -> str | None:
        if layout == "pixel_string":
            return "x/y coordinate columns in the training CSV"
        if label_columns and all(COORDINATE.search(c) for c in label_columns):
            return f"{len(label_columns) // 2} points as x/y columns"
        return None

    @classmethod
    def describe_targets(cls, table: pd.DataFrame, targets: list[str]) -> str:
        complete = int(table[targets].notna().all(axis=1).sum())
        return f"{len(targets) // 2} points; {complete} of {len(table)} rows have all of them"

    @classmethod
    def sample_format(cls, columns: list[str], table: pd.DataFrame, targets: list[str]) -> tuple[str, str]:
        if all(COORDINATE.search(c) for c in columns[1:]):
            return "keypoints_wide", "a column per coordinate"
        return "keypoints_long", "a row per image and coordinate"

    @classmethod
    def aug_preset(cls, cfg: Any, facts: Any) -> tuple[dict, str]:
        names = point_names(list(facts.targets))
        pairs = cfg.aug.flip_pairs != "auto" or (flip_permutation(names, "auto") != range(len(names))).any()
        values = AUG_PRESET | ({"hflip": 0.5} if pairs else {})
        return values, "keypoints" + (
            ", flipped with their left/right pairs" if pairs else ", no flips: no left/right pairs"
        )

    @classmethod
    def score_file(cls, metric: str, submitted: pd.DataFrame, solution: pd.DataFrame) -> float:
        if metric != "rmse":
            return super().score_file(metric, submitted, solution)
        truth, guess = solution.iloc[:, 1:].to_numpy(float), submitted.iloc[:, 1:].to_numpy(float)
        return float(np.sqrt(np.nanmean((guess - truth) ** 2)))

    @classmethod
    def of_labels(cls, cfg: Any, labels: list) -> "Keypoints":
        return cls(labels, cls.loss_of(cfg.train.loss), **cls._settings(cfg, cfg.model.head_activation))

    @classmethod
    def from_meta(cls, meta: dict, cfg: Any) -> "Keypoints":
        return cls(meta["labels"], **cls._settings(cfg, meta.get("head_activation")))

    @staticmethod
    def _settings(cfg: Any, head_activation: str | None) -> dict:
        lookup = getattr(cfg.data, "lookup_table", None)
        return {
            "tanh": head_activation == "tanh",
            "flip_pairs": cfg.aug.flip_pairs,
            "lookup_table": Path(cfg.data.dir) / lookup if lookup else None,
        }

    # --- bound to the columns ---------------------------------------------------------------

    def meta(self) -> dict:
        return {**super().meta(), "head_activation": "tanh" if self.tanh else "none"}

    def metrics(self, predictions: np.ndarray, target: np.ndarray, sizes: np.ndarray) -> dict:
        """RMSE in pixels of the original images (sizes: (N, 2) height, width), and the share of
        labelled coordinates within 0.1 and 0.01 of the [-1, 1] range."""
        present = ~np.isnan(target)
        error = np.where(present, predictions - np.nan_to_num(target), 0.0)
        count = max(int(present.sum()), 1)
        return {
            "rmse": float(np.sqrt(((error * half_side(target, sizes)) ** 2).sum() / count)),
            "acc_0.1": float(((np.abs(error) < 0.1) & present).sum() / count),
            "acc_0.01": float(((np.abs(error) < 0.01) & present).sum() / count),
        }

    def score(self, predictions: np.ndarray, truth: np.ndarray) -> float:
        """RMSE in pixels over the labelled coordinates."""
        return float(np.sqrt(np.nanmean((predictions - truth) ** 2)))

    def to_units(self, predictions: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """[-1, 1] -> pixels of each image."""
        return (predictions + 1.0) * half_side(predictions, sizes) - 0.5

    def finish_blend(self, blended: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """Points clipped to their image."""
        limits = np.where(np.arange(blended.shape[1]) % 2 == 0, sizes[:, 1:2], sizes[:, 0:1]) - 1
        return np.clip(blended, 0, limits)

    # --- the head ---------------------------------------------------------------------------

    def activate(self, outputs: Any) -> Any:
        """(B, K*2) coordinates in [-1, 1]."""
        outputs = outputs.float()
        return outputs.tanh() if self.tanh else outputs

    def loss(self, outputs: Any, target: Any) -> Any:
        """Mean over labelled coordinates only."""
        return masked_loss(self.loss_name, self.activate(outputs), target)

    # --- augmentation and TTA ---------------------------------------------------------------

    def compose_params(self) -> dict:
        return keypoint_params()

    def augment_item(self, augment: Any, image: np.ndarray, target: np.ndarray, original: np.ndarray):
        """Points in pixels of the image file -> [-1, 1] of the augmented image, NaN where missing."""
        points = rescaled_points(target.reshape(-1, 2), original, image.shape)
        present = ~np.isnan(points).any(axis=1)
        if augment is not None:
            moved = augment(image=image, keypoints=np.nan_to_num(points), present=present)
            image, points = moved["image"], np.asarray(moved["keypoints"], dtype=np.float32)[:, :2]
            present = np.asarray(moved["present"], dtype=bool)
        scaled = unit_points(points, np.array(image.shape[:2], dtype=np.float32))
        scaled[~present] = np.nan
        return image, scaled.reshape(-1).astype(np.float32)

    def device_targets(self, targets: np.ndarray, sizes: np.ndarray, side: int) -> np.ndarray:
        """Pixels of each image file -> [-1, 1], which a resize to the resident side leaves in place."""
        points = targets.reshape(len(targets), -1, 2)
        return unit_points(points, sizes).reshape(len(points), -1)

    def warp_targets(self, targets: Any, warp: Any) -> Any:
        return warp.points(targets.view(len(targets), -1, 2)).reshape(targets.shape)

    def view_back(self, view: Any, outputs: Any) -> Any:
        points = view.to_image(outputs.reshape(len(outputs), -1, 2))
        if view.hflip:
            points = points[:, self.flip_swap]
        return points.reshape(len(outputs), -1)

    # --- the submission and the report ------------------------------------------------------

    def submission_format(self, cfg: Any, sample: pd.DataFrame | None) -> str:
        return "keypoints_long" if self.lookup_table else "keypoints_wide"

    def submission(
        self,
        fmt: str,
        ids: np.ndarray,
        predictions: np.ndarray,
        sample: pd.DataFrame | None,
        sizes: np.ndarray | None = None,
    ) -> pd.DataFrame:
        if fmt == "keypoints_long":
            return self._long(ids, predictions)
        columns = list(sample.columns[1:]) if sample is not None else list(self.columns)
        frame = pd.DataFrame(predictions, columns=self.columns)
        return pd.concat(
            [pd.DataFrame({sample.columns[0] if sample is not None else "id": ids}), frame[columns]], axis=1
        )

    def _long(self, ids: np.ndarray, predictions: np.ndarray) -> pd.DataFrame:
        """RowId,Location through IdLookupTable.csv: only the features each image asks for."""
        if self.lookup_table is None:
            raise PipelineError("predict.format=keypoints_long needs data.lookup_table (IdLookupTable.csv)")
        lookup = read_csv(self.lookup_table)
        row_of = {image_id: i for i, image_id in enumerate(ids)}
        column_of = {name: i for i, name in enumerate(self.columns)}
        rows = lookup["ImageId"].map(row_of).to_numpy()
        columns = lookup["FeatureName"].map(column_of).to_numpy()
        return pd.DataFrame({"RowId": lookup["RowId"].to_numpy(), "Location": predictions[rows, columns]})

    def report_sections(self, oof: pd.DataFrame, out: Any, image_of: Any, size_of: Any) -> list[Section]:
        """True (green) and predicted (red) points on samples and on the worst images, RMSE per point."""
        truth, predicted = oof[self.columns].to_numpy(float), oof[self.prediction_columns()].to_numpy(float)
        squared = (predicted - truth) ** 2
        per_point = pd.Series(
            np.sqrt(np.nanmean(squared[:, 0::2] + squared[:, 1::2], axis=0)), index=point_names(self.columns)
        )
        plots.save(
            plots.plot_bars(per_point, "RMSE per keypoint (pixels, out of fold)", "keypoint"),
            out / "rmse_per_keypoint.png",
        )
        per_image = np.sqrt(np.nanmean(squared, axis=1))
        rng = np.random.default_rng(0)
        for name, rows in (
            ("samples", rng.choice(len(oof), size=min(12, len(oof)), replace=False)),
            ("worst", np.argsort(-np.nan_to_num(per_image))[:12]),
        ):
            points = [(truth[i].reshape(-1, 2), predicted[i].reshape(-1, 2)) for i in rows]
            captions = [f"id {oof['id'].iloc[i]}: RMSE {per_image[i]:.2f} px" for i in rows]
            ids = oof["id"].iloc[rows]
            grid = plots.plot_grid([image_of(i) for i in ids], captions, points, [size_of(i) for i in ids])
            plots.save(grid, out / f"keypoints_{name}.png")
        return [
            (
                "Keypoints",
                "<p>green: true, red: predicted</p>" + plots.img("keypoints_samples.png", "keypoint samples"),
            ),
            ("RMSE per keypoint", plots.img("rmse_per_keypoint.png", "RMSE per keypoint")),
            ("Worst images", plots.img("keypoints_worst.png", "worst keypoint images")),
        ]


def keypoint_params() -> dict:
    """albumentations.Compose's keyword arguments for x/y points with a `present` flag each."""
    import albumentations as A

    # `present` rides along with each point, so a flip that swaps points swaps their labels too
    return {"keypoint_params": A.KeypointParams(format="xy", remove_invisible=False, label_fields=["present"])}


def point_names(columns: list[str]) -> list[str]:
    """x/y column pairs -> point names: left_eye_center_x, left_eye_center_y -> left_eye_center."""
    names = []
    for x, y in zip(columns[0::2], columns[1::2], strict=True):
        if not (x.endswith("x") and y.endswith("y") and x[:-1] == y[:-1]):
            raise PipelineError(f"keypoint columns must come as x, y pairs; got {x!r} then {y!r}")
        names.append(x[:-1].rstrip("_"))
    return names


def flip_permutation(names: list[str], pairs: str | list[tuple[str, str]]) -> np.ndarray:
    """Where each point goes under a horizontal flip. "auto" pairs every name containing
    'left' with the same name with 'right'."""
    if pairs == "auto":
        pairs = [(n, n.replace("left", "right")) for n in names if "left" in n and n.replace("left", "right") in names]
    position = {n: i for i, n in enumerate(names)}
    swap = np.arange(len(names))
    for a, b in pairs:
        for name in (a, b):
            if name not in position:
                raise PipelineError(f"aug.flip_pairs names {name!r}, which is not a keypoint; points: {names}")
        swap[position[a]], swap[position[b]] = position[b], position[a]
    return swap


def rescaled_points(points: np.ndarray, original: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(K, 2) x/y pixels of an image of `original` (height, width) -> the same places in the
    copy of it resized to `size`, pixel centres at integers."""
    scale = np.asarray(size[:2], dtype=np.float32)[::-1] / np.asarray(original, dtype=np.float32)[::-1]
    return ((points + 0.5) * scale - 0.5).astype(np.float32)


def unit_points(points: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(..., K, 2) x/y pixels of images of `sizes` (..., 2) (height, width) -> the [-1, 1]
    coordinates of grid_sample(align_corners=False), which the networks predict."""
    half = np.asarray(sizes, dtype=np.float32)[..., ::-1] / 2
    return ((points + 0.5) / half[..., None, :] - 1.0).astype(np.float32)


def half_side(coordinates: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Half each image's width for x columns, half its height for y: (N, K*2) from (N, 2)."""
    return np.where(np.arange(coordinates.shape[1]) % 2 == 0, sizes[:, 1:2], sizes[:, 0:1]) / 2.0
