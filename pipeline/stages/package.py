"""The package stage: for a Kaggle code competition, the models `make predict` would submit, as
a Kaggle dataset and an inference notebook that runs them with the internet off.

    make package -> package/<name>/dataset/  models/<experiment>/<fit>/model.pt (weights only),
                                             bundle.yaml (how they combine, the stated CV),
                                             config.yaml, wheels/, dataset-metadata.json
                    package/<name>/kernel/   kernel-metadata.json, <kernel>.ipynb
                    package/<name>/expected_submission.csv: what `make predict` writes
                                             for the same models, for the rehearsal

The notebook installs the wheels with `pip --no-index`, then calls offline.submit, which
combines the models exactly as the predict stage does (learn.selection).
"""

import os
import shutil

from pipeline import config as C
from pipeline.files import temporary_dir, write_csv
from pipeline.kaggle import submission
from pipeline.kaggle.bundle import dataset_slug, fill, kernel_slug
from pipeline.learn import selection
from pipeline.paths import PackageFiles, Paths


def run(cfg: C.Config) -> None:
    paths = Paths.of(cfg)
    plan, test = selection.plan_submission(cfg, paths)
    expected = submission.validated(plan.cfg, test.table, selection.combine(test, plan.parts), test.task)
    final = paths.package
    tmp = temporary_dir(final.root)
    try:
        bundle, wheels = fill(PackageFiles(tmp), cfg, plan, [str(label) for label in test.task.labels])
        write_csv(PackageFiles(tmp).expected_submission, expected)
        shutil.rmtree(final.root, ignore_errors=True)
        os.replace(tmp, final.root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(f.stat().st_size for f in final.dataset.root.rglob("*") if f.is_file())
    models = sum(len(part["models"]) for part in bundle.parts)
    print(
        f"package {final.root}: dataset {dataset_slug(cfg)} ({models} models, {len(wheels)} wheels, "
        f"{size / 2**20:.1f} MiB), kernel {kernel_slug(cfg)}; CV {plan.stated.metric} {plan.stated.score:.5f} "
        f"({plan.stated.models} models)"
    )
