"""The predict stage: the models `learn.selection` chooses (or predict.blend's blend), their test
predictions averaged, written as a validated submission (kaggle.submission) with the CV of exactly
those models, and a row in the ledger."""

from pipeline import tasks
from pipeline.config import Config
from pipeline.kaggle import submission
from pipeline.learn.selection import combine, plan_submission
from pipeline.paths import Paths


def run(cfg: Config) -> None:
    paths = Paths.of(cfg)
    plan, test = plan_submission(cfg, paths)
    predictions, task = combine(test, plan)
    path = submission.write(plan.cfg, paths, test.table, predictions, task, plan.stated, sizes=test.sizes)
    stated, direction = plan.stated, "higher" if tasks.higher_is_better(plan.stated.metric) else "lower"
    print(
        f"submission {path}: {stated.models} models ({stated.experiment}), CV {stated.metric} {stated.score:.5f} "
        f"± {stated.std:.5f} ({stated.method}; {direction} is better)"
    )
