"""``python -m worker`` is ``position-worker``."""

import sys

from worker.cli import main

sys.exit(main())
