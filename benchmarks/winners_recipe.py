"""The winners' recipe (issue 30), each technique beside the medium first run, on held-out answers.

For a competition (benchmarks/_competitions.py, _task_competitions.py, _segmentation_competition.py),
in a scratch folder: build it, `make init`, then with nothing added to the config it wrote but the
rows' keys, the time budget and the held-out answers' file name, run data, folds, train, predict and
score, one experiment per row on the same folds:

  medium              train.preset=medium in the budget: the teacher of the rows that need one
  + average (swa)     train.average={kind: swa, k: 3}
  + greedy soup       train.average={kind: greedy_soup, k: 3}: each fold's epochs chosen on the others
  + final stage       train.final_size={image_size: 1.5x the side medium chose, epochs: 2}
  + pseudo-labels     train.pseudo_labels={teacher: medium}: the test images, soft
  distilled student   train.distill={teacher: medium} at half medium's side (a quarter of its
                      pixels), its full fit alone the submission: the faster single model (its
                      fold models where the budget left the full fit for a later run)
  small               the same student without the teacher: what distillation adds (on the folds
                      the distilled student trained, where it ran first: a student trains its
                      teacher's folds, and a budget shared by fewer folds gives each more epochs)
  twin                medium again at train.seed + 1: the second member of the teacher blend
  blend               `make blend` of medium and twin (their fold models, weights fitted on
                      their OOF), submitted: the teacher the issue names; its wall clock is
                      the blend's and its submission's alone
  distill_blend       the distilled student, taught by that blend (fold k by the members'
                      fold-k models, the full fit by their full fits)
  best                train.preset=best, in the budget and in twice it

Each row: the held-out score of its submission, the whole run's wall clock, and its inference
time: the submitted models predicting the test images afresh (no kept predictions), read and
decode excluded. Beside them the peer on the same test images (an SVC on the pixels).

    python benchmarks/winners_recipe.py [--competition photos] [--budget 5m] [--rows ...] [--seed 0] [--tiny]

`--seed` is every row's train.seed (the folds stay the same): a second seed shows how far a row
moves by chance alone.
"""

import argparse
import tempfile
import time
from pathlib import Path

import _competitions
import _stages
import _task_competitions
import pandas as pd
from _peers import TASK_PEERS, Peer, inside
from _segmentation_competition import stencils
from _stages import machine, stage

from pipeline import config as C
from pipeline.records import CV

TINY = ["folds.n_splits=2", "train.epochs=1", "model.name=test_resnet", "model.pretrained=none"]
SMALL = {"photos": {"train_per_class": 6, "test_per_class": 3}, "tiny": {"n_train": 60, "n_test": 20}}
BUILDERS = _competitions.BUILDERS | _task_competitions.BUILDERS | {"stencils": stencils}
ROWS = (
    "medium",
    "average",
    "soup",
    "final",
    "pseudo",
    "distill",
    "small",
    "twin",
    "blend",
    "distill_blend",
    "best",
    "best2x",
)
NEEDS = {"blend": "twin", "distill_blend": "blend"}  # a row and the row before it that it reads
TEACHER = "teacher"  # the blend row's blend
BLEND = ["blend.experiments=[medium,twin]", f"blend.name={TEACHER}", f"predict.blend={TEACHER}"]


def keys(row: str, side: int, budget: str) -> list[str]:
    """The overrides of a row: its experiment, preset, budget and technique."""
    twice = f"{2 * int(budget[:-1])}{budget[-1]}"
    student = [f"model.image_size={max(side // 2, 32)}", "train.full_fit=true", "predict.models=full"]
    technique = {
        "medium": [],
        "average": ["train.average.kind=swa", "train.average.k=3"],
        "soup": ["train.average.kind=greedy_soup", "train.average.k=3"],
        "final": [f"train.final_size.image_size={side * 3 // 2}", "train.final_size.epochs=2"],
        "pseudo": ["train.pseudo_labels.teacher=medium"],
        "distill": ["train.distill.teacher=medium", *student],
        "small": student,
        "twin": [],
        "distill_blend": [f"train.distill.teacher={TEACHER}", *student],
        "best": ["train.preset=best"],
        "best2x": ["train.preset=best", f"train.time_budget={twice}"],
    }[row]
    return [f"train.experiment={row}", "train.preset=medium", f"train.time_budget={budget}", *technique]


