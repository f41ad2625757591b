import contextlib
import os
import signal
import sys
from collections.abc import Iterator


class PipelineError(Exception):
    """An error the user can cause (config, data, files, network).

    The message names the file, row, column or key and the rule broken; the CLI
    prints it on one line and exits non-zero, without a traceback.
    """


class Terminated(BaseException):
    """SIGTERM, as `kill`, a job scheduler, or `make` passing its own on, sends it: the stage ends
    as Ctrl-C ends it (a tuning trial in flight failed and queued again), one line, and by SIGTERM
    (a shell's status 143)."""


def raise_terminated(signum, frame) -> None:
    raise Terminated


STOPS = (KeyboardInterrupt, Terminated)
ENDED_BY: list[int] = []  # the signal that ended the stage (SIGINT, SIGTERM), for the last exit handler


@contextlib.contextmanager
def interrupt_held() -> Iterator[None]:
    """Ctrl-C while libraries load takes effect once they have: an interrupt inside an import
    can come out as another error (Python 3.11 wraps it in a RuntimeError when it lands in a
    class's __set_name__, as torch's imports have) or leave a module half made."""
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def report_interrupt(exc_type, exc, traceback) -> None:
    """`python -m pipeline`'s sys.excepthook. Ctrl-C is one line, `interrupted` (SIGTERM:
    `terminated`), and no traceback, also when a library raised another error from it (a lazy
    import's, wrapped as above); a spawned tuning worker stays quiet, as its parent says it once
    for all."""
    stop = next((cause for cause in causes(exc) if isinstance(cause, STOPS)), None)
    if stop is None:
        sys.__excepthook__(exc_type, exc, traceback)
        return
    ENDED_BY.append(signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)
    if "PIPELINE_TUNE_WORKER" not in os.environ:
        print("terminated" if isinstance(stop, Terminated) else "interrupted", file=sys.stderr)


def causes(exc: BaseException | None) -> Iterator[BaseException]:
    """The exception, then what it was raised from, and so on. (Not what it was raised while
    handling: an error in the cleanup after Ctrl-C is still an error.)"""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__


def end_by_the_stopping_signal() -> None:
    """The last exit handler of `python -m pipeline`: once its threads and the other handlers are
    done, an interrupted process ends by SIGINT, a terminated one by SIGTERM, as a shell expects
    (status 130, 143). CPython's own version of this for SIGINT hangs on a private flag that any
    code still running at exit can reset (a download thread importing Pillow's plugins did), and
    a hand-set exit status it overrides."""
    if ENDED_BY:
        with contextlib.suppress(OSError, ValueError):  # a reader that has gone: nothing to flush to
            sys.stdout.flush()
            sys.stderr.flush()
        signal.signal(ENDED_BY[0], signal.SIG_DFL)
        os.kill(os.getpid(), ENDED_BY[0])
