"""`make push`: a rehearsed package uploaded with the real Kaggle CLI: a new version of the
dataset (or the dataset), the kernel pushed (Kaggle runs it), then, for a code competition
(package.submit), that kernel version submitted once its run completes, with the CV and the
config hash in the message, and a ledger row saying it is a kernel submission."""

import datetime as dt
import json

from pipeline import config as C
from pipeline.errors import PipelineError
from pipeline.files import tree_sha256
from pipeline.kaggle import kaggle_cli, submission
from pipeline.kaggle.bundle import competition_slug, dataset_slug, kernel_slug
from pipeline.paths import PackageFiles, Paths
from pipeline.records import Bundle

DATASET_WAIT_S = 1800.0


def unrehearsed(files: PackageFiles) -> str:
    """What in the package differs from what its last passing rehearsal ran; "" when nothing."""
    if not files.rehearsal.exists():
        return "no rehearsal passed"
    rehearsed = json.loads(files.rehearsal.read_text()).get("files", {})
    now = tree_sha256(files.root, leave_out=(files.rehearsal,))
    for name in sorted(set(rehearsed) | set(now)):
        if rehearsed.get(name) != now.get(name):
            verb = "added" if name not in rehearsed else "removed" if name not in now else "changed"
            return f"{name} {verb}"
    return ""


def run(cfg: C.Config) -> None:
    files = Paths.of(cfg).package
    owner = cfg.package.owner
    if not owner:
        raise PipelineError("package.owner is not set: the Kaggle username the dataset and the kernel go under")
    changed = unrehearsed(files)
    if changed:
        raise PipelineError(f"{files.root}: {changed} since its last passing rehearsal: run `make rehearse`")
    bundle = Bundle.load(files.dataset.bundle)
    stated = bundle.stated
    message = f"CV {stated.metric} {stated.score:.5f} ({stated.models}) config {cfg.fingerprint()}"
    dataset = f"{owner}/{dataset_slug(cfg)}"
    kaggle_cli.upload_dataset(
        dataset, files.dataset.root, message, public=not cfg.package.private, wait_s=DATASET_WAIT_S
    )
    print(f"dataset {dataset} uploaded and ready")
    kernel = f"{owner}/{kernel_slug(cfg)}"
    version = kaggle_cli.push_kernel(files.kernel, cfg.package.accelerator)
    print(f"kernel {kernel} version {version} pushed; Kaggle runs it")
    if not cfg.package.submit:
        return
    kaggle_cli.wait_for_kernel(kernel, C.seconds(cfg.package.time_limit))
    competition = competition_slug(cfg)
    kaggle_cli.submit_kernel(competition, kernel, version, message)
    row = submission.ledger_row(cfg, stated, f"kernel {kernel} version {version}", dt.datetime.now(dt.UTC))
    submission.add_to_ledger({**row, "kernel": kernel, "kernel_version": version})
    print(f"submitted {kernel} version {version} to {competition}: {message}")