def inference_seconds(config: Path, overrides: list[str], scratch: Path) -> float:
    """The submitted models on the test images, predicted afresh; the images already decoded."""
    from pipeline.learn.inference import PredictionsOnTest
    from pipeline.learn.selection import plan_submission
    from pipeline.paths import Paths

    with inside(scratch):
        cfg = C.load(config, overrides)
        plan, _ = plan_submission(cfg, Paths.of(cfg))
        fresh = PredictionsOnTest(plan.cfg, Paths.of(cfg), keep=False)
        started = time.perf_counter()
        for part in plan.parts:
            for fit, _ in part.models:
                fresh.of(fit)
        return time.perf_counter() - started


def chosen_side(scratch: Path) -> int:
    """The side the medium run trained at, as its resolved config says."""
    resolved = next((scratch / "runs").glob("*/medium/train.config.yaml"))
    return int(C.load(resolved).model.image_size)


def run_row(row: str, config: Path, scratch: Path, args: argparse.Namespace) -> tuple[float, float, float]:
    tiny = TINY if args.tiny else []
    if row == "blend":
        overrides, steps = [*BLEND, "data.solution=solution.csv", *tiny], ("blend", "predict", "score")
    else:
        overrides, steps = [*row_overrides(row, scratch, args), *tiny], ("data", "folds", "train", "predict", "score")
    started = time.perf_counter()
    for step in steps:
        if step == "predict" and not next((scratch / "runs").glob(f"*/{row}/full/model.pt"), None):
            overrides = [o.replace("predict.models=full", "predict.models=folds") for o in overrides]
        stage(step, config, overrides, scratch, show=("train",))
    minutes = (time.perf_counter() - started) / 60
    score = float(pd.read_csv(scratch / "submissions" / "ledger.csv")["local_score"].iloc[-1])
    return score, minutes, inference_seconds(config, overrides, scratch)


def row_overrides(row: str, scratch: Path, args: argparse.Namespace) -> list[str]:
    """A trained row's keys, seed and answers; `small` on the folds the distilled student trained."""
    side = chosen_side(scratch) if row != "medium" else 0
    seed = args.seed + (row == "twin")
    overrides = [*keys(row, side, args.budget), f"train.seed={seed}", "data.solution=solution.csv"]
    taught = next((scratch / "runs").glob("*/distill/cv.json"), None)
    if row == "small" and taught is not None:
        overrides.append(f"train.folds={CV.load(taught).fold_ids}")
    return overrides


def peers(name: str, config: Path, scratch: Path) -> list[tuple[str, float]]:
    """The competition's peers and their held-out scores."""
    if name in TASK_PEERS:
        return TASK_PEERS[name](scratch / "data" / name)
    with inside(scratch):
        peer = Peer(C.load(config, ["data.solution=solution.csv"]))
        _, _, held_out = peer.scores()
    return [(peer.name, held_out)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--competition", default="photos", choices=sorted(BUILDERS))
    parser.add_argument("--budget", default="5m")
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=ROWS)
    parser.add_argument("--seed", type=int, default=0, help="every row's train.seed")
    parser.add_argument("--tiny", action="store_true", help="tiny data, 2 folds, 1 epoch: for the test suite")
    args = parser.parse_args()
    for row, needed in NEEDS.items():
        if row in args.rows and (needed not in args.rows or args.rows.index(needed) > args.rows.index(row)):
            parser.error(f"--rows: {row} reads {needed}, which must come before it")
    name = "tiny" if args.tiny else args.competition
    print("| machine | competition | row | held-out score | wall clock | inference on the test images |")
    print("|---|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        BUILDERS[name](scratch / "data" / name, **(SMALL.get(name, {}) if args.tiny else {}))
        config, _ = _stages.init(name, scratch)
        for row in ["medium", *(r for r in args.rows if r != "medium")]:
            score, minutes, seconds = run_row(row, config, scratch, args)
            shown = f"{row} (seed {args.seed})" if args.seed else row
            print(f"| {machine()} | {name} | {shown} | {score:.4f} | {minutes:.1f} min | {seconds:.2f} s |", flush=True)
        for peer, held_out in peers(name, config, scratch):
            print(f"| {machine()} | {name} | peer: {peer} | {held_out:.4f} | | |", flush=True)


if __name__ == "__main__":
    main()
