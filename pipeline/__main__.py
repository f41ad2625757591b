import sys

from pipeline.errors import report_interrupt

sys.excepthook = report_interrupt  # set before torch and friends load, for seconds: Ctrl-C may come then

from pipeline.cli import main  # noqa: E402

sys.exit(main())
