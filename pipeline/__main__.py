import sys

from pipeline.errors import interrupted

try:
    from pipeline.cli import main  # torch and friends load here, for seconds: Ctrl-C may come now
except KeyboardInterrupt:
    sys.exit(interrupted())
sys.exit(main())
