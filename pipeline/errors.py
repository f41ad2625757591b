import os
import sys


class PipelineError(Exception):
    """An error the user can cause (config, data, files, network).

    The message names the file, row, column or key and the rule broken; the CLI
    prints it on one line and exits non-zero, without a traceback.
    """


INTERRUPTED_EXIT = 130  # what a shell reports for a process ended by SIGINT


def interrupted() -> int:
    """Say Ctrl-C ended the stage, on one line; a spawned tuning worker stays quiet, as its
    parent says it once for all. The exit status to return."""
    if "PIPELINE_TUNE_WORKER" not in os.environ:
        print("interrupted", file=sys.stderr)
    return INTERRUPTED_EXIT
