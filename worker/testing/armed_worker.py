"""``python -m worker.testing.armed_worker run``: ``position-worker run`` whose execution
engine is given :func:`worker.testing.crashpoints.crashpoint`, so that it SIGKILLs itself at the
step ``POSITION_WORKER_CRASH_AT`` names. The process a recovery test starts and kills
(``tests/integration/test_execution_crash.py``); the worker itself is never armed.
"""

from __future__ import annotations

import sys

import anyio

from worker.app import App
from worker.logs import configure_logging
from worker.settings import load_settings
from worker.testing.crashpoints import crashpoint


def main(argv: list[str]) -> int:
    if argv != ["run"]:
        print("usage: python -m worker.testing.armed_worker run", file=sys.stderr)
        return 2
    settings = load_settings()
    configure_logging(settings.log.level, settings.log.format)
    anyio.run(App(settings, crash_point=crashpoint).run)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
