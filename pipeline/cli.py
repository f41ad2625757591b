"""`python -m pipeline STAGE -c CONFIG [key=value ...]`: the only argument parser."""

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline import config as C
from pipeline.data import inputs
from pipeline.errors import PipelineError, interrupt_held
from pipeline.files import write_if_changed, write_text
from pipeline.paths import Paths
from pipeline.stage_table import INIT_ENTRY, STAGES


def parser() -> argparse.ArgumentParser:
    stages = "\n".join(f"  {name:<9}{stage.help}" for name, stage in STAGES.items())
    p = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Run one stage of the competition pipeline.",
        epilog=f"  {'init':<9}{INIT_HELP}\nstages:\n{stages}\n\n"
        "example: python -m pipeline folds -c configs/digits.yaml folds.n_splits=10",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "stage", choices=[*STAGES, "init", "makevars"], metavar="STAGE", help="one of: init, " + ", ".join(STAGES)
    )
    p.add_argument("-c", "--config", default="configs/digits.yaml", help="competition YAML (default: %(default)s)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.epochs=2")
    p.add_argument("-f", "--file", help="score and submit: the submission file (default: the newest)")
    p.add_argument("-w", "--workers", default="1", help="tune: worker processes on the study (default 1)")
    p.add_argument("-g", "--gpus", help="train: several GPUs, e.g. 0,1,2,3 (DDP per fold or a fold per GPU)")
    p.add_argument(
        "-o", "--output", help="init: the config to write (default configs/<name>.yaml); makevars: the fragment"
    )
    p.add_argument("-n", "--name", help="init: the competition's name (default: the folder's)")
    return p


INIT_HELP = "python -m pipeline init DIR [key=value ...]: survey a competition folder -> configs/<name>.yaml"


def init(args: argparse.Namespace) -> None:
    folders = [item for item in args.overrides if "=" not in item]
    if len(folders) != 1:
        raise PipelineError(f"init takes one competition folder, got {folders or 'none'}")
    given = dict(C.parse_override(item) for item in args.overrides if "=" in item)
    write_config = entry_point(INIT_ENTRY)
    write_config(Path(folders[0]), Path(args.output) if args.output else None, args.name, given=given)


def worker_count(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise PipelineError(f"WORKERS={text!r}: the number of tuning processes is a whole number from 1")
    return int(text)


def run_stage(name: str, cfg: C.Config, **options) -> None:
    stage = STAGES[name]
    given = {key: value for key, value in options.items() if key in stage.options}
    entry_point(stage.entry)(cfg, **given)


def entry_point(entry: str) -> Callable:
    """A stage's "module:function", imported: the CLI reaches every stage by name, so that no
    module below it imports one."""
    module, function = entry.split(":")
    with interrupt_held():  # torch and friends load here, for seconds: Ctrl-C may come then
        return getattr(importlib.import_module(module), function)


def makevars(cfg: C.Config, output: str) -> None:
    """Write the Make fragment naming this config's files, and refresh the per-stage config stamps.

    A stamp is rewritten only when the sections its stage depends on change, so Make re-runs
    exactly the stages a config edit or an override affects. The train stamp holds the tuned
    settings too: a new best.yaml retrains, while training never starts a search.
    """
    paths = Paths.of(cfg)
    for name, stage in STAGES.items():
        write_if_changed(paths.stamp(name), cfg.to_yaml(stage.sections) + tuned_settings(paths, name))
    inputs.refresh(paths)
    if any(fit.result.exists() and not fit.model.exists() for fit in paths.fits()):
        paths.stamp("train").touch()  # a finished fit lost its weights: train is out of date, and trains it again
    scrape_wanted = cfg.data.use_extra and bool(cfg.scrape.sources)
    variables = {
        "NAME": cfg.competition.name,
        "DATA_DIR": paths.data,
        "EXPERIMENT_DIR": paths.experiment,
        "DATA_OUT": paths.resolved("data"),
        "INPUTS_STAMP": paths.inputs_stamp,
        "EXTRA_CSV": paths.extra_csv,
        "FOLDS_CSV": paths.folds_csv,
        "EXTRA_DEP": paths.extra_csv if scrape_wanted else "",
        "CV_JSON": paths.cv_json,
        "BEST_YAML": paths.best_yaml,
        **{f"{name.upper().replace('-', '_')}_STAMP": paths.stamp(name) for name in STAGES},
    }
    write_text(output, "".join(f"{key} := {value}\n" for key, value in variables.items()))


def tuned_settings(paths: Paths, stage: str) -> str:
    tuned = paths.tuned_yaml
    if stage != "train" or not tuned.is_file():
        return ""
    return f"# merged from {tuned}\n{tuned.read_text()}"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_intermixed_args(argv)
    if "RANK" in os.environ:  # under torchrun (imported only then: makevars runs without torch)
        from pipeline.learn import distributed

        distributed.quiet_other_ranks()
    try:
        if args.stage == "init":
            init(args)
            return 0
        cfg = C.load(args.config, args.overrides)
        if args.stage == "makevars":
            if not args.output:
                raise PipelineError("makevars needs -o FILE")
            makevars(cfg, args.output)
        else:
            run_stage(args.stage, cfg, file=args.file, workers=worker_count(args.workers), gpus=args.gpus)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a read-only folder, a full disk: the system's own words name the file
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
