"""The pace of a run under train.time_budget: the fits' times against the plan's, said after
each; before each fold, whether it still fits; at the end, the head start the time left allows."""

import time

from pipeline import config as C
from pipeline.learn.schedule import (
    FILL,
    Fit,
    HeadStart,
    Plan,
    clock,
    duration,
    fit_named,
    later_run,
    longest_head_start,
)


class Pace:
    """The fits' times against the plan's, said after each; before each fold, whether it still
    fits; at the end, the head start the time left allows."""

    def __init__(self, kept: Plan, deadline: float, fold_fits: list[Fit], model: C.Model):
        """`fold_fits`: every fold the config asks for, in order, trained now or left for later."""
        self.plan, self.deadline, self.model = kept, deadline, model
        self.fold_fits = {f.fold: f for f in fold_fits}
        self.measured = self.expected = 0.0
        planned_head_start = kept.schedule.head_start and f"fold {kept.schedule.head_start.fold}"
        self.left = {name: s for name, s in kept.planned.items() if name != planned_head_start}

    @property
    def ratio(self) -> float:
        """The fits' times this run over their plan's: above 1, late."""
        return self.measured / self.expected if self.expected else 1.0

    def starts(self, fit: str, trained: list[int]) -> bool:
        """Whether `fit` ("fold <k>" or "full"), about to start afresh, and after a fold the full
        fit, still end inside the budget at this pace. When not, a fold and the folds after it are
        left for a later run (the CV is stated on the folds trained); the full fit, when it is the
        one, too (the fold models are submitted)."""
        ending = [fit] + (["full"] if fit != "full" and "full" in self.left else [])
        end = time.time() + self.ratio * sum(self.left.get(name, 0.0) for name in ending)
        if end <= self.deadline or not self.expected:
            return True
        folds_left = [k for k in self.fold_fits if k not in trained]
        for name in [fit, *(f"fold {k}" for k in folds_left)]:
            self.left.pop(name, None)
        if fit == "full":
            outcome = "no full fit: the fold models are submitted"
        else:
            outcome = f"the CV is stated on {len(trained)} of {len(self.fold_fits)} folds"
        print(
            f"budget: at this pace {' and '.join(map(fit_named, ending))} would end about {clock(end)}, past the "
            f"budget's {clock(self.deadline)}: {outcome}\n"
            + later_run(self.plan.schedule, folds_left, resumed=None, full_fit=fit == "full"),
            flush=True,
        )
        return False

    def head_start(self, trained: list[int]) -> HeadStart | None:
        """The first epochs of the first fold left for later that fit in what is left of the budget
        at this pace; None when every fold is trained, or not one epoch fits."""
        left = [k for k in self.fold_fits if k not in trained]
        if not left:
            return None
        schedule, room = self.plan.schedule, FILL * (self.deadline - time.time())
        speed = next(s for s in self.plan.speeds if s.side == schedule.side)
        fit = self.fold_fits[left[0]]
        found = longest_head_start(fit, schedule.epochs, speed, self.model, room / self.ratio)
        if found is None:
            print(f"budget: no head start on fold {left[0]}: {duration(max(room, 0))} left, too little for an epoch")
            return None
        self.left[fit.name] = found[1]
        return found[0]

    def done(self, name: str, seconds: float | None) -> None:
        """`seconds`: the fit's time in this run; None when it was finished before or resumed."""
        planned = self.left.pop(name, None)
        if planned is None or seconds is None:
            return
        self.measured, self.expected = self.measured + seconds, self.expected + planned
        end = time.time() + self.ratio * sum(self.left.values())
        late = end - self.deadline
        verdict = f"{duration(abs(late))} {'past' if late > 0 else 'inside'} its budget"
        print(
            f"budget: {name} took {duration(seconds)}, planned {duration(planned)} ({seconds / planned - 1:+.0%}); "
            f"at this pace the plan ends about {clock(end)}, {verdict} (the schedule stays: folds must compare)",
            flush=True,
        )
