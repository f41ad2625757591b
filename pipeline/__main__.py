import atexit
import signal
import sys

from pipeline.errors import end_by_the_stopping_signal, interrupt_held, raise_terminated, report_interrupt

sys.excepthook = report_interrupt
atexit.register(end_by_the_stopping_signal)  # first registered, so it runs last
signal.signal(signal.SIGTERM, raise_terminated)

with interrupt_held():
    from pipeline.cli import main

sys.exit(main())
