import os
import sys


class PipelineError(Exception):
    """An error the user can cause (config, data, files, network).

    The message names the file, row, column or key and the rule broken; the CLI
    prints it on one line and exits non-zero, without a traceback.
    """


def report_interrupt(exc_type, exc, traceback) -> None:
    """`python -m pipeline`'s sys.excepthook. Ctrl-C is one line, `interrupted`, and no
    traceback; a spawned tuning worker stays quiet, as its parent says it once for all. Python
    then ends the process by SIGINT, as a shell expects of an interrupted program (status 130):
    exiting with 130 by hand was not deterministic, since CPython still ends by SIGINT when the
    interrupt once passed through a library's exec() of a string."""
    if not issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, traceback)
    elif "PIPELINE_TUNE_WORKER" not in os.environ:
        print("interrupted", file=sys.stderr)
