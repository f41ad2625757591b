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

import json
import os
import re
import shutil

import nbformat

from pipeline import config as C
from pipeline import tasks
from pipeline.files import temporary_dir, write_csv, write_text
from pipeline.kaggle import submission
from pipeline.kaggle.bundle import build_wheels, dataset_metadata, dataset_slug, kernel_metadata, kernel_slug, notebook
from pipeline.learn import selection
from pipeline.learn.inference import PredictionsOnTest
from pipeline.paths import DatasetFiles, PackageFiles, Paths
from pipeline.records import CV, Bundle


def run(cfg: C.Config) -> None:
    paths = Paths.of(cfg)
    plan, test = selection.plan_submission(cfg, paths)
    expected = submission.validated(plan.cfg, test.table, *selection.combine(test, plan), sizes=test.sizes)
    final = paths.package
    tmp = temporary_dir(final.root)
    try:
        bundle, wheels = fill(PackageFiles(tmp), cfg, plan, [str(label) for label in test.task.labels])
        write_csv(PackageFiles(tmp).expected_submission, expected)
        shutil.rmtree(final.root, ignore_errors=True)
        os.replace(tmp, final.root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n".join(inference_times(cfg, paths, plan, test)))
    size = sum(f.stat().st_size for f in final.dataset.root.rglob("*") if f.is_file())
    models = sum(len(part["models"]) for part in bundle.parts)
    print(
        f"package {final.root}: dataset {dataset_slug(cfg)} ({models} models, {len(wheels)} wheels, "
        f"{size / 2**20:.1f} MiB), kernel {kernel_slug(cfg)}; CV {plan.stated.metric} {plan.stated.score:.5f} "
        f"({plan.stated.models} models)"
    )


def inference_times(cfg: C.Config, paths: Paths, plan: selection.Plan, test: PredictionsOnTest) -> list[str]:
    """Each candidate's time on the test images, as `make predict` timed its models: every
    experiment's fold models and full fit, and this package's models, scaled to the hidden test."""
    public = len(test.table)
    hidden = cfg.package.hidden_test_rows or round(public * cfg.package.hidden_scale)
    lines = [
        f"inference on the {public} test images, as `make predict` timed each model (x{hidden / public:.2f} hidden):"
    ]
    for name in paths.experiments():
        member = paths.of_experiment(name)
        cv = CV.load(member.cv_json)
        options = {
            "folds": [member.fold(k) for k in cv.fold_ids],
            "full": [member.full] if member.full.model.exists() else [],
        }
        timed = {label: [test.seconds(fit) for fit in fits] for label, fits in options.items() if fits}
        said = [f"{label} {len(s)} model(s) {sum(s):.1f} s" for label, s in timed.items() if None not in s]
        lines.append(f"  {name} (CV {cv.score:.5f}): {'; '.join(said) or 'not predicted: `make predict` times it'}")
    packaged = [test.seconds(fit) for part in plan.parts for fit, _ in part.models]
    if None not in packaged:
        total = sum(packaged)
        lines.append(
            f"  this package: {len(packaged)} model(s) {total:.1f} s, about {total * hidden / public:.0f} s on "
            f"{hidden} hidden test images, of package.time_limit={cfg.package.time_limit}"
        )
    return lines


def fill(files: PackageFiles, cfg: C.Config, plan: selection.Plan, labels: list[str]) -> tuple[Bundle, list[str]]:
    """The dataset and the kernel folders; the bundle and the wheels' file names."""
    parts, second_level = copy_models(plan.parts, files.dataset), None
    if plan.second_level is not None:
        second_level = files.dataset.second_level.relative_to(files.dataset.root).as_posix()
        shutil.copyfile(plan.second_level, files.dataset.second_level)
    bundle = Bundle(parts, plan.stated, labels, plan.decision, second_level, list(plan.features))
    bundle.save(files.dataset.bundle)
    write_text(files.dataset.config, plan.cfg.to_yaml())
    wheels = build_wheels(requirements(cfg), files.dataset.wheels)
    write_text(files.dataset.metadata, json.dumps(dataset_metadata(cfg), indent=2))
    write_text(files.kernel_metadata, json.dumps(kernel_metadata(cfg), indent=2))
    nbformat.write(notebook(cfg, wheels, bundle), files.notebook(kernel_slug(cfg)))
    return bundle, wheels


def requirements(cfg: C.Config) -> list[str]:
    """package.wheels, and what the task's models need that it does not name."""
    named = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in cfg.package.wheels}
    needed = tasks.get(cfg.competition.task).inference_wheels()
    return [*cfg.package.wheels, *(r for r in needed if r.split("==")[0] not in named)]


def copy_models(parts: list[selection.Part], dataset: DatasetFiles) -> list[dict]:
    """Each part's model files copied into the dataset; the parts as bundle.yaml holds them."""
    bundled = []
    for part in parts:
        models = []
        for fit, weight in part.models:
            copy = dataset.model(fit.root.parent.name, fit)  # runs/<name>/<experiment>/<fit>
            copy.root.mkdir(parents=True)
            shutil.copyfile(fit.model, copy.model)
            models.append({"folder": copy.root.relative_to(dataset.root).as_posix(), "weight": float(weight)})
        bundled.append({"weight": float(part.weight), "space": part.space, "models": models})
    return bundled
