import atexit
import sys

from pipeline.errors import end_by_sigint_when_interrupted, interrupt_held, report_interrupt

sys.excepthook = report_interrupt
atexit.register(end_by_sigint_when_interrupted)  # first registered, so it runs last

with interrupt_held():
    from pipeline.cli import main

sys.exit(main())
