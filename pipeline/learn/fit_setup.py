"""What every fit of an experiment shares: the config it trains with, its task, the images and
the encoded targets of every folds.csv row. The training plan builds it; fit, the budget and
the stages that train read it."""

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.config import Config
from pipeline.tasks.base import Task


@dataclass(frozen=True)
class Setup:
    """Everything fit() needs that does not change between folds."""

    cfg: Config
    task: Task
    images: Sequence  # uint8 (H, W, C) images
    rows: np.ndarray  # image index of every folds.csv row
    targets: np.ndarray  # encoded target of every folds.csv row
    channels: int
    image_size: int  # side of the square model input
    given: frozenset[str] = frozenset()  # dotted keys the config, its overrides or best.yaml set
    pool: object | None = None  # train.pseudo_labels' unlabelled images (learn.pseudo_labels.Pool)
    distiller: object | None = None  # train.distill's teacher (learn.distillation.Distiller)
    sources: dict = field(default_factory=dict)  # model.name -> model.pretrained, kept for later runs
    # (device, side) -> every image as uint8 on that device (train.device_aug), made on first use
    resident: dict = field(default_factory=dict, repr=False, compare=False)
