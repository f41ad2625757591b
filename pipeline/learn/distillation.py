"""train.distill: each fit's training rows learn from their labels and, with weight alpha, from a
teacher's predictions on the same images (Hinton's knowledge distillation: for classes and
labels the teacher softened at the temperature, the student's outputs softened alike, that term
weighted by T^2, tasks.pseudo_targets.SoftenedTeacher; for values and points a target blended
of the two); the validation rows keep their labels, so the student's CV is its own. Fold k learns
from the teacher's fold-k models (learn.teacher), which trained on exactly fold k's training
rows: the student reads nothing of fold k's answers through them.

The usual student is a faster backbone than the teacher blend: `make package` states each
candidate's inference time, and where a blend does not fit package.time_limit, its distilled
student may.

Online (train.distill.online, the default for classes and labels) the teacher's models of the fit
predict each training batch as the student sees it, augmented and mixed, at each model's own side
and normalisation (timm's LogitDistillationTask): a teacher that predicts the clean training
images it learnt once tells the student little beyond their labels (Beyer et al. 2022, "a good
teacher is patient and consistent"). Its forward passes are in every training step the budget's
probe times."""

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pipeline.augment import transforms
from pipeline.config import Distill
from pipeline.errors import PipelineError
from pipeline.learn.device import Device, Normalise
from pipeline.learn.fit_setup import Setup
from pipeline.learn.inference import load_model, weighted_units
from pipeline.learn.teacher import Teacher
from pipeline.paths import FitFiles, Paths


@dataclass(frozen=True)
class Distiller:
    settings: Distill
    teacher: Teacher
    paths: Paths
    online: bool
    fits: tuple[tuple[FitFiles, float], ...] = ()  # online: the teacher's models of the fit it is bound to

    # fit and the budget's probe reach these two through the setup, and so import nothing of this module

    def bound(self, setup: Setup, fold: int | None) -> Setup:
        """Online: `setup` with the teacher's models of `fold` bound and every row's label in both
        halves of its target (OnlineTeacher fills the teacher's half batch by batch); else as it is."""
        if not self.online:
            return setup
        fits = tuple(self.teacher.fits(self.paths, fold))
        return replace(setup, targets=setup.task.untaught_targets(setup.targets), distiller=replace(self, fits=fits))

    def online_teacher(self, task, device: Device, student: Normalise) -> "OnlineTeacher | None":
        """The bound teacher's models on `device`, for a fit whose batches `student` normalises."""
        if not self.fits:
            return None
        members = [Member.load(fit, weight, device, student) for fit, weight in self.fits]
        return OnlineTeacher(members, task, self.settings.temperature, device)


def prepare(setup: Setup, folds: pd.DataFrame, paths: Paths) -> Setup:
    """The setup with train.distill's teacher; unchanged without train.distill."""
    settings, task = setup.cfg.train.distill, setup.task
    if settings is None:
        return setup
    task.check_distill()
    if settings.online and not task.teaches_online:
        raise PipelineError(
            f"train.distill.online=true is for classes and labels, whose teacher a temperature softens; a {task.name} "
            "student learns its teacher's predictions made once per image: leave it unset"
        )
    online = task.teaches_online if settings.online is None else settings.online
    teacher = Teacher.of("train.distill.teacher", settings.teacher, paths, folds)
    return replace(setup, distiller=Distiller(settings, teacher, paths, online))


def join(setup: Setup, train_rows: np.ndarray, fold: int | None, name: str) -> Setup:
    """This fit's setup with its training rows' targets distilled from the teacher for `fold`
    (None: the full fit); online, with the teacher's models of `fold` bound for the fit to load."""
    distiller = setup.distiller
    if distiller is None:
        return setup
    settings, task = distiller.settings, setup.task
    said = (
        f"{name}: {len(train_rows)} training rows learn from {distiller.teacher.describe(distiller.paths, fold)}"
        f" (alpha {settings.alpha}, temperature {settings.temperature}"
    )
    if distiller.online:
        print(f"{said}, online: its predictions on each augmented batch)")
        return distiller.bound(setup, fold)
    fits = distiller.teacher.fits(distiller.paths, fold)
    units = weighted_units(setup.cfg, fits, setup.images, setup.rows[train_rows])
    targets = task.untaught_targets(setup.targets)
    targets[train_rows] = task.distilled_targets(
        setup.targets[train_rows], units, alpha=settings.alpha, temperature=settings.temperature
    )
    print(f"{said})")
    return replace(setup, targets=targets)


@dataclass(frozen=True)
class Member:
    """One of the teacher's models, with the side and the normalisation it learnt at."""

    model: torch.nn.Module
    weight: float
    side: int
    scale: torch.Tensor  # (1, C, 1, 1): the student's normalised pixels -> this model's, x * scale + shift
    shift: torch.Tensor

    @classmethod
    def load(cls, fit: FitFiles, weight: float, device: Device, student: Normalise) -> "Member":
        model, meta = load_model(fit.model, device)
        own = Normalise(*transforms.normalisation(model.pretrained_cfg, meta["in_chans"]))
        return cls.of(model, weight, int(meta["image_size"]), own, student)

    @classmethod
    def of(cls, model: torch.nn.Module, weight: float, side: int, own: Normalise, student: Normalise) -> "Member":
        """`model`, which learnt `side` px images normalised by `own`, reading batches `student` normalised."""
        device = next(model.parameters()).device
        scale = own.scale / student.scale.cpu()  # a Normalise moves to its batches' device on first use
        shift = own.shift - student.shift.cpu() * scale
        return cls(model.eval(), weight, side, scale.to(device), shift.to(device))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() * self.scale + self.shift
        if x.shape[-1] != self.side:
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear", align_corners=False)
        return self.model(x)


class OnlineTeacher:
    """The teacher's models predicting each training batch the student sees: their probabilities,
    weighted as the teacher weighs them, softened at T, become the batch's teacher half."""

    def __init__(self, members: list[Member], task, temperature: float, device: Device):
        self.members, self.task, self.temperature, self.device = members, task, temperature, device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with self.device.autocast():
            probabilities = sum(m.weight * self.task.activate(m.logits(images)) for m in self.members)
        return self.task.taught_online(target, probabilities, self.temperature)
