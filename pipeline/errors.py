import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator


class PipelineError(Exception):
    """An error the user can cause (config, data, files, network).

    The message names the file, row, column or key and the rule broken; the CLI
    prints it on one line and exits non-zero, without a traceback.
    """


INTERRUPTED = threading.Event()  # set once Ctrl-C has ended the stage


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
    """`python -m pipeline`'s sys.excepthook. Ctrl-C is one line, `interrupted`, and no
    traceback, also when a library raised another error from it (a lazy import's, wrapped as
    above); a spawned tuning worker stays quiet, as its parent says it once for all."""
    if not any(isinstance(cause, KeyboardInterrupt) for cause in causes(exc)):
        sys.__excepthook__(exc_type, exc, traceback)
        return
    INTERRUPTED.set()
    if "PIPELINE_TUNE_WORKER" not in os.environ:
        print("interrupted", file=sys.stderr)


def causes(exc: BaseException | None) -> Iterator[BaseException]:
    """The exception, then what it was raised from, and so on. (Not what it was raised while
    handling: an error in the cleanup after Ctrl-C is still an error.)"""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__


def end_by_sigint_when_interrupted() -> None:
    """The last exit handler of `python -m pipeline`: once its threads and the other handlers are
    done, an interrupted process ends by SIGINT, as a shell expects (status 130). CPython's own
    version of this hangs on a private flag that any code still running at exit can reset (a
    download thread importing Pillow's plugins did), and a hand-set exit status it overrides."""
    if INTERRUPTED.is_set():
        with contextlib.suppress(OSError, ValueError):  # a reader that has gone: nothing to flush to
            sys.stdout.flush()
            sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
